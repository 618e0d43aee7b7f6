"""Weights and training state on disk: safetensors files written atomically (ccn.files), with no
pickled Python objects, so loading never runs code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import save

from ccn.errors import CCNError
from ccn.files import atomic_write, fault_point, regular_file_size
from ccn.file_checks import (Invalid, checked, parse_json, require_int, require_keys, require_list, require_mapping,
                             require_number, require_numbers, require_str)
from ccn.records import STATE, header_record, read_record, readable_format, split_header, stamp


def canonical_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of `tensors`, the same bytes for the same tensors and metadata.

    The safetensors library writes the `__metadata__` map in the order of a Rust HashMap, which is
    seeded at random in every process, so two processes saving identical tensors wrote different
    files. The JSON header is rewritten here with the metadata keys sorted and the tensor entries in
    name order (their data offsets, hence the data bytes, do not change), padded with spaces to a
    multiple of 8 bytes as the format asks."""
    raw = save(tensors, metadata=metadata)
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + header_len:]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # serialised in memory, written by Python: a full disk is an OSError (safetensors' own save_file
    # raised SafetensorError instead), which atomic_write reports as one line
    data = canonical_safetensors(tensors, metadata)
    Path(path).write_bytes(data)


def save_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> None:
    """A weights record (ccn.records "weights"): the model's tensors, `metadata` as text."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: str(v) for k, v in stamp("weights", metadata or {}).items()}
    atomic_write(path, lambda tmp: write_safetensors(tmp, state, meta))


def check_weights_file(path: Path, what: str, fix: str) -> None:
    """CCNError unless `path` is a regular file: safetensors would block for ever on a FIFO planted there
    and read a device without end (ccn.files.open_regular; the size needs no limit: it is mapped)."""
    regular_file_size(path, what, fix)


def state_difference(module: torch.nn.Module, state: dict) -> Optional[str]:
    """Why `state` cannot load into `module`, in words (None when it fits): the one comparison of a
    file's tensors with a model's, for run folders, checkpoints and `model.init` alike.

    Keys and shapes must match, and a floating-point parameter or buffer must get floating-point
    values: load_state_dict would silently cast int8 (or drop the imaginary part of complex) values."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        return f"it lacks {missing[:3]}"
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        return f"it has tensors this model does not: {unexpected[:3]}"
    for key, mine in own.items():
        theirs = state[key]
        if theirs.shape != mine.shape:
            return f"{key} is {tuple(theirs.shape)} there but {tuple(mine.shape)} here"
        if mine.is_floating_point() and not theirs.is_floating_point():
            return f"{key} holds {str(theirs.dtype).removeprefix('torch.')} values, not floating-point weights"
    return None


