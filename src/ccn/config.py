"""Typed configuration: dataclasses, YAML files and `--set key=value` overrides.

Every run writes its fully resolved config to `config.yaml`, so a run folder says exactly what was
asked, and beside it `plan.json`: the defaults that depend on the data set, resolved (ccn.plan).
Defaults marked "ours" are choices the paper leaves open (see docs/method.md).

The rules checked here (`check_rules`, whenever a config is read) need no data: ranges (LIMITS),
keys that mean something only beside another setting (ONLY_WHEN), pairs that would override each
other (EXCLUSIVE), and the method's schedule. Rules that need the data set are ccn.plan.resolve's.

Names, everywhere in the package, tests and benchmarks: `config` is a `Config` (one run's settings);
this module, where its functions are needed, is imported as `from ccn import config as cfgmod`
(never under the name `config`); single classes come by name (`from ccn.config import Config`).
tests/test_layering.py checks the import half of this.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import yaml

from ccn.errors import CCNError, ConfigError
from ccn.file_checks import check_path, file_problem, read_text


@dataclass
class DataConfig:
    name: str = "digits"  # a name from ccn.data.DATASETS
    root: str = "data"  # folder holding (or receiving) the data set files
    image_size: Optional[int] = None  # pixels per side; None: the data set's native size
    train_per_class: Optional[int] = None  # cap on training images per class (quick runs)
    test_per_class: Optional[int] = None  # cap on test images per class
    download: bool = False  # CIFAR only: fetch the official archive (md5 checked) when absent
    flip: Optional[bool] = None  # random horizontal flip; None: the data set's default
    crop_padding: Optional[int] = None  # random crop after padding by this many pixels; None: size/8
    # training crop: pad (zero-pad by crop_padding, cut the stored size) or random_resized (ImageNet's
    # RandomResizedCrop to image_size, from a stored square of side round(image_size / eval_crop); the
    # evaluation sees the centred eval_crop of it; ccn.data.crops); None: random_resized for imagenet, else pad
    crop: Optional[Literal["pad", "random_resized"]] = None
    crop_scale: list = field(default_factory=lambda: [0.08, 1.0])  # random_resized: box area range, fraction
    #                                                              of the stored square (torchvision's)
    crop_ratio: list = field(default_factory=lambda: [3 / 4, 4 / 3])  # random_resized: box width/height range,
    #                                                                  drawn log-uniform (torchvision's)
    eval_crop: float = 0.875  # random_resized: evaluation's centred square side / stored side (224/256)
    cutout: int = 0  # side of a zeroed square per training image, pixels; 0: off
    # random: each image flips with probability 1/2 every epoch; alternate: each image flips on every
    # other epoch, its first flip drawn from (seed, image index) (airbench's derandomised flip)
    flip_mode: Literal["random", "alternate"] = "random"
    pad_mode: Literal["zeros", "reflect"] = "zeros"  # what the random crop's padding holds (airbench: reflect, 2 px)
    # strong augmentation per image after crop + flip, before cutout (ccn.data.policies; README "data.augment")
    augment: Literal["none", "autoaugment", "randaugment", "trivialaugment"] = "none"
    randaugment_n: int = 2  # RandAugment N: operations per image, 0-14 (torchvision's default 2)
    randaugment_m: int = 9  # RandAugment M: magnitude bin, 0 (identity) to 30 (torchvision's default 9)
    cache: bool = True  # keep decoded image folders in the cache (CCN_CACHE_DIR, default ~/.cache/ccn) for later runs
    # where decoded image files live (the image-file data sets: folder, caltech101, imagenet, tinyimagenet,
    # omniglot): memory, disk (a file in the cache, memory-mapped),
    # auto (memory when N x 3 x S x S bytes fit in half the memory this process may use, else disk), or
    # stream (decode the files per batch, nothing decoded kept; for data too big even for disk); README "Large data sets"
    store: Literal["auto", "memory", "disk", "stream"] = "auto"
    workers: Optional[int] = None  # stream: decoding processes, 0-256; 0: in the training process; empty: min(8, CPUs)
    # stream: seconds a decoding worker may hold its files without an answer before the run stops, naming
    # it and them (a stalled disk or network file system), 1-86400
    worker_timeout: float = 300.0
    skip_bad_images: bool = False  # warn and skip unreadable images instead of stopping
    val_fraction: float = 0.0  # >0: hold out this share of each class's training images (seeded, the same for
    #                            every run seed) and score them instead of the test set, to choose settings
    include_background: bool = False  # caltech101: keep BACKGROUND_Google as a class
    # omniglot: which alphabets are classes: both (all 1,623 characters of 50 alphabets), background (the
    # 964 characters of images_background's 30) or evaluation (the 659 of images_evaluation's 20)
    alphabets: Literal["background", "evaluation", "both"] = "both"
    train_drawers: int = 15  # omniglot: drawers 1..N (of 20) draw the training images, the rest the test images
    # folder holding WordNet 3.0's data.noun: coarse labels (the oracle's groups) from the hypernym tree of
    # class ids that are WordNet ids (imagenet, tinyimagenet), cut into wordnet_groups groups (ccn.data.wordnet)
    wordnet: Optional[str] = None
    wordnet_groups: Optional[int] = None  # groups of the WordNet cut; None: round(sqrt(classes))
    num_classes: int = 20  # synthetic only
    num_groups: int = 4  # synthetic only: planted groups of classes


@dataclass
class ModelConfig:
    name: str = "fastnet"  # a name from ccn.models.BACKBONES, or timm:NAME
    width: Optional[int] = None  # base width for fastnet / resnet-style nets; None: the net's default
    depth: Optional[int] = None  # pyramidnet / wide_resnet depth; None: the net's default
    alpha: Optional[int] = None  # pyramidnet widening
    widen_factor: Optional[int] = None  # wide_resnet
    shakedrop: Optional[float] = None  # pyramidnet: final ShakeDrop probability (0.5 in the paper's recipe)
    norm: Optional[str] = None  # fastnet: batch (default) or none
    dropout: float = 0.0  # before the head
    dirac: Optional[bool] = None  # identity (Dirac) init of each 3x3 conv's first c_in filters; None: the net's
    #                               default (airbench: true, others: false)
    # airbench: epochs its whitening conv's bias trains before it is frozen (None: 3, airbench's; train.epochs or
    # more: the whole run, ours)
    whiten_bias_epochs: Optional[int] = None
    init: Optional[str] = None  # start from trained weights: a run folder, or a .safetensors file (ccn or bare backbone)


@dataclass
class TrainConfig:
    epochs: int = 20  # total budget, probe epochs included
    batch_size: int = 32  # global: split evenly among torchrun processes, at least 2 each; the defaults are the digits job
    lr: float = 0.05  # peak learning rate at this batch size
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # not applied to norm weights and biases (ours)
    label_smoothing: float = 0.0
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from lr/10
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of the run
    gamma: float = 0.1  # step: factor at each milestone
    bf16: Optional[bool] = None  # bfloat16 autocast; None: on for CUDA, off on CPU; true/false honoured on both
    # BatchNorm of the backbone (every net, every head): None keeps PyTorch's defaults (eps 1e-5, momentum 0.1)
    bn_eps: Optional[float] = None  # airbench: 1e-12
    bn_momentum: Optional[float] = None  # PyTorch's convention: weight of the new batch statistics (airbench: 0.4)
    bn_weight: bool = True  # false: the BatchNorm scales stay at 1, untrained (airbench); model.init's are set to 1
    bn_bias_lr: float = 1.0  # learning-rate multiplier of the BatchNorm biases (airbench: 64)
    # lookahead (airbench): every `lookahead_every` steps from epoch `lookahead_start` + 1 on, the weights
    # are averaged into a shadow with decay lookahead_decay^every * progress^3 and copied back into the model
    lookahead_every: int = 0  # steps between averages; 0: off (airbench: 5)
    lookahead_decay: float = 0.95  # per-step decay base (airbench: 0.95)
    # epochs trained before the average starts (airbench: 3 of 10); below train.epochs, and the run (or
    # train.max_steps) must reach the first average, lookahead_every steps after the start (checked before training)
    lookahead_start: int = 0
    tta: Literal["none", "mirror", "mirror_translate"] = "none"  # test-time augmentation of the final scores
    #   (results.json, `ccn evaluate`; the per-epoch rows are scored without), the same for every rule:
    #   mirror averages the outputs of the image and its mirror image; mirror_translate also those of the
    #   image shifted one pixel up-left and down-right (reflect padding), weights 1/2, 1/4, 1/4 (airbench)
    #   Refused on data that is never flipped (digits, data.flip=false): a mirror image may mean another class
    # decay of an average of the weights, scored (every epoch) and saved instead of them (e.g. 0.999); 0: off.
    # Warm-up: update t uses min(ema, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage schedule)
    ema: float = 0.0
    channels_last: bool = True  # NHWC memory format on CUDA and CPU (faster on both); ignored on mps
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    eval_batch_size: int = 512
    # optimizer steps between checkpoints inside an epoch (for epochs of hours); 0: once per epoch.
    # A resumed run continues from the last one, bit-identical on CPU (ours: the dropout/ShakeDrop
    # random stream restarts at each one from (seed, rank, epoch, step), so no rank's state is needed)
    checkpoint_every: int = 0
    # stop after this many optimizer steps, the LR schedule fitted to them (a smoke test on a large data
    # set); the epoch it ends in is cut short, scored and logged; the test set is scored whole. 0: off
    max_steps: int = 0
    progress: bool = True  # progress bar when attached to a terminal


@dataclass
class MethodConfig:
    name: Literal["flat", "ccn"] = "ccn"
    probe_epochs: int = 1  # paper: 1
    cluster_epoch: Optional[int] = None  # take the groups after this epoch instead (the "late" control)
    probe_set: Literal["train", "holdout"] = "train"  # images whose softmax defines the class profiles
    holdout_fraction: float = 0.1  # probe_set=holdout: share of each class kept out of training
    metric: Literal["l1", "l2", "cosine", "js", "confusion"] = "l1"  # paper: L1
    linkage: Literal["average", "complete", "single", "ward"] = "average"  # ours
    groups: Optional[int] = None  # the number of groups K (a count); None: round(sqrt(C)) (ours)
    threshold: Optional[float] = None  # cut the merge tree at this distance instead of K groups
    min_group_size: Optional[int] = None
    max_group_size: Optional[int] = None
    partition: Literal["learned", "random", "oracle", "file"] = "learned"  # random: the learned sizes, shuffled
    # partition=random: whose group sizes the random groups take, the learned partition's or the data set's
    # coarse labels' (oracle: the control for partition=oracle, "are the true groups better than any of their sizes?")
    random_sizes: Literal["learned", "oracle"] = "learned"
    clustering: Literal["agglomerative", "balanced"] = "agglomerative"  # balanced: K equal-size groups (ours)
    profile: Literal["softmax", "prior"] = "softmax"  # prior: divide out how often each class is predicted (ours)
    groups_file: Optional[str] = None  # partition=file: a hierarchy.json or an NBDT node-link graph JSON
    flat_weight: float = 1.0  # lambda: weight of CE on the level-1 head in step 3; keeps level 1 alive (ours)
    # the loss-scale control (ours): divide step 3's loss by (1 + flat_weight), so the backbone's gradient
    # has the flat baseline's scale rather than ~2x it; the flat head's loss (weight 1) is unchanged by it
    normalize_loss: bool = False
    init_from_flat: bool = True  # level-3 weights start as a copy of level 1 (ours)
    inference: Literal["soft", "hard", "flat", "blend"] = "soft"  # the rule behind "top1"
    blend_weight: float = 0.5  # blend: weight of log p(c|x) against log softmax(z)
    depth: int = 1  # 2: split large groups again ("recursively"); with partition=file: the file's whole tree
    recurse_epoch: Optional[int] = None  # epoch after which groups are split; None: one epoch after clustering
    split_min_size: int = 4  # only groups with at least this many classes are split
    # Many classes (ours): the dense L1 distance is cubic in the class count, so above `sparse_above`
    # classes (profiles on the CPU) each profile keeps its `top_k` largest entries plus one exact
    # "rest" coordinate (the mass dropped, recorded in hierarchy.json's how.dropped_mass).
    sparse_above: int = 3000  # classes; the dense L1 takes ~10 s at 2,000 classes on 2 cores
    top_k: Optional[int] = None  # entries kept per profile row; None: twice the largest group expected, >= 256


@dataclass
class Config:
    # A key added to any section must default to the behaviour ccn had before the key existed: config.yaml
    # files and checkpoints written by older versions are read with the defaults filling the gap (a run
    # saved before the key was added resumes, pipeline._saved_config).
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- building and checking


def from_dict(raw: dict | None, base: Config | None = None) -> Config:
    """Overlay a nested dict (from YAML) on `base` (default: defaults); check keys and types."""
    config = base if base is not None else Config()
    config = _overlay(config, raw or {}, prefix="")
    check_rules(config)
    return config


def load(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read an optional YAML file, then apply `key=value` overrides in order."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path)
    try:  # name the file in what is wrong with its values (an edited config.yaml of a run, say)
        config = _overlay(Config(), raw, prefix="")
        if not overrides:
            check_rules(config)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}" if path is not None else str(err)) from None
    for item in overrides:
        key, value = parse_override(item)
        config = _overlay(config, nest({key: value}), prefix="")
    check_rules(config)
    return config


MAX_CONFIG_BYTES = 1_000_000  # a config or grid file is a few hundred bytes; a bigger one is a mistake


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (plain YAML keeps the last one
    silently) and refuses aliases (*name), whose nested expansion ("billion laughs") can take
    exponential time and memory once the values are compared or copied."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="uses an alias (*name); write the value out instead",
                                       problem_mark=mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} appears twice (lines {seen[key] + 1} and {key_node.start_mark.line + 1}); "
                            "keep one", problem_mark=key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


# Numbers are read as written, in decimal (YAML 1.2's rule), for config files and --set alike. YAML
# 1.1, PyYAML's default, reads `010` as octal 8, `1:30` as 90 (base 60) and `0b11` as 3: a seed or
# epoch count silently other than the one typed. Here `010` is 10, and `1:30`, `0x10`, `0b11` are
# text, which a number key refuses naming the value.
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_DECIMAL_INT = re.compile(r"^[-+]?[0-9](?:_?[0-9])*$")
_DECIMAL_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9](?:_?[0-9])*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?
                                |[-+]?[0-9](?:_?[0-9])*[eE][-+]?[0-9]+
                                |[-+]?\.(?:inf|Inf|INF)
                                |\.(?:nan|NaN|NAN))$""", re.X)
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(_INT, _DECIMAL_INT, list("-+0123456789"))
_StrictLoader.add_implicit_resolver(_FLOAT, _DECIMAL_FLOAT, list("-+0123456789."))
_StrictLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node).replace("_", ""), 10))


