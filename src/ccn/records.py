"""The files ccn writes and reads back, as records with a format number.

    kind        file                                   format  where the number is
    results     a run's results.json                   1       "format" key
    hierarchy   hierarchy.json (and the groups a       1       "format" key
                checkpoint holds, `ccn wordnet --out`)
    summary     an experiment's summary.json           1       "format" key (ccn never reads it back)
    grid        an experiment folder's grid.yaml       1       "format" key (a grid file you write needs none)
    weights     model.safetensors                      1       "format" in the safetensors metadata (text)
    checkpoint  checkpoint.safetensors                 1       "format" in the safetensors metadata (text)

Every writer stamps its record (`stamp`); every reader reads it through `read_record`, which refuses
a file of a newer format in one line (upgrade ccn) and turns an older one into today's layout, one
step per format (each kind's `steps`), so the code that uses a record knows one layout only. A file
without a number is format 0: written by ccn before records had formats (before 2026-12-06), or by
hand. To change a layout, write the new one and append the step from the old format to it: the
kind's current format is the number of its steps.

A safetensors file's record is its header: `{"__metadata__": {...}, name: tensor, ...}`, so that a
step may drop tensors an older layout held. Torch-free: the tensors pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ccn.errors import CCNError
from ccn.file_checks import Invalid, checked, read_json, require_int, require_mapping, require_matrix

FORMAT = "format"
METADATA = "__metadata__"  # a safetensors header's map of text values
STATE = "ccn_state"  # a checkpoint's training state: its metadata entry (JSON text in the file)


@dataclass(frozen=True)
class Kind:
    what: str  # how messages name such a file ("results file")
    steps: tuple[Callable[[dict], dict], ...]  # steps[n] turns format n into format n + 1
    in_metadata: bool = False  # a safetensors file: the number is text in its metadata

    @property
    def current(self) -> int:
        return len(self.steps)


# ---------------------------------------------------------------- the steps from format 0 to 1


def _results_0_to_1(results: dict) -> dict:
    """Format 1 always records the scored set, the config's digest, the class names, the code, torch
    version and time that produced the run. Runs from before 'eval_set' were scored on their test
    images (data.val_fraction came with it); what else they did not record is None: not recorded, so
    not checked (and reported as such)."""
    return {"eval_set": "test", "config_sha256": None, "classes": None, "code": None, "torch": None,
            "finished": None, **results}


def _hierarchy_0_to_1(hierarchy: dict) -> dict:
    """'how'.groups was the group count's name before issue 21 (now num_groups); 'distances' was the
    C x C matrix before distances.npy, now kept as the condensed distances (scipy's layout)."""
    hierarchy = dict(hierarchy)
    how = hierarchy.get("how")
    if isinstance(how, dict) and isinstance(how.get("groups"), int) and "num_groups" not in how:
        hierarchy["how"] = {("num_groups" if k == "groups" else k): v for k, v in how.items()}
    if hierarchy.get("distances") is not None and isinstance(hierarchy.get("classes"), list):
        hierarchy["distances"] = _condensed(hierarchy["distances"], len(hierarchy["classes"]))
    return hierarchy


def _condensed(matrix, C: int) -> list:
    """The upper triangle of a symmetric C x C distance matrix, row by row (scipy's condensed form)."""
    rows = require_matrix(matrix, "'distances'", C, C)
    symmetric = all(abs(rows[i][j] - rows[j][i]) <= 1e-8 + 1e-5 * abs(rows[j][i]) for i in range(C) for j in range(i))
    if not symmetric or any(value < 0 for row in rows for value in row):
        raise Invalid("'distances' must be a symmetric matrix of non-negative numbers")
    return [rows[i][j] for i in range(C) for j in range(i + 1, C)]


def _grid_0_to_1(grid: dict) -> dict:
    """The layout did not change: the number is new."""
    return grid


def _summary_0_to_1(summary: dict) -> dict:
    """The layout did not change: the number is new."""
    return summary


def _plan_0_to_1(plan: dict) -> dict:
    """Nothing to upgrade: plan.json is new in format 1 (ccn writes it, never reads it back)."""
    return plan


# a tree head's dense (edges, C) path matrix, saved before issue 18; the head now rebuilds its paths
# from the tree, and a weight average (ema., lookahead.) kept its own copy
OLD_PATH_MATRIX = "head.paths"


def _weights_0_to_1(header: dict) -> dict:
    return {k: v for k, v in header.items() if k != OLD_PATH_MATRIX}


def _checkpoint_0_to_1(header: dict) -> dict:
    """Drop the old path matrices. Format 1 always records where a step checkpoint stopped ('batch', 0
    after a whole epoch), the image counts, the data's digest, the code and model.init's record;
    an older checkpoint's are None where it did not record them (not recorded, so not checked)."""
    old = {f"{prefix}.{OLD_PATH_MATRIX}" for prefix in ("model", "ema", "lookahead")}
    header = {k: v for k, v in header.items() if k not in old}
    meta = header.get(METADATA)
    state = meta.get(STATE) if isinstance(meta, dict) else None
    if isinstance(state, dict):
        state = {"batch": 0, "images": None, "data_digest": None, "code": None, "init": None, **state}
        header[METADATA] = {**meta, STATE: state}
    return header


KINDS = {
    "results": Kind("results file", (_results_0_to_1,)),
    "hierarchy": Kind("hierarchy file", (_hierarchy_0_to_1,)),
    "summary": Kind("experiment summary", (_summary_0_to_1,)),
    "grid": Kind("grid file", (_grid_0_to_1,)),
    "plan": Kind("run plan", (_plan_0_to_1,)),
    "weights": Kind("weights file", (_weights_0_to_1,), in_metadata=True),
    "checkpoint": Kind("checkpoint", (_checkpoint_0_to_1,), in_metadata=True),
}


# ---------------------------------------------------------------- writing and reading


def stamp(kind: str, record: dict) -> dict:
    """`record` with today's format number first (a safetensors metadata map: as text)."""
    spec = KINDS[kind]
    number = str(spec.current) if spec.in_metadata else spec.current
    return {FORMAT: number, **{k: v for k, v in record.items() if k != FORMAT}}


def read_record(kind: str, data, fix: str, source=None) -> dict:
    """The record `data` (a dict, or a JSON file's path) in today's layout, without its format number.

    CCNError naming `source` (default: the path) when its format is newer than this ccn reads, or
    when it is not a mapping or its number is not one; older formats go through STEPS, whose checks
    end in the same one line with `fix`."""
    spec = KINDS[kind]
    if isinstance(data, (str, Path)):
        source = data if source is None else source
        data = read_json(Path(data), spec.what, fix)
    number = readable_format(kind, data, fix, source)
    with checked(source, fix):
        for step in spec.steps[number:]:
            data = step(data)
    return _without_number(spec, data)


def readable_format(kind: str, data, fix: str, source) -> int:
    """The format of the record `data`; CCNError naming `source` when it is newer than this ccn reads,
    or when `data` is not a mapping or its number is not one. read_record asks it first; a reader that
    must decode part of a record before read_record (a checkpoint's state is JSON text) asks it before
    that, since a newer format may keep that part in another encoding."""
    spec = KINDS[kind]
    with checked(source, fix):
        require_mapping(data, "the file")
        number = _format_number(spec, data)
    if number > spec.current:
        raise CCNError(f"{source} is a {spec.what} of format {number}, newer than format {spec.current}, the "
                       f"newest this ccn ({_version()}) reads: upgrade ccn to read it")
    return number


def _format_number(spec: Kind, data: dict) -> int:
    """The record's format: 0 when it has none. In safetensors metadata the number is text, and any other
    text there (other tools write "format": "pt"; ccn wrote "ccn-1" before records had numbers) is 0."""
    if not spec.in_metadata:
        return require_int(data.get(FORMAT, 0), f"'{FORMAT}'", 0)
    meta = data.get(METADATA) or {}
    text = meta.get(FORMAT) if isinstance(meta, dict) else None
    return int(text) if isinstance(text, str) and text.isascii() and text.isdigit() else 0


def _without_number(spec: Kind, data: dict) -> dict:
    if not spec.in_metadata:
        return {k: v for k, v in data.items() if k != FORMAT}
    meta = {k: v for k, v in (data.get(METADATA) or {}).items() if k != FORMAT}
    return {**data, METADATA: meta}


def header_record(metadata: dict | None, tensors: dict) -> dict:
    """A safetensors file's record: its metadata map and its tensors (see the module notes)."""
    return {METADATA: dict(metadata or {}), **tensors}


def split_header(record: dict) -> tuple[dict, dict]:
    """(metadata, tensors) of a safetensors record."""
    return record[METADATA], {k: v for k, v in record.items() if k != METADATA}


def _version() -> str:
    from ccn import __version__

    return __version__

