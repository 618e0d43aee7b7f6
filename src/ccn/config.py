"""Typed configuration: dataclasses, YAML files and `--set key=value` overrides.

Every run writes its fully resolved config to `config.yaml`, so a run folder says exactly what was
done. Defaults marked "ours" are choices the paper leaves open (see docs/method.md).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ccn.errors import ConfigError


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
    cutout: int = 0  # side of a zeroed square per training image, pixels; 0: off
    # strong augmentation per image after crop + flip, before cutout (ccn.data.policies; README "data.augment")
    augment: Literal["none", "autoaugment", "randaugment", "trivialaugment"] = "none"
    randaugment_n: int = 2  # RandAugment N: operations per image, 0-14 (torchvision's default 2)
    randaugment_m: int = 9  # RandAugment M: magnitude bin, 0 (identity) to 30 (torchvision's default 9)
    cache: bool = True  # keep decoded image folders as uint8 arrays next to the data
    skip_bad_images: bool = False  # warn and skip unreadable images instead of stopping
    val_fraction: float = 0.0  # >0: hold out this share of each class's training images (seeded, the same for
    #                            every run seed) and score them instead of the test set, to choose settings
    include_background: bool = False  # caltech101: keep BACKGROUND_Google as a class
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
    init: Optional[str] = None  # start from trained weights: a run folder, or a .safetensors file (ccn or bare backbone)


@dataclass
class TrainConfig:
    epochs: int = 20  # total budget, probe epochs included
    batch_size: int = 32  # global: split evenly among torchrun processes; the defaults are the digits job
    lr: float = 0.05  # peak learning rate at this batch size
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 5e-4  # not applied to norm weights and biases (ours)
    label_smoothing: float = 0.0
    schedule: Literal["cosine", "onecycle", "step", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warm-up from lr/10
    milestones: list = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of the run
    gamma: float = 0.1  # step: factor at each milestone
    bf16: Optional[bool] = None  # bfloat16 autocast; None: on for CUDA, off on CPU; true/false honoured on both
    ema: float = 0.0  # decay of an average of the weights, scored and saved beside them (e.g. 0.999); 0: off
    channels_last: bool = True  # NHWC memory format on CUDA and CPU (faster on both); ignored on mps
    compile: bool = False  # torch.compile the model
    deterministic: bool = False  # torch.use_deterministic_algorithms
    sync_bn: bool = False  # SyncBatchNorm across processes under torchrun
    eval_batch_size: int = 512
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
    groups: Optional[int] = None  # K; None: round(sqrt(C)) (ours)
    threshold: Optional[float] = None  # cut the merge tree at this distance instead of K groups
    min_group_size: Optional[int] = None
    max_group_size: Optional[int] = None
    partition: Literal["learned", "random", "oracle", "file"] = "learned"  # random: the learned sizes, shuffled
    clustering: Literal["agglomerative", "balanced"] = "agglomerative"  # balanced: K equal-size groups (ours)
    profile: Literal["softmax", "prior"] = "softmax"  # prior: divide out how often each class is predicted (ours)
    groups_file: Optional[str] = None  # partition=file: a hierarchy.json or an NBDT node-link graph JSON
    flat_weight: float = 1.0  # lambda: weight of CE on the level-1 head in step 3; keeps level 1 alive (ours)
    init_from_flat: bool = True  # level-3 weights start as a copy of level 1 (ours)
    inference: Literal["soft", "hard", "flat", "blend"] = "soft"  # the rule behind "top1"
    blend_weight: float = 0.5  # blend: weight of log p(c|x) against log softmax(z)
    depth: int = 1  # 2: split large groups again ("recursively"); with partition=file: the file's whole tree
    recurse_epoch: Optional[int] = None  # epoch after which groups are split; None: one epoch after clustering
    split_min_size: int = 4  # only groups with at least this many classes are split


@dataclass
class Config:
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
    validate(config)
    return config


def load(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read an optional YAML file, then apply `key=value` overrides in order."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml(path)
    config = _overlay(Config(), raw, prefix="")
    for item in overrides:
        key, value = parse_override(item)
        config = _overlay(config, nest({key: value}), prefix="")
    validate(config)
    return config


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (data:, model:, ...)")
    return raw


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: write it as KEY=VALUE, for example train.epochs=5")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else None
    except yaml.YAMLError:
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


def _positive(key: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key} must be greater than 0, got {value!r}")


def validate(config: Config) -> None:
    """Reject values no run could use, naming the key and what is allowed."""
    d, m, t, meth = config.data, config.model, config.train, config.method
    for key, value in [
        ("data.image_size", d.image_size),
        ("data.train_per_class", d.train_per_class),
        ("data.test_per_class", d.test_per_class),
        ("model.width", m.width),
        ("model.depth", m.depth),
        ("model.alpha", m.alpha),
        ("model.widen_factor", m.widen_factor),
        ("method.groups", meth.groups),
        ("method.threshold", meth.threshold),
        ("method.min_group_size", meth.min_group_size),
        ("method.max_group_size", meth.max_group_size),
    ]:
        _positive(key, value)
    for key, value in [
        ("train.epochs", t.epochs),
        ("train.batch_size", t.batch_size),
        ("train.lr", t.lr),
        ("train.eval_batch_size", t.eval_batch_size),
        ("method.probe_epochs", meth.probe_epochs),
        ("method.depth", meth.depth),
    ]:
        _positive(key, value, allow_none=False)
    for key, value in [("train.weight_decay", t.weight_decay), ("train.warmup_epochs", t.warmup_epochs),
                       ("data.cutout", d.cutout), ("method.flat_weight", meth.flat_weight)]:
        if value < 0:
            raise ConfigError(f"{key} must be 0 or more, got {value!r}")
    for key, value in [("train.label_smoothing", t.label_smoothing), ("model.dropout", m.dropout),
                       ("method.blend_weight", meth.blend_weight), ("train.momentum", t.momentum)]:
        if not 0 <= value <= 1:
            raise ConfigError(f"{key} must lie between 0 and 1, got {value!r}")
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be 0 (score the test set) or a share below 1, got {d.val_fraction}")
    if not 0 <= d.randaugment_n <= 14:
        raise ConfigError(f"data.randaugment_n must lie between 0 and 14 operations per image, got {d.randaugment_n}")
    if not 0 <= d.randaugment_m <= 30:
        raise ConfigError(f"data.randaugment_m must lie between 0 and 30 (magnitude bins), got {d.randaugment_m}")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema is the decay of the weight average and must be 0 (off) or in [0, 1), got {t.ema}")
    if not 0 < meth.holdout_fraction < 1:
        raise ConfigError(f"method.holdout_fraction must lie strictly between 0 and 1, got {meth.holdout_fraction}")
    if d.num_classes < 2 or d.num_groups < 1 or d.num_groups > d.num_classes:
        raise ConfigError("data.num_classes must be >= 2 and 1 <= data.num_groups <= data.num_classes")
    if meth.name == "ccn":
        _validate_method_schedule(config)
    if t.warmup_epochs >= t.epochs:
        raise ConfigError(f"train.warmup_epochs ({t.warmup_epochs}) must be smaller than train.epochs ({t.epochs})")
    if not all(isinstance(x, (int, float)) and 0 < x < 1 for x in t.milestones):
        raise ConfigError("train.milestones must be fractions of the run between 0 and 1, e.g. [0.5, 0.75]")
    if m.init is not None and Path(m.init).suffix.lower() in PICKLE_SUFFIXES:
        raise ConfigError(f"model.init={m.init}: ccn reads safetensors only (pickled files can run code); save the "
                          "weights with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')")
    if not (config.device in ("auto", "cpu", "mps", "cuda") or config.device.startswith("cuda:")):
        raise ConfigError(f"device={config.device!r} is not allowed; choose auto, cpu, cuda, cuda:N or mps")


def _validate_method_schedule(config: Config) -> None:
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
    if meth.depth > 2:
        raise ConfigError(f"method.depth={meth.depth}: only depth 1 (groups) and 2 (groups split once more) are "
                          "implemented; use method.depth=2")
    if meth.depth > 1 and meth.partition != "file":
        if recursion_epoch(meth) <= cluster_epoch:
            raise ConfigError(f"method.recurse_epoch={meth.recurse_epoch} is not after the clustering epoch "
                              f"({cluster_epoch}): groups must exist before they are split; set it above {cluster_epoch}")
        if recursion_epoch(meth) >= epochs:
            raise ConfigError(
                f"method.depth={meth.depth} splits groups after epoch {recursion_epoch(meth)} but train.epochs is "
                f"{epochs}: raise train.epochs or set method.recurse_epoch lower")
    if meth.recurse_epoch is not None and (meth.depth == 1 or meth.partition == "file"):
        raise ConfigError("method.recurse_epoch is set but nothing is split again: set method.depth=2 (and a learned "
                          "or random partition), or remove method.recurse_epoch")
    if meth.min_group_size and meth.max_group_size and meth.min_group_size > meth.max_group_size:
        raise ConfigError("method.min_group_size must not exceed method.max_group_size")
    _validate_partition(meth)


def _validate_partition(meth: MethodConfig) -> None:
    if (meth.partition == "file") != (meth.groups_file is not None):
        raise ConfigError("method.partition=file and method.groups_file=PATH go together: set both, or neither")
    if meth.clustering == "balanced":
        for key, value in [("method.threshold", meth.threshold), ("method.min_group_size", meth.min_group_size),
                           ("method.max_group_size", meth.max_group_size)]:
            if value is not None:
                raise ConfigError(f"{key} cannot be used with method.clustering=balanced, which makes K groups of "
                                  "equal size: remove it, or use method.clustering=agglomerative")


def clustering_epoch(meth: MethodConfig) -> int:
    """The epoch after which classes are grouped (paper: after the one probe epoch)."""
    return meth.cluster_epoch if meth.cluster_epoch is not None else meth.probe_epochs


def recurses(meth: MethodConfig) -> bool:
    """Whether large groups are split again after clustering (a file's tree comes whole instead)."""
    return meth.depth > 1 and meth.partition != "file"


def recursion_epoch(meth: MethodConfig) -> int:
    """The epoch after which large groups are split again (ours: one epoch after clustering)."""
    return meth.recurse_epoch if meth.recurse_epoch is not None else clustering_epoch(meth) + 1


def dump(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
