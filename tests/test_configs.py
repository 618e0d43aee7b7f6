"""Every configuration file we ship loads, passes validation and names a backbone that builds."""

from pathlib import Path

import pytest

from ccn import config as cfgmod
from ccn.experiment import load_grid
from ccn.models import backbone_from_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# the grid files that reproduce the committed studies (docs/results/*/grid.yaml)
STUDY_GRIDS = sorted((REPO / "docs" / "results").glob("*/grid.yaml"))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_run_config_loads_and_builds_its_backbone(path):
    config = cfgmod.load(path)
    if config.model.name.startswith("timm:"):  # the config itself is checked above; building needs timm
        pytest.importorskip("timm", reason="timm (an optional extra) is not installed here")
    backbone = backbone_from_config(config.model)
    assert backbone.num_features > 0


@pytest.mark.parametrize("path", sorted((CONFIGS / "experiments").glob("*.yaml")) + STUDY_GRIDS,
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_grid_loads_every_variant(path):
    grid = load_grid(path)
    assert grid.reference in grid.variants
    # a study compares methods over paired seeds; a budget grid only picks the number of epochs, and an
    # ablation grid sizes each technique's gain with one seed first (issue 20: more where the gaps are small)
    assert len(grid.seeds) >= 3 or any(word in path.stem + path.parent.name for word in ("budget", "ablation"))
    for variant in grid.variants:
        config = grid.config_for(variant, grid.seeds[0])
        assert backbone_from_config(config.model).num_features > 0
