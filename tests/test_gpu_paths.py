"""The CUDA and torchrun code paths, checked here without a GPU: what each predicted failure of
issue 12 needs (backends requested, where tensors live, seeds per rank, float32 sums)."""

import os
from pathlib import Path

import pytest
import torch

from ccn import config as cfgmod
from ccn.dist import World, autocast, backend_for, configure_backends, resolve_device, stream_seed, seed_stream, uses_bf16
from ccn.errors import ConfigError


def test_the_cuda_process_group_gets_gloo_beside_nccl(monkeypatch):
    from ccn import dist
    asked = {}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: asked.update(kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    dist.init_distributed(World(0, 2, 0), torch.device("cuda:0"))
    assert asked["backend"] == "cpu:gloo,cuda:nccl"  # a CPU tensor in a collective no longer crashes
    assert backend_for(torch.device("cpu")) == "gloo"


def test_profile_sums_stay_on_the_device_until_reduced(monkeypatch):
    """NCCL reduces only CUDA tensors: the sums must not be moved to the CPU before the all-reduce."""
    from ccn.hierarchy import class_profiles, profiles
    reduced = []
    monkeypatch.setattr(profiles, "all_reduce_sum", lambda t: reduced.append(t) or t)

    def no_cpu(self):
        raise AssertionError("a tensor was moved to the CPU before the reduction")

    tally = profiles.ProfileSums()
    monkeypatch.setattr(torch.Tensor, "cpu", no_cpu)
    probs = torch.softmax(torch.randn(12, 4, dtype=torch.float64), 1)
    tally.add(probs, torch.arange(12) % 4, 4)
    tally.add(probs, torch.arange(12) % 4, 4)
    monkeypatch.undo()
    monkeypatch.setattr(profiles, "all_reduce_sum", lambda t: reduced.append(t) or t)
    summed = tally.profiles()
    assert [t.dtype for t in reduced] == [torch.float64, torch.float64]
    assert torch.allclose(summed, class_profiles(probs, torch.arange(12) % 4, 4))


def test_deterministic_mode_sets_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        configure_backends(torch.device("cuda"), deterministic=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        configure_backends(torch.device("cuda"), deterministic=False)
        assert torch.backends.cudnn.benchmark  # autotuned convolutions when not deterministic
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False


def test_one_gpu_named_under_torchrun_is_refused():
    with pytest.raises(ConfigError, match="device=cuda"):
        resolve_device("cuda:1", World(0, 2, 0))


def test_stale_tmp_files_vanishing_under_another_rank_are_fine(tmp_path, monkeypatch):
    from ccn.runs import resume_run_dir, start_run_dir
    start_run_dir(tmp_path, cfgmod.Config())
    gone = tmp_path / ".checkpoint.safetensors.123.tmp"  # listed, then unlinked by the faster rank
    real_glob = Path.glob
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter([gone]) if pattern == ".*.tmp"
                        else real_glob(self, pattern))
    assert resume_run_dir(tmp_path) is not None


def test_per_rank_seeds_differ_and_replay():
    assert len({stream_seed(0, rank, 3) for rank in range(8)}) == 8
    assert stream_seed(0, 0, 3) != stream_seed(0, 0, 4) != stream_seed(1, 0, 3)
    masks = []
    for rank in (0, 1, 0):
        seed_stream(0, rank, 1)
        masks.append(torch.nn.functional.dropout(torch.ones(256), 0.5))
    assert not torch.equal(masks[0], masks[1])  # ranks no longer repeat each other's masks
    assert torch.equal(masks[0], masks[2])  # a resumed epoch replays its rank's stream


def test_shakedrop_keep_probability_survives_bf16():
    from ccn.models.pyramidnet import _ShakeDropFunction
    torch.manual_seed(0)
    x = torch.ones(100_000, 1, 1, 1, dtype=torch.bfloat16)
    out = _ShakeDropFunction.apply(x, 0.999)  # 0.999 is 1.0 in bfloat16: no image would ever be dropped
    dropped = int((out != 1).sum())
    assert 30 < dropped < 300  # about 100 expected


def test_bf16_is_auto_on_cuda_and_honoured_on_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert uses_bf16(cuda, None) and not uses_bf16(cpu, None) and uses_bf16(cpu, True) and not uses_bf16(cuda, False)
    with autocast(cpu, True):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    assert cfgmod.load(None, ["train.bf16=true"]).train.bf16 is True
    assert cfgmod.Config().train.bf16 is None


class _ConstantLossHead(torch.nn.Module):
    """Returns a bf16 loss of exactly 0.05 and records the dtype the trainer hands it."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def loss(self, out, y, label_smoothing=0.0):
        self.seen.add(out["z"].dtype)
        value = (out["z"] * 0).sum() + 0.05
        return {"loss": value.to(torch.bfloat16)}


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.head = _ConstantLossHead()

    def forward(self, x):
        return {"z": self.linear(x.flatten(1).mean(dim=1, keepdim=True).expand(-1, 3))}


def test_logged_loss_equals_the_true_one_over_a_long_bf16_epoch():
    """390 steps of batch 128 (a CIFAR epoch): a bf16 running sum logged 0.041 for a true 0.050."""
    from ccn.config import TrainConfig
    from ccn.data.augment import Normalize
    from ccn.data.loader import TensorBatches
    from ccn.train import Trainer
    steps, batch = 390, 128
    images = torch.zeros(steps * batch, 1, 1, 1, dtype=torch.uint8)
    batches = TensorBatches(images, torch.zeros(steps * batch, dtype=torch.long), batch, Normalize([0.5], [0.5]))
    model = _Tiny()
    cfg = TrainConfig(epochs=1, lr=0.0, momentum=0.0, weight_decay=0.0, bf16=True, progress=False)
    stats = Trainer(model, cfg, torch.device("cpu"), steps, steps).train_epoch(batches, epoch=1)
    assert abs(stats["loss"] - 0.05) < 2e-4  # 0.05 in bf16 is 0.0500488
    assert model.head.seen == {torch.float32}  # the loss always sees float32 outputs


def test_probe_set_train_puts_the_training_images_on_the_device_once():
    from ccn.data import load_dataset
    from ccn.data.prepare import prepare_data
    from ccn.plan import DataFacts, resolve
    config = cfgmod.load(None, ["data.train_per_class=5", "data.test_per_class=2"])
    ds = load_dataset(config.data)
    data = prepare_data(resolve(config, DataFacts.of(ds)), torch.device("meta"), ds=ds)  # each .to("meta") would make a new tensor
    assert data.probe.images is data.train.images and data.probe.labels is data.train.labels


@pytest.mark.slow
def test_a_cpu_run_with_bf16_autocast_trains_and_scores(tmp_path):
    from ccn.pipeline import run_training
    config = cfgmod.load(None, ["data.train_per_class=30", "data.test_per_class=10", "model.width=8",
                                "train.epochs=6", "train.bf16=true", "train.progress=false", "method.depth=2",
                                "method.groups=3", "method.split_min_size=3"])
    results = run_training(config, None)
    assert results["hierarchy"]["how"]["depth"] == 2
    assert results["top1"] > 0.3  # 10 classes: chance is 0.1


def _scoring_setup(rank: int = 0, world: int = 1, batch: int = 7):
    """A three-level head on random features: (model, test batches of this rank, group mask)."""
    from ccn.data.augment import Normalize
    from ccn.data.loader import TensorBatches
    from ccn.heads import ThreeLevelHead

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = ThreeLevelHead(12, [[0, 3, 5], [1, 2], [4]])

        def forward(self, x):
            return self.head(x.flatten(1))

    torch.manual_seed(0)
    model = Features()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (45, 3, 2, 2), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 6, (45,), generator=g)
    batches = TensorBatches(images, labels, batch, Normalize([0.5] * 3, [0.25] * 3), shuffle=False,
                            drop_last=False, rank=rank, world_size=world)
    return model, batches, model.head.mask


def _whole_set_scores(model, batches, mask) -> dict:
    """The scores of the whole set tallied at once, in this process alone (a batch of every image and
    no sum over ranks): what the tally batch by batch, and over ranks, must equal."""
    from ccn.evaluate import ScoreTally, batch_outputs
    tally = ScoreTally(model.head, "soft", mask, batches.labels.device)
    for out, y in batch_outputs(model, batches):
        tally.add(out, y)
    return tally.result(over_ranks=False)


def _same_scores(tallied: dict, whole: dict) -> None:
    assert tallied["top1"] == pytest.approx(whole["top1"]) and tallied["top5"] == pytest.approx(whole["top5"])
    for rule in ("soft", "hard"):
        assert tallied["rules"][rule] == pytest.approx(whole["rules"][rule])
    for key in ("per_class_top1", "per_group_top1", "group_acc", "within_acc"):
        assert tallied[key] == pytest.approx(whole[key])


def test_scores_tallied_batch_by_batch_equal_the_whole_set_scores():
    from ccn.evaluate import score
    model, batches, mask = _scoring_setup(batch=7)  # 45 images: a short last batch
    _same_scores(score(model, batches, mask, "soft"), _whole_set_scores(model, *_scoring_setup(batch=45)[1:]))


def _shares_worker(rank: int, world: int, init_file: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from ccn.evaluate import score
        model, batches, mask = _scoring_setup(rank, world)
        _same_scores(score(model, batches, mask, "soft"), _whole_set_scores(model, *_scoring_setup(batch=45)[1:]))
        _main_rank_goes_first(rank, world, Path(init_file).with_name("downloaded"))
    finally:
        torch.distributed.destroy_process_group()


def _main_rank_goes_first(rank: int, world: int, marker: Path) -> None:
    """What a download under torchrun relies on: rank 0 finishes the block before the others enter it."""
    import time
    from ccn.dist import main_rank_first
    with main_rank_first(World(rank, world, rank), torch.device("cpu")):
        if rank == 0:
            time.sleep(0.5)  # a slow download
            marker.write_text("done")
        else:
            assert marker.read_text() == "done"


def test_each_rank_scores_its_share_and_all_get_the_whole_set_scores_and_rank_0_downloads_first(tmp_path):
    torch.multiprocessing.spawn(_shares_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
