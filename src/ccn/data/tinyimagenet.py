"""Tiny ImageNet-200 (CS231n), read from the release's own layout.

    root/wnids.txt                          the 200 WordNet ids, one a line
    root/words.txt                          `wnid<TAB>words` for every WordNet noun (82,115 lines)
    root/train/<wnid>/images/*.JPEG         500 training images a class (`<wnid>_boxes.txt` is ignored)
    root/val/images/*.JPEG                  10,000 validation images, labelled by
    root/val/val_annotations.txt            `file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1` (a box we do not use)
    root/test/                              unlabelled: ignored

data.root is that folder, or the folder holding `tiny-imagenet-200/`. The validation images are the
test split here, as in every published Tiny ImageNet accuracy (the release's test labels are not
public); `data.val_fraction` holds out training images to choose settings.

Classes are the wnids in sorted order, not wnids.txt's order: sorted is what torchvision's ImageFolder
gives on train/ (the loader NBDT's benchmark and most published code use) and what ccn.data.imagenet
does, so label i means the same class as in those runs. `class_ids` are the wnids (the WordNet
hypernym tree is built from them); `classes` are the names people read: the first of a class's words
in words.txt, with the wnid added where two classes share it (as ccn.data.imagenet.display_names).
Without words.txt both are the wnids. Test image i is the i-th line of val_annotations.txt.

Images are the release's 64 x 64 JPEGs (some greyscale, made RGB by ccn.data.images) at their native
64 px, or resized to data.image_size, decoded into the store data.store picks; the cache is keyed by
every file's name, size and modification time (ccn.data.store.cache_key).

A broken copy stops with one line naming the file, the line and the fix: a malformed line, an id
wnids.txt does not list (or a listed id with no training folder), an annotation naming a missing
image, an image with no annotation, a file annotated twice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ccn.data.base import ImageDataset, require_data_root
from ccn.data.imagenet import capped, class_folders, display_names, image_names
from ccn.data.images import image_extensions
from ccn.data.store import StoreOptions, stored_splits
from ccn.errors import CCNError, DataError
from ccn.file_checks import read_text

RELEASE_FOLDER = "tiny-imagenet-200"
DEFAULT_TINY_IMAGENET_SIZE = 64  # the release's own size
MAX_LABEL_FILE_BYTES = 16 * 2**20  # words.txt is 2.6 MB, val_annotations.txt 0.3 MB
FIX = "replace it with the file from the Tiny ImageNet release"
LAYOUT_HELP = ("set data.root to the tiny-imagenet-200 folder, which holds wnids.txt, words.txt, "
               "train/<wnid>/images/ and val/images/ with val/val_annotations.txt")
ANNOTATION_FIELDS = "file TAB wnid TAB x0 TAB y0 TAB x1 TAB y1"
WHOLE_NUMBER = re.compile(r"[0-9]+")


@dataclass
class TinyImageNetListing:
    """What the reader found: classes and (path, label) per split, the test split in annotation order."""

    wnids: list[str]
    names: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def find_root(root: Path) -> Path:
    """The folder holding wnids.txt: data.root, or its tiny-imagenet-200/ (where the zip unpacks)."""
    require_data_root(root, LAYOUT_HELP)
    if not (root / "wnids.txt").exists() and (root / RELEASE_FOLDER / "wnids.txt").exists():
        return root / RELEASE_FOLDER
    if not (root / "wnids.txt").exists():
        raise DataError(f"{root} holds no wnids.txt: {LAYOUT_HELP}")
    return root


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line without its end) of every non-blank line of a label file: read with a size
    limit by ccn.file_checks.read_text, which also drops a UTF-8 byte-order mark (a file saved by a Windows
    editor), so the first id is read as written."""
    try:
        text = read_text(path, path.name, FIX, limit=MAX_LABEL_FILE_BYTES)
    except CCNError as err:
        raise DataError(str(err)) from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def read_wnids(path: Path) -> list[str]:
    """The ids of wnids.txt (one a line), in the file's order."""
    wnids, seen = [], {}
    for number, line in read_lines(path):
        if len(line.split()) != 1:
            raise DataError(f"{path} line {number} is {line[:80]!r}, not one WordNet id such as n01443537: {FIX}")
        if line in seen:
            raise DataError(f"{path} line {number} lists {line} again (first on line {seen[line]}): {FIX}")
        seen[line] = number
        wnids.append(line)
    if len(wnids) < 2:
        raise DataError(f"{path} lists {len(wnids)} class(es): a classifier needs at least 2; {FIX}")
    return wnids


def read_words(path: Path, wnids: list[str]) -> dict[str, str]:
    """{wnid: words} from words.txt (`wnid<TAB>words`); every class of wnids.txt must be there."""
    words, seen = {}, {}
    for number, line in read_lines(path):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{path} line {number} is {line[:80]!r}, not 'wnid TAB words': {FIX}")
        wnid = fields[0].strip()
        if wnid in seen:
            raise DataError(f"{path} line {number} lists {wnid} again (first on line {seen[wnid]}): {FIX}")
        seen[wnid] = number
        words[wnid] = fields[1].strip()
    missing = [w for w in wnids if w not in words]
    if missing:
        raise DataError(f"{path} has no line for {', '.join(missing[:5])} (listed in wnids.txt): {FIX}")
    return words


