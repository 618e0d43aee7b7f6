"""The run plan: one step turns (config, data set) into every value a run uses, checked.

`resolve(config, DataFacts.of(ds))` fixes each default that depends on the data (flips, group
count, steps per epoch ...) and refuses, in one line each, the settings that this data set makes
impossible or silently meaningless. Everything after it (pipeline, prepare_data, the scoring) reads
the plan and checks nothing again. The config's own rules, those that need no data, are checked
when it is read (ccn.config.check_rules): a grid is checked whole before its first run.

A run folder keeps config.yaml as what the user asked; plan.json beside it records the plan
(`RunPlan.to_json`, "format": 1) for the reader. ccn never reads it back: a resumed run, and
`ccn evaluate`, resolve the plan again from config.yaml and the data, so a run written before
plan.json existed (or whose plan.json was deleted or edited) loads and resumes as any other, and
a resume writes plan.json afresh.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from ccn import config as cfgmod
from ccn.config import Config, TrainConfig
from ccn.data import input_size
from ccn.data.base import held_out_count
from ccn.errors import CCNError, ConfigError, DataError
from ccn.hierarchy.clustering import default_group_count, oracle_refusal
from ccn.hierarchy.partition import check_top_k
from ccn.models.registry import min_input_side
from ccn.records import stamp
from ccn.train import lookahead_first_step


@dataclass(frozen=True)
class DataFacts:
    """What the plan needs of a loaded data set (never its images)."""

    name: str
    classes: tuple[str, ...]
    train_counts: tuple[int, ...]  # training images per class, after data.train_per_class
    image_size: int  # the stored side
    flips: bool  # the data set's own choice (digits: no, a mirrored glyph is another glyph)
    store: str  # where its images live: memory, disk or stream (tensor data sets: memory)
    coarse_labels: bool = False  # whether it has its own coarse labels (CIFAR-100's superclasses, data.wordnet)

    @classmethod
    def of(cls, ds) -> "DataFacts":
        counts = torch.bincount(ds.train_labels.cpu(), minlength=ds.num_classes).tolist()
        store = ds.notes.get("store", "memory").split(":")[0]
        return cls(ds.name, tuple(ds.classes), tuple(counts), ds.image_size, ds.flip, store, ds.coarse is not None)


@dataclass(frozen=True)
class RunPlan:
    """One run's settings, every default resolved against its data set. `config` is what was asked."""

    config: Config
    data: str  # the data set's name
    num_classes: int
    crop: str  # pad or random_resized (data.crop)
    crop_padding: Optional[int]  # pixels of padding before the random crop; None with random_resized
    input_side: int  # the side of the images the model trains on: the stored side, or random_resized's crop
    flips: bool  # whether training flips the images (data.flip, else the data set's choice)
    store: str  # memory, disk or stream: where data.store put the images
    train_images: int  # images trained on, after the validation and probe hold-outs
    batch_size: int  # the global batch (train.batch_size, at most the training images)
    steps_per_epoch: int
    planned_steps: int  # optimizer steps of the whole run; the schedule is fitted to them
    num_groups: Optional[int]  # K of step 2's learned partition; None: flat, or method.threshold decides
    clustering_epoch: Optional[int]  # epoch after which classes are grouped; None: flat
    recursion_epoch: Optional[int]  # epoch after which large groups are split; None: no split
    tta: str  # test-time views of the final scores (train.tta)
    inference: str  # the rule behind the final "top1": method.inference; flat runs: flat

    def to_json(self) -> dict:
        """plan.json's content: the resolved values beside config.yaml (which holds `config`)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        return stamp("plan", values)


def resolve(config: Config, facts: DataFacts, world_size: int = 1) -> RunPlan:
    """The run plan of `config` on the data `facts` describe, under `world_size` processes; a
    ConfigError or DataError names the first setting this data cannot take and the fix."""
    d, t, meth = config.data, config.train, config.method
    num_classes = len(facts.classes)
    flips = d.flip if d.flip is not None else facts.flips
    if d.flip is None and not flips:  # data.flip=false was checked with the config
        cfgmod.check_mirror_keys(config, unflipped_data=facts.name)
    crop = cfgmod.training_crop(d)
    side = input_size(d) if crop == "random_resized" else facts.image_size
    _check_model_input(config.model.name, side)
    _check_cutout(d.cutout, side, facts.name)
    padding = _crop_padding(config, facts.image_size) if crop == "pad" else None
    train_images = _training_images(config, facts)
    _check_batches(t.batch_size, train_images, world_size)
    batch_size = min(t.batch_size, train_images)
    steps_per_epoch = train_images // batch_size
    ccn = meth.name == "ccn"
    num_groups = _group_count(config, num_classes, facts.name) if ccn else None
    clustering = cfgmod.clustering_epoch(meth) if ccn else None
    recursion = cfgmod.recursion_epoch(meth) if ccn and cfgmod.recurses(meth) else None
    if ccn:
        _check_oracle(config, facts)
        check_top_k(meth, num_classes, num_groups)  # before the probe epochs, not after them
        check_step_budget(t.max_steps, steps_per_epoch, clustering, recursion)
    check_lookahead_budget(t, steps_per_epoch)
    return RunPlan(config=config, data=facts.name, num_classes=num_classes, crop=crop, crop_padding=padding,
                   input_side=side, flips=flips, store=facts.store, train_images=train_images,
                   batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                   planned_steps=planned_steps(t, steps_per_epoch), num_groups=num_groups,
                   clustering_epoch=clustering, recursion_epoch=recursion,
                   tta=t.tta, inference=meth.inference if ccn else "flat")


def planned_steps(t: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: train.epochs epochs, or train.max_steps when that is fewer."""
    steps = t.epochs * steps_per_epoch
    return max(1, min(steps, t.max_steps) if t.max_steps > 0 else steps)


