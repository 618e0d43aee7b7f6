"""Identical tensors give identical files, so users can checksum and cache what ccn writes."""

import hashlib
import os
import random
import subprocess
import sys

import torch
from safetensors.torch import load_file

from ccn.checkpoint import read_training_state, save_training_state, save_weights

# builds the same model and optimizer in any process, then writes weights and a training state
WRITER = """
import sys, torch
from ccn.checkpoint import save_training_state, save_weights
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.LazyLinear(2))
model(torch.zeros(1, 3, 5, 5))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
model(torch.randn(2, 3, 5, 5)).sum().backward()
optimizer.step()
meta = {name: str(i) for i, name in enumerate(["format", "model", "classes", "seed", "epochs", "rule", "data"])}
save_weights(model, sys.argv[1] + "/model.safetensors", meta)
torch.manual_seed(1)
save_training_state(sys.argv[1] + "/checkpoint.safetensors", model, optimizer, {"epoch": 3, "stage": "ccn", "x": [1, 2]})
"""


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_processes_write_the_same_bytes(tmp_path):
    digests = []
    for hash_seed in ("1", "2"):  # the metadata order used to vary from process to process
        out = tmp_path / hash_seed
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", WRITER, str(out)], check=True, env=env)
        digests.append((sha256(out / "model.safetensors"), sha256(out / "checkpoint.safetensors")))
    assert digests[0] == digests[1]


def test_dict_order_does_not_change_the_bytes_and_files_load_back(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    meta = {f"key{i}": str(i) for i in range(8)}
    shuffled = list(meta.items())
    random.Random(0).shuffle(shuffled)
    save_weights(model, tmp_path / "a.safetensors", meta)
    save_weights(model, tmp_path / "b.safetensors", dict(shuffled))
    assert sha256(tmp_path / "a.safetensors") == sha256(tmp_path / "b.safetensors")
    loaded = load_file(str(tmp_path / "a.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(tmp_path / "state.safetensors", model, optimizer, {"epoch": 1, "é": "non-ascii"})
    tensors, state = read_training_state(tmp_path / "state.safetensors")
    assert state["epoch"] == 1 and state["é"] == "non-ascii"
    assert torch.equal(tensors["model.0.weight"], model[0].weight)
