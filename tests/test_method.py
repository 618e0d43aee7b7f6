"""The method end to end on synthetic classes with planted groups."""

import pytest

from ccn import config as cfgmod
from ccn.data import make_synthetic
from ccn.hierarchy import agreement
from ccn.pipeline import run_training

PLANTED = dict(num_classes=16, num_groups=4)


def _run(*overrides, ds=None):
    config = cfgmod.load(None, ["data.name=synthetic", "data.num_classes=16", "data.num_groups=4",
                                "model.width=8", "train.batch_size=32", "train.lr=0.05", "train.epochs=3",
                                "train.progress=false", *overrides])
    return run_training(config, None, ds=ds)


@pytest.fixture(scope="module")
def planted():
    return make_synthetic(**PLANTED, train_per_class=60, test_per_class=20)


def _ari(results, ds):
    index = {name: i for i, name in enumerate(ds.classes)}
    groups = [[index[n] for n in g] for g in results["hierarchy"]["groups"]]
    return agreement(groups, ds.coarse, ds.num_classes)["ari"]


def test_learned_groups_recover_the_planted_ones_and_random_do_not(planted):
    learned = _run("method.groups=4", ds=planted)
    random = _run("method.groups=4", "method.partition=random", ds=planted)
    assert _ari(learned, planted) >= 0.9
    assert _ari(random, planted) < 0.5
    assert learned["hierarchy"]["how"]["coarse_ari"] == pytest.approx(_ari(learned, planted))
    assert set(learned["rules"]) == {"soft", "hard", "flat", "blend"}
    assert 0 <= learned["group_acc"] <= 1 and 0 <= learned["within_acc"] <= 1


def test_oracle_and_depth_two_and_holdout(planted):
    oracle = _run("method.partition=oracle", ds=planted)
    assert _ari(oracle, planted) == pytest.approx(1.0)
    deep = _run("method.groups=2", "method.depth=2", "train.epochs=4", "method.probe_set=holdout", ds=planted)
    assert deep["hierarchy"]["how"]["depth"] == 2 and deep["top1"] > 1 / 16


def test_flat_baseline_and_ccn_share_initial_weights(planted):
    import torch
    from ccn.network import build_model
    config = cfgmod.load(None, ["data.name=synthetic", "model.width=8"])
    torch.manual_seed(config.seed)
    a = build_model(config.model, config.train, 16).backbone.state_dict()
    torch.manual_seed(config.seed)
    b = build_model(config.model, config.train, 16).backbone.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_channels_last_on_cpu_changes_the_layout_not_the_results(planted):
    """The pipeline runs NHWC on CPU too (faster there); the model learns the same either way."""
    import torch
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    outcomes = {}
    for layout in (True, False):
        config = cfgmod.load(None, ["data.name=synthetic", "data.num_classes=16", "data.num_groups=4",
                                    "model.width=8", "train.batch_size=32", "train.epochs=3", "train.progress=false",
                                    "method.name=flat", f"train.channels_last={str(layout).lower()}"])
        run = MethodRun(config, None, RunLog(None, enabled=False), World(), planted)
        conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == layout
        x, _ = next(iter(run.data.test.epoch(0)))
        assert x.is_contiguous(memory_format=torch.channels_last) == layout
        outcomes[layout] = run.train()["top1"]
    assert outcomes[True] > 1.5 / 16
    assert abs(outcomes[True] - outcomes[False]) <= 0.05


@pytest.mark.slow
def test_torch_compile_trains_through_the_head_swap(planted):
    """train.compile=true: the compiled flat model, then a recompile after the three-level head is
    installed, learn like the eager run (about a minute on 2 CPU cores, mostly compilation)."""
    compiled = _run("method.groups=4", "method.name=ccn", "train.epochs=2", "train.compile=true", ds=planted)
    eager = _run("method.groups=4", "method.name=ccn", "train.epochs=2", ds=planted)
    assert compiled["hierarchy"]["groups"] == eager["hierarchy"]["groups"]
    assert abs(compiled["top1"] - eager["top1"]) <= 0.05


def test_depth_two_without_a_large_group_keeps_a_loadable_depth_one_run(planted, tmp_path):
    """No group reaches split_min_size: the run keeps its three-level head, saves what it trained,
    and says why; the saved run loads and scores the same (it used to save a depth-1 hierarchy
    beside a tree head's weights)."""
    from ccn.runs import load_run
    from ccn.tracking import RunLog
    config = cfgmod.load(None, ["data.name=synthetic", "data.num_classes=16", "data.num_groups=4", "model.width=8",
                                "train.batch_size=32", "train.epochs=3", "train.progress=false", "method.groups=4",
                                "method.depth=2", "method.split_min_size=99"])
    (tmp_path / "run").mkdir()
    results = run_training(config, tmp_path / "run", RunLog(None, enabled=False), ds=planted)
    assert results["hierarchy"]["how"]["split"].startswith("none")
    _, model, hierarchy, _ = load_run(tmp_path / "run")
    assert hierarchy.depth == 1 and type(model.head).__name__ == "ThreeLevelHead"


def test_probe_holdout_removes_the_same_images_from_flat_and_ccn(planted):
    """probe_set=holdout takes images out of training for every method, so a flat baseline of the
    same grid trains on exactly the images its ccn runs train on (pairing)."""
    from ccn.data.prepare import prepare_data
    from ccn.plan import DataFacts, resolve
    import torch
    datas = {}
    for method in ("flat", "ccn"):
        config = cfgmod.load(None, ["data.name=synthetic", f"method.name={method}", "method.probe_set=holdout",
                                    "method.holdout_fraction=0.2"])
        datas[method] = prepare_data(resolve(config, DataFacts.of(planted)), torch.device("cpu"), ds=planted)
    assert len(datas["flat"].train.labels) == len(datas["ccn"].train.labels) == 16 * 48
    assert torch.equal(datas["flat"].train.images, datas["ccn"].train.images)


def test_validation_split_is_scored_instead_of_the_test_set(planted):
    results = _run("data.val_fraction=0.25", "method.groups=4", ds=planted)
    assert results["eval_set"] == "validation" and results["test_images"] == 16 * 15
    assert results["train_images"] == 16 * 45
    plain = _run("method.groups=4", ds=planted)
    assert plain["eval_set"] == "test" and plain["test_images"] == 16 * 20


def test_partition_sizes_and_balance_are_recorded(planted):
    results = _run("method.groups=4", "method.clustering=balanced", ds=planted)
    assert results["group_sizes"] == [4, 4, 4, 4]
    assert results["group_balance"] == {"largest_over_mean": 1.0, "smallest_over_mean": 1.0}
    assert 0 < results["balanced_top1"] <= 1
