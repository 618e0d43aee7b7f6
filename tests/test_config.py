import pytest

from ccn import config as cfgmod
from ccn.errors import ConfigError
from conftest import run_cli


def test_defaults_are_valid_and_overrides_apply():
    c = cfgmod.load(None, ["train.epochs=3", "model.name=resnet20", "method.metric=js", "data.image_size=16"])
    assert (c.train.epochs, c.model.name, c.method.metric, c.data.image_size) == (3, "resnet20", "js", 16)


def test_exponent_without_a_dot_is_a_number():
    assert cfgmod.load(None, ["train.lr=1e-3"]).train.lr == 0.001


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.2\nmethod:\n  name: flat\n")
    c = cfgmod.load(path, ["train.lr=0.3"])
    assert (c.train.epochs, c.train.lr, c.method.name) == (7, 0.3, "flat")


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["unknown config key 'train.epoch'", "epochs"]),
    ("trian.epochs=3", ["unknown config key 'trian'"]),
    ("train.epochs=three", ["train.epochs must be a whole number"]),
    ("train.epochs=0", ["train.epochs must be between 1 and 100000"]),
    ("train.epochs=-2", ["train.epochs must be between 1 and 100000"]),
    ("train.lr=fast", ["train.lr must be a number"]),
    ("method.metric=l3", ["method.metric='l3' is not allowed", "l1"]),
    ("method.groups=0", ["method.groups must be between 1 and"]),
    ("data.download=maybe", ["data.download must be true or false"]),
    ("train.label_smoothing=2", ["train.label_smoothing must be at least 0 and less than 1"]),
    ("device=tpu", ["device='tpu' is not allowed"]),
    ("method.depth=3", ["only depth 1", "method.depth=2"]),
    ("train.epochs", ["KEY=VALUE"]),
])
def test_bad_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        cfgmod.load(None, [override])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("overrides, words", [
    (["method.cluster_epoch=0"], ["method.cluster_epoch=0", "flat model and call it ccn"]),
    (["method.depth=2", "method.cluster_epoch=2", "method.recurse_epoch=2", "train.epochs=5"],
     ["method.recurse_epoch=2 is not after the clustering epoch"]),
    (["method.recurse_epoch=3", "train.epochs=5"], ["method.recurse_epoch is set but nothing is split"]),
    (["method.partition=file"], ["method.partition=file and method.groups_file=PATH go together"]),
    (["method.groups_file=h.json"], ["method.partition=file and method.groups_file=PATH go together"]),
    (["method.clustering=balanced", "method.threshold=0.5"], ["method.threshold cannot be used with method.clustering=balanced"]),
    (["method.clustering=balanced", "method.max_group_size=5"], ["method.max_group_size cannot be used"]),
    (["data.val_fraction=1"], ["data.val_fraction must be 0"]),
])
def test_settings_that_would_change_what_a_run_means_are_refused(overrides, words):
    """A run must be what its name says: clustering at epoch 0 is a flat model, recursion before
    clustering splits nothing, a key that another key silently overrides means nothing."""
    with pytest.raises(ConfigError) as err:
        cfgmod.load(None, overrides)
    for word in words:
        assert word in str(err.value)


def test_late_zero_variant_is_refused_with_exit_2(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {train: {epochs: 2}}\nvariants: [flat, late-0]\nseeds: [0]\n")
    result = run_cli("experiment", "--config", str(grid), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "method.cluster_epoch=0" in result.stderr and "Traceback" not in result.stderr


def test_probe_epochs_must_leave_room_for_step_3():
    with pytest.raises(ConfigError, match="raise train.epochs"):
        cfgmod.load(None, ["train.epochs=2", "method.probe_epochs=2"])
    cfgmod.load(None, ["train.epochs=2", "method.probe_epochs=2", "method.name=flat"])  # flat: no clustering


def test_cli_bad_key_is_one_line_exit_2(tmp_path):
    result = run_cli("train", "--set", "train.epochz=1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "train.epochz" in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_missing_config_file(tmp_path):
    result = run_cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
