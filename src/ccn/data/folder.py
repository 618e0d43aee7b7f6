"""Image folders (`root/{train,test}/<class>/*`) and Caltech-101, decoded once and cached.

Images are read by ccn.data.images: JPEG, PNG, BMP, GIF, TIFF, WebP and PPM only, checked by
content, up to a pixel limit; every mode becomes RGB and is resized to `image_size` x `image_size`. Decoded splits go into a store
(ccn.data.store: in memory or memory-mapped from the cache) keyed by the file list, sizes and
modification times, so a changed folder is read again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

from ccn.data.base import ImageDataset
from ccn.data.images import image_extensions
from ccn.data.store import StoreOptions, cache_dir, stored_splits  # noqa: F401  (cache_dir: where stores live)
from ccn.errors import DataError

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
    fields["notes"]["split"] = "train.txt/test.txt" if (base.parent / "train.txt").is_file() else "30 per class, seed 0"
    return ImageDataset(name="caltech101", classes=classes, **fields)


