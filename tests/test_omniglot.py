"""Omniglot: the official layout, characters as classes in alphabets, the split by drawer, the
oracle partition by alphabet, and one line for each broken copy."""

import subprocess

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import SHARED_DATA
from ccn import config as cfgmod
from ccn.config import DataConfig
from ccn.data import load_dataset
from ccn.data.omniglot import list_omniglot
from ccn.errors import ConfigError, DataError

# alphabet folders of a tiny copy: {set folder: {alphabet: characters}}
TINY = {"images_background": {"Latin": 2, "Greek": 1}, "images_evaluation": {"Angelic": 2}}


def _drawing(path, stroke):
    """A 105 x 105 1-bit PNG, a black stroke on white, as in the release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("1", (105, 105), 1)
    ImageDraw.Draw(image).line(stroke, fill=0, width=9)
    image.save(path)


def write_omniglot(root, drawers=range(1, 21), sets=TINY):
    """Every character of `sets` drawn by every drawer; each alphabet's strokes lie one way (so the
    oracle's alphabets are also what the images share)."""
    number = 0
    for set_folder, alphabets in sets.items():
        for a, (alphabet, characters) in enumerate(alphabets.items()):
            for c in range(1, characters + 1):
                number += 1
                for drawer in drawers:
                    offset = 10 * c + drawer % 3
                    stroke = [(offset, 5), (offset, 100)] if a % 2 == 0 else [(5, offset), (100, offset)]
                    _drawing(root / set_folder / alphabet / f"character{c:02d}" / f"{number:04d}_{drawer:02d}.png",
                             stroke)
    return root


@pytest.fixture(scope="module")
def tiny_omniglot(tmp_path_factory):
    return write_omniglot(tmp_path_factory.mktemp("omniglot"))


def test_characters_are_classes_in_alphabets_split_by_drawer(tiny_omniglot):
    ds = load_dataset(DataConfig(name="omniglot", root=str(tiny_omniglot), image_size=16))
    # background alphabets first, each set's alphabets and characters sorted
    assert ds.classes == ["Greek/character01", "Latin/character01", "Latin/character02", "Angelic/character01",
                          "Angelic/character02"]
    assert ds.coarse == [0, 1, 1, 2, 2] and ds.coarse_names == ["Greek", "Latin", "Angelic"]
    assert ds.train_labels.bincount().tolist() == [15] * 5 and ds.test_labels.bincount().tolist() == [5] * 5
    assert not ds.flip and ds.image_size == 16
    assert ds.notes["split"] == "drawers 1-15 train, 16-20 test" and ds.notes["alphabets"] == "both"


def test_native_size_is_the_files_black_strokes_on_white(tiny_omniglot):
    ds = load_dataset(DataConfig(name="omniglot", root=str(tiny_omniglot), train_per_class=1, test_per_class=1))
    image = ds.train_images[0]
    assert ds.image_size == 105 and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert set(image.unique().tolist()) == {0, 255}  # 1-bit: exactly black and white at the native size
    assert (image == 255).float().mean() > 0.8  # mostly white paper


def test_one_set_of_alphabets_keeps_the_labels_it_has_in_both(tiny_omniglot):
    both = list_omniglot(tiny_omniglot)
    background = list_omniglot(tiny_omniglot, "background")
    evaluation = list_omniglot(tiny_omniglot, "evaluation")
    assert both.classes[:3] == background.classes and background.alphabets == ["Greek", "Latin"]
    assert evaluation.classes == ["Angelic/character01", "Angelic/character02"] and evaluation.coarse == [0, 0]
    assert both.train[:len(background.train)] == background.train


def test_no_drawer_is_in_both_splits_and_the_split_key_moves_the_boundary(tiny_omniglot):
    def drawers(items):
        return {int(path[-6:-4]) for path, _ in items}

    listing = list_omniglot(tiny_omniglot, train_drawers=10)
    assert drawers(listing.train) == set(range(1, 11)) and drawers(listing.test) == set(range(11, 21))
    default = list_omniglot(tiny_omniglot)
    assert drawers(default.train) == set(range(1, 16)) and drawers(default.test) == set(range(16, 21))


def test_another_split_or_set_of_alphabets_is_stored_apart(tiny_omniglot, tmp_path):
    """The cache is keyed by the file lists: a changed split or set of alphabets decodes again."""
    def load(**keys):
        return load_dataset(DataConfig(name="omniglot", root=str(tiny_omniglot), image_size=8, **keys))

    assert len(load().train_labels) == 75
    assert len(load(train_drawers=12).train_labels) == 60
    assert len(load(alphabets="evaluation").train_labels) == 30
    assert len(load().train_labels) == 75  # the first store again, not the last one
    assert len(list((tmp_path / "cache").glob("omniglot-*.u8"))) == 6  # train and test of three listings


def test_oracle_groups_are_the_alphabets(tiny_omniglot, tmp_path):
    from ccn.pipeline import run_training
    config = cfgmod.load(None, ["data.name=omniglot", f"data.root={tiny_omniglot}", "data.image_size=16",
                                "model.width=4", "train.epochs=2", "train.batch_size=16", "train.progress=false",
                                "method.partition=oracle"])
    results = run_training(config, None)
    groups = sorted(sorted(g) for g in results["hierarchy"]["groups"])
    assert groups == [["Angelic/character01", "Angelic/character02"], ["Greek/character01"],
                      ["Latin/character01", "Latin/character02"]]


