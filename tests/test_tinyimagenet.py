"""Tiny ImageNet-200: the release layout, class order and names, and one line for each broken copy."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data.tinyimagenet import list_tiny_imagenet
from ccn.errors import DataError

# wnids.txt lists them unsorted, as the release does; two share the first word "crane"
WNIDS_FILE_ORDER = ["n04067472", "n02012849", "n03126707", "n01443537"]
WNIDS = sorted(WNIDS_FILE_ORDER)
WORDS = {"n01443537": "goldfish, Carassius auratus", "n02012849": "crane", "n03126707": "crane",
         "n04067472": "reel", "n00001740": "entity", "n09999999": "something, not a class"}
COLOURS = {"n01443537": (200, 30, 30), "n02012849": (30, 200, 30), "n03126707": (30, 30, 200),
           "n04067472": (200, 200, 30)}
VAL_ORDER = ["n04067472", "n01443537", "n02012849", "n03126707", "n01443537", "n04067472", "n02012849",
             "n03126707"]  # val_k's class, in annotation order


def _jpeg(path, colour, grey=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((64, 64, 3), colour, np.uint8))
    (image.convert("L") if grey else image).save(path, quality=95)


def write_tiny(root, train_per_class=3):
    """A tiny copy of the release: 4 classes, 64 x 64 JPEGs in each class's colour (one greyscale),
    the boxes files and the unlabelled test/ folder the reader ignores."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS_FILE_ORDER))
    (root / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in WORDS.items()))
    for wnid in WNIDS:
        for i in range(train_per_class):
            _jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[wnid])
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    lines = []
    for k, wnid in enumerate(VAL_ORDER):
        _jpeg(root / "val" / "images" / f"val_{k}.JPEG", COLOURS[wnid], grey=k == 1)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t3\t60\t62\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    _jpeg(root / "test" / "images" / "test_0.JPEG", (0, 0, 0))
    return root


def test_the_release_layout_reads_as_sorted_wnids_with_readable_names(tmp_path):
    root = write_tiny(tmp_path / "tiny-imagenet-200")
    ds = load_dataset(DataConfig(name="tinyimagenet", root=str(root)))
    assert ds.class_ids == WNIDS  # sorted, not wnids.txt's order: torchvision's ImageFolder order
    assert ds.classes == ["goldfish", "crane (n02012849)", "crane (n03126707)", "reel"]
    assert ds.image_size == 64 and ds.coarse is None and ds.flip
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ds.test_labels.tolist() == [WNIDS.index(w) for w in VAL_ORDER]  # val_k is test image k
    assert len(ds.test_labels) == 8  # test/ (unlabelled) is not read
    expected = torch.tensor([COLOURS[w] for w in VAL_ORDER], dtype=torch.float32)
    mean = ds.test_images[:].float().mean(dim=(2, 3))
    grey = ds.test_images[1]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # greyscale JPEG -> equal RGB channels
    keep = [k for k in range(8) if k != 1]
    assert (mean[keep] - expected[keep]).abs().max() < 4
    assert ds.notes["test_split"] == "val"


def test_resized_and_found_from_the_folder_holding_the_release(tmp_path):
    write_tiny(tmp_path / "tiny-imagenet-200", train_per_class=1)
    ds = load_dataset(DataConfig(name="tinyimagenet", root=str(tmp_path), image_size=32))
    assert ds.image_size == 32 and len(ds.train_labels) == 4


def test_without_words_txt_the_wnids_are_the_names(tmp_path):
    root = write_tiny(tmp_path, train_per_class=1)
    (root / "words.txt").unlink()
    assert list_tiny_imagenet(root).names == WNIDS


