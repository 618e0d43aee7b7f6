"""Predictions for image files with a saved run: top classes and the group each belongs to.

`iter_predictions` yields plain data, one entry per image, decoding `batch_size` images at a time
(memory stays flat however many files are given):
    {"path": ..., "top": [{"class": name, "probability": 0..1, "group": 1-based group or None}, ...]}
`format_prediction` turns an entry into the text line `ccn predict` prints (`--json` prints each entry
as one JSON line). `image_paths` expands what the command line names: image files, folders (every
image file below them, recursively, in sorted order; hidden files and folders skipped) and quoted glob
patterns (`"photos/**/*.jpg"`, expanded here, so no shell is needed).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from ccn.data.augment import Normalize
from ccn.data.crops import CentreCrop
from ccn.data.images import ALLOWED_NAMES, UnreadableImage, decode_image, image_extensions
from ccn.errors import CCNError
from ccn.evaluate import tta_outputs
from ccn.hierarchy import Hierarchy
from ccn.file_checks import file_problem, printable
from ccn.runs import class_names


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


GLOB_CHARACTERS = set("*?[")
DEFAULT_BATCH = 64  # images decoded and scored at a time: 64 x 3 x 224 x 224 float32 is 39 MB


def image_paths(sources: list[str]) -> list[Path]:
    """The image files `sources` name, in the order given: a file as it is (decoding checks it), a folder
    as every image file below it, a glob pattern as its sorted matches (a file that exists under the
    pattern's own name is that file). CCNError for a name that matches nothing."""
    paths: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise CCNError(f"image folder {source} holds no {ALLOWED_NAMES} file (by name ending): pass a folder "
                               "of images, or the image files themselves")
            paths += found
        elif not path.exists() and GLOB_CHARACTERS & set(source):
            matches = pattern_matches(source)
            if not matches:
                raise CCNError(f"image pattern {source!r} matches no file: check it (patterns are expanded by ccn; "
                               "** matches folders at any depth)")
            paths += [p for match in matches for p in (folder_images(Path(match)) if Path(match).is_dir()
                                                       else [Path(match)])]
        else:
            paths.append(path)  # read_image names a missing or unreadable file
    return paths


def pattern_matches(pattern: str) -> list[str]:
    """The sorted paths matching a glob `pattern`, ** for folders at any depth, without entering folder
    links (pathlib's ** does not follow them; glob.glob's does, and loops for ever on a link to a parent)."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part))
    base = Path(*parts[:first]) if first else Path(".")
    wanted_hidden = any(part.startswith(".") for part in parts[first:])
    # as glob.glob and the shell: a wildcard matches no hidden file or folder unless the pattern names one
    return sorted({str(p) for p in base.glob(str(Path(*parts[first:])))
                   if wanted_hidden or not any(part.startswith(".") for part in p.relative_to(base).parts)})


def folder_images(folder: Path) -> list[Path]:
    """Every file below `folder` whose name ends as an allowed image format's, sorted; hidden files and
    folders (.git, .DS_Store ...) are skipped and folder links are not followed (no loops)."""
    extensions = image_extensions()
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".")]
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in extensions]
    return sorted(found)


@torch.no_grad()
def iter_predictions(model: torch.nn.Module, hierarchy: Optional[Hierarchy], saved: dict, rule: str,
                     paths: list, top: int = 3, tta: str = "none", batch_size: int = DEFAULT_BATCH) -> Iterator[dict]:
    """One entry per image path, in order; at most `batch_size` images are decoded at a time."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise CCNError(f"--top {top} asks for no classes: give 1 or more (e.g. --top 3)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CCNError(f"--batch-size {batch_size} decodes no images: give 1 or more (e.g. --batch-size 64)")
    prep = saved["preprocess"]
    classes = class_names(saved, hierarchy)
    normalise = Normalize(prep["mean"], prep["std"])
    group_of = hierarchy.group_of().tolist() if hierarchy is not None else None
    device = next(model.parameters()).device
    model.eval()
    for start in range(0, len(paths), batch_size):
        batch = paths[start:start + batch_size]
        probs = class_probabilities(model, normalise(prepared_images(prep, batch)).to(device), rule, tta).cpu()
        for path, row in zip(batch, probs):
            values, idx = row.topk(min(top, len(classes)))
            yield {"path": str(path), "top": [
                {"class": classes[c], "probability": v, "group": group_of[c] + 1 if group_of else None}
                for v, c in zip(values.tolist(), idx.tolist())]}


def format_prediction(entry: dict) -> str:
    """`path: class 97.1% (group 2), ...` (no group for flat runs). Paths and class names are printed
    escaped (ccn.file_checks.printable): a class folder named "c1 99.0%\\nevil.png: cat" must not print a
    line of its own."""
    guesses = [f"{printable(g['class'])} {100 * g['probability']:.1f}%" + (f" (group {g['group']})" if g["group"]
                                                                         else "") for g in entry["top"]]
    return f"{printable(entry['path'])}: " + ", ".join(guesses)