def parse_yaml(text: str):
    """yaml.safe_load with duplicate keys and aliases refused (see _StrictLoader)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict:
    """A config or grid file as a dict; one ConfigError line for anything that is not a YAML mapping."""
    path = Path(path)
    problem = file_problem(path)
    if problem == "is a folder":
        raise ConfigError(f"config file {path} is a folder: pass a YAML file such as configs/digits.yaml")
    if problem:
        raise ConfigError(f"config file {path} {problem}: check the path")
    fix = "pass a YAML text file saved as UTF-8, such as configs/digits.yaml"
    try:
        raw = parse_yaml(read_text(path, "config file", fix, limit=MAX_CONFIG_BYTES))
    except CCNError as err:
        raise ConfigError(str(err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML{_yaml_where(err)}: fix it") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply: fix it") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...)")
    return raw


def _yaml_where(err: yaml.YAMLError) -> str:
    """' (line N: problem)' from a PyYAML error, as far as it says."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    parts = [f"line {mark.line + 1}"] if mark is not None else []
    if problem:
        parts.append(str(problem))
    return f" ({': '.join(parts)})" if parts else ""


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, for example train.epochs=5")
    key, text = item.split("=", 1)
    try:
        value = parse_yaml(text) if text != "" else None
    except (yaml.YAMLError, RecursionError):
        value = text
    return key.strip(), value


