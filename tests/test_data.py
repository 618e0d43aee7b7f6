import pickle
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from ccn.config import DataConfig
from ccn.data import cifar, load_dataset
from ccn.data.folder import caltech_split
from ccn.errors import DataError


def _write_pickle(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)  # the protocol of the official files


def write_cifar10(root, per_batch=6):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_pickle(folder / name, {"batch_label": name, "labels": rng.integers(0, 10, per_batch).tolist(),
                                      "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                                      "filenames": [f"{i}.png" for i in range(per_batch)]})
    _write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072})
    return folder


def write_cifar100(root, n=40):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    fine = np.arange(n) % 100
    for name in ("train", "test"):
        _write_pickle(folder / name, {"fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                                      "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                      "filenames": [f"{i}.png" for i in range(n)], "batch_label": name})
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                                    "coarse_label_names": [f"k{i}" for i in range(20)]})
    return folder


def test_cifar10_layout_is_read_exactly(tmp_path):
    folder = write_cifar10(tmp_path)
    ds = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    first = pickle.load(open(folder / "data_batch_1", "rb"), encoding="latin1")
    assert ds.train_images.shape == (30, 3, 32, 32) and ds.test_images.shape == (6, 3, 32, 32)
    assert torch.equal(ds.train_images[0].flatten(), torch.from_numpy(first["data"][0]))  # CHW row order
    assert ds.train_labels[:6].tolist() == [int(v) for v in first["labels"]]
    assert ds.classes[3] == "c3"


def test_cifar100_fine_and_coarse(tmp_path):
    write_cifar100(tmp_path)
    ds = load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))
    assert ds.num_classes == 100 and ds.coarse[:10] == [0] * 5 + [1] * 5 and ds.coarse_names[0] == "k0"


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # loading this would create a file
        return (open, (str(self.target), "w"))


def test_payload_pickle_is_refused_and_never_runs(tmp_path):
    folder = write_cifar10(tmp_path)
    target = tmp_path / "pwned"
    _write_pickle(folder / "test_batch", {"data": _Payload(target)})
    with pytest.raises(DataError, match="refused by the safe CIFAR reader"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert not target.exists()


def test_truncated_cifar_file(tmp_path):
    folder = write_cifar10(tmp_path)
    data = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data_batch_2 is truncated"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_wrong_format_cifar_file(tmp_path):
    folder = write_cifar10(tmp_path)
    _write_pickle(folder / "test_batch", {"labels": [1], "data": np.zeros((1, 10), np.uint8)})
    with pytest.raises(DataError, match="3072"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))


def test_missing_cifar_says_how_to_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(DataConfig(name="cifar100", root=str(tmp_path)))


def test_offline_download_is_one_clear_error(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(cifar.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download .*check the network"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=True))
    assert not list(tmp_path.iterdir())  # no partial download left behind


def test_bad_checksum_is_refused(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=True))


def test_good_archive_is_unpacked(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar10(src)
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(cifar.ARCHIVES, "cifar10", (cifar.ARCHIVES["cifar10"][0], cifar.md5sum(archive),
                                                    "cifar-10-batches-py"))
    ds = load_dataset(DataConfig(name="cifar10", root=str(archive.parent), download=True))
    assert len(ds.train_labels) == 30


def _save(path, mode, size=(20, 12), colour=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode in ("L", "P") else (colour,) * len(mode)).save(path)


def make_folder(root):
    _save(root / "train" / "cat" / "a.jpg", "RGB")
    _save(root / "train" / "cat" / "grey.jpg", "L", colour=200)  # greyscale JPEG
    _save(root / "train" / "dog" / "b.png", "RGBA")
    _save(root / "train" / "dog" / "c.bmp", "RGB", colour=10)
    _save(root / "test" / "cat" / "d.jpg", "RGB")
    _save(root / "test" / "dog" / "e.png", "RGB")
    (root / "train" / "dog" / "notes.txt").write_text("not an image: ignored")


def test_folder_reader_converts_and_resizes(tmp_path):
    make_folder(tmp_path)
    ds = load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=8))
    assert ds.classes == ["cat", "dog"] and ds.train_images.shape == (4, 3, 8, 8)
    grey = ds.train_images[1]
    assert torch.equal(grey[0], grey[1]) and abs(int(grey[0, 4, 4]) - 200) <= 2  # grey -> equal RGB channels
    assert ds.train_labels.tolist() == [0, 0, 1, 1]


def test_folder_cache_is_used_and_refreshed(tmp_path, monkeypatch):
    make_folder(tmp_path / "d")
    cfg = DataConfig(name="folder", root=str(tmp_path / "d"), image_size=8)
    load_dataset(cfg)
    from ccn.data import store
    calls = []
    real = store.decode_split
    monkeypatch.setattr(store, "decode_split", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_dataset(cfg)
    assert calls == []  # both splits came from the cache
    _save(tmp_path / "d" / "train" / "cat" / "new.png", "RGB", colour=50)
    ds = load_dataset(cfg)
    assert calls == [1] and len(ds.train_labels) == 5  # the changed split was read again


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="broken.jpg.*skip_bad_images"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=8))
    with pytest.warns(UserWarning, match="broken.jpg"):
        ds = load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=8, skip_bad_images=True))
    assert len(ds.train_labels) == 4


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path / "none")))
    (tmp_path / "train" / "empty").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))


def test_one_class_is_refused(tmp_path):
    _save(tmp_path / "train" / "only" / "a.png", "RGB")
    _save(tmp_path / "test" / "only" / "b.png", "RGB")
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))


def test_caltech_protocol_without_lists(tmp_path):
    base = tmp_path / "101_ObjectCategories"
    listing = {}
    for c in ("a", "b"):
        listing[c] = []
        for i in range(40):
            p = base / c / f"image_{i:04d}.jpg"
            listing[c].append(p)
    train, test = caltech_split(base, listing, per_class=30, seed=0)
    assert len(train) == 60 and len(test) == 20 and not set(train) & set(test)
    assert caltech_split(base, listing, 30, 0) == (train, test)  # seeded


def test_caps_and_builtin_sets():
    digits = load_dataset(DataConfig(name="digits", train_per_class=5, test_per_class=3))
    assert torch.bincount(digits.train_labels).tolist() == [5] * 10
    assert torch.bincount(digits.test_labels).tolist() == [3] * 10
    syn = load_dataset(DataConfig(name="synthetic", num_classes=6, num_groups=2, train_per_class=4))
    assert syn.coarse == [0, 1, 0, 1, 0, 1] and syn.train_images.shape == (24, 3, 16, 16)
