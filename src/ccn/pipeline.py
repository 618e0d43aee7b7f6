"""The method end to end: probe training, clustering, the three-level head, recursion.

    step 1  train backbone + flat head for `method.probe_epochs` epochs (paper: 1)
    step 2  class profiles = mean softmax per class on the probe set; group close classes
    step 3  add the cluster head and the masked class head; train on to `train.epochs` in total
    (depth 2) split large groups again from the masked softmax and train on with a tree head

`method.name=flat` runs step 1 for the whole budget: the baseline with the same budget.
"""

from __future__ import annotations

import datetime
import functools
import math
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ccn import config as cfgmod
from ccn.config import Config
from ccn.checkpoint import check_run_state, read_training_state, restore_training_state, save_training_state
from ccn.files import fault_point, write_json
from ccn.data import ImageDataset, load_dataset
from ccn.data.digest import data_digest
from ccn.data.prepare import RunData, fit_sample, prepare_data, preprocess_facts
from ccn.dist import (World, autocast, check_ranks_agree, configure_backends, init_distributed,
                      main_rank_first, resolve_device, seed_stream, wrap_for_training)
from ccn.ema import WeightAverage
from ccn.errors import CCNError
from ccn.evaluate import batch_outputs, score
from ccn.hierarchy import Hierarchy, read_groups_file
from ccn.hierarchy.profiles import flat_profiles, form_groups, split_large_groups
from ccn.hierarchy.truth import true_tree
from ccn.model_init import load_initial_weights
from ccn.models import count_parameters
from ccn.provenance import code_version
from ccn.runfiles import PLAN_FILE, STATE_FILE
from ccn.runs import config_digest, recorded_config, write_distances, write_run
from ccn.network import build_model, make_head, tree_head_from
from ccn.tracking import RunLog
from ccn.plan import DataFacts, RunPlan, resolve
from ccn.train import EpochProgress, Trainer

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
    run.write_plan()
    return run.train()


def _saved_config(state: dict, path: Path) -> dict:
    """The checkpoint's config as this version of ccn reads it. A key added since the save takes its
    default, which keeps the old behaviour, as it does when config.yaml is read: otherwise upgrading
    ccn between two epochs would strand every unfinished run (a study spans sessions)."""
    try:
        return cfgmod.from_dict(state["config"]).to_dict()
    except (CCNError, TypeError, AttributeError) as err:
        raise CCNError(f"checkpoint {path} holds a configuration this version of ccn cannot read ({err}): resume "
                       "it with the version that started it, or start a new run") from None