def test_caps_keep_whole_classes_and_decode_only_what_they_keep(tmp_path, monkeypatch):
    from ccn.data import store
    root = write_tiny(tmp_path, train_per_class=5)
    decoded, real = [], store.decode_split
    monkeypatch.setattr(store, "decode_split",
                        lambda items, *a, **k: decoded.append(len(items)) or real(items, *a, **k))
    ds = load_dataset(DataConfig(name="tinyimagenet", root=str(root), train_per_class=2, test_per_class=1))
    assert decoded == [8, 4] and ds.train_labels.bincount().tolist() == [2, 2, 2, 2]


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def _break(root, how):
    annotations = root / "val" / "val_annotations.txt"
    lines = _lines(annotations)
    if how == "five fields":
        lines[2] = lines[2].replace("\t62\n", "\n")
    elif how == "spaces not tabs":
        lines[2] = lines[2].replace("\t", " ")
    elif how == "bad box":
        lines[2] = lines[2].replace("\t60\t", "\t6O\t")
    elif how == "negative box":
        lines[2] = lines[2].replace("\t0\t3\t", "\t-1\t3\t")
    elif how == "path in annotation":
        lines[2] = lines[2].replace("val_2.JPEG", "../val_2.JPEG")
    elif how == "unknown wnid in annotation":
        lines[2] = lines[2].replace("n02012849", "n09999999")
    elif how == "annotated twice":
        lines.append(lines[0])
    elif how == "missing image":
        (root / "val" / "images" / "val_3.JPEG").unlink()
    elif how == "unannotated image":
        _jpeg(root / "val" / "images" / "val_99.JPEG", (0, 0, 0))
    elif how == "train folder not in wnids":
        _jpeg(root / "train" / "n00000001" / "images" / "a.JPEG", (0, 0, 0))
    elif how == "wnid without train folder":
        (root / "wnids.txt").write_text((root / "wnids.txt").read_text() + "n09999999\n")
    elif how == "empty images folder":
        for f in (root / "train" / WNIDS[2] / "images").iterdir():
            f.unlink()
    elif how == "wnid listed twice":
        (root / "wnids.txt").write_text((root / "wnids.txt").read_text() + "n02012849\n")
    elif how == "two ids on a line":
        (root / "wnids.txt").write_text("n04067472 n02012849\nn03126707\nn01443537\n")
    elif how == "words line without tab":
        (root / "words.txt").write_text((root / "words.txt").read_text() + "n08888888 no tab\n")
    elif how == "words lacks a class":
        (root / "words.txt").write_text((root / "words.txt").read_text().replace("n03126707\tcrane\n", ""))
    elif how == "huge words file":
        with open(root / "words.txt", "ab") as handle:
            handle.truncate(17 * 2**20)
    elif how == "no annotations":
        annotations.unlink()
    elif how == "no wnids":
        (root / "wnids.txt").unlink()
    elif how == "root is a file":
        (root / "wnids.txt").rename(root.with_name("file"))
        return root.with_name("file")
    if annotations.exists():
        annotations.write_text("".join(lines))
    return root


BROKEN = [
    ("five fields", r"val_annotations.txt line 3 has 5 tab-separated field\(s\), not 6 \(file TAB wnid TAB x0"),
    ("spaces not tabs", r"val_annotations.txt line 3 has 1 tab-separated field\(s\), not 6"),
    ("bad box", r"val_annotations.txt line 3: the box '0 3 6O 62' is not four whole numbers"),
    ("negative box", r"val_annotations.txt line 3: the box '-1 3 60 62' is not four whole numbers"),
    ("path in annotation", r"val_annotations.txt line 3 names '../val_2.JPEG', not a file name in val/images"),
    ("unknown wnid in annotation", r"val_annotations.txt line 3 labels val_2.JPEG as 'n09999999', which wnids.txt "
                                   "does not list"),
    ("annotated twice", r"val_annotations.txt line 9 annotates val_0.JPEG again \(first on line 1\)"),
    ("missing image", r"val_annotations.txt line 4 names val_3.JPEG, which is not an image in .*val/images"),
    ("unannotated image", r"validation image .*val_99.JPEG has no line in .*val_annotations.txt"),
    ("train folder not in wnids", r"train has class folders that .*wnids.txt does not list: n00000001"),
    ("wnid without train folder", r"train has no folder for n09999999 \(listed in .*wnids.txt\): the copy is "
                                  r"incomplete \(1 of 5 classes missing\)"),
    ("empty images folder", r"n03126707/images holds no images: the copy is incomplete"),
    ("wnid listed twice", r"wnids.txt line 5 lists n02012849 again \(first on line 2\)"),
    ("two ids on a line", r"wnids.txt line 1 is 'n04067472 n02012849', not one WordNet id"),
    ("words line without tab", r"words.txt line 7 is 'n08888888 no tab', not 'wnid TAB words'"),
    ("words lacks a class", r"words.txt has no line for n03126707 \(listed in wnids.txt\)"),
    ("huge words file", r"words.txt .* is 17825792 bytes, more than the 16777216"),
    ("no annotations", r"val_annotations.txt does not exist, and it labels the validation images"),
    ("no wnids", r"holds no wnids.txt: set data.root to the tiny-imagenet-200 folder"),
    ("root is a file", r"is a file, not a folder: set data.root to the tiny-imagenet-200 folder"),
]


