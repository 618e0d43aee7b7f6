"""The method end to end: probe training, clustering, the three-level head, recursion.

    step 1  train backbone + flat head for `method.probe_epochs` epochs (paper: 1)
    step 2  class profiles = mean softmax per class on the probe set; group close classes
    step 3  add the cluster head and the masked class head; train on to `train.epochs` in total
    (depth 2) split large groups again from the masked softmax and train on with a tree head

`method.name=flat` runs step 1 for the whole budget: the baseline with the same budget.
"""

from __future__ import annotations

import math
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ccn import config as cfgmod
from ccn.config import Config
from ccn.checkpoint import (STATE_FILE, check_run_state, fault_point, read_training_state, restore_training_state,
                            save_training_state)
from ccn.data import ImageDataset, load_dataset
from ccn.data.base import split_per_class
from ccn.data.augment import Augment, Normalize
from ccn.data.loader import TensorBatches
from ccn.data.policies import make_policy
from ccn.dist import (World, all_reduce_sum, autocast, configure_backends, init_distributed, main_rank_first,
                      resolve_device, seed_stream, wrap_for_training)
from ccn.ema import WeightAverage
from ccn.errors import CCNError
from ccn.evaluate import batch_outputs, score
from ccn.hierarchy import (Hierarchy, build_hierarchy, choose_partition, default_group_count, random_partition,
                           read_groups_file)
from ccn.hierarchy.affinity import class_profile_sums, profiles_from_sums
from ccn.models import count_parameters
from ccn.runs import load_initial_weights, write_run
from ccn.network import build_model, make_head, tree_head_from
from ccn.tracking import RunLog
from ccn.train import Trainer

PROBE_HOLDOUT_SEED = 12345  # fixed, not the run seed: every variant and seed holds out the same images
VALIDATION_SEED = 54321  # likewise for data.val_fraction


# ---------------------------------------------------------------- data


@dataclass
class RunData:
    """A data set moved to the training device, with its batch iterators."""

    ds: ImageDataset
    normalize: Normalize
    train: TensorBatches
    test: TensorBatches  # the images scored: the test set, or the validation hold-out (data.val_fraction)
    probe: TensorBatches  # images whose softmax defines the class profiles (no augmentation)
    eval_set: str = "test"  # which images `test` holds: "test" or "validation"


