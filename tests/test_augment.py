import pytest
import torch

from ccn.data.augment import Augment, Normalize, cutout, random_crop, random_flip
from ccn.data.loader import TensorBatches


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=16, size=8):
    return torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=_gen(9))


def test_flip_gives_original_or_mirror_and_both_occur():
    x = _images(64)
    y = random_flip(x, _gen())
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()


def test_crop_is_a_window_of_the_padded_image():
    x = _images(32)
    y = random_crop(x, 2, _gen())
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[i, :, dy:dy + 8, dx:dx + 8], y[i])]
        assert hits, "every crop must be some window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets vary between images


def test_cutout_zeroes_one_square_at_most():
    x = _images(32)  # no zero pixels in the input
    y = cutout(x, 4, _gen())
    zeros = (y == 0).all(1)  # (B, H, W)
    counts = zeros.flatten(1).sum(1)
    assert torch.all(counts <= 16) and torch.all(counts >= 4)  # a clipped 4x4 square keeps >= 2x2


def test_same_seed_same_batches_other_seed_differs():
    x, labels = _images(40), torch.arange(40) % 4
    norm = Normalize([0.5] * 3, [0.25] * 3)
    make = lambda seed: TensorBatches(x, labels, 8, norm, Augment(2, True, 2), seed=seed)  # noqa: E731
    a = [b for b, _ in make(1).epoch(3)]
    b = [b for b, _ in make(1).epoch(3)]
    c = [b for b, _ in make(2).epoch(3)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_resume_mid_epoch_replays_the_same_batches():
    x, labels = _images(40), torch.arange(40) % 4
    loader = TensorBatches(x, labels, 8, Normalize([0.5] * 3, [0.25] * 3), Augment(2, True, 0), seed=5)
    full = list(loader.epoch(2))
    tail = list(loader.epoch(2, start_batch=3))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(full[3:], tail))


def test_ranks_take_disjoint_shards_of_one_permutation():
    x, labels = _images(40), torch.arange(40)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    seen = []
    for rank in range(2):
        loader = TensorBatches(x, labels, 10, norm, Augment(0, True, 0), seed=3, rank=rank, world_size=2)
        seen.append(torch.cat([y for _, y in loader.epoch(0)]))
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert sorted(seen[0].tolist() + seen[1].tolist()) == list(range(40))


def test_two_ranks_together_see_what_one_process_sees():
    x, labels = _images(40), torch.arange(40)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    make = lambda rank, world: TensorBatches(x, labels, 10, norm, Augment(2, True, 2), seed=4, rank=rank,  # noqa: E731
                                              world_size=world)
    single = list(make(0, 1).epoch(1))
    shards = [list(make(r, 2).epoch(1)) for r in range(2)]
    for b, (x1, y1) in enumerate(single):
        assert torch.equal(x1[0::2], shards[0][b][0]) and torch.equal(x1[1::2], shards[1][b][0])
        assert torch.equal(y1[1::2], shards[1][b][1])


def test_normalize_matches_definition():
    x = _images(4)
    out = Normalize([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])(x)
    expected = (x.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["none", "autoaugment", "randaugment", "trivialaugment"])
def test_each_rank_augments_only_its_share_exactly_as_one_process_would(policy):
    """Under torchrun each rank augments only its share of the global batch, with the draws one
    process makes for the whole batch: the shares put together are the single-process batch."""
    from ccn.data.augment import Share
    from ccn.data.policies import make_policy
    x = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    augment = Augment(crop_padding=2, flip=True, cutout=4,
                      policy=None if policy == "none" else make_policy(policy))
    whole = augment(x, _gen())
    for rank in range(3):
        part = augment(x[rank::3], _gen(), Share(rank, 3, len(x)))
        assert torch.equal(part, whole[rank::3]), rank


def test_cutout_as_large_as_the_image_is_refused_with_the_limit():
    """W8 (issue 21): cutout 16 on 8 px digits blanked every training image without a word (9.8 % top-1)."""
    import pytest

    from ccn import config as cfgmod
    from ccn.data.base import ImageDataset
    from ccn.data.prepare import default_augment
    from ccn.errors import CCNError
    from ccn.plan import DataFacts, resolve
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    ds = ImageDataset("tiny", ["a", "b"], images, torch.tensor([0, 1]), images, torch.tensor([0, 1]))
    with pytest.raises(CCNError, match="data.cutout=8 is not smaller than the 8 px images of tiny.*at most 7"):
        resolve(cfgmod.load(None, ["data.cutout=8"]), DataFacts.of(ds))
    assert default_augment(resolve(cfgmod.load(None, ["data.cutout=7"]), DataFacts.of(ds))).cutout == 7
