"""`ccn export`: a saved run as an ONNX model that maps normalised images to class probabilities.

    FILE        ONNX graph: input `images` float32 (N, 3, S, S), normalised as (pixel / 255 - mean) / std
                per RGB channel; output `probabilities` float32 (N, C), the run's inference rule
                over the run's test-time views (train.tta; they are part of the graph): the same
                numbers `ccn predict` prints, see ccn.predict.class_probabilities
    FILE.json   what a deployment needs besides the graph: image_size, mean, std (0-1 scale, per
                channel), classes, the 1-based group of each class (null for flat runs), the rule

Uses torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset 18; it needs the onnx and
onnxscript packages: pip install 'ccn[export]'). On a torch without it (before 2.5) the TorchScript
exporter (opset 17) is the fallback, the one torch is retiring; FILE.json says which wrote the graph.
Both trace every head (the tree head's `hard` descent is a loop of fixed length, so the traced graph
holds for every input) with the batch size left free.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ccn.files import atomic_write, check_replaceable, write_json
from ccn.errors import CCNError
from ccn.predict import class_probabilities, inference_rule
from ccn.runfiles import OWN_FILES
from ccn.runs import class_names, load_run, owner_of

FORMATS = ("onnx",)
OPSET = {"dynamo": 18, "torchscript": 17}  # the dynamo exporter writes opset 18 or later


class RuleProbabilities(nn.Module):
    """images -> class probabilities of `rule` over the test-time views `tta`, as `ccn predict` computes them."""

    def __init__(self, model: nn.Module, rule: str, tta: str = "none"):
        super().__init__()
        self.model, self.rule, self.tta = model, inference_rule(model.head, rule), tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_probabilities(self.model, images, self.rule, self.tta)


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_run(run_dir: Path, out: Path, fmt: str = "onnx", force: bool = False) -> dict:
    """Write `out` and `out`.json from a finished run folder; return what the .json holds."""
    if fmt not in FORMATS:
        raise CCNError(f"--format {fmt} is not supported; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    _check_not_run_files(Path(run_dir), out)  # first: --force does not help here
    _check_outputs(out, force)
    if not os.path.lexists(Path(run_dir) / "results.json"):  # a FIFO there is named by load_run
        raise CCNError(f"{run_dir} is not a finished ccn run folder (no results.json): pass the --out folder of "
                       "a `ccn train` that completed")
    config, model, hierarchy, results = load_run(Path(run_dir))
    classes = class_names(results, hierarchy)  # the sidecar's; before anything is written
    which = exporter()
    check_export_packages(which)  # after the run is read: a damaged run is named whatever is installed
    module = RuleProbabilities(model, config.method.inference, config.train.tta).eval()
    prep = results["preprocess"]
    side = prep.get("input_size", prep["image_size"])
    example = torch.zeros(2, 3, side, side)
    atomic_write(out, lambda tmp: (_dynamo_export if which == "dynamo" else _torchscript_export)(module, example, tmp))
    groups = [g + 1 for g in hierarchy.group_of().tolist()] if hierarchy is not None else None
    info = {"format": "onnx", "opset": OPSET[which], "exporter": which, "input": "images", "output": "probabilities",
            "layout": "NCHW float32, RGB, (pixel / 255 - mean) / std", "image_size": side, "resize": _resize_text(prep),
            "mean": prep["mean"], "std": prep["std"], "classes": classes, "groups": groups, "rule": module.rule, "tta": module.tta, "run": str(run_dir)}
    write_json(sidecar_path(out), info)
    return info


def _check_outputs(out: Path, force: bool) -> None:
    """Both files can be written, checked before either is: never a model without its FILE.json."""
    if out.is_dir():
        raise CCNError(f"--out {out} is a folder: give a file path such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise CCNError(f"--out {out}: the folder {out.parent} does not exist: create it, or give a file path in an "
                       "existing folder")
    sidecar = sidecar_path(out)
    if sidecar.is_dir():
        raise CCNError(f"{sidecar} (where --out {out} puts its size, mean, std and classes) is a folder: move it "
                       "away, or choose another --out")
    for path in (out, sidecar):
        owner = owner_of(path)
        if owner is not None:  # even with --force: it replaces the user's files, never a run's or a grid's
            raise CCNError(f"--out {out} would write {path}, which belongs to {owner}: choose another --out "
                           "(--force never replaces a run's files)")
    existing = [p for p in (out, sidecar) if os.path.lexists(p)]
    if existing and not force:
        raise CCNError(f"{existing[0]} already exists: choose another --out, or add --force to replace it")
    for path in existing:
        check_replaceable(path, "--out", "choose another --out")


def _check_not_run_files(run_dir: Path, out: Path) -> None:
    """Neither output may be one of the exported run's own files (even with --force): `--out RUN/results`
    put its FILE.json over RUN/results.json, `--out RUN/model.safetensors` ONNX bytes over the weights.
    A new name inside the run folder is fine."""
    if not run_dir.is_dir():
        return  # export_run names a missing run folder
    own = {name: run_dir / name for name in OWN_FILES}
    for path in (out, sidecar_path(out)):
        hit = next((name for name, mine in own.items() if _same_place(path, mine)), None)
        if hit is not None:
            raise CCNError(f"--out {out} would write {path}, which is the run's own {hit}: choose another --out "
                           f"(a new name inside {run_dir} is fine; --force never replaces a run's files)")


def _same_place(a: Path, b: Path) -> bool:
    """Whether paths `a` and `b` name one file (through links, '..' or another spelling of the folder)."""
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def _resize_text(prep: dict) -> str:
    """How to turn an image file into the model's input, as `ccn predict` does (ccn.predict.prepared_images)."""
    size = prep["image_size"]
    text = (f"shorter side to {size} px, then the centred {size} x {size} square" if prep.get("fit") == "centre_crop"
            else f"whole image to {size} x {size}")
    text += " (PIL bilinear)"
    if "eval_crop" in prep:
        side = round(size * prep["eval_crop"])
        text += f", then the centred {side} x {side} square" + (
            f" resized to {prep['input_size']} x {prep['input_size']}" if side != prep["input_size"] else "")
    return text


