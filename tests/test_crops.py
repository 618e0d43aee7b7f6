"""ImageNet's crops (data.crop=random_resized): torchvision's box draws, PIL's resampling, the
centre crop for evaluation, shares across ranks, and the same evaluation input for every head."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ccn.config import Config, ConfigError, DataConfig, MethodConfig, TrainConfig, load
from ccn.data.augment import Augment, Share
from ccn.data.crops import CentreCrop, RandomResizedCrop, crop_boxes, resample_boxes, store_size


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def torchvision_box(height, width, scale, ratio, areas, aspects, u_top, u_left):
    """torchvision's RandomResizedCrop.get_params, written out per image, fed the uniform numbers
    our batched version draws (area and log-ratio per try, then the offsets)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for a, r in zip(areas, aspects):
        target = area * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * r)
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return round((height - h) / 2), round((width - w) / 2), h, w


@pytest.mark.parametrize("scale, ratio", [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (1.5, 3.0)),
                                          ((0.5, 1.0), (0.2, 0.3))])
def test_boxes_are_torchvisions_draws(scale, ratio):
    n, height, width = 200, 37, 37
    boxes = crop_boxes(n, height, width, scale, ratio, _gen(3), torch.device("cpu"))
    g = _gen(3)  # the same numbers in the order crop_boxes draws them
    areas, aspects = torch.rand(n, 10, generator=g), torch.rand(n, 10, generator=g)
    u_top, u_left = torch.rand(n, generator=g), torch.rand(n, generator=g)
    for k in range(n):
        expected = torchvision_box(height, width, scale, ratio, areas[k].tolist(), aspects[k].tolist(),
                                   u_top[k].item(), u_left[k].item())
        assert tuple(int(v) for v in boxes[k].tolist()) == expected, k
    top, left, h, w = boxes.T
    assert bool((top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all())


def test_impossible_ranges_fall_back_to_the_centred_clipped_image():
    """Ratios 1.5-3 cannot fit 90-100 % of a square: every box is torchvision's fallback, the full
    width and width / 1.5 high, centred."""
    boxes = crop_boxes(50, 30, 30, (0.9, 1.0), (1.5, 3.0), _gen(), torch.device("cpu"))
    assert boxes.unique(dim=0).tolist() == [[5.0, 0.0, 20.0, 30.0]]


def _smooth_image(size, seed=0):
    """A photo-like image: smooth colour gradients plus some texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [127 + 100 * np.sin(2 * math.pi * (a * x + b * y) + c) for a, b, c in rng.uniform(0.5, 3, (3, 3))]
    image = np.stack(channels, -1) + rng.normal(0, 8, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def test_resampling_matches_pils_resized_crop():
    """torchvision's RandomResizedCrop on a PIL image is img.resize((s, s), BILINEAR, box=...):
    our grid_sample gives the same pixels within a level or two (PIL filters downscales, we do not;
    PIL rounds between its two passes)."""
    image = _smooth_image(73)
    boxes = torch.tensor([[0, 0, 73, 73], [10, 5, 30, 40], [40, 50, 20, 15], [3, 7, 70, 55], [0, 0, 9, 9]])
    ours = resample_boxes(torch.from_numpy(image).permute(2, 0, 1)[None].repeat(len(boxes), 1, 1, 1), boxes, 64)
    for k, (top, left, h, w) in enumerate(boxes.tolist()):
        pil = np.asarray(Image.fromarray(image).resize((64, 64), Image.BILINEAR, box=(left, top, left + w, top + h)))
        diff = np.abs(ours[k].permute(1, 2, 0).numpy().astype(int) - pil.astype(int))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 4, (k, diff.mean())


def test_the_whole_image_at_its_own_size_is_unchanged():
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)
    assert torch.equal(resample_boxes(x, torch.tensor([[0, 0, 20, 20]] * 2), 20), x)


def test_each_rank_crops_its_share_as_one_process_would():
    x = torch.randint(0, 256, (12, 3, 37, 37), dtype=torch.uint8)
    augment = Augment(flip=True, cutout=4, resized_crop=RandomResizedCrop(32))
    whole = augment(x, _gen())
    assert whole.shape == (12, 3, 32, 32)
    for rank in range(3):
        assert torch.equal(augment(x[rank::3], _gen(), Share(rank, 3, len(x))), whole[rank::3]), rank


def test_centre_crop_is_torchvisions_resize_then_centre_crop():
    """A square stored at 256 and cut to its centred 224 is Resize(256) + CenterCrop(224); at other
    sizes the centred round(S * f) square is resized to the input side."""
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    assert torch.equal(CentreCrop(224, 0.875)(x), x[:, :, 16:240, 16:240])
    assert store_size(224, 0.875) == 256 and store_size(64, 0.875) == 73
    y = torch.randint(0, 256, (1, 3, 40, 40), dtype=torch.uint8)
    out = CentreCrop(30, 0.9)(y)  # 36 x 36 from offset 2, resized to 30
    expected = torch.nn.functional.interpolate(y[:, :, 2:38, 2:38].float(), size=(30, 30), mode="bilinear",
                                               antialias=True, align_corners=False).round().to(torch.uint8)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("override, message", [
    ("data.eval_crop=0.9", "data.eval_crop only applies when data.crop=random_resized"),
    ("data.crop_scale=[0.5, 1.0]", "data.crop_scale only applies when data.crop=random_resized"),
])
def test_crop_keys_without_the_resized_crop_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load(None, ["data.name=digits", override])


@pytest.mark.parametrize("overrides, message", [
    (["data.crop=random_resized"], "data.crop=random_resized needs data.image_size"),
    (["data.name=imagenet", "data.crop_padding=4"], "data.crop_padding only applies when data.crop=pad"),
    (["data.name=imagenet", "data.pad_mode=reflect"], "data.pad_mode only applies when data.crop=pad"),
    (["data.name=imagenet", "data.crop_scale=[0.5, 0.1]"], "data.crop_scale must be \\[low, high\\]"),
    (["data.name=imagenet", "data.crop_scale=[0, 1]"], "data.crop_scale must be \\[low, high\\]"),
    (["data.name=imagenet", "data.crop_ratio=[0.75]"], "data.crop_ratio must be \\[low, high\\]"),
    (["data.name=imagenet", "data.crop_ratio=[0.5, .inf]"], "data.crop_ratio must be \\[low, high\\]"),
    (["data.name=imagenet", "data.eval_crop=0.1"], "data.eval_crop must be between 0.25 and 1"),
])
def test_bad_crop_settings_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(None, overrides)


def _resized_config(method):
    return Config(data=DataConfig(name="synthetic", num_classes=4, num_groups=2, train_per_class=6, test_per_class=3,
                                  image_size=14, crop="random_resized"),
                  train=TrainConfig(epochs=2, batch_size=8, channels_last=False),
                  method=MethodConfig(name=method))


def test_every_head_and_rule_is_scored_on_the_same_centre_crops():
    """The evaluation transform lives in the data, not in a head: flat and ccn runs get the same
    training crops and the same centred evaluation squares, and every rule is scored from one
    forward pass over them."""
    from ccn.data import load_dataset
    from ccn.data.prepare import prepare_data
    from ccn.evaluate import score
    from ccn.plan import DataFacts, resolve
    from ccn.hierarchy import Hierarchy
    from ccn.network import build_model
    configs = {m: _resized_config(m) for m in ("flat", "ccn")}
    datasets = {m: load_dataset(c.data) for m, c in configs.items()}
    runs = {m: prepare_data(resolve(c, DataFacts.of(datasets[m])), torch.device("cpu"), ds=datasets[m])
            for m, c in configs.items()}
    flat, ccn = runs["flat"], runs["ccn"]
    assert flat.ds.image_size == 16  # round(14 / 0.875)
    for a, b in [(flat.train, ccn.train), (flat.test, ccn.test), (flat.probe, ccn.probe)]:
        for (xa, ya), (xb, yb) in zip(a.epoch(1), b.epoch(1)):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape[-1] == 14
    expected = flat.normalize(flat.ds.test_images[:][:, :, 1:15, 1:15])  # the centred 14 of 16
    seen = []
    hierarchy = Hierarchy(flat.ds.classes, [[0, 1], [2, 3]], {})
    config = _resized_config("ccn")
    model = build_model(config.model, config.train, flat.ds.num_classes, hierarchy, config.method)
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    result = score(model, flat.test, model.head.mask, "soft")
    assert torch.equal(torch.cat(seen), expected)
    assert {"soft", "hard", "flat", "blend"} <= set(result["rules"])
