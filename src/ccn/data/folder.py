"""Image folders (`root/{train,test}/<class>/*`) and Caltech-101, decoded once and cached.

Images are read by ccn.data.images: JPEG, PNG, BMP, GIF, TIFF, WebP and PPM only, checked by
content, up to a pixel limit; every mode becomes RGB and is resized to `image_size` x `image_size`. Decoded splits are cached as uint8 arrays keyed by the
file list, sizes and modification times, so a changed folder is read again.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from ccn.data.base import ImageDataset, to_tensor_images
from ccn.data.images import UnreadableImage, decode_image, image_extensions
from ccn.errors import DataError
from ccn.progress import progress_bar

CACHE_VERSION = 2  # 2: format allow-list, 16-bit and float scaling, transparency over white
DEFAULT_FOLDER_SIZE = 32
CALTECH_BACKGROUND = "BACKGROUND_Google"


def is_image_candidate(path: Path, extensions: set[str]) -> bool:
    """Files with the extension of an allowed format, or none at all (Caltech ships one such JPEG).
    The extension only selects candidates: decoding checks the content."""
    return path.is_file() and not path.name.startswith(".") and (path.suffix == "" or path.suffix.lower() in extensions)


def list_class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths} for every sub-folder of `folder`."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data folder {folder} is a file, not a folder: set data.root to a folder with train/ and "
                        "test/ inside")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist: set data.root to a folder with train/ and test/ inside")
    extensions = image_extensions()
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    listing = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if is_image_candidate(p, extensions))
        if not files:
            raise DataError(f"class folder {class_dir} holds no images: add some or remove the folder")
        listing[class_dir.name] = files
    return listing


def _decode_or_reason(args) -> np.ndarray | str:
    """The decoded image, or (with data.skip_bad_images) why it cannot be read."""
    path, size, skip = args
    try:
        return decode_image(path, size)
    except UnreadableImage as err:
        if skip:
            return str(err)
        raise DataError(f"{err}: remove or replace it, or set data.skip_bad_images=true") from None


def decode_split(items: list[tuple[Path, int]], size: int, skip_bad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode (path, label) pairs in parallel into a uint8 (N, 3, size, size) tensor and labels."""
    jobs = [(path, size, skip_bad) for path, _ in items]
    workers = min(os.cpu_count() or 1, 8)
    shown = dict(total=len(jobs), desc=f"decoding {len(jobs)} images", unit="img")
    if len(jobs) > 256 and workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(progress_bar(pool.map(_decode_or_reason, jobs, chunksize=64), **shown))
    else:
        arrays = list(progress_bar(map(_decode_or_reason, jobs), **shown))
    kept = [(a, label) for a, (_, label) in zip(arrays, items) if not isinstance(a, str)]
    for a in arrays:
        if isinstance(a, str):
            warnings.warn(f"skipped: {a}", stacklevel=2)
    if not kept:
        raise DataError("no readable images in this split: check the data folder")
    images = to_tensor_images(np.stack([a for a, _ in kept]))
    return images, torch.tensor([label for _, label in kept], dtype=torch.long)


# ---------------------------------------------------------------- cache


def cache_dir() -> Path:
    return Path(os.environ.get("CCN_CACHE_DIR", Path.home() / ".cache" / "ccn"))


