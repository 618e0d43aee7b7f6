"""The run's data on the training device: splits (validation, probe hold-out), normalisation, and
the batch iterators every stage of a run draws from, as the run plan says (ccn.plan.RunPlan: made
above this stage, from the data set's facts, and handed down, so nothing here checks it again)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ccn.data import ImageDataset
from ccn.data.augment import Augment, Normalize
from ccn.data.base import channel_stats, split_per_class
from ccn.data.crops import CentreCrop, RandomResizedCrop
from ccn.data.store import select
from ccn.data.loader import TensorBatches
from ccn.data.policies import make_policy
from ccn.dist import World
from ccn.errors import DataError

PROBE_HOLDOUT_SEED = 12345  # fixed, not the run seed: every variant and seed holds out the same images
VALIDATION_SEED = 54321  # likewise for data.val_fraction


@dataclass
class RunData:
    """A data set moved to the training device, with its batch iterators."""

    ds: ImageDataset
    normalize: Normalize
    train: TensorBatches
    test: TensorBatches  # the images scored: the test set, or the validation hold-out (data.val_fraction)
    probe: TensorBatches  # images whose softmax defines the class profiles (no augmentation)
    eval_set: str = "test"  # which images `test` holds: "test" or "validation"
    eval_crop: Optional[CentreCrop] = None  # what every scored or profiled image goes through (eval_transform)
    channels_last: bool = False  # NHWC images, so the model goes NHWC too (uses_channels_last)


def default_augment(plan: "RunPlan") -> Augment:
    """The training augmentation the plan (ccn.plan.RunPlan) resolved: crop, flips, policy, cutout."""
    d = plan.config.data
    policy = make_policy(d.augment, d.randaugment_n, d.randaugment_m)
    flips = dict(flip=plan.flips, alternate_flip=d.flip_mode == "alternate", seed=plan.config.seed)
    if plan.crop == "random_resized":
        crop = RandomResizedCrop(plan.input_side, tuple(d.crop_scale), tuple(d.crop_ratio))
        return Augment(crop_padding=0, cutout=d.cutout, policy=policy, resized_crop=crop, **flips)
    return Augment(crop_padding=plan.crop_padding, cutout=d.cutout, policy=policy, reflect=d.pad_mode == "reflect",
                   **flips)


def preprocess_facts(ds: ImageDataset, normalize: Normalize, crop: Optional[CentreCrop]) -> dict:
    """What `ccn predict` and `ccn export` must do to an image file to give the model what scoring gave
    it (results.json "preprocess"): decode it to the stored square, crop as evaluation did (`crop`:
    RunData.eval_crop), normalise."""
    facts = {"image_size": ds.image_size, "mean": normalize.mean.flatten().div(255).tolist(),
             "std": (1 / normalize.inv_std.flatten()).div(255).tolist()}
    if ds.fit != "stretch":
        facts["fit"] = ds.fit
    if crop is not None:
        facts.update(input_size=crop.size, eval_crop=crop.fraction)
    return facts


def check_saved_image_side(ds: ImageDataset, preprocess: dict) -> None:
    """A saved run scores only images of the side it learned (results.json "preprocess"): with a
    native-size data set the config cannot say the side, so the loaded images are asked."""
    if ds.image_size != preprocess["image_size"]:
        raise DataError(f"data {ds.name} has images of side {ds.image_size}, but the run learned images of side "
                        f"{preprocess['image_size']} (its results.json \"preprocess\"): evaluate on the data the "
                        "run trained on, or restore the results.json it wrote")


def eval_transform(crop: str, input_side: Optional[int], eval_crop: float) -> Optional[CentreCrop]:
    """What every scored or profiled image goes through, for every head and inference rule alike:
    after training with `crop`=random_resized the centred `eval_crop` share of the stored square at
    `input_side`; nothing after the pad crop."""
    return CentreCrop(input_side, eval_crop) if crop == "random_resized" else None



FIT_SAMPLE = 5000  # images a backbone's data-dependent initialisation sees (airbench: the first 5,000)
FIT_SAMPLE_SEED = 24680  # fixed, not the run seed: every seed and variant fits the same images (ours)


def fit_sample(data: "RunData") -> torch.Tensor:
    """Normalised training images for `Backbone.fit_to_data`: a fixed-seed random sample of up to
    5,000 (airbench takes the first 5,000), the same on every rank."""
    n = len(data.train.labels)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(FIT_SAMPLE_SEED))[:FIT_SAMPLE].sort().values
    return data.normalize(data.train.take(pick))


def uses_channels_last(asked: bool, device: torch.device) -> bool:
    """NHWC images and weights where train.channels_last `asked` for them: faster on CUDA and also on CPU,
    where oneDNN's convolutions ran ResNet-20 and ResNet-9 training 15-25 % faster and evaluation 1.2-1.8x
    faster (benchmarks/RESULTS.md)."""
    return asked and device.type in ("cpu", "cuda")


def prepare_data(plan: "RunPlan", device: torch.device, world: World = World(), *, ds: ImageDataset,
                 preprocess: Optional[dict] = None) -> RunData:
    """The run's data on `device`, as the run plan (ccn.plan.RunPlan, resolved on `ds`) says.
    `preprocess` (a saved run's mean and std, 0-1 scale) replaces the statistics of these training
    images, so a saved run is scored with the normalisation it learned."""
    config = plan.config
    x, y = ds.train_images, ds.train_labels
    test_x, test_y, eval_set = ds.test_images, ds.test_labels, "test"
    if config.data.val_fraction > 0:  # choose settings on training images; the test set stays untouched
        keep, held = split_per_class(y, config.data.val_fraction, VALIDATION_SEED)
        test_x, test_y, eval_set, x, y = select(x, held), y[held], "validation", select(x, keep), y[keep]
    # statistics of the images the run trains on (the probe hold-out included), never of the validation images
    mean, std = (preprocess["mean"], preprocess["std"]) if preprocess is not None else channel_stats(x)
    normalize = Normalize(mean, std).to(device)
    probe_x, probe_y = x, y
    if config.method.probe_set == "holdout":  # for every method, so a flat baseline trains on the same images
        keep, held = split_per_class(y, config.method.holdout_fraction, PROBE_HOLDOUT_SEED)
        probe_x, probe_y, x, y = select(x, held), y[held], select(x, keep), y[keep]
    t, seed = config.train, config.seed
    channels_last = uses_channels_last(t.channels_last, device)
    eval_crop = eval_transform(plan.crop, plan.input_side, config.data.eval_crop)
    eval_kwargs = dict(normalize=normalize, shuffle=False, drop_last=False, channels_last=channels_last,
                       transform=eval_crop)
    train_x, train_y = on_device(x, device), y.to(device)
    # probe_set=train profiles the training images themselves: one copy on the device, not two
    probe_x, probe_y = (train_x, train_y) if probe_x is x else (on_device(probe_x, device), probe_y.to(device))
    train = TensorBatches(train_x, train_y, plan.batch_size, normalize, default_augment(plan),
                          seed=seed, rank=world.rank, world_size=world.world_size, channels_last=channels_last)
    # every rank scores and profiles its share of the test and probe sets; the counts are added across ranks
    shares = dict(rank=world.rank, world_size=world.world_size)
    test = TensorBatches(on_device(test_x, device), test_y.to(device), t.eval_batch_size, **shares, **eval_kwargs)
    probe = TensorBatches(probe_x, probe_y, t.eval_batch_size, **shares, **eval_kwargs)
    return RunData(ds, normalize, train, test, probe, eval_set, eval_crop, channels_last)


ON_DEVICE_SHARE = 0.25  # a memory store goes to a GPU whole when it takes at most this share of its free memory (ours)


def on_device(images, device: torch.device):
    """Images where the batches read them: tensors (digits, synthetic, CIFAR) move to the device as
    before; a memory store on a GPU with room moves there whole (the fast path); anything else is
    gathered per batch (on CPU this copies nothing, for a disk store nothing is read ahead)."""
    if isinstance(images, torch.Tensor):
        return images.to(device)
    if device.type == "cuda" and images.kind == "memory":
        free, _ = torch.cuda.mem_get_info(device)
        if images.nbytes <= ON_DEVICE_SHARE * free:
            return images[:].to(device)
    return images
