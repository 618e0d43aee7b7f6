"""Predictions for image files with a saved run: top classes and the group each belongs to.

`predict_images` returns plain data, one entry per image:
    {"path": ..., "top": [{"class": name, "probability": 0..1, "group": 1-based group or None}, ...]}
and `format_predictions` turns it into the text lines `ccn predict` prints (`--json` prints the data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ccn.data.augment import Normalize
from ccn.data.crops import CentreCrop
from ccn.data.images import ALLOWED_NAMES, UnreadableImage, decode_image
from ccn.errors import CCNError
from ccn.evaluate import tta_outputs
from ccn.hierarchy import Hierarchy
from ccn.validate import file_problem, printable


def inference_rule(head: torch.nn.Module, rule: str) -> str:
    """The run's rule when its head has it; a flat run's head knows only `flat`."""
    return rule if rule in head.rules else head.rules[0]


def class_probabilities(model: torch.nn.Module, x: torch.Tensor, rule: str, tta: str = "none") -> torch.Tensor:
    """(B, C) class probabilities of the inference rule: the softmax of the rule's scores.

    soft: p(c|x) itself; flat: the flat head's softmax; blend: the normalised weighted geometric
    mean of the two; hard: p(c|x) renormalised over the classes the rule keeps (the chosen group at
    depth 1, the class the greedy descent reaches at depth 2), about 0 for every other class.
    `tta` (the run's train.tta): the rule scores the outputs averaged over the test-time views, as
    the run's final scores (results.json) did."""
    return torch.softmax(model.head.scores(tta_outputs(model, x, tta), inference_rule(model.head, rule)).float(), dim=1)


def read_image(path: Path, size: int, fit: str = "stretch") -> np.ndarray:
    """One image file given on the command line, decoded; CCNError naming it when it cannot be."""
    problem = file_problem(path)
    if problem == "is a folder":
        raise CCNError(f"image {path} is a folder, not an image file: pass the image files themselves")
    if problem:
        raise CCNError(f"image {path} {problem}: pass an image file")
    try:
        return decode_image(path, size, fit)
    except UnreadableImage as err:
        raise CCNError(f"{err}: pass a {ALLOWED_NAMES} image") from None


def prepared_images(prep: dict, paths: list[str]) -> torch.Tensor:
    """uint8 (N, 3, S, S) images as the run's scoring saw them: decoded to its stored square (results.json
    "preprocess": image_size, fit) and, when it trained with data.crop=random_resized, centre-cropped."""
    images = np.stack([read_image(Path(p), prep["image_size"], prep.get("fit", "stretch")) for p in paths])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return CentreCrop(prep["input_size"], prep["eval_crop"])(x) if "eval_crop" in prep else x


@torch.no_grad()
def predict_images(model: torch.nn.Module, hierarchy: Optional[Hierarchy], saved: dict, rule: str,
                   paths: list[str], top: int = 3, tta: str = "none") -> list[dict]:
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise CCNError(f"--top {top} asks for no classes: give 1 or more (e.g. --top 3)")
    prep = saved["preprocess"]
    classes = hierarchy.classes if hierarchy is not None else saved.get("classes")
    if classes is None:
        raise CCNError("results.json has no class names: re-run training with this version of ccn")
    x = Normalize(prep["mean"], prep["std"])(prepared_images(prep, paths))
    model.eval()
    probs = class_probabilities(model, x, rule, tta)
    group_of = hierarchy.group_of().tolist() if hierarchy is not None else None
    predictions = []
    for path, row in zip(paths, probs):
        values, idx = row.topk(min(top, len(classes)))
        predictions.append({"path": str(path), "top": [
            {"class": classes[c], "probability": v, "group": group_of[c] + 1 if group_of else None}
            for v, c in zip(values.tolist(), idx.tolist())]})
    return predictions


def format_predictions(predictions: list[dict]) -> list[str]:
    """One line per image: `path: class 97.1% (group 2), ...` (no group for flat runs). Paths and class
    names are printed escaped (ccn.validate.printable): a class folder named "c1 99.0%\\nevil.png: cat"
    must not print a line of its own."""
    lines = []
    for entry in predictions:
        guesses = [f"{printable(g['class'])} {100 * g['probability']:.1f}%" + (f" (group {g['group']})" if g["group"]
                                                                             else "") for g in entry["top"]]
        lines.append(f"{printable(entry['path'])}: " + ", ".join(guesses))
    return lines
