"""airbench's techniques as config keys (issue 20): each one does what it says, means the same for
the flat and ccn heads, and a run with several of them on resumes bit-identically."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from ccn import config as cfgmod
from ccn.data.augment import Augment, Normalize, Share, first_flips, random_crop
from ccn.data.loader import TensorBatches
from ccn.errors import ConfigError
from conftest import run_cli

# digits at 16 px (airbench needs 9 px or more), every technique on; small enough for a few seconds
FAST = ["data.image_size=16", "data.train_per_class=12", "data.test_per_class=4", "model.name=airbench",
        "model.width=4", "model.whiten_bias_epochs=1", "train.epochs=3", "train.batch_size=16", "train.progress=false",
        "train.bn_eps=1e-12", "train.bn_momentum=0.4", "train.bn_weight=false", "train.bn_bias_lr=8",
        "train.lookahead_every=2", "train.lookahead_start=1", "data.flip=true", "data.flip_mode=alternate",
        "data.pad_mode=reflect", "data.crop_padding=2", "train.tta=mirror_translate", "train.label_smoothing=0.2"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=16, size=8):
    return torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=_gen(9))


# ---------------------------------------------------------------- augmentation


def test_reflect_crop_is_a_window_of_the_reflect_padded_image():
    x = _images(32)
    y = random_crop(x, 3, _gen(), reflect=True)
    padded = torch.nn.functional.pad(x.float(), (3,) * 4, mode="reflect")
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(7) for dx in range(7)
                if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], y[i].float())]
        assert hits, "every crop must be a window of the reflect-padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5
    assert torch.equal(random_crop(x, 3, _gen()), random_crop(x, 3, _gen(), reflect=False))  # zeros unchanged


def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    x, labels = _images(200), torch.arange(200) % 4
    augment = Augment(crop_padding=0, flip=True, alternate_flip=True, seed=3)
    loader = TensorBatches(x, labels, 200, Normalize([0.5] * 3, [0.25] * 3), augment, shuffle=False, seed=3)
    mirrored = []
    for epoch in (1, 2, 3):
        (batch, _), = list(loader.epoch(epoch))
        plain = torch.isclose(batch, loader.normalize(x)).flatten(1).all(1)
        flipped = torch.isclose(batch, loader.normalize(x.flip(-1))).flatten(1).all(1)
        assert torch.all(plain | flipped)
        mirrored.append(flipped & ~plain)
    assert torch.equal(mirrored[0], ~mirrored[1]) and torch.equal(mirrored[0], mirrored[2])
    assert 70 < int(mirrored[0].sum()) < 130  # the first flips are fair coins
    assert not torch.equal(first_flips(torch.arange(200), 3), first_flips(torch.arange(200), 4))  # seeded


def test_alternating_flip_and_reflect_crop_shares_equal_the_single_process_batch():
    x = _images(12, 16)
    ids = torch.arange(100, 112)
    augment = Augment(crop_padding=2, flip=True, cutout=4, reflect=True, alternate_flip=True, seed=1)
    whole = augment(x, _gen(), ids=ids, epoch=2)
    for rank in range(3):
        part = augment(x[rank::3], _gen(), Share(rank, 3, len(x)), ids=ids[rank::3], epoch=2)
        assert torch.equal(part, whole[rank::3]), rank


# ---------------------------------------------------------------- the network


def test_whitening_filters_decorrelate_the_patches_they_were_fitted_to():
    from ccn.models.airbench import Whitening
    g = _gen(1)
    mix = torch.randn(3, 3, generator=g) + 2 * torch.eye(3)  # correlated colour channels
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(200, 3, 12, 12, generator=g))
    images = images + torch.roll(images, 1, dims=-1)  # and correlated neighbours
    layer = Whitening()
    layer.fit(images)
    out = torch.nn.functional.conv2d(images, layer.weight[:12])  # the positive half
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = flat.T @ flat / len(flat)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.double), atol=0.02)
    assert torch.equal(layer.weight[12:], -layer.weight[:12])


def test_dirac_init_passes_the_input_through_its_first_channels():
    from ccn.models.base import dirac_init
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    dirac_init(conv)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(conv(x)[:, :4], x)
    config = cfgmod.load(None, ["model.name=resnet9", "model.width=4", "model.dirac=true"])
    from ccn.models import backbone_from_config
    first = backbone_from_config(config.model).body[0][0].weight
    assert torch.equal(first[:3, :, 1, 1], torch.eye(3))


def test_batchnorm_keys_reach_every_norm_and_the_bias_rate_is_the_same_for_flat_and_ccn_heads():
    from ccn.hierarchy import Hierarchy
    from ccn.network import build_model, make_head
    from ccn.train import parameter_groups
    config = cfgmod.load(None, FAST)
    model = build_model(config.model, config.train, 10)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-12 and m.momentum == 0.4 and not m.weight.requires_grad for m in norms)

    def backbone_groups(m):
        names = {id(p): n for n, p in m.named_parameters()}
        return [(g.get("lr_scale", 1.0), g.get("stop_step"), g["weight_decay"],
                 sorted(names[id(p)] for p in g["params"] if names[id(p)].startswith("backbone.")))
                for g in parameter_groups(m, config.train, steps_per_epoch=7)]
    flat_groups = backbone_groups(model)
    assert (8.0, None, 0.0, sorted(f"backbone.{n}" for n, p in model.backbone.named_parameters()
                                   if n.endswith(("norm1.bias", "norm2.bias")))) in flat_groups
    assert (1.0, 7, 0.0, ["backbone.whiten.bias"]) in flat_groups  # one epoch of 7 steps
    hierarchy = Hierarchy([str(c) for c in range(10)], [[1, 2, 3], [4, 5], [6, 7, 8, 9, 0]])
    model.head = make_head(config.method, model.backbone.num_features, 10, hierarchy, flat=model.head.flat)
    assert backbone_groups(model) == flat_groups


# ---------------------------------------------------------------- training: lookahead, whitening bias


def _method_run(name: str, extra=()):
    from ccn.dist import World
    from ccn.pipeline import MethodRun
    from ccn.tracking import RunLog
    config = cfgmod.load(None, FAST + [f"method.name={name}", *extra])
    return MethodRun(config, None, RunLog(None, enabled=False), World(), None)


def test_lookahead_copies_the_average_back_and_the_whitening_bias_stops_training():
    from ccn.dist import seed_stream
    run = _method_run("flat", ["train.lookahead_start=0"])
    bias0 = run.model.backbone.whiten.bias.detach().clone()
    seed_stream(0, 0, 1)
    run.trainer.train_epoch(run.data.train, 1)
    shadow, live = run.trainer.lookahead.shadow, run.model.state_dict()
    assert all(torch.equal(shadow[k], live[k]) for k in live)  # the epoch ends on the average
    bias1 = run.model.backbone.whiten.bias.detach().clone()
    assert not torch.equal(bias0, bias1)  # trained in epoch 1 ...
    before = {k: v.clone() for k, v in live.items()}
    run.trainer.train_epoch(run.data.train, 2)
    assert torch.equal(run.model.backbone.whiten.bias, bias1)  # ... frozen after model.whiten_bias_epochs=1
    assert not torch.equal(before["backbone.blocks.0.conv1.weight"], run.model.state_dict()["backbone.blocks.0.conv1.weight"])


def test_flat_and_ccn_probe_epochs_are_identical_with_every_technique_on():
    """ccn's probe epoch is the flat run's first epoch: the same whitening, augmented batches, norm
    settings, parameter groups and lookahead must give the same weights, bit for bit."""
    from ccn.dist import seed_stream
    runs = {name: _method_run(name) for name in ("flat", "ccn")}
    for run in runs.values():
        for epoch in (1, 2):
            seed_stream(0, 0, epoch)
            run.trainer.train_epoch(run.data.train, epoch)
    flat, ccn = runs["flat"].model.state_dict(), runs["ccn"].model.state_dict()
    assert flat.keys() == ccn.keys() and all(torch.equal(flat[k], ccn[k]) for k in flat)
    assert torch.any(runs["flat"].model.backbone.whiten.weight != 0)  # fitted to the data
    la_flat, la_ccn = runs["flat"].trainer.lookahead.shadow, runs["ccn"].trainer.lookahead.shadow
    assert all(torch.equal(la_flat[k], la_ccn[k]) for k in la_flat)


@pytest.mark.parametrize("settings, steps_per_epoch, message", [
    pytest.param(dict(epochs=5, max_steps=12, lookahead_start=4), 5, "would first average at step 22, but "
                 "train.max_steps=12 ends the run at step 12 (5 steps per epoch), so it would never average: lower "
                 "train.lookahead_start or train.lookahead_every, or raise train.max_steps to 22",
                 id="budget-ends-first"),
    pytest.param(dict(epochs=3, lookahead_start=2, lookahead_every=5), 1, "would first average at step 10, but "
                 "train.epochs=3 ends the run at step 3 (1 step per epoch), so it would never average: lower "
                 "train.lookahead_start or train.lookahead_every, or raise train.epochs to 10", id="too-few-steps"),
])
def test_a_lookahead_that_would_never_average_is_refused(settings, steps_per_epoch, message):
    """train.lookahead_start < train.epochs passes at config load; with the steps per epoch known, a
    run that ends (train.max_steps) before the first average must not train without its lookahead."""
    from ccn.config import TrainConfig
    from ccn.plan import check_lookahead_budget
    cfg = TrainConfig(**{"lookahead_every": 1, **settings})
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_lookahead_budget(cfg, steps_per_epoch)


def test_a_lookahead_that_averages_at_the_last_step_is_allowed_and_averages(monkeypatch):
    """FAST: 7 steps per epoch, the average restarts at step 8 and first averages at step 10; a
    train.max_steps of 9 is refused before training, one of 10 trains and averages once."""
    from ccn.ema import WeightAverage
    with pytest.raises(ConfigError, match="would first average at step 10, but train.max_steps=9 ends the run"):
        _method_run("flat", ["train.max_steps=9"])
    calls = []
    monkeypatch.setattr(WeightAverage, "lookahead", lambda self, model, decay: calls.append(decay))
    run = _method_run("flat", ["train.max_steps=10"])
    for epoch in (1, 2):
        run.trainer.train_epoch(run.data.train, epoch)
    assert run.trainer.step == 10 and len(calls) == 1


def test_a_whitening_bias_epoch_count_beyond_the_run_trains_it_for_the_whole_run():
    """Ours: model.whiten_bias_epochs >= train.epochs is allowed and means every epoch (airbench's
    default 3 with a shorter run must not be refused); the bias still learns at the last step."""
    run = _method_run("flat", ["model.whiten_bias_epochs=5"])
    trainer = run.trainer
    trainer.step = trainer.total_steps - 1
    trainer._set_lr()
    [bias_group] = [g for g in trainer.optimizer.param_groups if g.get("stop_step") is not None]
    assert bias_group["stop_step"] == 5 * 7 > trainer.total_steps and bias_group["lr"] > 0


# ---------------------------------------------------------------- test-time augmentation


def _whole_set_outputs(model, batches) -> tuple[dict, torch.Tensor]:
    """The head outputs and labels of every batch, joined: a small set's outputs at once."""
    from ccn.evaluate import batch_outputs
    parts = list(batch_outputs(model, batches))
    return {k: torch.cat([out[k] for out, _ in parts]) for k in parts[0][0]}, torch.cat([y for _, y in parts])


