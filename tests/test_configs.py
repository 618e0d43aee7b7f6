"""Every configuration file we ship loads, passes validation and names a backbone that builds."""

from pathlib import Path

import pytest

from ccn import config as cfgmod
from ccn.grid import load_grid
from ccn.models import backbone_from_config
from ccn.recipes import PACKAGED

REPO = Path(__file__).resolve().parents[1]
CONFIGS = PACKAGED  # the recipes ship inside the package (src/ccn/configs)
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


# ---------------------------------------------------------------- recipes by name (issue 31)


def test_a_packaged_recipe_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from ccn.recipes import resolve
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: an installed wheel outside any checkout
    for spelling in ("cifar10_cpu_10min", "cifar10_cpu_10min.yaml", "configs/cifar10_cpu_10min.yaml"):
        assert resolve(spelling, "config") == PACKAGED / "cifar10_cpu_10min.yaml"
    for spelling in ("digits_quick", "experiments/digits_quick.yaml", "configs/experiments/digits_quick.yaml"):
        assert resolve(spelling, "grid") == PACKAGED / "experiments" / "digits_quick.yaml"
    # one name, two recipes: train takes the run config, experiment the grid
    assert resolve("caltech101_cpu", "config") == PACKAGED / "caltech101_cpu.yaml"
    assert resolve("caltech101_cpu", "grid") == PACKAGED / "experiments" / "caltech101_cpu.yaml"
    (tmp_path / "digits.yaml").write_text("train: {epochs: 3}\n")  # a file that exists wins over the name
    assert resolve("digits.yaml", "config") == Path("digits.yaml")
    assert cfgmod.load(resolve("digits.yaml", "config")).train.epochs == 3


def test_a_config_that_is_neither_a_file_nor_a_recipe_is_one_line(tmp_path, monkeypatch, capsys):
    from ccn.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "cifar10_cpu_5min"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ccn: error: --config cifar10_cpu_5min: no such file, and no packaged run config of that "
                          "name: give a YAML file path, or one of caltech101_cpu, ") and "`ccn configs`" in err
    assert "\n" not in err
    assert main(["train", "--config", "digits_quick"]) == 2  # a grid given to train: says which command runs it
    assert "digits_quick is a packaged grid: `ccn experiment --config NAME`" in capsys.readouterr().err
    assert main(["experiment", "--config", "../configs/digits"]) == 2  # never a path joined from a name
    assert "no packaged grid of that name" in capsys.readouterr().err


def test_ccn_configs_lists_every_recipe_with_its_first_comment_line(capsys):
    from ccn.cli import main
    from ccn.recipes import packaged, summary
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for kind in ("config", "grid"):
        for name, path in packaged(kind).items():
            assert summary(path), f"{path} does not start with a comment line saying what it is for"
            assert any(line.split() and line.split()[0] == name and summary(path) in line for line in lines), name
    assert main(["configs", "digits"]) == 0
    assert capsys.readouterr().out == (PACKAGED / "digits.yaml").read_text()
    assert main(["configs", "no_such_recipe"]) == 2
    assert "no packaged recipe is named 'no_such_recipe'" in capsys.readouterr().err


def test_version_and_help_text_for_every_argument(capsys):
    import argparse

    import ccn
    from ccn.cli import build_parser, main
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith(f"ccn {ccn.__version__} (torch ")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {action.dest}" for name, sub in [("ccn", parser), *commands.choices.items()]
               for action in sub._actions
               if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert missing == [], missing
