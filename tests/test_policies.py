"""Strong augmentation (data.augment): every operation against PIL on real images, per-image draws,
seeding, identities at magnitude 0, the config keys and a short training run."""


import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from safetensors.torch import load_file

from ccn import config as cfgmod
from ccn.data.augment import Augment, Normalize
from ccn.data.loader import TensorBatches
from ccn.data.policies import (OPERATIONS, STANDARD, WIDE, AutoAugment, RandAugment, TrivialAugment, apply_ops,
                               make_policy, op_values)
from ccn.errors import ConfigError
from ccn.data.prepare import default_augment
from ccn.plan import DataFacts, resolve
from conftest import run_cli

# Tolerance against PIL, per operation and value, over 8 real images: mean |ours - PIL| below 0.1
# level and at most 0.5 % of the values off by more than one level. Measured with Pillow 13.0:
# 0 and 0 % for every operation and value below (bit-identical), because the affine operations
# compute libImaging's own indices (16.16 fixed point) and the blends its float32 arithmetic.
MEAN_TOLERANCE, SHARE_TOLERANCE = 0.1, 0.005

_AFFINE = Image.Transform.AFFINE
_NEAREST = Image.Resampling.NEAREST


def _transform(coeffs):
    return lambda im, v: im.transform(im.size, _AFFINE, coeffs(v), _NEAREST, fillcolor=(0, 0, 0))


PIL_REFERENCE = {
    "shear_x": _transform(lambda v: (1, v, 0, 0, 1, 0)),
    "shear_y": _transform(lambda v: (1, 0, 0, v, 1, 0)),
    "translate_x": _transform(lambda v: (1, 0, v, 0, 1, 0)),
    "translate_y": _transform(lambda v: (1, 0, 0, 0, 1, v)),
    "rotate": lambda im, v: im.rotate(v, resample=_NEAREST, fillcolor=(0, 0, 0)),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "posterize": lambda im, v: ImageOps.posterize(im, int(v)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "invert": lambda im, v: ImageOps.invert(im),
}
_ENHANCE = [0.01, 0.1, 0.55, 0.9, 1.0, 1.45, 1.9, 1.99]  # the standard and wide ends and between
# one value per image, so every batch also checks that each image uses its own value
VALUES = {
    "shear_x": [-0.99, -0.3, -0.1, 0.0, 0.05, 0.3, 0.6, 0.99],
    "translate_x": [-32.0, -14.5, -3.2, 0.0, 1.6, 5.0, 14.5, 20.0],
    "rotate": [-135.0, -30.0, -7.5, 0.0, 4.5, 30.0, 90.0, 135.0],
    "posterize": [2, 3, 4, 5, 6, 7, 8, 4],
    "solarize": [0.0, 28.4, 64.0, 128.0, 200.0, 255.0, 256.0, 100.5],
    "brightness": _ENHANCE, "color": _ENHANCE, "contrast": _ENHANCE, "sharpness": _ENHANCE,
    "autocontrast": [0.0] * 8, "equalize": [0.0] * 8, "invert": [0.0] * 8,
}
VALUES["shear_y"], VALUES["translate_y"] = VALUES["shear_x"], VALUES["translate_x"]


@pytest.fixture(scope="module")
def real(caltech_root):
    """8 Caltech-101 images (the first image of the first 8 categories) at 32x32, as PIL images and a batch."""
    paths = sorted((caltech_root / "101_ObjectCategories").glob("*/image_0001.jpg"))[:8]
    images = [Image.open(p).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR) for p in paths]
    batch = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).contiguous()
    return images, batch