def read_annotations(path: Path, index: dict[str, int]) -> list[tuple[int, str, int]]:
    """(line number, file name, label) per line of val_annotations.txt, in the file's order."""
    items, seen = [], {}
    for number, line in read_lines(path):
        fields = line.split("\t")
        where = f"{path} line {number}"
        if len(fields) != 6:
            raise DataError(f"{where} has {len(fields)} tab-separated field(s), not 6 ({ANNOTATION_FIELDS}): {FIX}")
        name, wnid, box = fields[0], fields[1], fields[2:]
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise DataError(f"{where} names {name!r}, not a file name in val/images: {FIX}")
        if not all(WHOLE_NUMBER.fullmatch(value) for value in box):
            raise DataError(f"{where}: the box {' '.join(box)!r} is not four whole numbers ({ANNOTATION_FIELDS}): "
                            f"{FIX}")
        if wnid not in index:
            raise DataError(f"{where} labels {name} as {wnid!r}, which wnids.txt does not list: {FIX}")
        if name in seen:
            raise DataError(f"{where} annotates {name} again (first on line {seen[name]}): {FIX}")
        seen[name] = number
        items.append((number, name, index[wnid]))
    return items


def _train_items(train_dir: Path, wnids: list[str], wnids_file: Path) -> list[tuple[str, int]]:
    """(path, label) of train/<wnid>/images/*, class by class in the classes' order."""
    if not train_dir.is_dir():
        raise DataError(f"Tiny ImageNet training folder {train_dir} does not exist: {LAYOUT_HELP}")
    folders = set(class_folders(train_dir))
    unknown = sorted(folders - set(wnids))
    if unknown:
        raise DataError(f"{train_dir} has class folders that {wnids_file} does not list: {', '.join(unknown[:5])}: "
                        "remove them, or use the wnids.txt of this copy")
    missing = [w for w in wnids if w not in folders]
    if missing:
        raise DataError(f"{train_dir} has no folder for {', '.join(missing[:5])} (listed in {wnids_file}): the copy "
                        f"is incomplete ({len(missing)} of {len(wnids)} classes missing)")
    extensions = image_extensions()
    items = []
    for label, wnid in enumerate(wnids):
        folder = train_dir / wnid / "images"
        names = image_names(folder, extensions) if folder.is_dir() else []
        if not names:
            raise DataError(f"{folder} holds no images: the copy is incomplete; the release has "
                            f"train/{wnid}/images/{wnid}_0.JPEG ...")
        prefix = os.path.join(folder, "")
        items += [(prefix + name, label) for name in names]
    return items


def _test_items(val_dir: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of val/images/*, in val_annotations.txt's order; every image annotated once."""
    images, annotations = val_dir / "images", val_dir / "val_annotations.txt"
    if not images.is_dir():
        raise DataError(f"Tiny ImageNet validation folder {images} does not exist: {LAYOUT_HELP}")
    if not annotations.is_file():
        raise DataError(f"{annotations} does not exist, and it labels the validation images: {LAYOUT_HELP}")
    labelled = read_annotations(annotations, index)
    present = image_names(images, image_extensions())
    found = set(present)
    for number, name, _ in labelled:
        if name not in found:
            raise DataError(f"{annotations} line {number} names {name}, which is not an image in {images}: the "
                            "copy is incomplete; restore the image, or use the annotations of this copy")
    annotated = {name for _, name, _ in labelled}
    unlabelled = [name for name in present if name not in annotated]
    if unlabelled:
        raise DataError(f"validation image {images / unlabelled[0]} has no line in {annotations}"
                        f"{f' (nor do {len(unlabelled) - 1} more)' if len(unlabelled) > 1 else ''}: "
                        "remove it, or use the annotations of this copy")
    prefix = os.path.join(images, "")
    return [(prefix + name, label) for _, name, label in labelled]


def list_tiny_imagenet(root: Path) -> TinyImageNetListing:
    """The classes and (path, label) pairs of both splits; one DataError line for anything wrong."""
    root = find_root(root)
    wnids_file, words_file = root / "wnids.txt", root / "words.txt"
    wnids = sorted(read_wnids(wnids_file))
    words = read_words(words_file, wnids) if words_file.exists() else None
    index = {w: i for i, w in enumerate(wnids)}
    train = _train_items(root / "train", wnids, wnids_file)
    test = _test_items(root / "val", index)
    if not test:
        raise DataError(f"{root / 'val' / 'val_annotations.txt'} labels no image: {FIX}")
    return TinyImageNetListing(wnids, display_names(wnids, words), train, test)


def load_tiny_imagenet(root: Path, size: Optional[int], options: StoreOptions, train_cap: Optional[int] = None,
                       test_cap: Optional[int] = None) -> ImageDataset:
    """Tiny ImageNet decoded at `size` (None: the native 64) into the store data.store picks. The caps
    choose before decoding, the images ccn.data.base.apply_caps would keep (a capped run decodes only those)."""
    size = size or DEFAULT_TINY_IMAGENET_SIZE
    listing = list_tiny_imagenet(root)
    fields = stored_splits("tinyimagenet", capped(listing.train, train_cap), capped(listing.test, test_cap), size,
                           options)
    fields["notes"].update(test_split="val")
    return ImageDataset(name="tinyimagenet", classes=listing.names, class_ids=listing.wnids, **fields)