def nest(flat: dict) -> dict:
    """{'train.epochs': 5} -> {'train': {'epochs': 5}}."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _overlay(obj, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {full!r}; allowed here: {', '.join(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _overlay(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(full, value, hints[key])
    return dataclasses.replace(obj, **changes)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Return `value` as type `hint`, or raise a ConfigError naming the key and what is allowed."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, args))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    if hint is float:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
            raise ConfigError(f"{key} is too large for a floating-point number (the largest is {sys.float_info.max:.3g})")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be text, got {value!r}")
    if hint is list or origin is list:
        if isinstance(value, list):
            return value
        raise ConfigError(f"{key} must be a list such as [0.5, 0.75], got {value!r}")
    return value


PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar")


@dataclass(frozen=True)
class Bounds:
    """The values a numeric key allows: low..high, each end included unless marked open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    meaning: str = ""  # what a special value means, said beside the range ("0: off")

    def allows(self, value) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or (value < self.high or (not self.high_open and value == self.high))

    def describe(self) -> str:
        return self._range() + (f" ({self.meaning})" if self.meaning else "")

    def _range(self) -> str:
        if self.high is None:
            return f"greater than {self.low}" if self.low_open else f"{self.low} or more"
        if self.low_open or self.high_open:
            low = f"greater than {self.low}" if self.low_open else f"at least {self.low}"
            high = f"less than {self.high}" if self.high_open else f"at most {self.high}"
            return f"{low} and {high}"
        return f"between {self.low} and {self.high}"


