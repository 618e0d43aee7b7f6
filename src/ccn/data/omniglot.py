"""Omniglot (Lake et al. 2015), read from the official layout.

    root/images_background/<alphabet>/characterNN/IIII_DD.png    30 alphabets, 964 characters
    root/images_evaluation/<alphabet>/characterNN/IIII_DD.png    20 alphabets, 659 characters

(the two zips of the release, unpacked side by side). Each character was drawn once by each of 20
people, the drawers: DD is the drawer (01-20), IIII the character's image number.

Classes: every character is a class, named `<alphabet>/characterNN`. data.alphabets picks the sets:
both (the default: 1,623 characters of 50 alphabets), background or evaluation. The classes are the
background alphabets' then the evaluation alphabets', each set's alphabets and each alphabet's
characters in sorted order, so the background classes keep their labels when the evaluation ones are
added. `coarse` is each character's alphabet (`coarse_names` the alphabet folders): the true grouping
method.partition=oracle uses.

Split by drawer, so no person's hand is in both splits: drawers 1..data.train_drawers draw the
training images, the rest the test images (default 15: 24,345 / 8,115 images of all 1,623
characters, 15 / 5 per character). A changed split or set of alphabets lists other files, so the
decoded-image cache holds it apart.

Images: 105 x 105 1-bit PNGs, black strokes on white, made RGB by ccn.data.images and kept at the
native 105 px, or resized to data.image_size (bilinear: smaller sizes get grey stroke edges).
Not flipped by default: a mirrored character is not the same character.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ccn.data.base import ImageDataset, require_data_root
from ccn.data.imagenet import capped
from ccn.data.store import StoreOptions, stored_splits
from ccn.errors import DataError

SET_FOLDERS = {"background": "images_background", "evaluation": "images_evaluation"}
DRAWERS = 20  # people who drew every character
DEFAULT_OMNIGLOT_SIZE = 105  # the files' own size
DRAWING = re.compile(r"([0-9]{4})_([0-9]{2})\.png")
LAYOUT_HELP = ("set data.root to the folder holding images_background/ and images_evaluation/ (Omniglot's two "
               "zips unpacked), each <alphabet>/characterNN/IIII_DD.png")


@dataclass
class OmniglotListing:
    """Classes (`<alphabet>/characterNN`), their alphabets, and (path, label) per split."""

    classes: list[str]
    alphabets: list[str]
    coarse: list[int]  # each class's alphabet index
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def sets_of(alphabets: str) -> list[str]:
    """The set folders data.alphabets selects, background first."""
    return list(SET_FOLDERS.values()) if alphabets == "both" else [SET_FOLDERS[alphabets]]


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(sorted sub-folder names, sorted other entry names) of `folder`, hidden names left out; one
    directory read, the types taken from the directory entries."""
    with os.scandir(folder) as entries:
        visible = [(e.name, e.is_dir()) for e in entries if not e.name.startswith(".")]
    return sorted(n for n, is_dir in visible if is_dir), sorted(n for n, is_dir in visible if not is_dir)


def drawer_of(folder: Path, name: str) -> int:
    """The drawer (1-20) of drawing `name` in character folder `folder`; one line when the name is not IIII_DD.png."""
    match = DRAWING.fullmatch(name)
    if not match:
        raise DataError(f"{folder / name} is not a drawing named IIII_DD.png (a four-digit image number and the "
                        "drawer 01-20): remove it, or restore the file from the Omniglot release")
    drawer = int(match.group(2))
    if not 1 <= drawer <= DRAWERS:
        raise DataError(f"{folder / name}: drawer {match.group(2)} is outside 01-{DRAWERS} (Omniglot has {DRAWERS} "
                        "drawers per character): rename or remove it")
    return drawer


def _alphabet_folders(root: Path, alphabets: str) -> list[Path]:
    """Every alphabet folder of the selected sets, background first, sorted within a set."""
    require_data_root(root, LAYOUT_HELP)
    found, seen = [], {}
    for set_name in sets_of(alphabets):
        folder = root / set_name
        if not folder.is_dir():
            other = " (or choose the other set with data.alphabets)" if alphabets == "both" else ""
            raise DataError(f"data.alphabets={alphabets} reads {folder}, which does not exist{other}: {LAYOUT_HELP}")
        names, strays = _entries(folder)
        if strays:
            raise DataError(f"{folder} holds a file, {strays[0]}, where only alphabet folders belong: move it out")
        if not names:
            raise DataError(f"{folder} holds no alphabet folders: {LAYOUT_HELP}")
        for name in names:
            if name in seen:
                raise DataError(f"alphabet {name} is in both {seen[name]} and {folder}: a class name would repeat; "
                                "keep one, or read one set with data.alphabets")
            seen[name] = folder
            found.append(folder / name)
    return found


def _drawings(folder: Path, train_drawers: int) -> tuple[list[str], list[str]]:
    """(training paths, test paths) of one character folder, split by drawer."""
    sub_folders, names = _entries(folder)
    if sub_folders:
        raise DataError(f"character folder {folder} holds a folder, {sub_folders[0]}, where only drawings "
                        "IIII_DD.png belong: move it out")
    train, test = [], []
    for name in names:
        (train if drawer_of(folder, name) <= train_drawers else test).append(os.path.join(folder, name))
    for split, paths, drawers in (("training", train, f"1-{train_drawers}"),
                                  ("test", test, f"{train_drawers + 1}-{DRAWERS}")):
        if not paths:
            raise DataError(f"character folder {folder} has no drawing by drawers {drawers}, so the {split} split "
                            f"would lack it (data.train_drawers={train_drawers}): restore its drawings, or remove "
                            "the folder")
    return train, test


def list_omniglot(root: Path, alphabets: str = "both", train_drawers: int = 15) -> OmniglotListing:
    """The classes, alphabets and (path, label) pairs of both splits; one DataError line for anything wrong."""
    listing = OmniglotListing([], [], [], [], [])
    for folder in _alphabet_folders(Path(root), alphabets):
        characters, strays = _entries(folder)
        if strays:
            raise DataError(f"alphabet folder {folder} holds a file, {strays[0]}, where only character folders "
                            "belong: move it out")
        if not characters:
            raise DataError(f"alphabet folder {folder} holds no character folders: restore them, or remove it")
        listing.alphabets.append(folder.name)
        for character in characters:
            train, test = _drawings(folder / character, train_drawers)
            label = len(listing.classes)
            listing.classes.append(f"{folder.name}/{character}")
            listing.coarse.append(len(listing.alphabets) - 1)
            listing.train += [(path, label) for path in train]
            listing.test += [(path, label) for path in test]
    return listing


def load_omniglot(root: Path, size: Optional[int], options: StoreOptions, alphabets: str = "both",
                  train_drawers: int = 15, train_cap: Optional[int] = None,
                  test_cap: Optional[int] = None) -> ImageDataset:
    """Omniglot decoded at `size` (None: the native 105) into the store data.store picks; the caps
    choose before decoding (the images ccn.data.base.apply_caps would keep)."""
    size = size or DEFAULT_OMNIGLOT_SIZE
    listing = list_omniglot(root, alphabets, train_drawers)
    fields = stored_splits("omniglot", capped(listing.train, train_cap), capped(listing.test, test_cap), size, options)
    fields["notes"].update(alphabets=alphabets, split=f"drawers 1-{train_drawers} train, "
                                                      f"{train_drawers + 1}-{DRAWERS} test")
    return ImageDataset(name="omniglot", classes=listing.classes, coarse=listing.coarse,
                        coarse_names=listing.alphabets, flip=False, **fields)
