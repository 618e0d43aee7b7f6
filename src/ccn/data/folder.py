"""Image folders (`root/{train,test}/<class>/*`) and Caltech-101, decoded once and cached.

Images are read by ccn.data.images: JPEG, PNG, BMP, GIF, TIFF, WebP and PPM only, checked by
content, up to a pixel limit; every mode becomes RGB and is resized to `image_size` x `image_size`. Decoded splits go into a store
(ccn.data.store: in memory or memory-mapped from the cache) keyed by the file list, sizes and
modification times, so a changed folder is read again.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Optional

from ccn.data.base import ImageDataset
from ccn.data.images import image_extensions
from ccn.data.store import StoreOptions, cache_dir, stored_splits  # noqa: F401  (cache_dir: where stores live)
from ccn.errors import CCNError, DataError
from ccn.validate import read_text

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


# ---------------------------------------------------------------- readers


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder: set data.root to the folder that holds the images")


def load_folder(root: Path, size: Optional[int], options: StoreOptions) -> ImageDataset:
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
    return ImageDataset(name="folder", classes=classes, **stored_splits("folder", train_items, test_items, size, options))


SPLIT_LISTS = ("train.txt", "test.txt")  # Caltech-101's fixed split, beside 101_ObjectCategories when a copy has one
MAX_LIST_BYTES = 64 * 2**20  # 9,144 images take about 300 KB


def caltech_split(base: Path, listing: dict[str, list[Path]], per_class: int = 30,
                  seed: int = 0) -> tuple[list[Path], list[Path]]:
    """train.txt/test.txt when both exist beside the images, else `per_class` random training images per class."""
    lists = [base.parent / name for name in SPLIT_LISTS]
    present = [p for p in lists if os.path.lexists(p)]
    if present:
        if len(present) == 1:
            absent = next(p for p in lists if p not in present)
            raise DataError(f"{present[0]} is there but {absent} is not: a fixed split needs both lists; restore "
                            f"{absent.name}, or remove {present[0].name} to use the random split (30 per class)")
        return _listed_split(base, lists)
    rng = random.Random(seed)
    train, test = [], []
    for files in listing.values():
        shuffled = files[:]
        rng.shuffle(shuffled)
        train += shuffled[:per_class]
        test += shuffled[per_class:]
    return train, test


def _read_list(path: Path) -> list[str]:
    """The image paths a split list names, one per line (relative to 101_ObjectCategories)."""
    fix = "each line must name one image as <class>/<file>; restore the list, or remove both lists"
    try:
        text = read_text(path, "split list", fix, limit=MAX_LIST_BYTES)
    except CCNError as err:
        raise DataError(str(err)) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    outside = next((name for name in names if Path(name).is_absolute() or ".." in Path(name).parts), None)
    if outside is not None:  # the list may only choose among the images beside it
        raise DataError(f"split list {path} names {outside!r}, which is not inside {path.parent}: {fix}")
    repeated = next((name for name, count in Counter(names).items() if count > 1), None)
    if repeated is not None:
        raise DataError(f"split list {path} names {repeated} twice, and it would count twice: {fix}")
    return names


def _listed_split(base: Path, lists: list[Path]) -> tuple[list[Path], list[Path]]:
    train_names, test_names = (_read_list(p) for p in lists)
    shared = sorted(set(train_names) & set(test_names))
    if shared:
        raise DataError(f"{lists[0]} and {lists[1]} both name {len(shared)} image(s) (e.g. {shared[0]}): a run would "
                        "train on images it is scored on; restore the lists of the split you use")
    train, test = [base / name for name in train_names], [base / name for name in test_names]
    missing = [p for p in train + test if not p.exists()]
    if missing:
        raise DataError(f"{lists[0].parent}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    return train, test


def load_caltech101(root: Path, size: Optional[int], options: StoreOptions, include_background: bool) -> ImageDataset:
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
    fields = stored_splits("caltech101", train_items, test_items, size, options)
    fields["notes"]["split"] = "train.txt/test.txt" if os.path.lexists(base.parent / "train.txt") else "30 per class, seed 0"
    return ImageDataset(name="caltech101", classes=classes, **fields)


