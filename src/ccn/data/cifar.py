"""CIFAR-10 and CIFAR-100 in the torchvision folder layout, read without running pickled code.

Layout under `data.root`: `cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}` and
`cifar-100-python/{train,test,meta}`. With `data.download=true` the official archive is fetched
and its md5 checked before anything is unpacked.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ccn.data.base import ImageDataset
from ccn.errors import DataError
from ccn.files import atomic_write, open_regular, read_regular_bytes

ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python"),
}

def _numpy_globals() -> dict:
    """The only globals a CIFAR pickle needs: numpy's array reconstruction (old and new module
    paths) and `_codecs.encode`, which Python 3 pickles use to store bytes. Nothing here runs code."""
    import codecs

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    frombuffer = core.numeric._frombuffer
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }


class RefusedGlobal(pickle.UnpicklingError):
    """The file asked for a global outside the allowed set: it may carry code."""


MAX_PICKLE_BYTES = 512 * 2**20  # CIFAR-100's train file, the largest, is 155 MB


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits plain containers and numpy arrays; refuses every other global, so no code runs."""

    allowed = _numpy_globals()

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"global {module}.{name} is not allowed in a CIFAR file") from None


def safe_unpickle(path: Path) -> dict:
    """Load one CIFAR pickle through the restricted unpickler; DataError on anything else. The file is
    read whole, and only a regular file of at most MAX_PICKLE_BYTES (a FIFO there would block for ever)."""
    data = read_regular_bytes(path, MAX_PICKLE_BYTES, "CIFAR file", "replace it with the official file, or delete it "
                              "and download again with --set data.download=true", error=DataError)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedGlobal as err:
        raise DataError(f"{path} was refused by the safe CIFAR reader ({err}): replace it with the official file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as err:
        raise DataError(f"{path} is truncated or not a CIFAR pickle ({type(err).__name__}): delete it and "
                        "download again with --set data.download=true") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a CIFAR dictionary: replace it with the official file")
    return obj


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise DataError(f"{path} has no {key!r} entry: it is not a CIFAR file of this kind")
    return batch[key]


def _images(batch: dict, path: Path) -> np.ndarray:
    data = np.asarray(_field(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be uint8 rows of 3072 values, got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32)


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open_regular(path, None, "CIFAR archive", "delete it and download again", error=DataError) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, dest: Path, root: Path) -> None:
    """Copy `url` into `dest`; a network failure is a DataError, a failed write an OSError (atomic_write's)."""
    try:
        response = urllib.request.urlopen(url, timeout=60)
    except (urllib.error.URLError, OSError) as err:
        raise DataError(f"could not download {url} ({getattr(err, 'reason', err)}): check the network, or fetch "
                        f"the file by hand into {root}") from None
    with response, open(dest, "wb") as out:
        while True:
            try:
                block = response.read(1 << 20)
            except OSError as err:  # the connection broke half-way
                raise DataError(f"could not download {url} ({err}): check the network, or fetch the file by hand "
                                f"into {root}") from None
            if not block:
                return
            out.write(block)


def download(name: str, root: Path) -> None:
    """Fetch and unpack the official archive into root, refusing it on a checksum mismatch."""
    url, md5, _ = ARCHIVES[name]
    root.mkdir(parents=True, exist_ok=True)
    archive = root / url.rsplit("/", 1)[1]
    if not archive.exists():
        atomic_write(archive, lambda tmp: _fetch(url, tmp, root))  # never half a file under the archive's name
    actual = md5sum(archive)
    if actual != md5:
        raise DataError(f"{archive} has md5 {actual}, expected {md5}: delete it and download again")
    with tarfile.open(archive, "r:gz") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(root, filter="data")
        else:  # Python < 3.11.4: refuse members that would land outside root
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise DataError(f"{archive} holds an unsafe path {member.name!r}: delete the archive")
            tar.extractall(root)


def _locate(name: str, root: Path, allow_download: bool) -> Path:
    url, _, folder = ARCHIVES[name]
    path = root / folder
    if not path.is_dir():
        if not allow_download:
            raise DataError(f"{name} not found at {path}: add --set data.download=true to fetch {url}, or set "
                            "data.root to the folder holding the torchvision layout")
        download(name, root)
    return path


def load_cifar10(root: Path, download_ok: bool) -> ImageDataset:
    folder = _locate("cifar10", root, download_ok)
    train = [safe_unpickle(folder / f"data_batch_{i}") for i in range(1, 6)]
    test = safe_unpickle(folder / "test_batch")
    meta = safe_unpickle(folder / "batches.meta")
    classes = list(_field(meta, "label_names", folder / "batches.meta"))
    x_train = np.concatenate([_images(b, folder / "data_batch") for b in train])
    y_train = np.concatenate([np.asarray(_field(b, "labels", folder / "data_batch")) for b in train])
    return ImageDataset(
        name="cifar10", classes=classes,
        train_images=torch.from_numpy(x_train), train_labels=torch.as_tensor(y_train, dtype=torch.long),
        test_images=torch.from_numpy(_images(test, folder / "test_batch")),
        test_labels=torch.as_tensor(np.asarray(_field(test, "labels", folder / "test_batch")), dtype=torch.long),
    )


def load_cifar100(root: Path, download_ok: bool) -> ImageDataset:
    folder = _locate("cifar100", root, download_ok)
    train, test, meta = (safe_unpickle(folder / n) for n in ("train", "test", "meta"))
    fine_train = np.asarray(_field(train, "fine_labels", folder / "train"))
    coarse_train = np.asarray(_field(train, "coarse_labels", folder / "train"))
    classes = list(_field(meta, "fine_label_names", folder / "meta"))
    coarse = [-1] * len(classes)
    for fine, coarse_label in zip(fine_train.tolist(), coarse_train.tolist()):
        coarse[fine] = coarse_label
    return ImageDataset(
        name="cifar100", classes=classes,
        train_images=torch.from_numpy(_images(train, folder / "train")),
        train_labels=torch.as_tensor(fine_train, dtype=torch.long),
        test_images=torch.from_numpy(_images(test, folder / "test")),
        test_labels=torch.as_tensor(np.asarray(_field(test, "fine_labels", folder / "test")), dtype=torch.long),
        coarse=coarse, coarse_names=list(_field(meta, "coarse_label_names", folder / "meta")),
    )