def _to_batch(images):
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name", sorted(PIL_REFERENCE))
@pytest.mark.parametrize("rolled", [0, 3])
def test_each_operation_matches_pil_on_real_images(real, name, rolled):
    pil, batch = real
    values = VALUES[name][rolled:] + VALUES[name][:rolled]  # each image meets two different values
    ours = OPERATIONS[name](batch, torch.tensor(values, dtype=torch.float64))
    theirs = _to_batch([PIL_REFERENCE[name](im, v) for im, v in zip(pil, values)])
    diff = (ours.int() - theirs.int()).abs()
    assert ours.dtype == torch.uint8 and ours.shape == batch.shape
    assert diff.float().mean() < MEAN_TOLERANCE, f"{name}: mean |ours - PIL| {diff.float().mean():.3f}"
    assert (diff > 1).float().mean() <= SHARE_TOLERANCE, f"{name}: {(diff > 1).float().mean():.2%} off by > 1"


def test_equalize_and_autocontrast_leave_flat_channels_alone():
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(OPERATIONS["equalize"](flat, None), flat)
    assert torch.equal(OPERATIONS["autocontrast"](flat, None), flat)


def _random_images(n=16, size=16, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ranges,bins", [(STANDARD, 10), (STANDARD, 31), (WIDE, 31)])
def test_magnitude_zero_is_the_identity_for_every_graded_operation(ranges, bins):
    x = _random_images()
    negative = torch.rand(len(x), generator=torch.Generator().manual_seed(1)) < 0.5
    for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast",
                 "sharpness", "posterize", "solarize"):
        values = op_values(name, torch.zeros(len(x), dtype=torch.long), negative, bins, ranges, x.shape[-2:])
        assert torch.equal(OPERATIONS[name](x, values), x), name
        top = op_values(name, torch.full((len(x),), bins - 1), negative, bins, ranges, x.shape[-2:])
        assert not torch.equal(OPERATIONS[name](x, top), x), f"{name} at the top magnitude changes nothing"


def test_randaugment_at_magnitude_zero_changes_only_through_ungraded_operations():
    x = _random_images(64)
    out = RandAugment(num_ops=1, magnitude=0)(x, torch.Generator().manual_seed(0))
    changed = ~(out == x).flatten(1).all(1)
    # autocontrast and equalize have no magnitude: 2 of the 14 operations, so about 9 of 64 images
    assert 0 < changed.sum() < 24


def test_top_magnitudes_follow_the_published_ranges():
    bins = torch.tensor([9]), torch.tensor([False])
    assert op_values("rotate", *bins, 10, STANDARD, (32, 32)).item() == pytest.approx(30)
    assert op_values("translate_x", *bins, 10, STANDARD, (20, 40)).item() == pytest.approx(150 / 331 * 40)
    assert op_values("translate_y", *bins, 10, STANDARD, (20, 40)).item() == pytest.approx(150 / 331 * 20)
    assert op_values("posterize", *bins, 10, STANDARD, (32, 32)).item() == 4
    top = torch.tensor([30]), torch.tensor([True])
    assert op_values("shear_x", *top, 31, WIDE, (32, 32)).item() == pytest.approx(-0.99)
    assert op_values("translate_y", *top, 31, WIDE, (224, 224)).item() == pytest.approx(-32)  # pixels, any size
    assert op_values("posterize", *top, 31, WIDE, (32, 32)).item() == 2
    assert op_values("solarize", *top, 31, WIDE, (32, 32)).item() == 0


def test_apply_ops_leaves_inactive_images_untouched():
    x = _random_images(8)
    ops = torch.full((8,), list(OPERATIONS).index("invert"))
    active = torch.tensor([True, False] * 4)
    out = apply_ops(x, ops, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.bool), active, 10, STANDARD)
    assert torch.equal(out[~active], x[~active]) and torch.equal(out[active], 255 - x[active])


POLICIES = {"autoaugment": AutoAugment(), "randaugment": RandAugment(2, 9), "trivialaugment": TrivialAugment()}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_same_seed_same_batch_other_seed_differs(name):
    x = _random_images(32)
    policy = POLICIES[name]
    a = policy(x, torch.Generator().manual_seed(3))
    b = policy(x, torch.Generator().manual_seed(3))
    c = policy(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, _random_images(32)), "the input batch must not be modified"


