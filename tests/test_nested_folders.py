"""Image folders nested by group (`root/train/<group>/<class>/*`): leaves as classes, group folders as
coarse labels (and the oracle's groups); flat folders exactly as before; one line for a mixed tree."""

import pytest
from PIL import Image

from ccn import config as cfgmod
from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data.folder import list_class_files
from ccn.data.store import StoreFile, StoreOptions
from ccn.errors import DataError

# {group: {class: colour}}: "cat" is a class name in both groups
TREE = {"animals": {"cat": 40, "dog": 80}, "plants": {"cat": 160, "fern": 220}}


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (colour, colour, 255 - colour)).save(path)


def write_nested(root, per_class=3, test_per_class=2):
    for group, classes in TREE.items():
        for name, colour in classes.items():
            for i in range(per_class):
                _png(root / "train" / group / name / f"{i}.png", colour)
            for i in range(test_per_class):
                _png(root / "test" / group / name / f"t{i}.png", colour)
    return root


def write_flat(root):
    for name, colour in (("cat", 40), ("dog", 80), ("fern", 220)):
        for i in range(3):
            _png(root / "train" / name / f"{i}.png", colour)
        _png(root / "test" / name / "t.png", colour)
    (root / "train" / "dog" / "thumbs").mkdir()  # a sub-folder without images: ignored, as always
    return root


def test_leaves_are_classes_named_by_group_and_groups_are_coarse_labels(tmp_path):
    root = write_nested(tmp_path)
    (root / "test" / "plants" / "fern" / "t1.png").unlink()
    ds = load_dataset(DataConfig(name="folder", root=str(root), image_size=8))
    assert ds.classes == ["animals/cat", "animals/dog", "plants/cat", "plants/fern"]
    assert ds.coarse == [0, 0, 1, 1] and ds.coarse_names == ["animals", "plants"]
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2, 3]
    blue = ds.train_images[:].float()[:, 2].mean(dim=(1, 2))
    assert abs(float(blue[6]) - (255 - 160)) < 3  # plants/cat's own images, not animals/cat's


def test_a_test_split_may_lack_a_whole_group_of_the_tree(tmp_path):
    root = write_nested(tmp_path)
    for path in sorted((root / "test" / "plants").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "test" / "plants").rmdir()
    ds = load_dataset(DataConfig(name="folder", root=str(root), image_size=8))
    assert ds.num_classes == 4 and ds.test_labels.tolist() == [0, 0, 1, 1]


def test_a_flat_folder_reads_and_is_stored_exactly_as_before(tmp_path):
    """Same classes, order, labels and cache key as the flat reader always gave (list_class_files,
    unchanged, then labels in class order), so earlier runs' stores are found and results stay the same."""
    root = write_flat(tmp_path / "flat")
    ds = load_dataset(DataConfig(name="folder", root=str(root), image_size=8))
    assert ds.classes == ["cat", "dog", "fern"] and ds.coarse is None and ds.coarse_names is None
    stores = []
    for split in ("train", "test"):
        listing = list_class_files(root / split)
        index = {name: i for i, name in enumerate(listing)}
        items = [(p, index[c]) for c, files in listing.items() for p in files]
        stores.append(StoreFile.for_split("folder", items, 8, StoreOptions()).data.name)
    assert sorted(p.name for p in (tmp_path / "cache").glob("folder-*.u8")) == sorted(stores)


def test_oracle_groups_are_the_group_folders(tmp_path):
    from ccn.pipeline import run_training
    root = write_nested(tmp_path)
    config = cfgmod.load(None, ["data.name=folder", f"data.root={root}", "data.image_size=8", "model.width=4",
                                "train.epochs=2", "train.batch_size=4", "train.progress=false",
                                "method.partition=oracle"])
    results = run_training(config, None)
    assert sorted(sorted(g) for g in results["hierarchy"]["groups"]) == [["animals/cat", "animals/dog"],
                                                                           ["plants/cat", "plants/fern"]]


def _break(root, how):
    if how == "images beside class folders":
        _png(root / "train" / "animals" / "stray.png", 0)
    elif how == "nested and flat classes":
        _png(root / "train" / "mushroom" / "0.png", 0)
    elif how == "flat test split":
        _png(root / "test" / "cat" / "0.png", 0)
    elif how == "class under another group in test":
        _png(root / "test" / "plants" / "dog" / "0.png", 0)
    elif how == "class missing from train":
        _png(root / "test" / "plants" / "moss" / "0.png", 0)
    elif how == "one level too deep":
        _png(root / "train" / "plants" / "tree" / "oak" / "0.png", 0)
    elif how == "empty group":
        (root / "train" / "fungi").mkdir()
    elif how == "flat class with a folder of images":
        return _flat_with_images_below(root)
    return root


def _flat_with_images_below(root):
    flat = write_flat(root.parent / "flat")
    _png(flat / "train" / "dog" / "puppies" / "0.png", 0)  # a flat reading would leave these out
    return flat


BROKEN = [
    ("images beside class folders", r"train/animals holds both image files \(stray.png\) and class folders of images "
                                    r"\(cat\)"),
    ("nested and flat classes", r"train mixes group folders of class folders \(animals\) with class folders that "
                                r"are not in a group \(mushroom\): use one layout"),
    ("flat test split", r"test mixes group folders of class folders \(animals\) with class folders that are not "
                        r"in a group \(cat\)"),
    ("class under another group in test", r"test/plants/dog is under group plants, but the class dog is under "
                                          r"animals in .*train: test/ must use the same tree"),
    ("class missing from train", r"test has classes with no training folder: plants/moss"),
    ("one level too deep", r"class folder .*plants/tree holds no images \(only folders: classes sit one level "
                           r"below a group folder"),
    ("empty group", r"group folder .*train/fungi holds no class folders"),
    ("flat class with a folder of images", r"train/dog holds both image files \(0.png\) and class folders "
                                           r"of images \(puppies\)"),
]


@pytest.mark.parametrize("how, message", BROKEN, ids=[how.replace(" ", "-") for how, _ in BROKEN])
def test_a_mixed_or_mismatched_tree_is_one_line(tmp_path, how, message):
    root = _break(write_nested(tmp_path / "nested", per_class=1, test_per_class=1), how)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(DataConfig(name="folder", root=str(root), image_size=8))
    assert "\n" not in str(err.value)


def test_a_flat_test_split_beside_a_nested_train_split_is_named(tmp_path):
    root = write_nested(tmp_path / "nested", per_class=1, test_per_class=1)
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    _png(root / "test" / "cat" / "0.png", 0)
    with pytest.raises(DataError, match=r"train is nested \(<group>/<class>/<images>\) but .*test is flat "
                                        r"\(<class>/<images>\): give both splits the same layout"):
        load_dataset(DataConfig(name="folder", root=str(root), image_size=8))