def check_step_budget(max_steps: int, steps_per_epoch: int, clustering_epoch: int,
                      recursion_epoch: Optional[int]) -> None:
    """train.max_steps must leave the method's epoch boundaries inside the run: a ccn run whose
    budget ends before its groups are formed (or split) would train a flat model and call it ccn."""
    if max_steps == 0:
        return
    last = recursion_epoch if recursion_epoch is not None else clustering_epoch
    needed = last * steps_per_epoch
    if max_steps <= needed:
        what = "large groups are split" if recursion_epoch is not None else "classes are grouped"
        raise ConfigError(f"train.max_steps={max_steps} ends before {what} after epoch {last} ({steps_per_epoch} "
                          f"steps per epoch): raise train.max_steps above {needed}, or use method.name=flat for a "
                          "smoke test")


def check_lookahead_budget(t: TrainConfig, steps_per_epoch: int) -> None:
    """The lookahead must average at least once (`lookahead_every` steps after it starts) before the
    run's last step, or it is silently off: train.max_steps ending the run before train.lookahead_start
    epochs, or too few steps after them."""
    every = t.lookahead_every
    if every == 0:
        return
    first_average = lookahead_first_step(t, steps_per_epoch) + every
    last = planned_steps(t, steps_per_epoch)
    if first_average <= last:
        return
    cut = 0 < t.max_steps < t.epochs * steps_per_epoch
    ends = f"train.max_steps={t.max_steps}" if cut else f"train.epochs={t.epochs}"
    raises = ([f"train.max_steps to {first_average}"] if 0 < t.max_steps < first_average else []) + (
        [f"train.epochs to {-(-first_average // steps_per_epoch)}"] if t.epochs * steps_per_epoch < first_average
        else [])
    per_epoch = f"{steps_per_epoch} step{'s' if steps_per_epoch != 1 else ''} per epoch"
    raise ConfigError(f"train.lookahead_start={t.lookahead_start} with train.lookahead_every={every}: the lookahead "
                      f"would first average at step {first_average}, but {ends} ends the run at step {last} "
                      f"({per_epoch}), so it would never average: lower train.lookahead_start or "
                      f"train.lookahead_every, or raise {' and '.join(raises)}")


def _check_model_input(model: str, side: int) -> None:
    """A backbone that pools its input away below some side (airbench: 9 px) refuses smaller images
    before anything is trained or written."""
    least, why = min_input_side(model)
    if side < least:
        raise ConfigError(f"model.name={model} needs images of at least {least}px ({why}), got {side}px: "
                          f"set data.image_size={least} or more, or choose another model.name")


def _group_count(config: Config, num_classes: int, name: str) -> Optional[int]:
    """method.groups, else round(sqrt(C)) (ours); None where a threshold or a groups file decides.
    A count or minimum group size above the class count is refused."""
    meth = config.method
    for key, value in (("method.groups", meth.groups), ("method.min_group_size", meth.min_group_size)):
        if value is not None and value > num_classes:
            raise ConfigError(f"{key}={value} is impossible with {num_classes} classes in data {name}: "
                              f"choose between 1 and {num_classes}")
    if meth.threshold is not None:
        return None
    return meth.groups if meth.groups is not None else default_group_count(num_classes)


