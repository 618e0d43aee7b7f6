"""Exponential moving average of a model's weights (`train.ema` = decay; 0 = off).

The average is a shadow of the model's whole state_dict (parameters and BatchNorm statistics), keyed
by name, so it means the same for every head: after a head swap the shadow keeps the entries whose
names remain (the backbone, the flat head) and starts the new heads' entries from their live values.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PREFIX = "ema."  # the shadow's keys in a checkpoint


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self.follow(model)

    def follow(self, model: torch.nn.Module) -> None:
        """Match the model's current entries: keep known names, start new ones from the live weights."""
        live = model.state_dict()
        self.shadow = {k: self.shadow[k] if k in self.shadow and self.shadow[k].shape == v.shape
                       else v.detach().clone() for k, v in live.items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * live, on the device, with no host synchronisation.
        Integer entries (BatchNorm's batch counter) are copied."""
        live = model.state_dict()
        floats = [k for k, v in self.shadow.items() if v.is_floating_point()]
        if floats:
            torch._foreach_lerp_([self.shadow[k] for k in floats], [live[k].detach() for k in floats],
                                 1.0 - self.decay)
        for k, v in self.shadow.items():
            if not v.is_floating_point():
                v.copy_(live[k])

    @contextmanager
    def swapped_in(self, model: torch.nn.Module):
        """Run the block with the averaged weights in `model`; the live ones are put back after."""
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(live)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The shadow for a checkpoint, under `ema.` names."""
        return {PREFIX + k: v.detach().cpu().contiguous() for k, v in self.shadow.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore the shadow from checkpoint tensors (the `ema.` entries); unknown names are refused."""
        saved = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if saved.keys() != self.shadow.keys():
            from ccn.errors import CCNError
            raise CCNError("the checkpoint's weight average does not fit this model: start a new run")
        for k, v in saved.items():
            self.shadow[k].copy_(v)