def exporter() -> str:
    """"dynamo" where torch.onnx.export takes dynamo=True (torch 2.5 and later), else "torchscript"."""
    return "dynamo" if "dynamo" in inspect.signature(torch.onnx.export).parameters else "torchscript"


def check_export_packages(which: str) -> None:
    """One line naming what the exporter needs and is not installed (onnx; onnxscript for dynamo)."""
    needed = ("onnx", "onnxscript") if which == "dynamo" else ("onnx",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise CCNError(f"ONNX export needs {' and '.join(missing)}, not installed here: pip install 'ccn[export]' "
                       "(onnx, onnxscript and onnxruntime; it installs no other torch)")


def _dynamo_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    options = {"external_data": False} if "external_data" in inspect.signature(torch.onnx.export).parameters else {}
    with _quiet_exporter():
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET["dynamo"],
                              input_names=["images"], output_names=["probabilities"], verbose=False,
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, **options)
        except ImportError as err:
            raise CCNError(f"ONNX export needs a package that is missing or broken ({err}): "
                           "pip install 'ccn[export]'") from None


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs a line for each torchvision operator it cannot register (torchvision is not
    needed here) and prints its progress; the graph it writes is checked against `ccn predict` by the tests."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _torchscript_export(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """The fallback for a torch without the dynamo exporter."""
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation on every call; the graph it writes is
        # checked against `ccn predict` by the tests
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        # folding the reflect padding of train.tta=mirror_translate's shifted views: the exporter says it
        # folds Slice only for steps=1 and leaves the rest unfolded, which changes no output (tests compare)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        try:
            torch.onnx.export(module, (example,), str(path), **_no_dynamo(), opset_version=OPSET["torchscript"],
                              input_names=["images"], output_names=["probabilities"],
                              dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}})
        except ImportError as err:
            raise CCNError(f"ONNX export needs a package that is missing ({err}): pip install 'ccn[export]'") from None


def _no_dynamo() -> dict:
    """dynamo=False where the argument exists (a torch before 2.5 has only the TorchScript exporter)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