def test_label_files_saved_with_a_byte_order_mark_are_read(tmp_path):
    """A UTF-8 byte-order mark (as Windows editors save files) is dropped by ccn.file_checks.read_text, as
    for every label file ccn reads, so the first id is not taken for an unknown class."""
    root = write_tiny(tmp_path / "tiny-imagenet-200", train_per_class=1)
    for name in ("wnids.txt", "val/val_annotations.txt"):
        (root / name).write_text("\ufeff" + (root / name).read_text())
    plain = list_tiny_imagenet(write_tiny(tmp_path / "plain" / "tiny-imagenet-200", train_per_class=1))
    marked = list_tiny_imagenet(root)
    assert marked.wnids == plain.wnids == WNIDS
    assert [label for _, label in marked.test] == [label for _, label in plain.test]


@pytest.mark.parametrize("how, message", BROKEN, ids=[how.replace(" ", "-") for how, _ in BROKEN])
def test_a_broken_copy_is_one_line_naming_the_file_and_line(tmp_path, how, message):
    root = _break(write_tiny(tmp_path / "tiny-imagenet-200", train_per_class=1), how)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(DataConfig(name="tinyimagenet", root=str(root)))
    assert "\n" not in str(err.value) and ": " in str(err.value)


@pytest.mark.slow
def test_the_real_release_lists_all_200_classes_and_decodes(tmp_path):
    """The real Tiny ImageNet where CCN_TINY_IMAGENET names it (CI has no copy: it is rebuilt by
    ../shared/data/get-tiny-imagenet.sh); the listing whole, and a capped decode."""
    root = Path(os.environ.get("CCN_TINY_IMAGENET", "/nonexistent"))
    if not (root / "wnids.txt").is_file():
        pytest.skip("set CCN_TINY_IMAGENET to an unpacked tiny-imagenet-200 folder to test the real release")
    listing = list_tiny_imagenet(root)
    assert len(listing.wnids) == 200 and listing.wnids == sorted(listing.wnids)
    assert len(listing.train) == 100_000 and len(listing.test) == 10_000
    assert len(set(listing.names)) == 200
    per_class = np.bincount([label for _, label in listing.test], minlength=200)
    assert per_class.min() == per_class.max() == 50
    ds = load_dataset(DataConfig(name="tinyimagenet", root=str(root), train_per_class=2, test_per_class=1,
                                 cache=False))
    assert ds.num_classes == 200 and ds.image_size == 64 and ds.train_images.shape == (400, 3, 64, 64)
    assert len(ds.test_labels) == 200


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny"), train_per_class=1)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(["val/val_annotations.txt", "wnids.txt", "words.txt"]),
       st.lists(st.sampled_from(list("\t\t\n\r n0124_.JPEGval/-\ufeff\x00é") + ["n04067472", "val_0.JPEG"]),
                max_size=60).map("".join))
def test_any_label_file_text_lists_or_is_one_data_error(tiny_copy, name, text):
    """Whatever a label file holds, the listing succeeds or stops with one DataError line (never another
    exception, never a silent wrong label)."""
    path = tiny_copy / name
    original = path.read_bytes()
    try:
        path.write_text(text)
        try:
            listing = list_tiny_imagenet(tiny_copy)
        except DataError as err:
            assert "\n" not in str(err)
        else:
            assert len(listing.names) == len(listing.wnids) >= 2 and listing.test
    finally:
        path.write_bytes(original)
