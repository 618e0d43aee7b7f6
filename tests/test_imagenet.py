"""ImageNet: both layouts, class names from the synset mapping, and one line for each broken copy."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data.imagenet import list_imagenet
from ccn.errors import DataError

WNIDS = ["n01440764", "n02012849", "n03126707", "n04590129"]
WORDS = ["tench, Tinca tinca", "crane", "crane", "window shade"]  # two classes share a word, as in ImageNet
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _jpeg(path, colour, size=(40, 30)):
    """A photo-like 4:3 image: the class colour in the centre square, grey strips outside it, so a
    centre crop keeps only the colour."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    array = np.full((h, w, 3), 128, np.uint8)
    left = (w - h) // 2
    array[:, left:left + h] = colour
    Image.fromarray(array).save(path, quality=95)


def write_imagenet(root, layout="torchvision", train_per_class=3, val_per_class=2, synsets=True):
    """A tiny ImageNet copy: WNIDS classes, tiny JPEGs, in torchvision's or Kaggle's layout."""
    base = root / "ILSVRC" / "Data" / "CLS-LOC" if layout == "kaggle" else root
    for wnid, colour in zip(WNIDS, COLOURS):
        for i in range(train_per_class):
            _jpeg(base / "train" / wnid / f"{wnid}_{i}.JPEG", colour)
    rows = ["ImageId,PredictionString"]
    number = 0
    for wnid, colour in zip(WNIDS, COLOURS):
        for _ in range(val_per_class):
            number += 1
            image_id = f"ILSVRC2012_val_{number:08d}"
            if layout == "kaggle":
                _jpeg(base / "val" / f"{image_id}.JPEG", colour)
                rows.append(f"{image_id},{wnid} 1 2 30 28 {wnid} 3 4 20 20 ")
            else:
                _jpeg(base / "val" / wnid / f"{image_id}.JPEG", colour)
    if layout == "kaggle":
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    if synsets:
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {t}\n" for w, t in zip(WNIDS, WORDS)))
    return root


@pytest.mark.parametrize("layout", ["torchvision", "kaggle"])
def test_both_layouts_give_the_same_classes_labels_and_centre_squares(tmp_path, layout):
    root = write_imagenet(tmp_path / layout, layout)
    ds = load_dataset(DataConfig(name="imagenet", root=str(root), image_size=16))
    assert ds.class_ids == WNIDS  # sorted wnids: torchvision's ImageFolder order
    assert ds.classes == ["tench", "crane (n02012849)", "crane (n03126707)", "window shade"]
    assert ds.image_size == round(16 / 0.875)  # stored at the side whose centred 0.875 is the input
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # each image is its class colour: the grey strips of the 4:3 photo were cropped away, not squeezed in
    for images, labels in [(ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)]:
        mean = images[:].float().mean(dim=(2, 3))
        expected = torch.tensor(COLOURS, dtype=torch.float32)[labels]
        assert (mean - expected).abs().max() < 6
    assert ds.notes["layout"] == layout


def test_without_a_synset_mapping_the_wnids_are_the_names(tmp_path):
    root = write_imagenet(tmp_path, synsets=False)
    listing = list_imagenet(root)
    assert listing.names == WNIDS and listing.layout == "torchvision"


def test_the_listing_reads_each_folder_once_and_stats_no_image(tmp_path, monkeypatch):
    """A million files: one directory read per class, no os.stat per image (the cache key uses the
    folders' modification times instead)."""
    root = write_imagenet(tmp_path, "kaggle", train_per_class=5, val_per_class=3)
    import os
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: stats.append(str(p)) or real_stat(p, *a, **k))
    listing = list_imagenet(root)
    assert len(listing.train) == 20 and len(listing.val) == 12
    assert not [p for p in stats if p.endswith(".JPEG")]


def test_cache_is_keyed_by_the_listing(tmp_path):
    root = write_imagenet(tmp_path)
    cfg = DataConfig(name="imagenet", root=str(root), image_size=16)
    first = load_dataset(cfg)
    _jpeg(root / "train" / WNIDS[0] / "extra.JPEG", (0, 0, 0))  # a new file: read again, not the old cache
    second = load_dataset(cfg)
    assert len(second.train_labels) == len(first.train_labels) + 1


def _break(root, how):
    base = root / "ILSVRC" / "Data" / "CLS-LOC"
    csv = root / "LOC_val_solution.csv"
    if how == "bad csv header":
        csv.write_text("id,label\nILSVRC2012_val_00000001,n01440764\n")
    elif how == "bad csv row":
        csv.write_text(csv.read_text() + "ILSVRC2012_val_00000099\n")
    elif how == "no csv":
        csv.unlink()
    elif how == "unlabelled val image":
        _jpeg(base / "val" / "ILSVRC2012_val_00000500.JPEG", (0, 0, 0))
    elif how == "csv names unknown wnid":
        csv.write_text(csv.read_text().replace("n04590129", "n09999999"))
    elif how == "missing wnid folder":
        for f in (base / "train" / WNIDS[1]).iterdir():
            f.unlink()
        (base / "train" / WNIDS[1]).rmdir()
    elif how == "folder not in the mapping":
        _jpeg(base / "train" / "n00000001" / "a.JPEG", (0, 0, 0))
    elif how == "bad mapping line":
        (root / "LOC_synset_mapping.txt").write_text("n01440764\n")
    elif how == "no train folder":
        (base / "train").rename(base / "training")
    elif how == "root is a file":
        (root / "LOC_synset_mapping.txt").rename(root.with_name("file"))
        return root.with_name("file")
    return root