def non_finite_tensor(state: dict) -> Optional[str]:
    """The first floating-point tensor holding NaN or infinity, or None."""
    return next((k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)


def check_state_fits(model: torch.nn.Module, state: dict, path: Path) -> None:
    """CCNError unless `state` has exactly the model's keys, shapes and kinds of values."""
    problem = state_difference(model, state)
    if problem:
        raise CCNError(f"{path} does not fit this model ({problem}): it was saved from another backbone, head or "
                       "class count; use the run folder it came from")


def check_finite(state: dict, path: Path, fix: str) -> None:
    """CCNError naming the tensor when a weights file holds NaN or infinity (its scores would be NaN)."""
    bad = non_finite_tensor(state)
    if bad is not None:
        raise CCNError(f"{path} holds NaN or infinite weights ({bad}): {fix}")


WEIGHTS_FIX = "restore the file the run wrote, or train the run again"


def read_weights(path: Path, source: str) -> dict:
    """The tensors of a weights record in today's layout (ccn.records "weights"); CCNError naming
    `source` for a newer format. A file that is no safetensors raises what safetensors raises
    (SafetensorError, OSError, ValueError), for the caller to name in its own words."""
    with safe_open(str(path), framework="pt") as handle:
        record = header_record(handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()})
    return split_header(read_record("weights", record, WEIGHTS_FIX, source))[1]


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a weights record into `model`, refusing files of a newer format, made for another model or
    class count, and weights that are not finite (predictions, scores and exports from them are meaningless)."""
    check_weights_file(path, "weights", WEIGHTS_FIX)
    try:
        state = read_weights(path, f"weights {path}")
    except (SafetensorError, OSError, ValueError) as err:
        raise CCNError(f"cannot read weights {path} ({err}): the file is missing or damaged") from None
    check_state_fits(model, state, path)
    check_finite(state, path, "the run diverged or the file was damaged; retrain it (e.g. with a lower train.lr) "
                 "or restore the file")
    model.load_state_dict(state)


# ---------------------------------------------------------------- full training state (resume)



def _optimizer_parts(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split an optimizer's state into tensors (for safetensors) and plain JSON-able values."""
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, entries in state["state"].items():
        plain["state"][str(index)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain["state"][str(index)][key] = value
    return tensors, plain


def _optimizer_state(tensors: dict, plain: dict) -> dict:
    state = {int(i): dict(values) for i, values in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def save_training_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict,
                        extra: dict | None = None, fault: str | None = None) -> None:
    """Everything a run needs to continue exactly: weights, optimizer, RNG states, `state` (plain data),
    and `extra` tensors (the weight average), whose names must not start with model./optim./rng.

    One safetensors file, written atomically: a crash during the save leaves the previous one.
    `fault` names one more testing fault point inside the save (the first save is "during-save")."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_plain = _optimizer_parts(optimizer)
    tensors.update(optim_tensors)
    tensors.update(extra or {})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    meta = stamp("checkpoint", {STATE: json.dumps({**state, "optimizer": optim_plain})})

    def write(tmp: Path) -> None:
        write_safetensors(tmp, tensors, meta)
        fault_point("during-save")
        if fault is not None:
            fault_point(fault)

    atomic_write(path, write)


CHECKPOINT_FIX = "it is damaged or not a ccn checkpoint; delete it to restart the run from epoch 1, or start a new run"
STAGES = ("flat", "probe", "ccn", "tree")


def read_training_state(path: Path) -> tuple[dict, dict]:
    """(tensors, state) of a checkpoint record in today's layout (ccn.records "checkpoint"); CCNError
    when it is damaged, edited, not ours or of a newer format."""
    check_weights_file(path, "checkpoint", CHECKPOINT_FIX)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CCNError(f"cannot read checkpoint {path} ({type(err).__name__}: {err}): {CHECKPOINT_FIX}") from None
    # a newer format is refused before its state is decoded: it may not be JSON text there
    readable_format("checkpoint", header_record(meta, {}), CHECKPOINT_FIX, f"checkpoint {path}")
    if STATE in meta:  # plain data from here on: the steps of older formats edit it
        meta = {**meta, STATE: parse_json(meta[STATE], f"the training state in checkpoint {path}", CHECKPOINT_FIX)}
    meta, tensors = split_header(read_record("checkpoint", header_record(meta, tensors), CHECKPOINT_FIX,
                                             f"checkpoint {path}"))
    if STATE not in meta:
        raise CCNError(f"checkpoint {path} has no ccn training state in its header: {CHECKPOINT_FIX}")
    state = meta[STATE]
    with checked(f"checkpoint {path}", CHECKPOINT_FIX):
        _check_restorable(tensors, state)
    return tensors, state


OPTIMIZER_NUMBER_LIMIT = 1e30  # far above any rate that trains (and momentum and decay are at most 1), far below overflow


def _check_restorable(tensors: dict, state) -> None:
    """Invalid unless the state holds what restore_training_state reads: optimizer and RNG state."""
    require_mapping(state, "its training state")
    optimizer = require_keys(state, ["optimizer"], "its training state")["optimizer"]
    require_keys(require_mapping(optimizer, "'optimizer'"), ["param_groups", "state"], "'optimizer'")
    for i, group in enumerate(require_list(optimizer["param_groups"], "'optimizer'.param_groups", min_length=1)):
        where = f"'optimizer'.param_groups[{i}]"
        require_keys(require_mapping(group, where), ["params", "lr"], where)
        require_numbers(group["params"], f"{where}.params", low=0)
        # every hyperparameter the optimizer will compute with: a number where one is expected (a string or
        # 1e308 there was a TypeError or an overflow traceback inside the first step)
        for key in ("lr", "initial_lr", "momentum", "dampening", "weight_decay"):
            if key in group:
                require_number(group[key], f"{where}.{key}", 0, OPTIMIZER_NUMBER_LIMIT)
        for key in ("nesterov", "maximize"):
            if key in group and not isinstance(group[key], bool):
                raise Invalid(f"{where}.{key} must be true or false, not {group[key]!r}")
    for index in require_mapping(optimizer["state"], "'optimizer'.state"):
        if not index.isdigit():
            raise Invalid(f"'optimizer'.state has key {index!r}, which is not a parameter number")
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise Invalid("its tensor 'rng.torch' (the random number generator state) is missing or malformed")
    for name in tensors:
        if name.startswith("optim.") and (name.count(".") < 2 or not name.split(".")[1].isdigit()):
            raise Invalid(f"its tensor {name!r} is not an optimizer state this version writes")


def check_run_state(state: dict, path: Path) -> None:
    """CCNError naming the checkpoint unless its state holds what a resumed run reads: the epoch,
    step, batch, stage, groups, timings and config it was saved with, and what the run checks and
    records (images, data_digest, code, init: None in a checkpoint from before they were recorded)."""
    with checked(f"checkpoint {path}", CHECKPOINT_FIX):
        require_keys(state, ["epoch", "step", "batch", "stage", "hierarchy", "cluster_seconds", "seconds", "config",
                             "images", "data_digest", "code", "init"], "its training state")
        require_int(state["epoch"], "'epoch'", 1)
        require_int(state["step"], "'step'", 0)
        require_str(state["stage"], "'stage'", STAGES)
        for key in ("cluster_seconds", "seconds"):
            require_number(state[key], f"'{key}'", 0)
        require_mapping(state["config"], "'config'")
        if state["hierarchy"] is not None:
            require_mapping(state["hierarchy"], "'hierarchy'")
        # a step checkpoint (train.checkpoint_every) stops inside its epoch: after batch 1 or later
        if require_int(state["batch"], "'batch'", 0) > 0:
            require_keys(state, ["epoch_seen", "epoch_seconds"], "its training state")
            require_int(state["epoch_seen"], "'epoch_seen'", 0)
            require_number(state["epoch_seconds"], "'epoch_seconds'", 0)


def restore_training_state(tensors: dict, state: dict, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, source: Path) -> None:
    """Load weights (checked against the model), optimizer state and RNG states."""
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_fits(model, weights, source)
    model.load_state_dict(weights)
    try:  # the header was checked field by field; what is left is whether it fits this optimizer
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
        torch.set_rng_state(tensors["rng.torch"])
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
        raise CCNError(f"checkpoint {source} does not fit this run ({type(err).__name__}: {err}): "
                       f"{CHECKPOINT_FIX}") from None
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