def test_tta_averages_the_outputs_that_every_rule_of_every_head_scores():
    """One model, a flat head and a three-level head: with tta=mirror each rule's top-1 is that of the
    outputs averaged over the image and its mirror (computed here by hand), and differs from none."""
    from ccn.evaluate import score
    from ccn.hierarchy import Hierarchy
    from ccn.network import build_model, make_head
    config = cfgmod.load(None, ["model.width=4", "data.image_size=16"])
    g = _gen(4)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 6, (64,), generator=g)
    batches = TensorBatches(x, y, 16, Normalize([0.5] * 3, [0.25] * 3), shuffle=False, drop_last=False)
    torch.manual_seed(0)
    model = build_model(config.model, config.train, 6).eval()
    hierarchy = Hierarchy(list("abcdef"), [[0, 1], [2, 3, 4], [5]])
    flat_head = model.head
    three = make_head(cfgmod.load(None, []).method, model.backbone.num_features, 6, hierarchy, flat=flat_head.flat)
    for head, mask in ((flat_head, None), (three, hierarchy.mask())):
        model.head = head
        plain, labels = _whole_set_outputs(model, batches)
        mirror, _ = _whole_set_outputs(model, TensorBatches(x.flip(-1), y, 16, batches.normalize, shuffle=False,
                                                       drop_last=False))
        averaged = {k: 0.5 * plain[k] + 0.5 * mirror[k] for k in plain}
        result = score(model, batches, mask, "soft", tta="mirror")
        for rule in head.rules:
            expected = (head.scores(averaged, rule).argmax(1) == labels).float().mean().item()
            assert result["rules"][rule]["top1"] == pytest.approx(expected), rule
        assert not torch.allclose(averaged["z"], plain["z"])  # the mirror changes what the model says