def cache_key(kind: str, items: list[tuple[Path, int]], size: int, extra: str = "") -> str:
    digest = hashlib.sha256(f"{kind}|{size}|{CACHE_VERSION}|{extra}".encode())
    for path, label in items:
        stat = path.stat()
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cached_decode(kind: str, items: list[tuple[Path, int]], size: int, skip_bad: bool,
                  use_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """decode_split, read from / written to the cache when `use_cache`."""
    if not use_cache:
        return decode_split(items, size, skip_bad)
    path = cache_dir() / f"{kind}-{cache_key(kind, items, size, str(skip_bad))}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as saved:
                return torch.from_numpy(saved["images"]), torch.from_numpy(saved["labels"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache entry is simply rebuilt
    images, labels = decode_split(items, size, skip_bad)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(handle, images=images.numpy(), labels=labels.numpy())
        os.replace(tmp, path)
    except OSError as err:  # a full or read-only cache costs time, not the run
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        warnings.warn(f"could not write the image cache at {path} ({err}); set CCN_CACHE_DIR to a writable folder",
                      stacklevel=2)
    return images, labels


# ---------------------------------------------------------------- readers


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder: set data.root to the folder that holds the images")


def load_folder(root: Path, size: Optional[int], skip_bad: bool, use_cache: bool) -> ImageDataset:
    size = size or DEFAULT_FOLDER_SIZE
    _check_root(root)
    train = list_class_files(root / "train")
    test = list_class_files(root / "test")
    classes = list(train)
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise DataError(f"{root}/test has classes with no training folder: {', '.join(unknown[:5])}: "
                        "add them under train/ or remove them from test/")
    index = {name: i for i, name in enumerate(classes)}
    train_items = [(p, index[c]) for c, files in train.items() for p in files]
    test_items = [(p, index[c]) for c, files in test.items() for p in files]
    x_train, y_train = cached_decode("folder", train_items, size, skip_bad, use_cache)
    x_test, y_test = cached_decode("folder", test_items, size, skip_bad, use_cache)
    return ImageDataset(name="folder", classes=classes, train_images=x_train, train_labels=y_train,
                        test_images=x_test, test_labels=y_test)


def caltech_split(base: Path, listing: dict[str, list[Path]], per_class: int = 30,
                  seed: int = 0) -> tuple[list[Path], list[Path]]:
    """train.txt/test.txt when both exist beside the images, else `per_class` random training images per class."""
    lists = [base.parent / "train.txt", base.parent / "test.txt"]
    if all(p.is_file() for p in lists):
        train, test = ([base / line.strip() for line in p.read_text().splitlines() if line.strip()] for p in lists)
        missing = [p for p in train + test if not p.exists()]
        if missing:
            raise DataError(f"{lists[0].parent}: {len(missing)} listed files are missing, e.g. {missing[0]}")
        return train, test
    rng = random.Random(seed)
    train, test = [], []
    for files in listing.values():
        shuffled = files[:]
        rng.shuffle(shuffled)
        train += shuffled[:per_class]
        test += shuffled[per_class:]
    return train, test


def load_caltech101(root: Path, size: Optional[int], skip_bad: bool, use_cache: bool,
                    include_background: bool) -> ImageDataset:
    size = size or DEFAULT_FOLDER_SIZE
    _check_root(root)
    base = root / "101_ObjectCategories"
    if not base.is_dir() and root.name == "101_ObjectCategories":
        base = root
    if not base.is_dir():
        raise DataError(f"Caltech-101 not found: expected {base}/<class>/image_*.jpg; set data.root to the folder "
                        "that holds 101_ObjectCategories")
    listing = list_class_files(base)
    if not include_background:
        listing.pop(CALTECH_BACKGROUND, None)
    classes = list(listing)
    index = {name: i for i, name in enumerate(classes)}
    train_paths, test_paths = caltech_split(base, listing)
    label = lambda p: index.get(p.parent.name)  # noqa: E731
    train_items = [(p, label(p)) for p in train_paths if label(p) is not None]
    test_items = [(p, label(p)) for p in test_paths if label(p) is not None]
    x_train, y_train = cached_decode("caltech101", train_items, size, skip_bad, use_cache)
    x_test, y_test = cached_decode("caltech101", test_items, size, skip_bad, use_cache)
    return ImageDataset(name="caltech101", classes=classes, train_images=x_train, train_labels=y_train,
                        test_images=x_test, test_labels=y_test, notes={"split": "train.txt/test.txt"
                        if (base.parent / "train.txt").is_file() else "30 per class, seed 0"})