BROKEN = [
    ("bad csv header", "does not start with the header 'ImageId,PredictionString'"),
    ("bad csv row", "line 10 is not 'ImageId,wnid x y x y ...'"),
    ("no csv", "holds no class folders and .*LOC_val_solution.csv does not exist"),
    ("unlabelled val image", "validation image .*ILSVRC2012_val_00000500.JPEG has no row in"),
    ("csv names unknown wnid", "labels ILSVRC2012_val_0000000[78] as n09999999, which has no training folder"),
    ("missing wnid folder", "has no folder for n02012849 \\(listed in .*LOC_synset_mapping.txt\\)"),
    ("folder not in the mapping", "has folders that .* does not name: n00000001"),
    ("bad mapping line", "line 1 is 'n01440764', not 'WNID words'"),
    ("no train folder", "no ImageNet training folder in"),
    ("root is a file", "is a file, not a folder"),
]


@pytest.mark.parametrize("how, message", BROKEN, ids=[how.replace(" ", "-") for how, _ in BROKEN])
def test_a_broken_copy_is_one_line_naming_the_file(tmp_path, how, message):
    root = write_imagenet(tmp_path, "kaggle")
    root = _break(root, how)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(DataConfig(name="imagenet", root=str(root), image_size=16))
    assert "\n" not in str(err.value)


def test_the_default_input_is_224_from_256_squares(tmp_path):
    root = write_imagenet(tmp_path, train_per_class=1, val_per_class=1)
    ds = load_dataset(DataConfig(name="imagenet", root=str(root)))
    assert ds.image_size == 256 and math.isclose(224 / 256, 0.875)


def test_a_run_groups_by_an_nbdt_file_of_wnids_and_predict_sees_what_scoring_saw(tmp_path):
    """End to end on a tiny ImageNet: the default ImageNet crops, groups from an NBDT-style file
    whose leaves are wnids with repeated words, results.json with the wnids, and `ccn predict`
    preparing an image file exactly as scoring prepared it (stored square, then centre crop)."""
    import io
    import json

    from ccn import config as cfgmod
    from ccn.data.crops import CentreCrop
    from ccn.pipeline import run_training
    from ccn.predict import prepared_images
    from ccn.runs import NewRun, load_run
    from ccn.tracking import RunLog

    root = write_imagenet(tmp_path / "imagenet", "kaggle", train_per_class=4, val_per_class=2)
    nodes = [{"id": "n00001740", "label": "entity"}, {"id": "n1", "label": "x"}, {"id": "n2", "label": "y"}]
    nodes += [{"id": w, "label": t.split(",")[0]} for w, t in zip(WNIDS, WORDS)]  # "crane" twice
    links = [{"source": "n00001740", "target": "n1"}, {"source": "n00001740", "target": "n2"}]
    links += [{"source": "n1" if w in (WNIDS[0], WNIDS[2]) else "n2", "target": w} for w in WNIDS]
    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"nodes": nodes, "links": links}))
    out = tmp_path / "run"
    config = cfgmod.load(None, [f"data.root={root}", "data.name=imagenet", "data.image_size=16", "model.width=4",
                                "train.epochs=2", "train.batch_size=8", "train.progress=false",
                                "method.partition=file", f"method.groups_file={graph}"])
    with NewRun(out) as run:
        run_training(config, out, RunLog(out, stream=io.StringIO()), on_start=lambda: run.start(config))
    _, _, hierarchy, results = load_run(out)
    assert sorted(hierarchy.groups) == [[0, 2], [1, 3]]  # by wnid: the two cranes in different groups
    assert results["class_ids"] == WNIDS and results["classes"][1] == "crane (n02012849)"
    prep = results["preprocess"]
    assert prep["image_size"] == 18 and prep["fit"] == "centre_crop" and prep["input_size"] == 16
    ds = load_dataset(config.data)
    val = sorted((root / "ILSVRC" / "Data" / "CLS-LOC" / "val").iterdir())
    assert torch.equal(prepared_images(prep, [str(val[3])]), CentreCrop(16, 0.875)(ds.test_images[3:4]))


def test_caps_choose_before_decoding_the_images_the_caps_keep(tmp_path, monkeypatch):
    """data.train_per_class on ImageNet decodes only the kept images, and keeps the same ones the
    caps keep after decoding for every other data set."""
    from ccn.data import store as folder
    root = write_imagenet(tmp_path, train_per_class=5, val_per_class=3)
    full = load_dataset(DataConfig(name="imagenet", root=str(root), image_size=16, cache=False))
    decoded = []
    real = folder.decode_split
    monkeypatch.setattr(folder, "decode_split", lambda items, *a, **k: decoded.append(len(items)) or real(items, *a, **k))
    capped = load_dataset(DataConfig(name="imagenet", root=str(root), image_size=16, cache=False,
                                     train_per_class=2, test_per_class=1))
    assert decoded == [8, 4]
    from ccn.data.base import cap_per_class
    keep = cap_per_class(full.train_labels, 2)
    assert torch.equal(capped.train_images[:], full.train_images[keep])
