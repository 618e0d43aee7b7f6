"""The loss-scale control (method.normalize_loss) and the head-structure control (k-1).

After the head swap the three-level head's loss is the class loss plus flat_weight x the flat loss,
so the backbone gets about (1 + flat_weight) times the flat baseline's gradient. The control
divides step 3's loss by (1 + flat_weight); these tests measure the backbone's gradient norm of
the grouped head's loss against the flat loss on the same batch and the same weights."""

import pytest
import torch

from ccn import config as cfgmod
from ccn.dist import World, seed_stream
from ccn.grid import builtin_variant, load_grid
from ccn.heads import FlatHead
from ccn.network import make_head
from ccn.pipeline import MethodRun
from ccn.tracking import RunLog

PLANTED = ["data.name=synthetic", "data.num_classes=12", "data.num_groups=3", "data.train_per_class=20",
           "data.test_per_class=2", "model.width=4", "train.epochs=3", "train.progress=false"]


def gradient_ratios_at_head_swap(*overrides: str) -> tuple[float, float, list[int]]:
    """Backbone gradient norm of the step-3 head's loss over that of the flat loss, on one batch after
    the probe epoch, before and after the swap, with the same weights: (with the control, without
    it, group sizes). The run is configured with method.normalize_loss=true."""
    config = cfgmod.load(None, [*PLANTED, *overrides, "method.normalize_loss=true"])
    run = MethodRun(config, None, RunLog(None, enabled=False), World(), None)
    seed_stream(config.seed, 0, 1)
    run.trainer.train_epoch(run.data.train, 1)
    x, y = next(iter(run.data.train.epoch(2)))

    def backbone_gradient_norm() -> torch.Tensor:
        run.model.train()
        run.model.zero_grad()
        run.model.head.loss(run.model(x), y, config.train.label_smoothing)["loss"].backward()
        return torch.sqrt(sum(p.grad.pow(2).sum() for p in run.model.backbone.parameters()))

    flat = backbone_gradient_norm()
    run.cluster_classes(1)
    assert run.model.head.normalize_loss  # the key reaches the head
    normalised = backbone_gradient_norm() / flat
    run.model.head.normalize_loss = False  # the same head and weights, as the published loss
    raw = backbone_gradient_norm() / flat
    return float(normalised), float(raw), [len(g) for g in run.hierarchy.groups]


@pytest.mark.parametrize("flat_weight", [1.0, 3.0])
def test_one_group_multiplies_the_backbone_gradient_and_the_control_restores_it(flat_weight):
    """With one group the class loss IS the flat loss (v starts as a copy of z, p(group) = 1), so the
    ratio is exactly 1 + flat_weight without the control and exactly 1 with it: only float rounding
    may differ, hence 1e-4."""
    normalised, raw, sizes = gradient_ratios_at_head_swap("method.groups=1", f"method.flat_weight={flat_weight}")
    assert sizes == [12]  # one group of every class, not 12 singletons
    assert raw == pytest.approx(1 + flat_weight, rel=1e-4)
    assert normalised == pytest.approx(1.0, rel=1e-4)


@pytest.mark.parametrize("overrides", [("method.groups=3",),
                                       ("method.groups=5", "method.partition=random", "train.label_smoothing=0.1")])
def test_the_control_brings_grouped_heads_to_the_flat_gradient_scale(overrides):
    """With several groups the fresh cluster head adds a data-dependent part, so the ratio is not
    exactly 1 (here 0.93-0.99; the issue's audit measured 2.22x unnormalised, i.e. 1.11x, for k-5
    sizes on Caltech-101). 25 % either side of 1 allows that and still fails the doubled loss (1.9-2.4x)."""
    normalised, raw, sizes = gradient_ratios_at_head_swap(*overrides)
    assert len(sizes) > 1 and raw > 1.6
    assert 0.8 < normalised < 1.25
    assert normalised == pytest.approx(raw / 2, rel=1e-4)


def test_the_flat_head_is_untouched_by_the_key():
    """One loss part of weight 1: the flat baseline (and the probe epochs) mean the same with the key on."""
    config = cfgmod.load(None, ["method.normalize_loss=true", "method.name=flat"])
    assert isinstance(make_head(config.method, 8, 6, None), FlatHead)


def test_norm_and_k1_variants_are_built_in(tmp_path):
    assert builtin_variant("ccn-norm") == {"method": {"name": "ccn", "normalize_loss": True}}
    assert builtin_variant("k-1-norm") == {"method": {"name": "ccn", "groups": 1, "normalize_loss": True}}
    assert builtin_variant("random-norm")["method"] == {"name": "ccn", "partition": "random", "normalize_loss": True}
    assert builtin_variant("k-1") == {"method": {"name": "ccn", "groups": 1}}
    assert builtin_variant("flat-norm") is None  # nothing to normalise: refused as not built in
    grid = tmp_path / "grid.yaml"
    grid.write_text("variants: [flat, ccn, k-1, ccn-norm]\n")
    assert load_grid(grid).config_for("ccn-norm", 0).method.normalize_loss