# Distinct outputs among 64 copies of one image. kornia 0.9's policies (one operation draw per
# batch) gave RandAugment 1.6, AutoAugment 30, TrivialAugment 39 (benchmarks/bench_augment.py);
# per-image draws give ~55 for RandAugment (14 x 14 operation pairs x signs).
MIN_DISTINCT = {"autoaugment": 16, "randaugment": 40, "trivialaugment": 32}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_each_image_draws_its_own_operations(name):
    one = _random_images(1, 32)
    out = POLICIES[name](one.expand(64, -1, -1, -1).contiguous(), torch.Generator().manual_seed(0))
    distinct = len(torch.unique(out.flatten(1), dim=0))
    assert distinct >= MIN_DISTINCT[name], f"{name}: only {distinct} distinct outputs of 64"


def test_loader_with_a_policy_is_seeded_per_batch_and_resumes_exactly():
    x, labels = _random_images(40, 16), torch.arange(40) % 4
    norm = Normalize([0.5] * 3, [0.25] * 3)
    make = lambda seed: TensorBatches(x, labels, 8, norm, Augment(2, True, 2, TrivialAugment()), seed=seed)  # noqa: E731
    full = [b for b, _ in make(1).epoch(2)]
    again = [b for b, _ in make(1).epoch(2)]
    tail = [b for b, _ in make(1).epoch(2, start_batch=3)]
    other = [b for b, _ in make(2).epoch(2)]
    assert all(torch.equal(p, q) for p, q in zip(full, again))
    assert all(torch.equal(p, q) for p, q in zip(full[3:], tail))
    assert not all(torch.equal(p, q) for p, q in zip(full, other))


def test_deterministic_algorithms_accept_every_operation():
    x = _random_images(64)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        outs = [POLICIES[n](x, torch.Generator().manual_seed(0)) for n in sorted(POLICIES) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(before)
    assert all(torch.equal(outs[i], outs[i + 1]) for i in range(0, len(outs), 2))


def test_grayscale_images_are_supported():
    x = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for policy in POLICIES.values():
        assert policy(x, torch.Generator().manual_seed(0)).shape == x.shape


def test_config_keys_build_the_policy_and_reject_bad_values():
    config = cfgmod.load(None, ["data.augment=randaugment", "data.randaugment_n=3", "data.randaugment_m=5"])
    assert make_policy(config.data.augment, config.data.randaugment_n, config.data.randaugment_m) == RandAugment(3, 5)
    assert make_policy("none") is None
    facts = DataFacts("tiny", ("a", "b"), (4, 4), image_size=32, flips=True, store="memory")
    augment = default_augment(resolve(config, facts))
    assert augment.policy == RandAugment(3, 5) and augment.crop_padding == 4
    for override, key in [("data.augment=autoaug", "data.augment"), ("data.randaugment_m=31", "data.randaugment_m"),
                          ("data.randaugment_n=-1", "data.randaugment_n")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
            cfgmod.load(None, [override])
        assert "\n" not in str(err.value)


def test_train_with_randaugment_is_bit_identical_in_deterministic_mode(tmp_path):
    args = ["--set", "train.epochs=2", "--set", "model.width=8", "--set", "train.progress=false",
            "--set", "data.train_per_class=20", "--set", "data.augment=randaugment", "--set", "train.deterministic=true"]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        result = run_cli("train", *args, "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert "augment: randaugment" in (outs[0] / "config.yaml").read_text()
    first, second = (load_file(out / "model.safetensors") for out in outs)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_policies_restore_the_thread_count_and_do_not_depend_on_it():
    x = _random_images(64)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = AutoAugment()(x, torch.Generator().manual_seed(0))
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert torch.equal(out, AutoAugment()(x, torch.Generator().manual_seed(0)))
    finally:
        torch.set_num_threads(before)