def default_augment(config: Config, ds: ImageDataset) -> Augment:
    padding = config.data.crop_padding if config.data.crop_padding is not None else max(1, ds.image_size // 8)
    flip = config.data.flip if config.data.flip is not None else ds.flip
    policy = make_policy(config.data.augment, config.data.randaugment_n, config.data.randaugment_m)
    return Augment(crop_padding=padding, flip=flip, cutout=config.data.cutout, policy=policy)


def uses_channels_last(config: Config, device: torch.device) -> bool:
    """NHWC images and weights: faster on CUDA and also on CPU, where oneDNN's convolutions ran
    ResNet-20 and ResNet-9 training 15-25 % faster and evaluation 1.2-1.8x faster (benchmarks/RESULTS.md)."""
    return config.train.channels_last and device.type in ("cpu", "cuda")


def prepare_data(config: Config, device: torch.device, world: World = World(),
                 ds: Optional[ImageDataset] = None, preprocess: Optional[dict] = None) -> RunData:
    """The run's data on `device`. `preprocess` (a saved run's mean and std, 0-1 scale) replaces the
    statistics of these training images, so a saved run is scored with the normalisation it learned."""
    ds = ds if ds is not None else load_dataset(config.data)
    mean, std = (preprocess["mean"], preprocess["std"]) if preprocess is not None else ds.channel_stats()
    normalize = Normalize(mean, std).to(device)
    x, y = ds.train_images, ds.train_labels
    test_x, test_y, eval_set = ds.test_images, ds.test_labels, "test"
    if config.data.val_fraction > 0:  # choose settings on training images; the test set stays untouched
        keep, held = split_per_class(y, config.data.val_fraction, VALIDATION_SEED)
        test_x, test_y, eval_set, x, y = x[held], y[held], "validation", x[keep], y[keep]
    probe_x, probe_y = x, y
    if config.method.probe_set == "holdout":  # for every method, so a flat baseline trains on the same images
        keep, held = split_per_class(y, config.method.holdout_fraction, PROBE_HOLDOUT_SEED)
        probe_x, probe_y, x, y = x[held], y[held], x[keep], y[keep]
    channels_last = uses_channels_last(config, device)
    t, seed = config.train, config.seed
    eval_kwargs = dict(normalize=normalize, shuffle=False, drop_last=False, channels_last=channels_last)
    on = lambda a: a.to(device)  # noqa: E731
    train_x, train_y = on(x), on(y)
    # probe_set=train profiles the training images themselves: one copy on the device, not two
    probe_x, probe_y = (train_x, train_y) if probe_x is x else (on(probe_x), on(probe_y))
    if t.batch_size % world.world_size:
        raise CCNError(f"train.batch_size={t.batch_size} is the global batch and must divide evenly among "
                       f"{world.world_size} processes: choose a multiple of {world.world_size}")
    train = TensorBatches(train_x, train_y, min(t.batch_size, len(y)), normalize, default_augment(config, ds),
                          seed=seed, rank=world.rank, world_size=world.world_size, channels_last=channels_last)
    # every rank scores and profiles its share of the test and probe sets; the counts are added across ranks
    shares = dict(rank=world.rank, world_size=world.world_size)
    test = TensorBatches(on(test_x), on(test_y), t.eval_batch_size, **shares, **eval_kwargs)
    probe = TensorBatches(probe_x, probe_y, t.eval_batch_size, **shares, **eval_kwargs)
    return RunData(ds, normalize, train, test, probe, eval_set)


# ---------------------------------------------------------------- step 2: groups


class ProfileSums:
    """Class-profile sums and counts, added up batch by batch on the training device."""

    def __init__(self):
        self.sums = self.counts = None

    def add(self, probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        sums, counts = class_profile_sums(probs, labels, num_classes)
        self.sums = sums if self.sums is None else self.sums + sums
        self.counts = counts if self.counts is None else self.counts + counts

    def profiles(self) -> torch.Tensor:
        """The mean rows, summed over all ranks while still on the device (NCCL reduces only CUDA
        tensors), then moved to the CPU for clustering."""
        return profiles_from_sums(all_reduce_sum(self.sums), all_reduce_sum(self.counts)).cpu()


def reduced_profiles(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class profiles from this rank's share of the probe set, summed over all ranks: every rank
    gets the same profiles, hence the same groups."""
    tally = ProfileSums()
    tally.add(probs, labels, num_classes)
    return tally.profiles()


@torch.no_grad()
def flat_profiles(model: torch.nn.Module, probe: TensorBatches, num_classes: int, precision=nullcontext) -> torch.Tensor:
    """Mean softmax of the level-1 (flat) head per class: eval mode, no augmentation."""
    tally = ProfileSums()
    for out, labels in batch_outputs(model, probe, precision):
        tally.add(torch.softmax(out["z"].double(), dim=1), labels, num_classes)
    return tally.profiles()


def form_groups(config: Config, profiles: torch.Tensor, ds: ImageDataset, epoch: int) -> Hierarchy:
    """The partition of step 2 (learned, or a control), with when and from what it was made."""
    hierarchy = choose_partition(config.method, profiles, ds.classes, config.seed, ds.coarse, ds.name)
    hierarchy.how.update(epoch=epoch, probe_set=config.method.probe_set)
    return hierarchy


def large_group_profiles(model: torch.nn.Module, probe: TensorBatches, num_classes: int, large: list,
                         precision=nullcontext) -> list:
    """Per group in `large`: the class profiles of the masked (level-3) softmax restricted to the group."""
    if not large:
        return []
    tallies = [ProfileSums() for _ in large]
    device = probe.labels.device
    local_index = []  # class -> its position inside its group (-1: another group), per large group
    for members in large:
        index = torch.full((num_classes,), -1, dtype=torch.long, device=device)
        index[torch.tensor(members, device=device)] = torch.arange(len(members), device=device)
        local_index.append(index)
    for out, labels in batch_outputs(model, probe, precision):
        _, log_within = model.head.log_probs(out)
        for members, index, tally in zip(large, local_index, tallies):
            local = index[labels]
            rows = local >= 0
            tally.add(log_within[rows][:, members].exp(), local[rows], len(members))
    return [tally.profiles() for tally in tallies]


@torch.no_grad()
def split_large_groups(config: Config, model: torch.nn.Module, probe: TensorBatches, hierarchy: Hierarchy,
                       epoch: int, precision=nullcontext) -> Hierarchy:
    """Recursion: inside each group of >= split_min_size classes, profile the classes with the masked
    (level-3) softmax restricted to the group and cluster them again into round(sqrt(size)) parts.

    Under partition=random the sub-groups are random too (the sizes the learned split gives, shuffled
    classes), so the control stays random at every level. When no group is large enough, the
    hierarchy stays at depth 1 and says so (`how["split"]`). The profiles are summed batch by batch
    on the device (never the whole probe set's (N, C) outputs) and over ranks."""
    meth = config.method
    large = [members for members in hierarchy.groups if len(members) >= meth.split_min_size]
    profiles = large_group_profiles(model, probe, hierarchy.num_classes, large, precision)
    tree, split = [], 0
    for k, members in enumerate(hierarchy.groups):
        if len(members) < meth.split_min_size:
            tree.append(members)
            continue
        S = profiles[split]
        parts = build_hierarchy(S, [str(c) for c in members], meth.metric, max(2, default_group_count(len(members))),
                                linkage=meth.linkage, clustering=meth.clustering, profile=meth.profile).groups
        if meth.partition == "random":
            parts = random_partition(len(members), sorted(map(len, parts), reverse=True), seed=config.seed + 1 + k)
        tree.append([[members[i] for i in part] for part in parts])
        split += 1
    if split == 0:
        return Hierarchy(hierarchy.classes, hierarchy.tree,
                         {**hierarchy.how, "split": f"none: no group has {meth.split_min_size} or more classes"},
                         hierarchy.distances, hierarchy.merges)
    how = {**hierarchy.how, "depth": 2, "split_epoch": epoch, "split": f"{split} group(s)"}
    return Hierarchy(hierarchy.classes, tree, how, hierarchy.distances, hierarchy.merges)


# ---------------------------------------------------------------- the run


def seed_everything(seed: int, deterministic: bool, device: torch.device = torch.device("cpu")) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    configure_backends(device, deterministic)


def run_training(config: Config, out_dir: Optional[Path], log: Optional[RunLog] = None,
                 world: World = World(), ds: Optional[ImageDataset] = None, resume: bool = False,
                 on_start: Optional[Callable[[], None]] = None) -> dict:
    """Train one run as `config` says; write the run folder when `out_dir` is given; return results.

    With `resume`, continue from the run folder's checkpoint (or from the start when it has none).
    `on_start` is called once the data and model are ready, before anything is trained or written
    (the command line writes config.yaml there, and --force replaces the old run)."""
    run = MethodRun(config, out_dir, log or RunLog(out_dir, enabled=world.is_main), world, ds, resume)
    if on_start is not None:
        on_start()
    if resume:
        run.resume()
    return run.train()


class MethodRun:
    """One training run: flat, or the CCN pipeline with its head swaps, checkpointed every epoch."""

    def __init__(self, config: Config, out_dir: Optional[Path], log: RunLog, world: World,
                 ds: Optional[ImageDataset], resume: bool = False):
        self.config, self.out_dir, self.log, self.world = config, out_dir, log, world
        self.started = time.perf_counter()
        self.device = resolve_device(config.device, world)
        init_distributed(world, self.device)
        seed_everything(config.seed, config.train.deterministic, self.device)
        with main_rank_first(world, self.device):  # one process downloads, extracts and caches
            self.data = prepare_data(config, self.device, world, ds)
        self.ds = self.data.ds
        cfgmod.check_against_classes(config, self.ds.num_classes, f"data {self.ds.name}")
        # a resumed run takes its weights and groups from its checkpoint: the files named by
        # model.init and method.groups_file are not needed again
        resuming = resume and self._checkpoint_path() is not None and self._checkpoint_path().exists()
        if config.method.name == "ccn" and config.method.partition == "file" and not resuming:
            # read now, so a missing or mismatched file stops the run before its probe epochs, not after
            read_groups_file(config.method.groups_file, self.ds.classes, whole_tree=config.method.depth > 1)
        torch.manual_seed(config.seed)  # identical initial weights for every variant of a seed
        self.model = build_model(config, self.ds.num_classes)
        self.init_record = None if resuming else self._start_from_trained_weights()
        self.model = self.model.to(self.device)
        if uses_channels_last(config, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.train.sync_bn and world.world_size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.trainer = Trainer(self.model, config.train, self.device, len(self.data.train))
        self.hierarchy: Optional[Hierarchy] = None
        self.stage = "flat" if config.method.name == "flat" else "probe"
        self._wrap()
        self.cluster_seconds, self.earlier_seconds, self.first_epoch = 0.0, 0.0, 1

    def _start_from_trained_weights(self) -> Optional[dict]:
        """model.init: the backbone (and the flat head when the classes match) of a trained model,
        so the method can be applied post hoc; the record goes to results.json."""
        if self.config.model.init is None:
            return None
        record = load_initial_weights(self.model, self.config, self.ds.classes)
        head = "flat head too" if record["flat_head"] else f"flat head starts fresh: {record['flat_head_fresh_because']}"
        self.log.info(f"model.init: backbone from {record['from']} ({record['layout']} layout); {head}")
        return record

    # -- the loop

    def train(self) -> dict:
        config, meth = self.config, self.config.method
        self.log.info(describe_run(config, self.ds, self.model, self.device, len(self.data.train)))
        for epoch in range(self.first_epoch, config.train.epochs + 1):
            seed_stream(config.seed, self.world.rank, epoch)  # dropout and ShakeDrop: per rank, per epoch
            stats = self.trainer.train_epoch(self.data.train, epoch)
            if not math.isfinite(stats["loss"]):
                saved = self._checkpoint_path()  # none before the first epoch ends: say "kept" only when true
                kept = "the checkpoint of the last good epoch is kept; " if saved is not None and saved.exists() else ""
                raise CCNError(f"the training loss became {stats['loss']} in epoch {epoch}: {kept}lower train.lr "
                               "(or add train.warmup_epochs) and run again")
            row_stage = self.stage
            scores = self.score_test()  # the head this epoch trained
            if meth.name == "ccn" and epoch == cfgmod.clustering_epoch(meth):
                fault_point("after-probe")
                self.cluster_classes(epoch)
                fault_point("after-clustering")
            elif meth.name == "ccn" and cfgmod.recurses(meth) and epoch == cfgmod.recursion_epoch(meth):
                self.recurse(epoch)
            self.log.epoch({"epoch": epoch, "epochs": config.train.epochs, "stage": row_stage, **stats,
                            "top1": scores["top1"], "top5": scores["top5"],
                            "lr": self.trainer.optimizer.param_groups[0]["lr"]})
            fault_point(f"after-epoch-row-{epoch}")  # metrics.jsonl is one epoch ahead of the checkpoint here
            self.save_checkpoint(epoch)
        return self.finish()

    def cluster_classes(self, epoch: int) -> None:
        """Step 2, then the three-level head of step 3 on the same features."""
        tick = time.perf_counter()
        profiles = flat_profiles(self.model, self.data.probe, self.ds.num_classes, self.precision)
        if not bool(torch.isfinite(profiles).all()):  # the loss can stay finite while the outputs overflow
            raise CCNError(f"the network's outputs are not finite after epoch {epoch}, so classes cannot be grouped: "
                           "lower train.lr (or add train.warmup_epochs) and run again")
        self.hierarchy = form_groups(self.config, profiles, self.ds, epoch)
        self.cluster_seconds = time.perf_counter() - tick
        torch.manual_seed(self.config.seed + 1)  # new heads start the same for every partition of a seed
        self._install_head(make_head(self.config, self.model.backbone.num_features, self.ds.num_classes,
                                     self.hierarchy, flat=self.model.head.flat), "ccn")
        sizes = sorted((len(g) for g in self.hierarchy.groups), reverse=True)
        self.log.info(f"  step 2 after epoch {epoch}: {len(sizes)} {self.hierarchy.how['partition']} groups "
                      f"(sizes {sizes}), {self.cluster_seconds:.2f}s")

    def recurse(self, epoch: int) -> None:
        """The recursion: split large groups and continue with a tree head (or, when no group is
        large enough, keep the three-level head and say so)."""
        self.hierarchy = split_large_groups(self.config, self.model, self.data.probe, self.hierarchy, epoch,
                                            self.precision)
        if self.hierarchy.depth > 1:
            self._install_head(tree_head_from(self.model.head, self.hierarchy.tree, self.config), "tree")
        self.log.info(f"  recursion after epoch {epoch}: tree of depth {self.hierarchy.depth} "
                      f"(split: {self.hierarchy.how['split']})")

    def _install_head(self, head: torch.nn.Module, stage: str) -> None:
        self.model.head = head.to(self.device)
        self.trainer.rebuild_optimizer()
        if self.trainer.ema is not None:  # the new heads' entries start from their live weights
            self.trainer.ema.follow(self.model)
        self.stage = stage
        self._wrap()

    def _wrap(self) -> None:
        """The module the training step calls: DDP under torchrun (rebuilt after a head swap, since DDP
        registers parameters once), compiled when asked."""
        unused = self.stage != "flat" and self.stage != "probe" and self.config.method.flat_weight == 0
        module = wrap_for_training(self.model, self.device, find_unused=unused)
        self.trainer.train_module = torch.compile(module) if self.config.train.compile else module

    def precision(self):
        """The forward-pass precision context, the same for training and evaluation."""
        return autocast(self.device, self.config.train.bf16)

    def score_test(self) -> dict:
        mask = self.hierarchy.mask() if self.hierarchy is not None else None
        return score(self.model, self.data.test, mask, self.config.method.inference, self.precision)

    def finish(self) -> dict:
        results = self.score_test()
        if self.trainer.ema is not None:
            results = self._with_average_scores(results, self.trainer.ema)
        results.setdefault("model_weights", "live")  # which weights model.safetensors holds
        seconds = self.earlier_seconds + time.perf_counter() - self.started
        results.update(run_facts(self.config, self.ds, self.model, self.device, seconds, self.data))
        results["clustering_seconds"] = self.cluster_seconds
        if self.init_record is not None:
            results["init"] = self.init_record
        if self.hierarchy is not None:
            results["hierarchy"] = {"groups": self.hierarchy.named_groups(), "how": self.hierarchy.how}
            results.update(group_sizes=self.hierarchy.how["sizes"], group_balance=self.hierarchy.how["balance"])
        self.log.info(final_line(results))
        if self.out_dir is not None and self.world.is_main:
            if self.trainer.ema is not None:  # model.safetensors holds the weights results.json names
                with self.trainer.ema.swapped_in(self.model):
                    write_run(self.out_dir, self.config, self.model, results, self.hierarchy)
            else:
                write_run(self.out_dir, self.config, self.model, results, self.hierarchy)
        self.log.close()
        return results

    def _with_average_scores(self, live: dict, ema: WeightAverage) -> dict:
        """With train.ema: the averaged weights are the run's result (top1, rules, ... and
        model.safetensors); `scores_by_weights` keeps both, and `model_weights` says which was saved."""
        with ema.swapped_in(self.model):
            averaged = self.score_test()
        brief = lambda r: {k: r[k] for k in ("top1", "top5", "balanced_top1", "rules")}  # noqa: E731
        return {**averaged, "model_weights": "ema", "ema_decay": self.config.train.ema,
                "scores_by_weights": {"ema": brief(averaged), "live": brief(live)}}

    # -- checkpoints

    def _checkpoint_path(self) -> Optional[Path]:
        return Path(self.out_dir) / STATE_FILE if self.out_dir is not None else None

    def save_checkpoint(self, epoch: int) -> None:
        path = self._checkpoint_path()
        if path is None or not self.world.is_main:
            return
        state = {"epoch": epoch, "step": self.trainer.step, "stage": self.stage,
                 "hierarchy": self.hierarchy.to_json() if self.hierarchy is not None else None,
                 "cluster_seconds": self.cluster_seconds, "init": self.init_record,
                 "seconds": self.earlier_seconds + time.perf_counter() - self.started,
                 "config": self.config.to_dict()}
        extra = self.trainer.ema.tensors() if self.trainer.ema is not None else None
        save_training_state(path, self.model, self.trainer.optimizer, state, extra)

    def _check_resumable(self, state: dict, path: Path) -> None:
        """The checked header must also fit this run: an epoch within it, groups exactly when the stage has them."""
        if state["epoch"] > self.config.train.epochs:
            raise CCNError(f"checkpoint {path} is from epoch {state['epoch']}, after the run's last epoch "
                           f"({self.config.train.epochs}): it is not this run's checkpoint; delete it to restart")
        if (state["hierarchy"] is None) != (state["stage"] in ("flat", "probe")):
            raise CCNError(f"checkpoint {path} is at stage {state['stage']!r} but "
                           f"{'has no' if state['hierarchy'] is None else 'has'} groups: it is damaged; delete it "
                           "to restart the run from epoch 1")

    def resume(self) -> None:
        """Continue after the last saved epoch; with no checkpoint yet, start again from epoch 1."""
        path = self._checkpoint_path()
        if path is None or not path.exists():
            self.log.truncate(0)
            return
        tensors, state = read_training_state(path)
        check_run_state(state, path)
        if state["config"] != self.config.to_dict():
            raise CCNError(f"{path} was saved with another configuration than {path.parent / 'config.yaml'}: "
                           "restore that file, or start a new run")
        self._check_resumable(state, path)
        if state["hierarchy"] is not None:
            self.hierarchy = Hierarchy.from_json(state["hierarchy"], f"the hierarchy in checkpoint {path}")
            if self.hierarchy.classes != self.ds.classes:
                raise CCNError(f"checkpoint {path} groups other classes than data {self.ds.name} has: "
                               "resume with the data the run started on")
            head = make_head(self.config, self.model.backbone.num_features, self.ds.num_classes, self.hierarchy,
                             flat=self.model.head.flat)
            self._install_head(head, state["stage"])
        restore_training_state(tensors, state, self.model, self.trainer.optimizer, path)
        if self.trainer.ema is not None:
            self.trainer.ema.load(tensors)
        self.trainer.step, self.stage = state["step"], state["stage"]
        self.cluster_seconds, self.earlier_seconds = state["cluster_seconds"], state["seconds"]
        self.init_record = state.get("init")
        self.first_epoch = state["epoch"] + 1
        self.log.truncate(state["epoch"])
        self.log.info(f"resuming {path.parent} after epoch {state['epoch']} (stage {self.stage})")


def describe_run(config: Config, ds: ImageDataset, model: torch.nn.Module, device, steps: int) -> str:
    meth = config.method
    method = "flat baseline" if meth.name == "flat" else (
        f"ccn: {meth.probe_epochs} probe epoch(s), groups after epoch {cfgmod.clustering_epoch(meth)}, "
        f"metric {meth.metric}, partition {meth.partition}, depth {meth.depth}")
    return (f"ccn train | data {ds.name}: {len(ds.train_labels)} train / {len(ds.test_labels)} test images, "
            f"{ds.num_classes} classes, {ds.image_size}px | model {config.model.name} "
            f"({count_parameters(model) / 1e6:.2f} M parameters) | {method} | {config.train.epochs} epochs x "
            f"{steps} steps, batch {config.train.batch_size}, lr {config.train.lr} | seed {config.seed} | {device}")


def run_facts(config: Config, ds: ImageDataset, model, device, seconds: float, data: RunData) -> dict:
    return {
        "data": ds.name, "num_classes": ds.num_classes, "classes": ds.classes, "train_images": len(data.train.labels),
        "test_images": len(data.test.labels), "eval_set": data.eval_set, "model": config.model.name,
        "method": config.method.name,
        "partition": config.method.partition if config.method.name == "ccn" else None,
        "epochs": config.train.epochs, "seed": config.seed, "wall_time_s": round(seconds, 2),
        "parameters": count_parameters(model), "device": str(device), "torch": torch.__version__,
        "machine": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads)",
        "preprocess": {"image_size": ds.image_size, "mean": data.normalize.mean.flatten().div(255).tolist(),
                       "std": (1 / data.normalize.inv_std.flatten()).div(255).tolist()},
    }


def final_line(results: dict) -> str:
    line = (f"done: {results['data']} {results['model']} {results['method']} | top1 {100 * results['top1']:.2f}% "
            f"top5 {100 * results['top5']:.2f}% ({results['rule']} rule, {results['test_images']} "
            f"{results['eval_set']} images)")
    if len(results["rules"]) > 1:
        line += " | " + ", ".join(f"{r} {100 * v['top1']:.2f}%" for r, v in results["rules"].items())
    if "group_acc" in results:
        line += f" | group acc {100 * results['group_acc']:.2f}% within {100 * results['within_acc']:.2f}%"
    return line + f" | {results['wall_time_s']:.0f}s"