BIG = 10**7  # images per class, class counts: far above any data set ccn reads
# Every numeric key and the values it allows (None, where a key is Optional, always passes: it
# means "the default"). Upper bounds stop a typo from hanging a run or exhausting memory; they sit
# far above any recipe (docs/bad-input.md lists them). Floats must also be finite, checked for
# every float key by _check_finite.
LIMITS: dict[str, Bounds] = {
    "seed": Bounds(0, 2**32 - 1),
    "data.image_size": Bounds(8, 1024),
    "data.train_per_class": Bounds(1, BIG),
    "data.test_per_class": Bounds(1, BIG),
    "data.crop_padding": Bounds(0, 256),
    "data.cutout": Bounds(0, 1024),
    "data.num_classes": Bounds(2, 10_000),
    "data.num_groups": Bounds(1, 10_000),
    "data.workers": Bounds(0, 256, meaning="0: decode in the training process"),
    "data.worker_timeout": Bounds(1, 86_400, meaning="seconds"),
    "data.val_fraction": Bounds(0, 1, high_open=True, meaning="0: score the test set"),
    "data.randaugment_n": Bounds(0, 14),  # operations per image; 14 is every operation
    "data.randaugment_m": Bounds(0, 30),  # magnitude bins, as in the RandAugment paper
    "data.eval_crop": Bounds(0.25, 1),  # the stored side is image_size / eval_crop: at most 4x the input side
    "data.train_drawers": Bounds(1, 19),  # of Omniglot's 20 drawers: each split keeps at least one
    "data.wordnet_groups": Bounds(1, BIG),  # and at most the number of classes (ccn.data.wordnet)
    "model.width": Bounds(1, 4096),
    "model.depth": Bounds(1, 1000),
    "model.alpha": Bounds(1, 10_000),
    "model.widen_factor": Bounds(1, 64),
    "model.shakedrop": Bounds(0, 1),
    "model.dropout": Bounds(0, 1, high_open=True),
    "model.whiten_bias_epochs": Bounds(0, 100_000, meaning="0: the whitening bias is never trained"),
    "train.epochs": Bounds(1, 100_000),
    "train.batch_size": Bounds(2, 2**20, meaning="batch normalisation cannot train on one image per step"),
    "train.eval_batch_size": Bounds(1, 2**20),
    "train.lr": Bounds(0, None, low_open=True),  # too large a rate stops the run at its first nan loss
    "train.momentum": Bounds(0, 1),
    "train.weight_decay": Bounds(0, 1),
    "train.label_smoothing": Bounds(0, 1, high_open=True),
    "train.warmup_epochs": Bounds(0, 100_000),
    "train.gamma": Bounds(0, 1, low_open=True),
    "train.ema": Bounds(0, 1, high_open=True, meaning="the decay of the weight average; 0: off"),
    "train.checkpoint_every": Bounds(0, 10**9, meaning="optimizer steps; 0: once per epoch"),
    "train.max_steps": Bounds(0, 10**12, meaning="0: off"),
    "train.bn_eps": Bounds(0, 1, low_open=True),
    "train.bn_momentum": Bounds(0, 1, low_open=True),
    "train.bn_bias_lr": Bounds(0, 10_000, low_open=True),
    "train.lookahead_every": Bounds(0, 100_000, meaning="0: off"),
    "train.lookahead_decay": Bounds(0, 1, high_open=True),
    "train.lookahead_start": Bounds(0, 100_000),
    "method.probe_epochs": Bounds(1, 100_000),
    "method.cluster_epoch": Bounds(0, 100_000),  # 0: refused for ccn runs with its own message
    "method.recurse_epoch": Bounds(1, 100_000),
    "method.holdout_fraction": Bounds(0, 1, low_open=True, high_open=True),
    "method.groups": Bounds(1, BIG),
    "method.threshold": Bounds(0, None, low_open=True),
    "method.min_group_size": Bounds(1, BIG),
    "method.max_group_size": Bounds(1, BIG),
    "method.flat_weight": Bounds(0, 1000),
    "method.blend_weight": Bounds(0, 1),
    "method.depth": Bounds(1, None),  # above 2: see check_rules
    "method.split_min_size": Bounds(2, BIG),
    "method.sparse_above": Bounds(2, BIG),
    "method.top_k": Bounds(2, BIG),
}