def _break(root, how):
    character = root / "images_background" / "Latin" / "character01"
    if how == "bad file name":
        (character / "0001_03.png").rename(character / "0001-03.png")
    elif how == "drawer 21":
        (character / "0001_03.png").rename(character / "0001_21.png")
    elif how == "drawer 00":
        (character / "0001_03.png").rename(character / "0001_00.png")
    elif how == "no test drawing":
        for drawer in range(16, 21):
            (character / f"0001_{drawer:02d}.png").unlink()
    elif how == "folder in a character":
        (character / "more").mkdir()
    elif how == "file in an alphabet":
        (root / "images_background" / "Latin" / "README").write_text("notes")
    elif how == "empty alphabet":
        (root / "images_background" / "Runic").mkdir()
    elif how == "alphabet in both sets":
        _drawing(root / "images_evaluation" / "Latin" / "character01" / "0009_01.png", [(5, 5), (9, 9)])
    elif how == "no evaluation set":
        for path in sorted((root / "images_evaluation").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "images_evaluation").rmdir()
    return root


BROKEN = [
    ("bad file name", r"character01/0001-03.png is not a drawing named IIII_DD.png \(a four-digit image number"),
    ("drawer 21", r"character01/0001_21.png: drawer 21 is outside 01-20"),
    ("drawer 00", r"character01/0001_00.png: drawer 00 is outside 01-20"),
    ("no test drawing", r"character folder .*Latin/character01 has no drawing by drawers 16-20, so the test split "
                        r"would lack it \(data.train_drawers=15\)"),
    ("folder in a character", r"character folder .*character01 holds a folder, more, where only drawings"),
    ("file in an alphabet", r"alphabet folder .*Latin holds a file, README, where only character folders belong"),
    ("empty alphabet", r"alphabet folder .*Runic holds no character folders"),
    ("alphabet in both sets", r"alphabet Latin is in both .*images_background and .*images_evaluation"),
    ("no evaluation set", r"data.alphabets=both reads .*images_evaluation, which does not exist \(or choose the "
                          r"other set with data.alphabets\)"),
]


@pytest.mark.parametrize("how, message", BROKEN, ids=[how.replace(" ", "-") for how, _ in BROKEN])
def test_a_broken_copy_is_one_line_naming_the_file(tmp_path, how, message):
    root = _break(write_omniglot(tmp_path / "omniglot", sets={"images_background": {"Latin": 1, "Greek": 1},
                                                                "images_evaluation": {"Angelic": 1}}), how)
    with pytest.raises(DataError, match=message) as err:
        list_omniglot(root)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("drawers", ["0", "20"])
def test_a_split_that_leaves_a_split_empty_is_refused(drawers):
    with pytest.raises(ConfigError, match="data.train_drawers must be between 1 and 19"):
        cfgmod.load(None, ["data.name=omniglot", f"data.train_drawers={drawers}"])


@pytest.mark.parametrize("key", ["data.train_drawers=10", "data.alphabets=background"])
def test_omniglot_keys_on_another_data_set_are_refused_not_ignored(key):
    with pytest.raises(ConfigError, match=f"{key.split('=')[0]} only applies when data.name=omniglot \\(here "
                                          "data.name=folder\\)"):
        cfgmod.load(None, ["data.name=folder", key])


@pytest.fixture(scope="module")
def real_omniglot(tmp_path_factory):
    if not (SHARED_DATA / "omniglot.tar.xz").is_file():
        pytest.skip(f"omniglot.tar.xz is not in {SHARED_DATA} (set CCN_SHARED_DATA to the shared data folder)")
    dest = tmp_path_factory.mktemp("real-omniglot")
    subprocess.run(["bash", str(SHARED_DATA / "unpack.sh"), str(dest), "omniglot"], check=True, capture_output=True)
    return dest / "omniglot"


@pytest.mark.slow  # unpacking takes about 10 s, the listing and a capped decode a few more
def test_the_real_release_has_1623_characters_of_50_alphabets_and_no_shared_drawer(real_omniglot):
    listing = list_omniglot(real_omniglot)
    assert len(listing.classes) == 1623 and len(listing.alphabets) == 50
    assert len(listing.train) == 24_345 and len(listing.test) == 8_115
    assert len(list_omniglot(real_omniglot, "background").classes) == 964
    for items, drawers in ((listing.train, range(1, 16)), (listing.test, range(16, 21))):
        assert {int(path[-6:-4]) for path, _ in items} == set(drawers)
    # no person's drawing of a character is in both splits
    train_pairs = {(label, path[-6:-4]) for path, label in listing.train}
    assert not train_pairs & {(label, path[-6:-4]) for path, label in listing.test}
    ds = load_dataset(DataConfig(name="omniglot", root=str(real_omniglot), train_per_class=1, test_per_class=1,
                                 image_size=28, cache=False))
    assert ds.num_classes == 1623 and len(set(ds.coarse)) == 50 and ds.train_images.shape == (1623, 3, 28, 28)
