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
    ("train.lr=1" + "0" * 400, ["train.lr is too large for a floating-point number"]),
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
    (["data.val_fraction=1"], ["data.val_fraction must be at least 0 and less than 1 (0: score the test set)"]),
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


def test_config_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder: pass a YAML file"):
        cfgmod.load(tmp_path)


def test_cli_missing_config_file(tmp_path):
    result = run_cli("train", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr


# Each case of docs/bad-input.md "Config values": --set overrides that must be refused, and a word
# or two the one-line message must hold (the key, and what is allowed).
VALUE_CASES = [
    pytest.param(["train.lr=nan"], "train.lr must be a finite number", id="nan-lr"),
    pytest.param(["train.lr=inf"], "train.lr must be a finite number", id="inf-lr"),
    pytest.param(["train.weight_decay=-inf"], "train.weight_decay must be a finite number", id="minus-inf-weight-decay"),
    pytest.param(["train.warmup_epochs=.inf"], "train.warmup_epochs must be a finite number", id="inf-warmup"),
    pytest.param(["model.dropout=.nan"], "model.dropout must be a finite number", id="nan-dropout"),
    pytest.param(["method.threshold=nan"], "method.threshold must be a finite number", id="nan-threshold"),
    pytest.param(["train.schedule=step", "train.milestones=[0.5, .nan]"], "train.milestones must be fractions",
                 id="nan-milestone"),
    pytest.param(["train.schedule=step", "train.milestones=[0.75, 0.5]"], "increasing order", id="unsorted-milestones"),
    pytest.param(["train.schedule=step", "train.milestones=[0.5, 0.5]"], "without repeats", id="repeated-milestones"),
    pytest.param(["train.schedule=step", "train.milestones=[true]"], "train.milestones must be fractions",
                 id="bool-milestone"),
    pytest.param(["train.milestones=[0.3]"], "train.milestones only applies when train.schedule=step",
                 id="milestones-without-step"),
    pytest.param(["train.gamma=0.5"], "train.gamma only applies when train.schedule=step", id="gamma-without-step"),
    pytest.param(["train.schedule=step", "train.gamma=0"], "train.gamma must be greater than 0", id="zero-gamma"),
    pytest.param(["train.epochs=1000000000"], "train.epochs must be between 1 and 100000", id="huge-epochs"),
    pytest.param(["train.batch_size=1000000000"], "train.batch_size must be between 2 and", id="huge-batch"),
    pytest.param(["train.eval_batch_size=0"], "train.eval_batch_size must be between 1 and", id="zero-eval-batch"),
    pytest.param(["data.image_size=100000"], "data.image_size must be between 8 and 1024", id="huge-image-size"),
    pytest.param(["data.image_size=2"], "data.image_size must be between 8 and 1024", id="tiny-image-size"),
    pytest.param(["data.train_per_class=0"], "data.train_per_class must be between 1 and", id="zero-per-class"),
    pytest.param(["data.crop_padding=-1"], "data.crop_padding must be between 0 and 256", id="negative-crop-padding"),
    pytest.param(["data.cutout=100000"], "data.cutout must be between 0 and 1024", id="huge-cutout"),
    pytest.param(["model.width=1000000"], "model.width must be between 1 and 4096", id="huge-width"),
    pytest.param(["model.dropout=1"], "model.dropout must be at least 0 and less than 1", id="dropout-one"),
    pytest.param(["method.groups=1000000000"], "method.groups must be between 1 and", id="huge-groups"),
    pytest.param(["seed=-1"], "seed must be between 0 and 4294967295", id="negative-seed"),
    pytest.param(["train.ema=1"], "train.ema must be at least 0 and less than 1 (the decay", id="ema-one"),
    pytest.param(["data.val_fraction=-0.2"], "data.val_fraction must be at least 0", id="negative-val-fraction"),
    pytest.param(["data.augment=randaugment", "data.randaugment_n=15"], "data.randaugment_n must be between 0 and 14",
                 id="randaugment-n-15"),
    pytest.param(["data.augment=randaugment", "data.randaugment_m=31"], "data.randaugment_m must be between 0 and 30",
                 id="randaugment-m-31"),
    pytest.param(["seed=1099511627776"], "seed must be between 0 and 4294967295", id="huge-seed"),
    pytest.param(["train.momentum=1.5"], "train.momentum must be between 0 and 1", id="momentum-above-one"),
    pytest.param(["train.weight_decay=5"], "train.weight_decay must be between 0 and 1", id="huge-weight-decay"),
    pytest.param(["method.holdout_fraction=0"], "method.holdout_fraction must be greater than 0", id="zero-holdout"),
    pytest.param(["method.threshold=0"], "method.threshold must be greater than 0", id="zero-threshold"),
    pytest.param(["method.split_min_size=1"], "method.split_min_size must be between 2 and", id="split-min-size-one"),
    pytest.param(["method.flat_weight=1e9"], "method.flat_weight must be between 0 and 1000", id="huge-flat-weight"),
    pytest.param(["method.groups=3", "method.threshold=0.5"], "method.groups and method.threshold cannot both be set",
                 id="groups-and-threshold"),
    pytest.param(["method.groups=3", "method.min_group_size=2"],
                 "method.groups and method.min_group_size cannot both be set", id="groups-and-min-size"),
    pytest.param(["method.groups=3", "method.max_group_size=4"],
                 "method.groups and method.max_group_size cannot both be set", id="groups-and-max-size"),
    pytest.param(["method.min_group_size=5", "method.max_group_size=3"],
                 "method.min_group_size (5) must not exceed method.max_group_size (3)", id="min-above-max-size"),
    pytest.param(["train.epochs=6", "method.probe_epochs=2", "method.cluster_epoch=3"],
                 "method.cluster_epoch and method.probe_epochs cannot both be set", id="cluster-epoch-and-probe-epochs"),
    pytest.param(["data.num_classes=10"], "data.num_classes only applies when data.name=synthetic",
                 id="num-classes-not-synthetic"),
    pytest.param(["data.name=synthetic", "data.num_classes=4", "data.num_groups=5"],
                 "data.num_groups (5) must not exceed data.num_classes (4)", id="more-planted-groups-than-classes"),
    pytest.param(["data.name=synthetic", "data.num_classes=10000", "data.image_size=512"], "would need",
                 id="synthetic-too-big-for-memory"),
    pytest.param(["device=cuda:x"], "device='cuda:x' is not allowed", id="bad-cuda-index"),
]


@pytest.mark.parametrize("overrides, words", VALUE_CASES)
def test_bad_config_values(overrides, words):
    with pytest.raises(ConfigError) as err:
        cfgmod.load(None, overrides)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_sizes_that_the_classes_cannot_meet():
    from ccn.plan import DataFacts, resolve
    digits = DataFacts("digits", tuple(map(str, range(10))), (20,) * 10, image_size=8, flips=False, store="memory")
    config = cfgmod.load(None, ["method.min_group_size=11"])
    with pytest.raises(ConfigError, match="method.min_group_size=11 is impossible with 10 classes in data digits"):
        resolve(config, digits)
    resolve(cfgmod.load(None, ["method.min_group_size=10"]), digits)  # one group: allowed


# docs/bad-input.md "Config files": the YAML reader itself.
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
FILE_CASES = [
    pytest.param(b"train:\n  epochs: 3\n  epochs: 5\n", "key 'epochs' appears twice (lines 2 and 3)", id="duplicate-key"),
    pytest.param(b"train: {lr: 0.1}\nmethod: {}\ntrain: {epochs: 4}\n", "key 'train' appears twice (lines 1 and 3)",
                 id="duplicate-section"),
    pytest.param(b"train:\n  lr: 0.1 # caf\xe9\n", "is not UTF-8 text", id="latin-1-file"),
    pytest.param("train: {epochs: 3}\n".encode("utf-16"), "is a binary file", id="utf-16-file"),
    pytest.param(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "is a binary file", id="binary-file"),
    pytest.param(BILLION_LAUGHS.encode(), "uses an alias", id="billion-laughs"),
    pytest.param(b"train: {epochs: 3}\n" + b"#" * 1_100_000, "more than the 1000000", id="huge-file"),
    pytest.param(b"[" * 100_000, "config file", id="deep-nesting"),
    pytest.param(b"- train\n- model\n", "must hold a mapping of sections", id="list-not-mapping"),
    pytest.param(b"!!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML", id="python-tag"),
    pytest.param(b"train:\n\tepochs: 3\n", "is not valid YAML (line 2", id="tab-indent"),
    pytest.param(b"train: {lr: 2020-01-01}\n", "train.lr must be a number", id="date-value"),
    pytest.param(b"train: {epochs: .nan}\n", "train.epochs must be a whole number", id="nan-in-file"),
    pytest.param(b"train: {lr: .inf}\n", "train.lr must be a finite number", id="inf-in-file"),
]


@pytest.mark.parametrize("content, words", FILE_CASES)
def test_bad_config_files(content, words, tmp_path):
    import time
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        cfgmod.load(path)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - started < 5


def test_aliases_in_overrides_are_only_text():
    with pytest.raises(ConfigError, match="must be a number"):
        cfgmod.load(None, ["train.lr=*a"])


@pytest.mark.parametrize("written, read", [("010", 10), ("08", 8), ("1_000", 1000), ("+7", 7)])
def test_whole_numbers_are_read_as_written_in_decimal(written, read):
    """YAML 1.1 reads 010 as octal 8; ccn reads numbers as typed, in --set and in files alike."""
    assert cfgmod.load(None, [f"seed={written}"]).seed == read


@pytest.mark.parametrize("written", ["1:30", "0x10", "0b11", "0o17"])
def test_yaml_11_number_forms_are_refused_not_converted(written, tmp_path):
    """1:30 was 90 (base 60), 0b11 was 3: now text, which a number key refuses naming the value."""
    with pytest.raises(ConfigError, match=f"seed must be a whole number, got '{written}'"):
        cfgmod.load(None, [f"seed={written}"])
    path = tmp_path / "c.yaml"
    path.write_text(f"seed: {written}\ntrain:\n  epochs: 010\n")
    with pytest.raises(ConfigError, match=f"seed must be a whole number, got '{written}'"):
        cfgmod.load(str(path), [])
    path.write_text("train:\n  epochs: 010\n")
    assert cfgmod.load(str(path), []).train.epochs == 10


def test_float_forms_still_read_as_numbers():
    config = cfgmod.load(None, ["train.lr=1e-3", "train.weight_decay=5.e-4", "train.momentum=.9"])
    assert (config.train.lr, config.train.weight_decay, config.train.momentum) == (0.001, 5e-4, 0.9)
    with pytest.raises(ConfigError, match="train.lr must be a number, got '1:30.5'"):
        cfgmod.load(None, ["train.lr=1:30.5"])