@dataclass(frozen=True)
class When:
    """When a key means something. Set to anything but its default while `holds(config)` is false,
    the key would be silently ignored (or silently override another), so `refusal` is said instead:
    one line, with {key}, {value} and {here} (what the deciding setting is now) filled in."""

    holds: Callable[["Config"], bool]
    refusal: str
    here: Callable[["Config"], object] = lambda config: ""

    def problem(self, config: "Config", key: str) -> Optional[str]:
        if get_key(config, key) == _default_of(key) or self.holds(config):
            return None
        return self.refusal.format(key=key, value=get_key(config, key), here=self.here(config))


def equals(other: str, needed) -> When:
    """Only when the key `other` is `needed`."""
    return When(lambda config: get_key(config, other) == needed,
                f"{{key}} only applies when {other}={needed} (here {other}={{here}}): remove {{key}}, or set "
                f"{other}={needed}", lambda config: get_key(config, other))


def for_ccn(holds: Callable[["Config"], bool]) -> Callable[["Config"], bool]:
    """A method key's condition, which flat runs (the baselines of a grid that sets it) meet anyway."""
    return lambda config: config.method.name != "ccn" or holds(config)


_LOOKAHEAD_ON = When(lambda c: c.train.lookahead_every > 0,
                     "{key} only applies when train.lookahead_every is above 0 (the lookahead is off): remove {key}, "
                     "or set train.lookahead_every (airbench: 5)")
