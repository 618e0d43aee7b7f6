"""Progress bars: rate and time left on a terminal, nothing at all elsewhere or when switched off."""

import io
import re
import sys
import time

import pytest
import torch
from PIL import Image

from ccn import progress
from ccn.config import TrainConfig
from ccn.data.augment import Normalize
from ccn.data.store import decode_split
from ccn.data.loader import TensorBatches
from ccn.heads import FlatHead
from ccn.models import Classifier
from ccn.models.fastnet import FastNet
from ccn.train import Trainer

# "3/3 [00:00<00:00, 12.34batch/s]": done/total, elapsed < time left, rate
BAR = re.compile(r"(\d+)/(\d+) \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(\w+)/s\]")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _switch_restored():
    progress.set_enabled(True)  # an earlier test in this process may have run the CLI with train.progress=false
    yield
    progress.set_enabled(True)


def test_a_bar_shows_count_rate_and_time_left_on_a_terminal():
    stream = FakeTerminal()
    bar = progress.progress_bar(total=4, desc="epoch 1", unit="batch", stream=stream)
    for _ in range(3):
        time.sleep(0.01)  # a rate needs some time to pass
        bar.update(1)
    bar.refresh()
    drawn = BAR.findall(stream.getvalue())
    assert ("3", "4", "batch") in drawn and "epoch 1" in stream.getvalue()
    bar.close()


def test_no_terminal_or_switched_off_means_no_output():
    plain, terminal = io.StringIO(), FakeTerminal()
    assert list(progress.progress_bar(range(5), total=5, stream=plain)) == list(range(5))
    assert list(progress.progress_bar(range(5), total=5, stream=terminal, enabled=False)) == list(range(5))
    progress.set_enabled(False)
    assert list(progress.progress_bar(range(5), total=5, stream=terminal)) == list(range(5))
    assert plain.getvalue() == "" and terminal.getvalue() == ""


def _tiny_trainer(show: bool):
    torch.manual_seed(0)
    model = Classifier(FastNet(width=4), FlatHead(FastNet(width=4).num_features, 3))
    images, labels = torch.randint(0, 255, (24, 3, 8, 8), dtype=torch.uint8), torch.arange(24) % 3
    batches = TensorBatches(images, labels, 8, Normalize([0.5] * 3, [0.25] * 3))
    return Trainer(model, TrainConfig(epochs=1, progress=show), torch.device("cpu"), len(batches), len(batches)), batches


@pytest.mark.parametrize("show", [True, False])
def test_training_epochs_draw_a_bar_unless_train_progress_is_false(monkeypatch, show):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    trainer, batches = _tiny_trainer(show)
    trainer.train_epoch(batches, epoch=1)
    assert ("epoch 1" in terminal.getvalue() and "/3 [" in terminal.getvalue()) == show


def test_decoding_a_folder_draws_a_bar(monkeypatch, tmp_path):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    items = []
    for i in range(4):
        Image.new("RGB", (6, 6), (i, 2 * i, 3 * i)).save(tmp_path / f"{i}.png")
        items.append((tmp_path / f"{i}.png", i % 2))
    images, _ = decode_split(items, 4, skip_bad=False)
    assert images.shape == (4, 3, 4, 4)
    assert "decoding 4 images" in terminal.getvalue() and "img" in terminal.getvalue()


def test_experiment_counts_runs_done_out_of_total(monkeypatch, tmp_path):
    from ccn import experiment, report
    from ccn.grid import load_grid
    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("base: {data: {name: synthetic}}\nvariants: [flat, ccn, random]\nseeds: [0, 1]\n")
    done = []
    monkeypatch.setattr(experiment, "_run_one", lambda grid, out, variant, seed, cache, log: done.append(variant))
    monkeypatch.setattr(report, "write_report", lambda grid, out, seconds: {})  # training is tested elsewhere
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    experiment.run_grid(load_grid(grid_file), tmp_path / "out")
    assert len(done) == 6 and "experiment runs" in terminal.getvalue() and "/6 [" in terminal.getvalue()
