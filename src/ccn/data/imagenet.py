"""ImageNet (ILSVRC-2012 classification), read from either common layout.

- torchvision's: `root/train/<wnid>/*.JPEG` and `root/val/<wnid>/*.JPEG`;
- Kaggle's ILSVRC copy: `root/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG`, a flat
  `root/ILSVRC/Data/CLS-LOC/val/*.JPEG` labelled by `root/LOC_val_solution.csv`
  (`ImageId,PredictionString`, the string's first token the image's wnid).
A flat `val/` in torchvision's layout is labelled the same way when LOC_val_solution.csv is there.

Classes are the training folders' wnids, in sorted order (the order torchvision's ImageFolder
gives, so label i means the same class as in a torchvision run). `LOC_synset_mapping.txt`
(`n01440764 tench, Tinca tinca`), in root or beside ILSVRC/, gives the words. The data set's
`classes` are the names people read (predict, clusters, plots): each class's first word, or
"word (wnid)" where two classes share a first word (crane, maillot); `class_ids` are the wnids,
which are unique and which NBDT hierarchies use as node ids. Without the mapping both are the wnids.

The validation split is ImageNet's test set here (the labelled test set is not public), as in
every published ImageNet top-1; `data.val_fraction` holds out training images to choose settings.

Listing a million files costs one directory read per class (os.scandir, no stat per file), and
the decoded-image cache is keyed by the file names, labels and the folders' modification times
(ccn.data.store.cache_key with a stamp), not by a stat of every file: a file added, removed or
renamed changes the key; a file overwritten in place under the same name does not (ours; delete the
cache, or set data.cache=false, after editing images in place).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ccn.data.base import ImageDataset, cap_per_class, require_data_root
from ccn.data.store import StoreOptions, stored_splits
from ccn.data.images import image_extensions
from ccn.errors import CCNError, DataError
from ccn.file_checks import read_text

KAGGLE_DIR = Path("ILSVRC") / "Data" / "CLS-LOC"
SYNSETS_FILE = "LOC_synset_mapping.txt"
VAL_LABELS_FILE = "LOC_val_solution.csv"
DEFAULT_IMAGENET_SIZE = 224  # the usual input side; data.image_size sets another
MAX_LABEL_FILE_BYTES = 64 * 2**20  # LOC_val_solution.csv is 3 MB
LAYOUT_HELP = ("set data.root to a folder holding train/<wnid>/ and val/ (torchvision's layout) or "
               "ILSVRC/Data/CLS-LOC/ and LOC_val_solution.csv (Kaggle's)")


@dataclass
class ImageNetListing:
    """What the reader found: classes, (path, label) per split, and what the cache key covers."""

    layout: str  # "torchvision" or "kaggle"
    wnids: list[str]
    names: list[str]
    train: list[tuple[str, int]]  # paths as text: a million Path objects take half a minute to build
    val: list[tuple[str, int]]
    stamp: str  # the folders' and label files' modification times (see the module notes)


def _stamp_of(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def image_names(folder: Path, extensions: set[str]) -> list[str]:
    """Sorted names of the image files in `folder`: one directory read, file types from the
    directory entries (no stat per file on Linux file systems)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".")
                      and e.name[e.name.rfind("."):].lower() in extensions and e.is_file())


