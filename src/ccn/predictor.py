"""A finished run as a PyTorch module: images in, class probabilities out (docs/api.md).

    model = ccn.load("runs/digits-...")          # the --out folder of a finished `ccn train`
    probs = model("cat.jpg")                      # (1, C): a path, a PIL image, a tensor or a list of them
    model.classes, model.groups                   # class names; the learned groups (None for a flat run)

`Predictor` preprocesses exactly as the run's scoring did (results.json "preprocess": the stored
square and how an image is fitted to it, the evaluation crop, the normalisation) and returns the
probabilities of the run's inference rule over its test-time views (train.tta): the numbers
`ccn predict` prints and `ccn export` writes into its ONNX graph (all three share ccn.predict).

`flat_state_dict` gives the backbone and the flat head under the names another library uses (timm's
`fc` / `head` / `classifier`, or a plain `torch.nn.Sequential`); the way back is `model.init=FILE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from ccn.data.augment import Normalize
from ccn.data.crops import CentreCrop
from ccn.data.images import fit_square, to_rgb
from ccn.errors import CCNError
from ccn.export import RuleProbabilities
from ccn.predict import read_image
from ccn.runs import class_names, load_run

ImageLike = Union[str, Path, Image.Image, torch.Tensor]


class Predictor(nn.Module):
    """A finished run: `predictor(images)` -> (N, C) probabilities; see the module notes and docs/api.md.

    Attributes: `classes` (names, in the order of the probabilities), `groups` (lists of class names,
    one per learned group; None for a flat run), `group_of` (each class's 0-based group, or None),
    `hierarchy` (ccn.Hierarchy or None), `rule` and `tta` (how the probabilities are read), `preprocess`
    (results.json's record), `network` (the ccn network: backbone + head), `backbone` (normalised
    images -> pooled features) and `flat` (the flat head, features -> logits)."""

    def __init__(self, run_dir: Union[str, Path]):
        super().__init__()
        config, network, hierarchy, results = load_run(Path(run_dir))
        self.run_dir = Path(run_dir)
        self.network = network
        self.probabilities = RuleProbabilities(network, config.method.inference, config.train.tta)
        self.rule, self.tta = self.probabilities.rule, self.probabilities.tta
        self.model_name = config.model.name
        self.preprocess = dict(results["preprocess"])
        self.hierarchy = hierarchy
        self.classes = class_names(results, hierarchy)
        self.groups = ([[self.classes[c] for c in group] for group in hierarchy.groups] if hierarchy is not None
                       else None)
        self.group_of = hierarchy.group_of().tolist() if hierarchy is not None else None
        self.normalise = Normalize(self.preprocess["mean"], self.preprocess["std"])
        self.eval()

    @property
    def backbone(self) -> nn.Module:
        return self.network.backbone

    @property
    def flat(self) -> nn.Linear:
        return self.network.head.flat

    @property
    def image_size(self) -> int:
        """The side of the square the network reads (after the evaluation crop, if the run has one)."""
        return self.preprocess.get("input_size", self.preprocess["image_size"])

    def forward(self, images: Union[ImageLike, list]) -> torch.Tensor:
        """(N, C) float32 probabilities of the run's rule over its test-time views, on the module's device.
        Differentiable: wrap the call in torch.no_grad() when no gradient is wanted."""
        return self.probabilities(self.prepare(images))

    def prepare(self, images: Union[ImageLike, list]) -> torch.Tensor:
        """The network's input: (N, 3, S, S) float32, normalised, on the module's device.

        images: a path, a PIL image, a uint8 tensor (pixels 0-255) or a float tensor (pixels 0-1, as
        torchvision's ToTensor gives; not normalised), each (3, H, W) or (N, 3, H, W), or a list of
        these. A path is decoded as `ccn predict` decodes a file; a PIL image or a tensor of another
        size is fitted to the run's stored square the same way (PIL bilinear; a float tensor is first
        rounded to 8-bit pixels, the run never saw others); one already of that size is used as it is.
        Then the run's evaluation crop, if it has one, and its normalisation."""
        side = self.preprocess["image_size"]
        items = images if isinstance(images, (list, tuple)) else [images]
        parts = [self._stored_square(item, side) for item in items]
        if not parts:
            raise CCNError("no images given: pass a path, a PIL image, a (N, 3, H, W) tensor or a list of these")
        x = torch.cat([p.float() for p in parts]) if any(p.is_floating_point() for p in parts) else torch.cat(parts)
        if "eval_crop" in self.preprocess:
            x = CentreCrop(self.preprocess["input_size"], self.preprocess["eval_crop"])(x)
        device = next(self.network.parameters()).device
        return self.normalise.to(device)(x.to(device))

    def _stored_square(self, item, side: int) -> torch.Tensor:
        """(n, 3, side, side): uint8, or float on the 0-255 scale for a float tensor of that size."""
        fit = self.preprocess.get("fit", "stretch")
        if isinstance(item, (str, Path)):
            return torch.from_numpy(read_image(Path(item), side, fit).copy()).permute(2, 0, 1)[None]  # writable
        if isinstance(item, Image.Image):
            pixels = np.array(fit_square(to_rgb(item), side, fit), dtype=np.uint8)
            return torch.from_numpy(pixels).permute(2, 0, 1)[None]
        if isinstance(item, torch.Tensor):
            return _tensor_square(item, side, fit)
        raise CCNError(f"cannot read {type(item).__name__} as an image: pass a path, a PIL image or a (N, 3, H, W) "
                       "tensor (uint8 0-255, or float 0-1)")

    @torch.inference_mode()
    def predict(self, images: Union[ImageLike, list], top: int = 3) -> list[dict]:
        """The top classes per image, as `ccn predict --json` prints them: [{"top": [{"class", "probability",
        "group" (1-based, None for a flat run)}]}, ...] (a "path" key too for the images given as paths)."""
        items = images if isinstance(images, (list, tuple)) else [images]
        paths = [str(i) for i in items] if all(isinstance(i, (str, Path)) for i in items) else None
        probs = self(images).cpu()
        entries = []
        for k, row in enumerate(probs):
            values, idx = row.topk(min(top, len(self.classes)))
            entry = {"path": paths[k]} if paths else {}
            entry["top"] = [{"class": self.classes[c], "probability": v,
                             "group": self.group_of[c] + 1 if self.group_of else None}
                            for v, c in zip(values.tolist(), idx.tolist())]
            entries.append(entry)
        return entries


def _tensor_square(images: torch.Tensor, side: int, fit: str) -> torch.Tensor:
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        hint = " (channels last? use .permute(0, 3, 1, 2))" if images.ndim == 4 and images.shape[-1] == 3 else ""
        raise CCNError(f"an image tensor of shape {tuple(images.shape)}: pass (N, 3, H, W) or (3, H, W) RGB{hint}")
    if images.shape[0] == 0 or images.shape[-1] == 0 or images.shape[-2] == 0:
        raise CCNError(f"an empty image tensor of shape {tuple(images.shape)}: pass at least one image")
    images = images.detach().cpu()
    if images.is_floating_point():
        low, high = images.min().item(), images.max().item()
        if not (np.isfinite(low) and np.isfinite(high)) or low < -1e-6 or high > 1 + 1e-6:
            raise CCNError(f"a float image tensor with values from {low:.3g} to {high:.3g}: pass pixels in 0-1 (as "
                           "torchvision's ToTensor gives), not normalised ones; ccn.load normalises as the run did")
        images = images.float().clamp(0, 1) * 255
    elif images.dtype != torch.uint8:
        raise CCNError(f"an image tensor of {str(images.dtype).removeprefix('torch.')}: pass uint8 (0-255) or float "
                       "(0-1) pixels")
    if images.shape[-2:] == (side, side):
        return images
    pixels = images.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return torch.stack([torch.from_numpy(np.array(fit_square(Image.fromarray(p), side, fit), dtype=np.uint8))
                        for p in pixels]).permute(0, 3, 1, 2)


def load(run_dir: Union[str, Path], device: Union[str, torch.device, None] = None) -> Predictor:
    """A finished run folder as a Predictor in eval mode (on `device`, default the CPU)."""
    predictor = Predictor(run_dir)
    return predictor.to(device) if device is not None else predictor


# the classifier's name in timm's model families: resnet/regnet `fc`, vit/convnext/efficientnet ...
CLASSIFIER_EXAMPLES = "fc (timm resnet), head (timm vit), head.fc (timm convnext), classifier (timm efficientnet)"


def flat_state_dict(run: Union[str, Path, Predictor, nn.Module], classifier: str = "fc",
                    prefix: str = "") -> dict[str, torch.Tensor]:
    """The run's backbone and flat head as one state dict, as another library names them: the backbone's
    tensors under `prefix`, the flat head's as `classifier`.weight / .bias. The other heads of a ccn run
    (groups, within-group) are left out: this is the flat classifier the run trained beside them.

    timm: a run of model.name=timm:NAME loads into timm.create_model(NAME, num_classes=C) with
    classifier= that model's classifier name (see CLASSIFIER_EXAMPLES). Plain torch: any run loads into
    torch.nn.Sequential(backbone, torch.nn.Linear(F, C)) with prefix="0." and classifier="1".
    Back: save a state dict of that layout (safetensors.torch.save_file) and train from it with
    `--set model.init=FILE` (the backbone always; the classifier when it has the run's classes)."""
    network = _network(run)
    inner = "model." if isinstance(network.backbone, _timm_backbone_class()) else ""  # our timm adapter's wrapper
    state = {}
    for key, value in network.backbone.state_dict().items():
        state[prefix + key[len(inner):] if inner and key.startswith(inner) else prefix + key] = value
    for key, value in network.head.flat.state_dict().items():
        state[f"{classifier}.{key}"] = value
    return state


def _network(run) -> nn.Module:
    if isinstance(run, Predictor):
        return run.network
    if isinstance(run, (str, Path)):
        return load_run(Path(run))[1]
    if isinstance(run, nn.Module) and hasattr(run, "backbone") and hasattr(getattr(run, "head", None), "flat"):
        return run
    raise CCNError(f"flat_state_dict takes a run folder, a ccn.load() result or a ccn network, not "
                   f"{type(run).__name__}")


def _timm_backbone_class() -> type:
    from ccn.models.timm_adapter import TimmBackbone  # imports no timm: the adapter imports it when it builds
    return TimmBackbone
