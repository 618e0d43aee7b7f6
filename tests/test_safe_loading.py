"""Files from strangers never run code: weights, checkpoints and caches that carry a payload are refused."""

import pickle

import numpy as np
import pytest
import torch

from ccn.checkpoint import load_weights, read_training_state
from ccn.errors import CCNError


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):  # unpickling this would create a file
        return (open, (self.target, "w"))


def test_pickled_weights_are_refused(tmp_path):
    target = tmp_path / "pwned"
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps({"weight": _Payload(target)}))
    with pytest.raises(CCNError, match="cannot read weights"):
        load_weights(torch.nn.Linear(2, 2), fake)
    assert not target.exists()


def test_pickled_checkpoint_is_refused(tmp_path):
    target = tmp_path / "pwned"
    fake = tmp_path / "checkpoint.safetensors"
    torch.save({"model": _Payload(target)}, fake)  # the format a torch.load-based tool would read
    with pytest.raises(CCNError, match="cannot read checkpoint"):
        read_training_state(fake)
    assert not target.exists()


def test_image_cache_with_a_payload_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    from ccn.config import DataConfig
    from ccn.data import folder, load_dataset
    from PIL import Image
    for split, cls in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):
        (tmp_path / "d" / split / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "d" / split / cls / "x.png")
    cfg = DataConfig(name="folder", root=str(tmp_path / "d"), image_size=8)
    load_dataset(cfg)
    target = tmp_path / "pwned"
    cached_files = list(folder.cache_dir().glob("*"))
    assert cached_files
    for cached in cached_files:  # replace every cache file (data and sidecar) with a pickled object array
        with open(cached, "wb") as handle:
            np.savez(handle, images=np.array([_Payload(target)], dtype=object), labels=np.zeros(1))
    ds = load_dataset(cfg)
    assert not target.exists() and ds.train_images.shape == (2, 3, 8, 8)