def _check_oracle(config: Config, facts: DataFacts) -> None:
    """The oracle partition and the random one with the oracle's sizes need the data set's coarse
    labels: refused before the probe epochs rather than at step 2."""
    meth = config.method
    if meth.partition == "random" and meth.random_sizes == "oracle" and not facts.coarse_labels:
        raise ConfigError(f"method.random_sizes=oracle needs coarse labels, which data set {facts.name!r} does not "
                          "have: use method.random_sizes=learned")
    if meth.partition == "oracle" and not facts.coarse_labels:
        raise ConfigError(oracle_refusal(facts.name))


def _check_cutout(cutout: int, side: int, name: str) -> None:
    """A cutout square as large as the image (the side it works on) blanks (nearly) every training image."""
    if cutout >= side:
        raise CCNError(f"data.cutout={cutout} is not smaller than the {side} px images of {name}: "
                       f"it would blank the training images; choose at most {side - 1} (about half the image "
                       "side is usual: 16 for 32 px CIFAR), or 0 for none")


def _crop_padding(config: Config, image_size: int) -> int:
    """data.crop_padding, else an eighth of the side (at least 1); reflect padding mirrors at most side - 1."""
    d = config.data
    padding = d.crop_padding if d.crop_padding is not None else max(1, image_size // 8)
    if d.pad_mode == "reflect" and padding >= image_size:
        raise ConfigError(f"data.pad_mode=reflect mirrors at most {image_size - 1} pixels of these "
                          f"{image_size}px images, but data.crop_padding is {padding}: lower data.crop_padding "
                          "or use data.pad_mode=zeros")
    return padding


def _training_images(config: Config, facts: DataFacts) -> int:
    """Images the run trains on: each class's training images less the validation hold-out
    (data.val_fraction) and the probe hold-out (method.probe_set=holdout), counted as
    ccn.data.base.split_per_class draws them."""
    counts = list(facts.train_counts)  # per class, in class order (a class capped to none keeps its 0)
    val_fraction = config.data.val_fraction
    if val_fraction > 0:
        held = [held_out_count(n, val_fraction) if n > 0 else 0 for n in counts]
        if sum(held) == 0:
            raise DataError(f"data.val_fraction={val_fraction} holds out no image: every class has a "
                            "single training image; set data.val_fraction=0 or add training images")
        counts = [n - h for n, h in zip(counts, held)]
    if config.method.probe_set == "holdout":  # for every method, so a flat baseline trains on the same images
        probe = [held_out_count(n, config.method.holdout_fraction) if n > 0 else 0 for n in counts]
        _check_probe_holdout(facts, counts, probe)
        counts = [n - h for n, h in zip(counts, probe)]
    return sum(counts)


def _check_probe_holdout(facts: DataFacts, counts: list[int], probe: list[int]) -> None:
    """method.probe_set=holdout must hold out an image of every class (`probe` of its `counts`): class
    profiles need them all."""
    missing = [c for c, (n, held) in enumerate(zip(counts, probe)) if n > 0 and held == 0]
    if missing:
        names = ", ".join(facts.classes[c] for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(f"method.probe_set=holdout holds out no image of {len(missing)} class(es) ({names}): each "
                        "has a single training image; use method.probe_set=train or give every class at least 2 "
                        "training images")


def _check_batches(batch_size: int, train_images: int, world_size: int) -> None:
    """The global batch divides among the processes, and every process trains on at least 2 images
    per step: batch normalisation cannot train on one (PyTorch raises deep inside the first step).
    The last, partial batch of an epoch is dropped, so only these two numbers matter."""
    if batch_size % world_size:
        raise CCNError(f"train.batch_size={batch_size} is the global batch and must divide evenly among "
                       f"{world_size} processes: choose a multiple of {world_size}")
    if min(batch_size, train_images) // world_size >= 2:
        return
    per_process = f" ({world_size} processes)" if world_size > 1 else ""
    if train_images < 2 * world_size:
        raise CCNError(f"the training split holds {train_images} image(s){per_process}, too few to train "
                       "(batch normalisation needs at least 2 per step): use more training images per class, "
                       "or a smaller data.val_fraction / method.holdout_fraction")
    raise CCNError(f"train.batch_size={batch_size} gives batches of one image per process{per_process}, which "
                   f"batch normalisation cannot train on: choose at least {2 * world_size}")