def test_mirror_translate_weighs_six_views_as_airbench():
    from ccn.evaluate import tta_outputs
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model = lambda v: {"z": net(v)}  # noqa: E731
    x = torch.randn(2, 3, 8, 8)
    padded = torch.nn.functional.pad(x, (1,) * 4, mode="reflect")
    up_left, down_right = padded[..., :8, :8], padded[..., 2:, 2:]
    f = lambda v: net(v) + net(v.flip(-1))  # noqa: E731
    expected = 0.25 * f(x) + 0.125 * (f(up_left) + f(down_right))
    with torch.no_grad():
        assert torch.allclose(tta_outputs(model, x, "mirror_translate")["z"], expected, atol=1e-6)
        assert torch.allclose(tta_outputs(model, x, "mirror")["z"], 0.5 * f(x), atol=1e-6)
        assert torch.equal(tta_outputs(model, x, "none")["z"], net(x))


# ---------------------------------------------------------------- resume and bad input


@pytest.mark.slow
def test_a_run_with_the_fast_keys_on_resumes_bit_identically(tmp_path):
    args = [a for item in FAST + ["train.deterministic=true"] for a in ("--set", item)]
    reference = tmp_path / "ref"
    result = run_cli("train", *args, "--out", str(reference))
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"
    env = {**os.environ, "CCN_FAULT": "step-19"}  # epoch 3 of 3 (7 steps each), after the head swap
    run = subprocess.run([sys.executable, "-m", "ccn", "train", *args, "--out", str(killed)], capture_output=True,
                         text=True, env=env)
    assert run.returncode == -9, run.stderr
    assert run_cli("train", "--resume", str(killed)).returncode == 0
    ours, theirs = load_file(str(killed / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    a, b = (json.loads((d / "results.json").read_text()) for d in (killed, reference))
    assert a["rules"] == b["rules"]


BAD_FAST_KEYS = [
    pytest.param(["train.lookahead_decay=0.9"], "train.lookahead_decay only applies when train.lookahead_every",
                 id="lookahead-decay-while-off"),
    pytest.param(["train.lookahead_every=5", "train.lookahead_start=20"], "leaves no epoch", id="lookahead-start-late"),
    pytest.param(["train.lookahead_every=-1"], "train.lookahead_every must be between 0 and", id="lookahead-negative"),
    pytest.param(["train.lookahead_every=5", "train.lookahead_decay=1"], "train.lookahead_decay must be at least 0 "
                 "and less than 1", id="lookahead-decay-one"),
    pytest.param(["train.bn_eps=0"], "train.bn_eps must be greater than 0", id="bn-eps-zero"),
    pytest.param(["train.bn_momentum=1.5"], "train.bn_momentum must be greater than 0 and at most 1",
                 id="bn-momentum-above-one"),
    pytest.param(["train.bn_bias_lr=0"], "train.bn_bias_lr must be greater than 0", id="bn-bias-lr-zero"),
    pytest.param(["model.whiten_bias_epochs=3"], "model.whiten_bias_epochs only applies when model.name=airbench",
                 id="whiten-bias-without-airbench"),
    pytest.param(["model.name=airbench", "model.whiten_bias_epochs=-1"], "model.whiten_bias_epochs must be between 0",
                 id="whiten-bias-negative"),
    pytest.param(["data.flip=false", "data.flip_mode=alternate"], "the images are never flipped",
                 id="alternate-flip-without-flip"),
    pytest.param(["train.tta=sideways"], "train.tta='sideways' is not allowed", id="unknown-tta"),
    pytest.param(["model.name=fastnet", "model.norm=none", "train.bn_bias_lr=64"], "train.bn_bias_lr acts on "
                 "BatchNorm layers, and model.norm=none has none", id="bn-key-without-batchnorm"),
]


@pytest.mark.parametrize("overrides, message", BAD_FAST_KEYS)
def test_bad_fast_keys_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cfgmod.load(None, overrides)


@pytest.mark.parametrize("overrides, message", [
    pytest.param(["data.flip_mode=alternate"], "data digits is not flipped", id="alternate-flip-on-digits"),
    pytest.param(["data.pad_mode=reflect", "data.crop_padding=8"], "mirrors at most 7 pixels", id="reflect-too-wide"),
    pytest.param(["model.name=airbench"], "model.name=airbench needs images of at least 9px", id="airbench-8px"),
    pytest.param(["train.tta=mirror"], "train.tta=mirror scores mirror images, but data digits is not flipped",
                 id="tta-mirror-on-digits"),
    pytest.param(["method.name=flat", "train.lookahead_every=1", "train.lookahead_start=1", "train.max_steps=1"],
                 "the lookahead would first average at step 3, but train.max_steps=1 ends the run at step 1",
                 id="lookahead-after-max-steps"),
    pytest.param(["train.tta=mirror_translate", "data.flip=false"], "train.tta=mirror_translate scores mirror "
                 "images, but data.flip=false: the training images are never flipped", id="tta-without-flip"),
])
def test_data_dependent_fast_refusals(overrides, message, tmp_path):
    result = run_cli("train", *[a for o in ["train.epochs=2", "data.train_per_class=4", "data.test_per_class=2",
                                            "train.progress=false", *overrides] for a in ("--set", o)],
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()  # stopped at start-up, nothing written


def _torchrun(args: list, out) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ccn", "train", *args, "--out", str(out)], capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_torchrun_with_the_fast_keys_matches_one_process(tmp_path):
    """Two processes train what one does with the keys that need no BatchNorm (fastnet without norms,
    so per-rank batch statistics cannot differ): Dirac init, alternating flip, reflect padding,
    lookahead, TTA. airbench's whitening filters are fitted identically on every rank."""
    keys = ["model.norm=none", "model.width=8", "model.dirac=true", "data.train_per_class=20", "data.test_per_class=8",
            "train.epochs=3", "train.batch_size=32", "train.lr=0.02", "train.progress=false", "data.flip=true",
            "data.flip_mode=alternate", "data.pad_mode=reflect", "data.crop_padding=2", "train.lookahead_every=2",
            "train.tta=mirror_translate"]
    args = [a for k in keys for a in ("--set", k)]
    assert run_cli("train", *args, "--out", str(tmp_path / "one")).returncode == 0
    two = _torchrun(args, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (load_file(str(tmp_path / r / "model.safetensors")) for r in ("one", "two"))
    worst = max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a if a[k].is_floating_point())
    assert worst < 1e-4  # float sums in another order, nothing more (as tests/test_dist.py)
    air = [a for k in ["model.name=airbench", "model.width=4", "data.image_size=16", "data.train_per_class=8",
                       "data.test_per_class=4", "train.epochs=2", "train.batch_size=16", "train.progress=false"]
           for a in ("--set", k)]
    assert run_cli("train", *air, "--out", str(tmp_path / "air1")).returncode == 0
    two = _torchrun(air, tmp_path / "air2")
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = (load_file(str(tmp_path / r / "model.safetensors"))["backbone.whiten.weight"] for r in ("air1", "air2"))
    assert torch.equal(w1, w2) and torch.any(w1 != 0)