_BATCHNORM = When(lambda c: c.model.norm != "none",
                  "{key} acts on BatchNorm layers, and model.norm=none has none: remove {key}, or set model.norm=batch")
_RESIZED_CROP = When(lambda c: training_crop(c.data) == "random_resized",
                     "{key} only applies when data.crop=random_resized (here data.crop=pad): remove {key}, or set "
                     "data.crop=random_resized")
_PAD_CROP = When(lambda c: training_crop(c.data) == "pad",
                 "{key} only applies when data.crop=pad (here data.crop=random_resized): remove it, or set data.crop=pad")
_NOT_BALANCED = When(for_ccn(lambda c: c.method.clustering != "balanced"),
                     "{key} cannot be used with method.clustering=balanced, which makes K groups of equal size: "
                     "remove it, or use method.clustering=agglomerative")

# Keys that only mean something under a condition on other keys (set to anything but their default
# otherwise, each is refused: it would be silently ignored). The one table of such rules; rules that
# need the data set are ccn.plan's.
ONLY_WHEN: dict[str, When] = {
    "train.gamma": equals("train.schedule", "step"),
    "train.milestones": equals("train.schedule", "step"),
    "data.num_classes": equals("data.name", "synthetic"),
    "data.num_groups": equals("data.name", "synthetic"),
    "data.randaugment_n": equals("data.augment", "randaugment"),
    "data.randaugment_m": equals("data.augment", "randaugment"),
    "model.whiten_bias_epochs": equals("model.name", "airbench"),
    "data.workers": equals("data.store", "stream"),
    "data.alphabets": equals("data.name", "omniglot"),
    "data.train_drawers": equals("data.name", "omniglot"),
    "data.worker_timeout": equals("data.store", "stream"),
    "train.lookahead_decay": _LOOKAHEAD_ON,
    "train.lookahead_start": _LOOKAHEAD_ON,
    "train.bn_eps": _BATCHNORM,
    "train.bn_momentum": _BATCHNORM,
    "train.bn_weight": _BATCHNORM,
    "train.bn_bias_lr": _BATCHNORM,
    "data.crop_scale": _RESIZED_CROP,
    "data.crop_ratio": _RESIZED_CROP,
    "data.eval_crop": _RESIZED_CROP,
    "data.crop_padding": _PAD_CROP,
    "data.pad_mode": _PAD_CROP,
    "data.wordnet_groups": When(lambda c: c.data.wordnet is not None,
                                "data.wordnet_groups={value} cuts the WordNet tree, which data.wordnet=FOLDER (WordNet "
                                "3.0's data.noun) gives: set data.wordnet, or remove data.wordnet_groups"),
    "method.probe_epochs": When(lambda c: c.method.cluster_epoch is None,
                                "method.cluster_epoch and method.probe_epochs cannot both be set (cluster_epoch would "
                                "silently replace probe_epochs): keep one"),
    "method.random_sizes": When(for_ccn(lambda c: c.method.partition == "random"),
                                "method.random_sizes={value} only applies when method.partition=random (here {here}): "
                                "remove it, or set method.partition=random", lambda c: c.method.partition),
    "method.recurse_epoch": When(for_ccn(lambda c: recurses(c.method)),
                                 "method.recurse_epoch is set but nothing is split again: set method.depth=2 (and a "
                                 "learned or random partition), or remove method.recurse_epoch"),
    "method.top_k": When(for_ccn(lambda c: c.method.metric == "l1"),
                         "method.top_k is for method.metric=l1 only (metric is {here}): remove it",
                         lambda c: c.method.metric),
    "method.threshold": _NOT_BALANCED,
    "method.min_group_size": _NOT_BALANCED,
    "method.max_group_size": _NOT_BALANCED,
}

# Pairs where setting both would let one silently win over the other.
EXCLUSIVE = [
    ("method.groups", "method.threshold", "both decide how many groups there are"),
    ("method.groups", "method.min_group_size", "merging small groups changes the number of groups"),
    ("method.groups", "method.max_group_size", "splitting large groups changes the number of groups"),
]


