"""Predictions for image files with a saved run: top classes and the group each belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ccn.data.augment import Normalize
from ccn.data.folder import decode_image
from ccn.errors import CCNError
from ccn.hierarchy import Hierarchy


@torch.no_grad()
def predict_images(model: torch.nn.Module, hierarchy: Optional[Hierarchy], saved: dict, rule: str,
                   paths: list[str], top: int = 3) -> list[str]:
    prep = saved["preprocess"]
    classes = hierarchy.classes if hierarchy is not None else saved.get("classes")
    if classes is None:
        raise CCNError("results.json has no class names: re-run training with this version of ccn")
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise CCNError(f"image {missing[0]} does not exist: check the path")
    images = np.stack([decode_image(Path(p), prep["image_size"]) for p in paths])
    x = Normalize(prep["mean"], prep["std"])(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    model.eval()
    out = model(x)
    probs = torch.softmax(model.head.scores(out, rule if rule in model.head.rules else model.head.rules[0]), dim=1)
    group_of = hierarchy.group_of().tolist() if hierarchy is not None else None
    lines = []
    for path, row in zip(paths, probs):
        values, idx = row.topk(min(top, len(classes)))
        guesses = [f"{classes[c]} {100 * v:.1f}%" + (f" (group {group_of[c] + 1})" if group_of else "")
                   for v, c in zip(values.tolist(), idx.tolist())]
        lines.append(f"{path}: " + ", ".join(guesses))
    return lines