def class_folders(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def find_layout(root: Path) -> tuple[str, Path, Path, Path]:
    """(layout, train folder, val folder, folder holding the LOC_*.{txt,csv} files)."""
    require_data_root(root, LAYOUT_HELP)
    kaggle = root / KAGGLE_DIR
    if (kaggle / "train").is_dir():
        return "kaggle", kaggle / "train", kaggle / "val", root
    if (root / "train").is_dir():
        return "torchvision", root / "train", root / "val", root
    raise DataError(f"no ImageNet training folder in {root}: {LAYOUT_HELP}")


def read_label_file(path: Path, what: str) -> str:
    try:
        return read_text(path, what, "replace it with the file from the ImageNet download",
                         limit=MAX_LABEL_FILE_BYTES)
    except CCNError as err:
        raise DataError(str(err)) from None


def read_synsets(path: Path) -> dict[str, str]:
    """{wnid: words} from LOC_synset_mapping.txt (`n01440764 tench, Tinca tinca` per line)."""
    synsets = {}
    for number, line in enumerate(read_label_file(path, SYNSETS_FILE).splitlines(), 1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not words.strip():
            raise DataError(f"{path} line {number} is {line.strip()!r}, not 'WNID words': replace the file with "
                            "the one from the ImageNet download")
        synsets[wnid] = words.strip()
    return synsets


def read_val_solution(path: Path) -> dict[str, str]:
    """{image id: wnid} from LOC_val_solution.csv: `ImageId,PredictionString`, where the string holds
    `wnid x_min y_min x_max y_max` per box and every box of an image names the image's class.

    Any line ending (LF, CR LF, or a classic Mac's CR alone) is read; a row that repeats an image id with
    the same wnid is harmless and kept once, one that gives it another wnid is refused (which row
    would be right?), and so is a field no ImageNet row has (csv's 131,072-character limit)."""
    fix = "replace it with the file from the ImageNet download"
    rows = csv.reader(read_label_file(path, VAL_LABELS_FILE).splitlines())
    try:
        return _val_labels(rows, path, fix)
    except csv.Error as err:  # a field over csv.field_size_limit(), a stray quote at the end ...
        raise DataError(f"{path} line {rows.line_num} is not a CSV row ImageNet has ({err}): {fix}") from None


def _val_labels(rows, path: Path, fix: str) -> dict[str, str]:
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise DataError(f"{path} does not start with the header 'ImageId,PredictionString': {fix}")
    labels = {}
    for row in rows:
        if not row:
            continue
        number = rows.line_num
        tokens = row[1].split() if len(row) == 2 else []
        if len(row) != 2 or not row[0].strip() or not tokens:
            raise DataError(f"{path} line {number} is not 'ImageId,wnid x y x y ...': {fix}")
        image_id, wnid = row[0].strip(), tokens[0]
        if labels.get(image_id, wnid) != wnid:
            raise DataError(f"{path} line {number} labels {image_id} as {wnid}, but an earlier row labels it "
                            f"{labels[image_id]}: {fix}")
        labels[image_id] = wnid
    return labels


def display_names(wnids: list[str], synsets: Optional[dict[str, str]]) -> list[str]:
    """Each class's first word, with its wnid where two classes share that word; the wnids without a mapping."""
    if synsets is None:
        return list(wnids)
    first = [synsets[w].split(",")[0].strip() for w in wnids]
    shared = {word for word in first if first.count(word) > 1}
    return [f"{word} ({w})" if word in shared else word for word, w in zip(first, wnids)]


def _files(folder: Path, names: list[str], label: int) -> list[tuple[str, int]]:
    prefix = os.path.join(folder, "")
    return [(prefix + name, label) for name in names]


def _val_items(val_dir: Path, labels_dir: Path, index: dict[str, int], extensions: set[str]) -> list[tuple[str, int]]:
    """(path, label) of the validation images: class folders, or a flat folder and LOC_val_solution.csv."""
    if not val_dir.is_dir():
        raise DataError(f"ImageNet validation folder {val_dir} does not exist: {LAYOUT_HELP}")
    folders = class_folders(val_dir)
    loose = image_names(val_dir, extensions)
    if folders and loose:  # valprep.sh moves images into wnid folders one by one: it was stopped half-way
        raise DataError(f"ImageNet validation folder {val_dir} holds both class folders ({len(folders)}, e.g. "
                        f"{folders[0]}) and {len(loose)} images outside them (e.g. {loose[0]}): an interrupted "
                        "sorting into val/<wnid>/ (valprep.sh)? finish it, or put every image back in val/ with "
                        f"{VAL_LABELS_FILE} beside it")
    if folders:
        unknown = [w for w in folders if w not in index]
        if unknown:
            raise DataError(f"{val_dir} has class folders with no training folder: {', '.join(unknown[:5])}: "
                            "the copy is incomplete or mixes two data sets")
        return [item for w in folders for item in _files(val_dir / w, image_names(val_dir / w, extensions), index[w])]
    solution = labels_dir / VAL_LABELS_FILE
    if not os.path.lexists(solution):  # a FIFO or folder there is named as what it is by read_text
        raise DataError(f"{val_dir} holds no class folders and {solution} does not exist: put "
                        f"{VAL_LABELS_FILE} there, or sort the validation images into val/<wnid>/")
    labels = read_val_solution(solution)
    return _labelled_flat_val(val_dir, loose, solution, labels, index)


def _labelled_flat_val(val_dir: Path, names: list[str], solution: Path, labels: dict[str, str],
                       index: dict[str, int]) -> list[tuple[str, int]]:
    """A flat val/ labelled by the csv: every image has its row, each image id is one file, and every
    row has its image (a copy missing some would score a silent subset)."""
    items, seen = [], {}
    for name in names:
        image_id = os.path.splitext(name)[0]
        if image_id not in labels:
            raise DataError(f"validation image {val_dir / name} has no row in {solution}: replace the csv with the "
                            "one from the ImageNet download, or remove the image")
        if image_id in seen:
            raise DataError(f"validation image {image_id} is in {val_dir} twice ({seen[image_id]} and {name}), and "
                            "would be scored twice: keep one of them")
        if labels[image_id] not in index:
            raise DataError(f"{solution} labels {image_id} as {labels[image_id]}, which has no training folder: "
                            "the copy is incomplete or mixes two data sets")
        seen[image_id] = name
        items.append((os.path.join(val_dir, name), index[labels[image_id]]))
    missing = [image_id for image_id in labels if image_id not in seen]
    if missing:
        raise DataError(f"{val_dir} lacks {len(missing)} of the {len(labels)} validation images {solution} lists "
                        f"(e.g. {sorted(missing)[0]}), and would score the rest as the whole set: restore them, or "
                        "remove their rows from the csv to score a subset on purpose")
    return items


def list_imagenet(root: Path) -> ImageNetListing:
    """The classes and (path, label) pairs of both splits; one DataError line for anything missing."""
    layout, train_dir, val_dir, labels_dir = find_layout(root)
    extensions = image_extensions()
    wnids = class_folders(train_dir)
    if len(wnids) < 2:
        raise DataError(f"{train_dir} has {len(wnids)} class folder(s): expected one per wnid, "
                        f"{train_dir}/<wnid>/*.JPEG")
    synsets_path = labels_dir / SYNSETS_FILE
    synsets = read_synsets(synsets_path) if os.path.lexists(synsets_path) else None  # a FIFO there is refused
    if synsets is not None:
        found = set(wnids)
        missing = [w for w in synsets if w not in found]
        if missing:
            raise DataError(f"{train_dir} has no folder for {', '.join(missing[:5])} (listed in {synsets_path}): "
                            f"the copy is incomplete ({len(missing)} of {len(synsets)} classes missing)")
        unnamed = [w for w in wnids if w not in synsets]
        if unnamed:
            raise DataError(f"{train_dir} has folders that {synsets_path} does not name: {', '.join(unnamed[:5])}: "
                            "remove them, or use the mapping file of this copy")
    index = {w: i for i, w in enumerate(wnids)}
    train = []
    for w in wnids:
        names = image_names(train_dir / w, extensions)
        if not names:
            raise DataError(f"class folder {train_dir / w} holds no images: add them or remove the folder")
        train += _files(train_dir / w, names, index[w])
    val = _val_items(val_dir, labels_dir, index, extensions)
    if not val:
        raise DataError(f"ImageNet validation folder {val_dir} holds no images: {LAYOUT_HELP}")
    watched = [train_dir, val_dir, *(train_dir / w for w in wnids), *(val_dir / w for w in class_folders(val_dir)),
               *(p for p in (synsets_path, labels_dir / VAL_LABELS_FILE) if p.is_file())]
    stamp = "|".join(_stamp_of(p) for p in watched)
    return ImageNetListing(layout, wnids, display_names(wnids, synsets), train, val, stamp)


def capped(items: list[tuple[str, int]], cap: Optional[int]) -> list[tuple[str, int]]:
    """The items data.train_per_class / test_per_class keep (ccn.data.base.cap_per_class, the same
    choice the caps make after decoding), chosen before decoding so a capped run decodes only those."""
    if cap is None:
        return items
    keep = cap_per_class(torch.tensor([label for _, label in items]), cap)
    return [items[i] for i in keep.tolist()]


def load_imagenet(root: Path, size: int, options: StoreOptions, train_cap: Optional[int] = None,
                  test_cap: Optional[int] = None) -> ImageDataset:
    """ImageNet decoded at `size` x `size` into the store data.store picks: shorter side resized to
    `size`, the centred square kept (ccn.data.images.decode_image fit="centre_crop"); `size` is the
    side the transforms crop from (ccn.data.crops.store_size)."""
    listing = list_imagenet(root)
    options = dataclasses.replace(options, fit="centre_crop", stamp=listing.stamp)
    fields = stored_splits("imagenet", capped(listing.train, train_cap), capped(listing.val, test_cap), size, options)
    fields["notes"].update(layout=listing.layout, test_split="val", stored=f"{size} px centre squares")
    return ImageDataset(name="imagenet", classes=listing.names, class_ids=listing.wnids, fit="centre_crop", **fields)