class MethodRun:
    """One training run: flat, or the CCN pipeline with its head swaps, checkpointed every epoch (and
    every train.checkpoint_every steps inside one)."""

    def __init__(self, config: Config, out_dir: Optional[Path], log: RunLog, world: World,
                 ds: Optional[ImageDataset], resume: bool = False):
        self.config, self.out_dir, self.log, self.world = config, out_dir, log, world
        self.started = time.perf_counter()
        self.device = resolve_device(config.device, world)
        init_distributed(world, self.device)
        seed_everything(config.seed, config.train.deterministic, self.device)
        with main_rank_first(world, self.device):  # one process downloads, extracts and caches
            ds = ds if ds is not None else load_dataset(config.data)
        # every default fixed and every rule that needs the data checked, once: what follows trusts it
        self.plan = resolve(config, DataFacts.of(ds), world.world_size)
        self.data = prepare_data(self.plan, self.device, world, ds=ds)
        check_ranks_agree(self._image_counts(), self.device)
        self.ds = self.data.ds
        # the data set's own hierarchy, where it has one: the final scores add coarse top-1 and mistake severity
        self.true_tree = true_tree(self.ds.coarse, self.ds.tree_paths)
        # a resumed run takes its weights and groups from its checkpoint: the files named by
        # model.init and method.groups_file are not needed again
        resuming = resume and self._checkpoint_path() is not None and os.path.lexists(self._checkpoint_path())
        if config.method.name == "ccn" and config.method.partition == "file" and not resuming:
            # read now, so a missing or mismatched file stops the run before its probe epochs, not after
            read_groups_file(config.method.groups_file, self.ds.classes, whole_tree=config.method.depth > 1,
                             class_ids=self.ds.class_ids)
        torch.manual_seed(config.seed)  # identical initial weights for every variant of a seed
        self.model = build_model(config.model, config.train, self.ds.num_classes)
        # e.g. airbench's whitening filters; a resumed run has them in its checkpoint
        if self.model.backbone.fits_to_data and not resuming:
            self.model.backbone.fit_to_data(fit_sample(self.data))
        self.init_record = None if resuming else self._start_from_trained_weights()
        self.model = self.model.to(self.device)
        if self.data.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if config.train.sync_bn and world.world_size > 1:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.trainer = Trainer(self.model, config.train, self.device, self.plan.steps_per_epoch,
                               self.plan.planned_steps)
        self.hierarchy: Optional[Hierarchy] = None
        self.stage = "flat" if config.method.name == "flat" else "probe"
        self._wrap()
        self.cluster_seconds, self.earlier_seconds, self.first_epoch = 0.0, 0.0, 1
        self.code = code_version()  # the code this process runs; a resumed run also keeps the code it started with
        self.code_at_start = self.code
        self.resumed_progress: Optional[EpochProgress] = None  # where a step checkpoint left first_epoch
        self._data_digest: Optional[str] = None  # see data_digest

    def _start_from_trained_weights(self) -> Optional[dict]:
        """model.init: the backbone (and the flat head when the classes match) of a trained model,
        so the method can be applied post hoc; the record goes to results.json."""
        if self.config.model.init is None:
            return None
        record = load_initial_weights(self.model, self.config.model, self.config.train.bn_weight, self.ds.classes)
        head = "flat head too" if record["flat_head"] else f"flat head starts fresh: {record['flat_head_fresh_because']}"
        self.log.info(f"model.init: backbone from {record['from']} ({record['layout']} layout); {head}")
        return record

    def write_plan(self) -> None:
        """plan.json beside config.yaml: the resolved plan the run trains by (ccn.plan)."""
        if self.out_dir is not None and self.world.is_main:
            write_json(Path(self.out_dir) / PLAN_FILE, self.plan.to_json())

    # -- the loop

    def train(self) -> dict:
        config = self.config
        self.log.info(describe_run(self.plan, self.ds, self.model, self.device))
        if "store" in self.ds.notes:  # which store data.store=auto picked, and why
            self.log.info(f"data store: {self.ds.notes['store']}")
        for epoch in range(self.first_epoch, config.train.epochs + 1):
            if self.trainer.budget_spent():  # train.max_steps
                break
            progress, self.resumed_progress = self.resumed_progress, None
            if progress is None:  # (a resumed epoch's stream was restarted by resume)
                seed_stream(config.seed, self.world.rank, epoch)  # dropout and ShakeDrop: per rank, per epoch
            stats = self.trainer.train_epoch(self.data.train, epoch, progress,
                                             functools.partial(self.save_step_checkpoint, epoch))
            if self.trainer.budget_spent() and epoch < config.train.epochs:
                self.log.info(f"  train.max_steps={config.train.max_steps} reached in epoch {epoch}: "
                              "the run ends after it")
            if not math.isfinite(stats["loss"]):
                saved = self._checkpoint_path()  # none before the first epoch ends: say "kept" only when true
                kept = "the checkpoint of the last good epoch is kept; " if saved is not None and saved.exists() else ""
                raise CCNError(f"the training loss became {stats['loss']} in epoch {epoch}: {kept}lower train.lr "
                               "(or add train.warmup_epochs) and run again")
            row_stage = self.stage
            scores = self.score_saved_weights()  # the head this epoch trained
            if epoch == self.plan.clustering_epoch:  # None for a flat run
                fault_point("after-probe")
                self.cluster_classes(epoch)
                fault_point("after-clustering")
            elif epoch == self.plan.recursion_epoch:  # None when nothing is split again
                self.recurse(epoch)
            self.log.epoch({"epoch": epoch, "epochs": config.train.epochs, "stage": row_stage, **stats,
                            "top1": scores["top1"], "top5": scores["top5"], "weights": self.saved_weights(),
                            "lr": self.trainer.optimizer.param_groups[0]["lr"]})
            fault_point(f"after-epoch-row-{epoch}")  # metrics.jsonl is one epoch ahead of the checkpoint here
            self.save_checkpoint(epoch)
        return self.finish()

    def cluster_classes(self, epoch: int) -> None:
        """Step 2, then the three-level head of step 3 on the same features."""
        tick = time.perf_counter()
        profiles = flat_profiles(batch_outputs(self.model, self.data.probe, self.precision), self.ds.num_classes)
        if not bool(torch.isfinite(profiles).all()):  # the loss can stay finite while the outputs overflow
            raise CCNError(f"the network's outputs are not finite after epoch {epoch}, so classes cannot be grouped: "
                           "lower train.lr (or add train.warmup_epochs) and run again")
        self.hierarchy = form_groups(self.config.method, self.config.seed, profiles, self.ds, epoch,
                                     self.plan.num_groups)
        # the probe's floating point depends on the thread count, and so may the groups: the report
        # compares it between variants that should learn the same partition
        self.hierarchy.how["probe_cpu_threads"] = torch.get_num_threads()
        self.cluster_seconds = time.perf_counter() - tick
        if self.out_dir is not None and self.world.is_main:  # once per run: checkpoints keep the groups only
            write_distances(Path(self.out_dir), self.hierarchy)
        torch.manual_seed(self.config.seed + 1)  # new heads start the same for every partition of a seed
        self._install_head(make_head(self.config.method, self.model.backbone.num_features, self.ds.num_classes,
                                     self.hierarchy, flat=self.model.head.flat), "ccn")
        sizes = sorted((len(g) for g in self.hierarchy.groups), reverse=True)
        how = self.hierarchy.how
        dropped = f", mass dropped per profile {how['dropped_mass']['mean']:.3f} mean" if "dropped_mass" in how else ""
        self.log.info(f"  step 2 after epoch {epoch}: {len(sizes)} {how['partition']} groups "
                      f"(sizes {sizes if len(sizes) <= 50 else f'{sizes[:50]} and {len(sizes) - 50} more'}), "
                      f"{how.get('distances', 'dense')} distances{dropped}, {self.cluster_seconds:.2f}s")

    def recurse(self, epoch: int) -> None:
        """The recursion: split large groups and continue with a tree head (or, when no group is
        large enough, keep the three-level head and say so)."""
        self.hierarchy = split_large_groups(self.config.method, self.config.seed, self._probe_within, self.hierarchy,
                                            epoch)
        if self.hierarchy.depth > 1:
            self._install_head(tree_head_from(self.model.head, self.hierarchy.tree, self.config.method), "tree")
        self.log.info(f"  recursion after epoch {epoch}: tree of depth {self.hierarchy.depth} "
                      f"(split: {self.hierarchy.how['split']})")

    @torch.no_grad()
    def _probe_within(self):
        """(log p(class | group, x), labels) per probe batch, for the recursion's profiles."""
        for out, labels in batch_outputs(self.model, self.data.probe, self.precision):
            yield self.model.head.log_probs(out)[1], labels

    def _install_head(self, head: torch.nn.Module, stage: str) -> None:
        self.model.head = head.to(self.device)
        self.trainer.rebuild_optimizer()
        for average in self.trainer.averages():  # the new heads' entries start from their live weights
            average.follow(self.model)
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

    def score_test(self, final: bool = False) -> dict:
        """The scored set under the run's rule; the final scores (results.json) with train.tta's views,
        the per-epoch rows without (as airbench: test-time augmentation multiplies the cost of a score)."""
        mask = self.hierarchy.mask() if self.hierarchy is not None else None
        return score(self.model, self.data.test, mask, self.plan.inference, self.precision,
                     self.plan.tta if final else "none", self.true_tree if final else None)

    def saved_weights(self) -> str:
        """Which weights model.safetensors will hold: the average when train.ema is on."""
        return "ema" if self.trainer.ema is not None else "live"

    def score_saved_weights(self) -> dict:
        """The per-epoch score, of the weights the run would save now (so the log shows what a user gets)."""
        if self.trainer.ema is None:
            return self.score_test()
        with self.trainer.ema.swapped_in(self.model):
            return self.score_test()

    def finish(self) -> dict:
        results = self.score_test(final=True)
        if self.trainer.ema is not None:
            results = self._with_average_scores(results, self.trainer.ema)
        results.setdefault("model_weights", "live")  # which weights model.safetensors holds
        results["steps"] = self.trainer.step  # optimizer steps trained (fewer than planned under train.max_steps)
        seconds = self.earlier_seconds + time.perf_counter() - self.started
        results.update(run_facts(self.plan, self.ds, self.model, self.device, seconds, self.data))
        results["clustering_seconds"] = self.cluster_seconds
        results["code"] = self.code
        if self.code_at_start != self.code:  # resumed with other code: say so rather than mix silently
            results["code_at_start"] = self.code_at_start
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
            averaged = self.score_test(final=True)
        brief = lambda r: {k: r[k] for k in ("top1", "top5", "balanced_top1", "rules")}  # noqa: E731
        return {**averaged, "model_weights": "ema", "ema_decay": self.config.train.ema,
                "scores_by_weights": {"ema": brief(averaged), "live": brief(live)}}

    # -- checkpoints

    def _checkpoint_path(self) -> Optional[Path]:
        return Path(self.out_dir) / STATE_FILE if self.out_dir is not None else None

    def save_checkpoint(self, epoch: int, progress: Optional[EpochProgress] = None,
                        epoch_seconds: float = 0.0) -> None:
        """After `epoch`, or inside it at `progress` (a step checkpoint): every rank calls it, rank 0 writes."""
        path = self._checkpoint_path()
        if path is None or not self.world.is_main:
            return
        state = {"epoch": epoch, "step": self.trainer.step, "stage": self.stage,
                 "hierarchy": self.hierarchy.to_json() if self.hierarchy is not None else None,
                 "cluster_seconds": self.cluster_seconds, "init": self.init_record, "code": self.code_at_start,
                 "seconds": self.earlier_seconds + time.perf_counter() - self.started,
                 "config": self.config.to_dict(), "images": self._image_counts(), "data_digest": self.data_digest(),
                 "batch": 0}  # after the whole epoch
        extra = {k: v for average in self.trainer.averages() for k, v in average.tensors().items()}
        if progress is not None:  # what the rest of the epoch needs to end as if never stopped
            state.update(batch=progress.batch, epoch_seen=progress.seen, epoch_seconds=epoch_seconds)
            extra.update({SUMS + k: v.detach().cpu().reshape(1) for k, v in progress.sums.items()})
        save_training_state(path, self.model, self.trainer.optimizer, state, extra,
                            fault=f"during-save-step-{self.trainer.step}")

    def save_step_checkpoint(self, epoch: int, progress: EpochProgress, epoch_seconds: float) -> None:
        """train.checkpoint_every: save inside the epoch, then restart the dropout/ShakeDrop stream from
        (seed, rank, epoch, step), as a run resumed from this checkpoint does: no rank's RNG state needed."""
        if self.world.world_size > 1:
            progress.gather_to_main(self.world.rank, self.device)
        self.save_checkpoint(epoch, progress, epoch_seconds)
        seed_stream(self.config.seed, self.world.rank, epoch, self.trainer.step)

    def _check_resumable(self, state: dict, path: Path) -> None:
        """The checked header must also fit this run: an epoch within it, groups exactly when the stage has them."""
        if state["epoch"] > self.config.train.epochs:
            raise CCNError(f"checkpoint {path} is from epoch {state['epoch']}, after the run's last epoch "
                           f"({self.config.train.epochs}): it is not this run's checkpoint; delete it to restart")
        if (state["hierarchy"] is None) != (state["stage"] in ("flat", "probe")):
            raise CCNError(f"checkpoint {path} is at stage {state['stage']!r} but "
                           f"{'has no' if state['hierarchy'] is None else 'has'} groups: it is damaged; delete it "
                           "to restart the run from epoch 1")
        saved, now = state["images"], self._image_counts()  # None: a checkpoint from before they were recorded
        if saved is not None and saved != now:
            raise CCNError(f"{path.parent} started with {saved} images and now finds {now}: the data changed since "
                           "(files added or removed, or, with data.skip_bad_images, a file that became readable or "
                           "unreadable), so its epochs would continue on other images; restore the data as it was, "
                           "or start a new run")
        if state["batch"] == 0:  # a step checkpoint's count is checked with its batch (_resume_inside_epoch)
            self._check_step_count(state, path)
        self._check_same_data(state, path)

    def data_digest(self) -> str:
        """ccn.data.digest of the run's data set, computed once (at its first checkpoint, or when resumed)."""
        if self._data_digest is None:
            self._data_digest = data_digest(self.ds)
        return self._data_digest

    def _check_same_data(self, state: dict, path: Path) -> None:
        """The data must be what the checkpoint was trained on, by content: the image counts alone
        let two swapped class folders (or an image edited in place) continue on relabelled data."""
        saved = state["data_digest"]  # None: a checkpoint from before issue 30
        if saved is not None and saved != self.data_digest():
            raise CCNError(f"{path.parent} started on other data than {self.ds.name} holds now (the class names, labels "
                           "or image contents differ: class folders renamed or swapped, images replaced or edited), "
                           "so its epochs would continue on relabelled images; restore the data as it was, or start "
                           "a new run")

    def _check_step_count(self, state: dict, path: Path) -> None:
        """A checkpoint's step, epoch and batch must agree: every epoch trains len(train) steps, a step
        checkpoint stops after `batch` of them, and train.max_steps may end the last epoch early. A header
        edited within range (batch 2 -> 1, step 8 -> 5) would resume other weights at another place."""
        per_epoch, every = len(self.data.train), self.config.train.checkpoint_every
        epoch, step, batch, budget = state["epoch"], state["step"], state["batch"], self.config.train.max_steps
        if batch > 0:
            agree = step == (epoch - 1) * per_epoch + batch and every > 0 and step % every == 0
        else:
            agree = step == epoch * per_epoch or (budget > 0 and step == budget
                                                  and (epoch - 1) * per_epoch < step < epoch * per_epoch)
        if not agree:
            where = f"after batch {batch} of epoch {epoch}" if batch > 0 else f"after epoch {epoch}"
            raise CCNError(f"checkpoint {path} says it stopped {where} at step {step}, but epochs of {per_epoch} "
                           f"steps{f' saved every {every} steps' if batch > 0 else ''} cannot reach step {step} there: "
                           "it is damaged or edited; delete it to restart the run from epoch 1")

    def _image_counts(self) -> dict:
        """How many images each split holds: a resumed run must continue on the same ones."""
        return {"train": len(self.data.train.labels), "test": len(self.data.test.labels)}

    def resume(self) -> None:
        """Continue after the last saved epoch; with no checkpoint yet, start again from epoch 1."""
        path = self._checkpoint_path()
        if path is None or not os.path.lexists(path):  # a dangling link or a FIFO is refused, not taken for none
            self.log.truncate(0)
            return
        tensors, state = read_training_state(path)
        check_run_state(state, path)
        if _saved_config(state, path) != self.config.to_dict():
            raise CCNError(f"{path} was saved with another configuration than {path.parent / 'config.yaml'}: "
                           "restore that file, or start a new run")
        self._check_resumable(state, path)
        if state["hierarchy"] is not None:
            self.hierarchy = Hierarchy.from_json(state["hierarchy"], f"the hierarchy in checkpoint {path}")
            if self.hierarchy.classes != self.ds.classes:
                raise CCNError(f"checkpoint {path} groups other classes than data {self.ds.name} has: "
                               "resume with the data the run started on")
            head = make_head(self.config.method, self.model.backbone.num_features, self.ds.num_classes, self.hierarchy,
                             flat=self.model.head.flat)
            self._install_head(head, state["stage"])
        restore_training_state(tensors, state, self.model, self.trainer.optimizer, path)
        if self.trainer.ema is not None:
            self.trainer.ema.load(tensors, updates=state["step"])  # one update per step since step 0
        if self.trainer.lookahead is not None:
            self.trainer.lookahead.load(tensors)
        self.trainer.step, self.stage = state["step"], state["stage"]
        self.cluster_seconds, self.earlier_seconds = state["cluster_seconds"], state["seconds"]
        self.init_record = state["init"]
        code = state["code"]  # None: a checkpoint from before provenance
        self.code_at_start = code if isinstance(code, dict) else "not recorded"
        if state["batch"] > 0:
            self._resume_inside_epoch(tensors, state, path)
            return
        self.first_epoch = state["epoch"] + 1
        self.log.truncate(state["epoch"])
        self.log.info(f"resuming {path.parent} after epoch {state['epoch']} (stage {self.stage})")

    def _resume_inside_epoch(self, tensors: dict, state: dict, path: Path) -> None:
        """From a step checkpoint: finish its epoch from the next batch with the saved loss sums."""
        epoch, batch, batches = state["epoch"], state["batch"], len(self.data.train)
        sums = {k[len(SUMS):]: v.reshape(()).to(self.device) for k, v in tensors.items() if k.startswith(SUMS)}
        if batch >= batches or "loss" not in sums or any(v.dtype != torch.float32 for v in sums.values()):
            raise CCNError(f"checkpoint {path} stops after batch {batch} of epoch {epoch}, but its epoch has "
                           f"{batches} batches or its loss sums are missing: it is damaged; delete it to restart "
                           "the run from epoch 1")
        self._check_step_count(state, path)
        seen = state["epoch_seen"]
        if not self.world.is_main:  # rank 0 carries the whole epoch's sums so far (gathered when saved)
            sums, seen = {k: torch.zeros_like(v) for k, v in sums.items()}, 0
        self.resumed_progress = EpochProgress(batch, sums, seen, state["epoch_seconds"])
        seed_stream(self.config.seed, self.world.rank, epoch, self.trainer.step)  # as the saving run did
        self.first_epoch = epoch
        self.log.truncate(epoch - 1)
        self.log.info(f"resuming {path.parent} in epoch {epoch} after batch {batch} of {batches} "
                      f"(step {self.trainer.step}, stage {self.stage})")


