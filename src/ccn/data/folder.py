"""Image folders (`root/{train,test}/<class>/*`, or nested by group) and Caltech-101, decoded once
and cached.

An image folder is flat, `root/train/<class>/*` and `root/test/<class>/*` (classes in sorted order),
or nested one level deeper, `root/train/<group>/<class>/*` and the same under test/, the layout of
iNaturalist-style trees. In a nested folder the leaves are the classes, named `<group>/<class>` (so
two groups may each hold a class of the same name), in sorted order of group, then class; the group
folders are the coarse labels (`coarse`, `coarse_names`), which method.partition=oracle uses as its
groups. test/ must use the same tree: a class may be missing there, but not sit under another group.
A folder is nested when its top folders hold class folders of images instead of images; a top folder
holding both (or a train/ with some of each) is refused, since either reading would leave images out.
Sub-folders of a flat class folder that hold no images are ignored, as they always were.

Images are read by ccn.data.images: JPEG, PNG, BMP, GIF, TIFF, WebP and PPM only, checked by
content, up to a pixel limit; every mode becomes RGB and is resized to `image_size` x `image_size`. Decoded splits go into a store
(ccn.data.store: in memory or memory-mapped from the cache) keyed by the file list, sizes and
modification times, so a changed folder is read again.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ccn.data.base import ImageDataset
from ccn.data.images import image_extensions
from ccn.data.store import StoreOptions, cache_dir, stored_splits  # noqa: F401  (cache_dir: where stores live)
from ccn.errors import CCNError, DataError
from ccn.file_checks import read_text

DEFAULT_FOLDER_SIZE = 32
CALTECH_BACKGROUND = "BACKGROUND_Google"


def is_image_candidate(path: Path, extensions: set[str]) -> bool:
    """Files with the extension of an allowed format, or none at all (Caltech ships one such JPEG).
    The extension only selects candidates: decoding checks the content."""
    return path.is_file() and not path.name.startswith(".") and (path.suffix == "" or path.suffix.lower() in extensions)


def _class_folders(folder: Path) -> list[Path]:
    """The sorted, visible sub-folders of a split folder; one line when there is none (or no folder)."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data folder {folder} is a file, not a folder: set data.root to a folder with train/ and "
                        "test/ inside")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist: set data.root to a folder with train/ and test/ inside")
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders: expected {folder}/<class>/<image files>")
    return classes


def list_class_files(folder: Path) -> dict[str, list[Path]]:
    """{class name: sorted image paths} for every sub-folder of `folder`."""
    classes = _class_folders(folder)
    extensions = image_extensions()
    listing = {}
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if is_image_candidate(p, extensions))
        if not files:
            raise DataError(f"class folder {class_dir} holds no images: add some or remove the folder")
        listing[class_dir.name] = files
    return listing


@dataclass
class SplitListing:
    """One split of an image folder: {class name: sorted image paths}, and for a nested folder each
    class's group (its name is `<group>/<class>`)."""

    files: dict[str, list[Path]]
    group_of: Optional[dict[str, str]] = None

    @property
    def nested(self) -> bool:
        return self.group_of is not None

    def layout(self) -> str:
        return "nested (<group>/<class>/<images>)" if self.nested else "flat (<class>/<images>)"


def _scan(folder: Path, extensions: set[str]) -> tuple[Optional[str], list[Path]]:
    """(the name of an image file in `folder`, or None; its visible sub-folders): one directory read,
    the types taken from the directory entries (no stat per file). Image files are what
    is_image_candidate takes: an allowed extension, or none."""
    image, sub_folders = None, []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                sub_folders.append(folder / entry.name)
            elif entry.is_file() and (Path(entry.name).suffix == "" or Path(entry.name).suffix.lower() in extensions):
                image = min(image or entry.name, entry.name)
    return image, sorted(sub_folders)