def get_key(config: Config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _default_of(key: str):
    return get_key(Config(), key)


# checked as paths (ccn.file_checks.check_path)
PATH_KEYS = ("data.root", "data.wordnet", "model.init", "method.groups_file")


def check_rules(config: Config) -> None:
    """Reject values no run could use, and combinations where one key would silently override
    another, naming the keys and what is allowed."""
    _check_finite(config)
    for key, bounds in LIMITS.items():
        value = get_key(config, key)
        if value is not None and not bounds.allows(value):
            raise ConfigError(f"{key} must be {bounds.describe()}, got {value!r}")
    _check_combinations(config)
    d, t, meth = config.data, config.train, config.method
    if d.num_groups > d.num_classes:
        raise ConfigError(f"data.num_groups ({d.num_groups}) must not exceed data.num_classes ({d.num_classes})")
    if d.name == "synthetic":
        _check_synthetic_size(d)
    _check_crop(d)
    if meth.depth > 2:
        raise ConfigError(f"method.depth={meth.depth}: only depth 1 (groups) and 2 (groups split once more) are "
                          "implemented; use method.depth=2")
    if meth.name == "ccn":
        _check_method_schedule(config)
    if t.warmup_epochs >= t.epochs:
        raise ConfigError(f"train.warmup_epochs ({t.warmup_epochs}) must be smaller than train.epochs ({t.epochs})")
    _check_milestones(t.milestones)
    for key in PATH_KEYS:
        if get_key(config, key) is not None:
            check_path(get_key(config, key), key, ConfigError)
    if config.model.init is not None and Path(config.model.init).suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"model.init={config.model.init}: ccn reads safetensors only (pickled files can run code); "
                          "save the weights with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
    if not (config.device in ("auto", "cpu", "mps", "cuda") or re.fullmatch(r"cuda:\d{1,3}", config.device)):
        raise ConfigError(f"device={config.device!r} is not allowed; choose auto, cpu, cuda, cuda:N or mps")


def _check_finite(config: Config) -> None:
    """nan and inf slip through every comparison check, so refuse them first, in every float key."""
    for key, value in _all_values(config):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")


def _all_values(config: Config):
    """(dotted key, value) of every field, sections included."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from ((f"{f.name}.{g.name}", getattr(value, g.name)) for g in dataclasses.fields(value))
        else:
            yield f.name, value


MAX_SYNTHETIC_BYTES = 2 * 2**30


def _check_synthetic_size(d: DataConfig) -> None:
    """Each key is within its range, but together they could still ask for more memory than a machine has."""
    size = d.image_size or 16
    images = d.num_classes * ((d.train_per_class or 100) + (d.test_per_class or 50))
    need = images * size * size * 3 * 4  # float32 while the images are made
    if need > MAX_SYNTHETIC_BYTES:
        raise ConfigError(f"data.name=synthetic with {d.num_classes} classes x {images // d.num_classes} images of "
                          f"{size}px would need {need / 2**30:.0f} GiB while generated: lower data.num_classes, "
                          "data.image_size or data.train_per_class / data.test_per_class")


def training_crop(d: DataConfig) -> str:
    """data.crop with its default resolved: ImageNet's crop for imagenet, pad-and-crop for the rest."""
    return d.crop or ("random_resized" if d.name == "imagenet" else "pad")


RATIO_RANGE = (0.01, 100.0)  # aspect ratios a crop box may be drawn with


def _check_crop(d: DataConfig) -> None:
    if training_crop(d) == "pad":  # the keys of the other crop: ONLY_WHEN
        return
    if d.image_size is None and d.name != "imagenet":
        raise ConfigError("data.crop=random_resized needs data.image_size, the side the model sees (e.g. 224): set it")
    _check_range_pair("data.crop_scale", d.crop_scale, 0.0, 1.0, "e.g. [0.08, 1.0]")
    _check_range_pair("data.crop_ratio", d.crop_ratio, *RATIO_RANGE, "e.g. [0.75, 1.3333]")


def _check_range_pair(key: str, value: list, low: float, high: float, example: str) -> None:
    """[a, b] with low < a <= b <= high."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value)
    if not (len(value) == 2 and numbers and low < value[0] <= value[1] <= high):
        raise ConfigError(f"{key} must be [low, high] with {low} < low <= high <= {high}, {example}; got {value!r}")


def _check_milestones(milestones: list) -> None:
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1 for x in milestones)
    if not ok or len(milestones) > 100:
        raise ConfigError(f"train.milestones must be fractions of the run between 0 and 1, e.g. [0.5, 0.75]; "
                          f"got {milestones!r}")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"train.milestones must be in increasing order without repeats, got {milestones!r}")


def _check_combinations(config: Config) -> None:
    for key, when in ONLY_WHEN.items():
        problem = when.problem(config, key)
        if problem:
            raise ConfigError(problem)
    for a, b, why in EXCLUSIVE:
        if get_key(config, a) is not None and get_key(config, b) is not None:
            raise ConfigError(f"{a} and {b} cannot both be set ({why}, so one would silently override the "
                              "other): keep one")
    _check_fast_keys(config)


def _check_fast_keys(config: Config) -> None:
    """The airbench keys that only mean something beside another setting (README "fast recipe")."""
    t, d = config.train, config.data
    if t.lookahead_every > 0 and t.lookahead_start >= t.epochs:
        raise ConfigError(f"train.lookahead_start={t.lookahead_start} leaves no epoch of train.epochs={t.epochs} for the "
                          "lookahead average: set it below train.epochs")
    if d.flip is False:  # data that is not flipped by its own choice is checked with the data (ccn.plan)
        check_mirror_keys(config)


def check_mirror_keys(config: Config, unflipped_data: Optional[str] = None) -> None:
    """The keys that mirror images, refused on images that are never flipped: the alternate flip, and
    train.tta's mirror views, which would score images whose meaning changed and lower the score
    silently. `unflipped_data`: the data set whose own choice is not to flip (ccn.plan.resolve);
    None: data.flip=false said so (checked when the config is read)."""
    d, tta = config.data, config.train.tta
    why = (f"data {unflipped_data} is not flipped (a flip would change its labels' meaning)" if unflipped_data
           else None)
    if d.flip_mode == "alternate":
        raise ConfigError(f"data.flip_mode=alternate, but {why}: remove data.flip_mode, or set data.flip=true" if why
                          else "data.flip_mode=alternate with data.flip=false: the images are never flipped; "
                               "remove data.flip_mode, or set data.flip=true")
    if tta != "none":
        why = why or "data.flip=false: the training images are never flipped"
        raise ConfigError(f"train.tta={tta} scores mirror images, but {why}: set train.tta=none, or data.flip=true "
                          "if mirror images keep their labels' meaning")


def _check_method_schedule(config: Config) -> None:
    """Refuse settings that would make a ccn run mean something other than its name."""
    meth, epochs = config.method, config.train.epochs
    cluster_epoch = clustering_epoch(meth)
    if cluster_epoch < 1:
        raise ConfigError(f"method.cluster_epoch={meth.cluster_epoch}: groups need at least one epoch of training "
                          "to be measured (epoch 0 would train a flat model and call it ccn); use 1 or more")
    if cluster_epoch >= epochs:
        raise ConfigError(
            f"groups are formed after epoch {cluster_epoch} but train.epochs is {epochs}: "
            "raise train.epochs or lower method.probe_epochs / method.cluster_epoch"
        )
    if meth.depth > 1 and meth.partition != "file":
        if recursion_epoch(meth) <= cluster_epoch:
            raise ConfigError(f"method.recurse_epoch={meth.recurse_epoch} is not after the clustering epoch "
                              f"({cluster_epoch}): groups must exist before they are split; set it above {cluster_epoch}")
        if recursion_epoch(meth) >= epochs:
            raise ConfigError(
                f"method.depth={meth.depth} splits groups after epoch {recursion_epoch(meth)} but train.epochs is "
                f"{epochs}: raise train.epochs or set method.recurse_epoch lower")
    if meth.min_group_size and meth.max_group_size and meth.min_group_size > meth.max_group_size:
        raise ConfigError(f"method.min_group_size ({meth.min_group_size}) must not exceed method.max_group_size "
                          f"({meth.max_group_size})")
    _check_partition(meth)
    _check_sparse(meth)


def _check_sparse(meth: MethodConfig) -> None:
    """top_k (L1 only: ONLY_WHEN) must keep the largest group whole (twice its size: the issue-18 measurement
    that k = 16 collapsed the groups)."""
    if meth.top_k is not None and meth.max_group_size is not None and meth.top_k < 2 * meth.max_group_size:
        raise ConfigError(f"method.top_k={meth.top_k} is below twice method.max_group_size={meth.max_group_size}: "
                          "sparse profiles that keep fewer entries than a group has split it; "
                          f"set method.top_k to {2 * meth.max_group_size} or more")


def _check_partition(meth: MethodConfig) -> None:
    if (meth.partition == "file") != (meth.groups_file is not None):
        raise ConfigError("method.partition=file and method.groups_file=PATH go together: set both, or neither")


def clustering_epoch(meth: MethodConfig) -> int:
    """The epoch after which classes are grouped (paper: after the one probe epoch)."""
    return meth.cluster_epoch if meth.cluster_epoch is not None else meth.probe_epochs


def recurses(meth: MethodConfig) -> bool:
    """Whether large groups are split again after clustering (a file's tree comes whole instead)."""
    return meth.depth > 1 and meth.partition != "file"


def recursion_epoch(meth: MethodConfig) -> int:
    """The epoch after which large groups are split again (ours: one epoch after clustering)."""
    return meth.recurse_epoch if meth.recurse_epoch is not None else clustering_epoch(meth) + 1


def dumps(config: Config) -> str:
    """config.yaml's text for `config`: every key, resolved."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(dumps(config))