SUMS = "epoch_sums."  # a step checkpoint's loss sums of the unfinished epoch


def describe_run(plan: RunPlan, ds: ImageDataset, model: torch.nn.Module, device) -> str:
    config, meth, steps = plan.config, plan.config.method, plan.steps_per_epoch
    budget = f" (stops after train.max_steps={config.train.max_steps})" if config.train.max_steps else ""
    method = "flat baseline" if meth.name == "flat" else (
        f"ccn: {meth.probe_epochs} probe epoch(s), groups after epoch {plan.clustering_epoch}, "
        f"metric {meth.metric}, partition {meth.partition}, depth {meth.depth}")
    return (f"ccn train | data {ds.name}: {len(ds.train_labels)} train / {len(ds.test_labels)} test images, "
            f"{ds.num_classes} classes, {ds.image_size}px | model {config.model.name} "
            f"({count_parameters(model) / 1e6:.2f} M parameters) | {method} | {config.train.epochs} epochs x "
            f"{steps} steps{budget}, batch {config.train.batch_size}, lr {config.train.lr} | seed {config.seed} | {device}")


def run_facts(plan: RunPlan, ds: ImageDataset, model, device, seconds: float, data: RunData) -> dict:
    """results.json's description of the run: what it trained on, how, where and for how long."""
    config = plan.config
    return {
        "data": ds.name, "num_classes": ds.num_classes, "classes": ds.classes, "train_images": len(data.train.labels),
        "test_images": len(data.test.labels), "eval_set": data.eval_set, "model": config.model.name,
        "method": config.method.name,
        "partition": config.method.partition if config.method.name == "ccn" else None,
        "epochs": config.train.epochs, "seed": config.seed, "wall_time_s": round(seconds, 2),
        "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "parameters": count_parameters(model), "device": str(device), "torch": torch.__version__,
        "machine": f"{platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads)",
        "preprocess": preprocess_facts(ds, data.normalize, data.eval_crop),
        "config_sha256": config_digest(recorded_config(config)),  # load_run refuses a config.yaml edited after training
        **({"class_ids": ds.class_ids} if ds.class_ids is not None else {}),
    }


def final_line(results: dict) -> str:
    line = (f"done: {results['data']} {results['model']} {results['method']} | top1 {100 * results['top1']:.2f}% "
            f"top5 {100 * results['top5']:.2f}% ({results['rule']} rule, {results['test_images']} "
            f"{results['eval_set']} images)")
    if len(results["rules"]) > 1:
        line += " | " + ", ".join(f"{r} {100 * v['top1']:.2f}%" for r, v in results["rules"].items())
    if "group_acc" in results:
        line += f" | group acc {100 * results['group_acc']:.2f}% within {100 * results['within_acc']:.2f}%"
    if "truth" in results:  # scored against the data set's own hierarchy
        truth = results["truth"]
        severity = "no mistakes" if truth["mistake_severity"] is None else f"{truth['mistake_severity']:.2f}"
        line += (f" | true tree ({truth['tree']}, {truth['coarse_groups']} groups): coarse top1 "
                 f"{100 * truth['coarse_top1']:.2f}%, mistake severity {severity}")
    return line + f" | {results['wall_time_s']:.0f}s"