def list_split(folder: Path) -> SplitListing:
    """A split of an image folder: flat (`folder/<class>/*`, listed exactly as list_class_files
    always did, sub-folders of a class that hold no images ignored) or nested
    (`folder/<group>/<class>/*`); one line for a mix of the two."""
    extensions = image_extensions()
    tops = _class_folders(folder)
    flat, groups = [], []
    for top in tops:
        image, sub_folders = _scan(top, extensions)
        classes = [sub for sub in sub_folders if _scan(sub, extensions)[0]]
        if image and classes:
            raise DataError(f"{top} holds both image files ({image}) and class folders of images ({classes[0].name}): "
                            "a flat class folder holds only images, a nested group folder only class folders; move "
                            "the images into a class folder, or the class folders out")
        if image or classes:  # a folder with neither is empty in either reading, and named as such below
            (groups if classes else flat).append(top)
    if not groups:
        return SplitListing(list_class_files(folder))
    if flat:
        raise DataError(f"{folder} mixes group folders of class folders ({groups[0].name}) with class folders "
                        f"that are not in a group ({flat[0].name}): use one layout, {folder}/<class>/<images> or "
                        f"{folder}/<group>/<class>/<images>")
    return _nested_split(tops, extensions)


def _nested_split(groups: list[Path], extensions: set[str]) -> SplitListing:
    """{`<group>/<class>`: sorted image paths} in sorted order of group, then class."""
    files, group_of = {}, {}
    for group in groups:
        class_dirs = _scan(group, extensions)[1]
        if not class_dirs:
            raise DataError(f"group folder {group} holds no class folders: add some or remove the folder")
        for class_dir in class_dirs:
            images = sorted(p for p in class_dir.iterdir() if is_image_candidate(p, extensions))
            if not images:
                deeper = (" (only folders: classes sit one level below a group folder, <group>/<class>/<images>, "
                          "no deeper)" if _scan(class_dir, extensions)[1] else "")
                raise DataError(f"class folder {class_dir} holds no images{deeper}: add some or remove the folder")
            name = f"{group.name}/{class_dir.name}"
            files[name], group_of[name] = images, group.name
    return SplitListing(files, group_of)


# ---------------------------------------------------------------- readers


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root {root} is a file, not a folder: set data.root to the folder that holds the images")


def load_folder(root: Path, size: Optional[int], options: StoreOptions) -> ImageDataset:
    """A flat or nested image folder (see the module notes); a nested one has coarse labels."""
    size = size or DEFAULT_FOLDER_SIZE
    _check_root(root)
    train = list_split(root / "train")
    test = list_split(root / "test")
    if train.nested != test.nested:
        raise DataError(f"{root}/train is {train.layout()} but {root}/test is {test.layout()}: give both splits "
                        "the same layout")
    classes = list(train.files)
    unknown = sorted(set(test.files) - set(train.files))
    if unknown:
        _refuse_unknown_test_classes(root, unknown, train)
    index = {name: i for i, name in enumerate(classes)}
    train_items = [(p, index[c]) for c, files in train.files.items() for p in files]
    test_items = [(p, index[c]) for c, files in test.files.items() for p in files]
    fields = stored_splits("folder", train_items, test_items, size, options)
    if train.nested:
        groups = sorted(set(train.group_of.values()))
        fields.update(coarse=[groups.index(train.group_of[c]) for c in classes], coarse_names=groups)
    return ImageDataset(name="folder", classes=classes, **fields)


def _refuse_unknown_test_classes(root: Path, unknown: list[str], train: "SplitListing") -> None:
    """One line for test classes train/ lacks: moved to another group (nested), or missing."""
    train_groups = {}
    for name, group in (train.group_of or {}).items():
        train_groups.setdefault(name.split("/", 1)[1], []).append(group)
    for name in unknown:
        group, _, leaf = name.partition("/")
        if train.nested and leaf in train_groups:
            raise DataError(f"{root}/test/{name} is under group {group}, but the class {leaf} is under "
                            f"{', '.join(train_groups[leaf])} in {root}/train: test/ must use the same tree; move "
                            "it to the same group")
    raise DataError(f"{root}/test has classes with no training folder: {', '.join(unknown[:5])}: "
                    "add them under train/ or remove them from test/")


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


