"""Property tests: every file ccn reads back, damaged at random, either loads as a valid object or
raises CCNError (one clear line at the command line) - never another exception, never a hang.

The files come from one tiny real run (the session's `tiny_run`); each example damages a copy with
byte flips, truncations, or a JSON/YAML value replaced by a wrong type, a huge number, nan, or
deleted."""

import contextlib
import io
import json
import math
import shutil
import signal
import struct

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccn import config as cfgmod
from ccn.checkpoint import read_training_state
from ccn.errors import CCNError
from ccn.grid import load_grid
from ccn.hierarchy import Hierarchy
from ccn.runfiles import read_results
from ccn.tracking import RunLog

FUZZ = settings(max_examples=40, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SECONDS_PER_EXAMPLE = 5


@contextlib.contextmanager
def time_limit(seconds: int = SECONDS_PER_EXAMPLE):
    """Fail (instead of hanging the suite) when one example runs longer than `seconds`."""
    def expire(*_):
        raise TimeoutError(f"a reader ran longer than {seconds} s on one damaged file")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def loads_or_refuses(read):
    """Run `read()`: its value, or None when it raised CCNError; any other exception fails the test."""
    with time_limit():
        try:
            return read()
        except CCNError as err:
            assert "\n" not in str(err), str(err)
            return None


# ---------------------------------------------------------------- damage


DELETE = object()
BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.just([]), st.just({}), st.lists(st.integers(-3, 3), max_size=3),
    st.just(DELETE))


def paths(obj, prefix=()):
    """Every (key or index) path into a JSON-like value, the root excluded."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


def replaced(obj, path, value):
    """A deep copy of `obj` with the value at `path` replaced (or deleted when value is DELETE)."""
    obj = json.loads(json.dumps(obj))
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


@st.composite
def damaged_value(draw, obj):
    """`obj` with one to three values replaced by a wrong type, a huge number, nan ... or deleted."""
    for _ in range(draw(st.integers(1, 3))):
        candidates = sorted(paths(obj), key=repr)
        if not candidates:
            break
        obj = replaced(obj, draw(st.sampled_from(candidates)), draw(BAD_VALUES))
    return obj


@st.composite
def damaged_bytes(draw, data: bytes):
    """`data` with random bytes changed, then perhaps truncated."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def json_text(obj) -> str:
    return json.dumps(obj)  # writes NaN / Infinity for float nan / inf, as a careless editor might


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A scratch copy of the tiny run whose files each example overwrites."""
    scratch = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(tiny_run, scratch)
    return scratch


def original(tiny_run, name: str) -> bytes:
    return (tiny_run / name).read_bytes()


# ---------------------------------------------------------------- results.json


@FUZZ
@given(data=st.data())
def test_results_json_damaged_values(data, run, tiny_run):
    results = data.draw(damaged_value(json.loads(original(tiny_run, "results.json"))))
    (run / "results.json").write_text(json_text(results))
    loaded = loads_or_refuses(lambda: read_results(run))
    if loaded is not None:
        assert 0 <= loaded["top1"] <= 1 and isinstance(loaded["num_classes"], int)


@FUZZ
@given(data=st.data())
def test_results_json_damaged_bytes(data, run, tiny_run):
    (run / "results.json").write_bytes(data.draw(damaged_bytes(original(tiny_run, "results.json"))))
    loads_or_refuses(lambda: read_results(run))


# ---------------------------------------------------------------- hierarchy.json


def _check_hierarchy(h):
    if h is not None:
        assert sorted(c for g in h.groups for c in g) == list(range(h.num_classes))
        assert len(set(h.classes)) == h.num_classes


@FUZZ
@given(data=st.data())
def test_hierarchy_json_damaged_values(data, run, tiny_run):
    hierarchy = data.draw(damaged_value(json.loads(original(tiny_run, "hierarchy.json"))))
    (run / "hierarchy.json").write_text(json_text(hierarchy))
    _check_hierarchy(loads_or_refuses(lambda: Hierarchy.load(run / "hierarchy.json")))


@FUZZ
@given(data=st.data())
def test_hierarchy_json_damaged_bytes(data, run, tiny_run):
    (run / "hierarchy.json").write_bytes(data.draw(damaged_bytes(original(tiny_run, "hierarchy.json"))))
    _check_hierarchy(loads_or_refuses(lambda: Hierarchy.load(run / "hierarchy.json")))


# ---------------------------------------------------------------- config.yaml


@FUZZ
@given(data=st.data())
def test_config_yaml_damaged_values(data, run, tiny_run):
    raw = yaml.safe_load(original(tiny_run, "config.yaml"))
    damaged = data.draw(damaged_value(raw))
    (run / "config.yaml").write_text(yaml.safe_dump(damaged))
    config = loads_or_refuses(lambda: cfgmod.load(run / "config.yaml"))
    if config is not None:
        assert all(not isinstance(v, float) or math.isfinite(v) for _, v in cfgmod._all_values(config))


@FUZZ
@given(data=st.data())
def test_config_yaml_damaged_bytes(data, run, tiny_run):
    (run / "config.yaml").write_bytes(data.draw(damaged_bytes(original(tiny_run, "config.yaml"))))
    loads_or_refuses(lambda: cfgmod.load(run / "config.yaml"))


# ---------------------------------------------------------------- grid YAML

GRID = {"base": {"data": {"name": "synthetic", "num_classes": 6, "num_groups": 2}, "train": {"epochs": 3}},
        "variants": {"flat": None, "ccn": None, "l2": {"method": {"metric": "l2"}}},
        "seeds": [0, 1], "reference": "flat"}


@FUZZ
@given(data=st.data())
def test_grid_yaml_damaged(data, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz-grid.yaml"
    if data.draw(st.booleans()):
        path.write_text(yaml.safe_dump(data.draw(damaged_value(GRID))))
    else:
        path.write_bytes(data.draw(damaged_bytes(yaml.safe_dump(GRID).encode())))
    grid = loads_or_refuses(lambda: load_grid(path))
    if grid is not None:
        assert grid.variants and grid.seeds and grid.reference in grid.variants


# ---------------------------------------------------------------- checkpoint header


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@FUZZ
@given(data=st.data())
def test_checkpoint_state_damaged_values(data, run, tiny_run, resumable):
    """The training state JSON in the header, damaged, then resumed into a real run."""
    header, body = split_safetensors(original(tiny_run, "checkpoint.safetensors"))
    state = json.loads(header["__metadata__"]["ccn_state"])
    header["__metadata__"]["ccn_state"] = json_text(data.draw(damaged_value(state)))
    (run / "checkpoint.safetensors").write_bytes(join_safetensors(header, body))
    loads_or_refuses(resumable.resume)


@FUZZ
@given(data=st.data())
def test_checkpoint_header_damaged(data, run, tiny_run):
    """The safetensors header itself (tensor names, dtypes, shapes, offsets) damaged."""
    header, body = split_safetensors(original(tiny_run, "checkpoint.safetensors"))
    if data.draw(st.booleans()):
        tensors_only = {k: v for k, v in header.items() if k != "__metadata__"}
        damaged = data.draw(damaged_value(tensors_only))
        damaged = {**damaged, "__metadata__": header["__metadata__"]} if isinstance(damaged, dict) else damaged
        blob = join_safetensors(damaged, body)
    else:
        raw = original(tiny_run, "checkpoint.safetensors")
        blob = data.draw(damaged_bytes(raw[:8 + struct.unpack("<Q", raw[:8])[0]])) + body
    (run / "checkpoint.safetensors").write_bytes(blob)
    loads_or_refuses(lambda: read_training_state(run / "checkpoint.safetensors"))


@pytest.fixture(scope="module")
def resumable(run, tiny_run):
    """A MethodRun of the tiny run's config, whose resume() reads run/checkpoint.safetensors."""
    from ccn.pipeline import MethodRun
    from ccn.dist import World
    config = cfgmod.load(tiny_run / "config.yaml")
    return MethodRun(config, run, RunLog(None, stream=io.StringIO()), World(), None)


# ---------------------------------------------------------------- metrics.jsonl


@FUZZ
@given(data=st.data())
def test_metrics_jsonl_damaged_is_cleaned_on_resume(data, run, tiny_run):
    (run / "metrics.jsonl").write_bytes(data.draw(damaged_bytes(original(tiny_run, "metrics.jsonl"))))
    with time_limit():
        RunLog(run, stream=io.StringIO()).truncate(1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(row["epoch"] <= 1 for row in rows)


# ---------------------------------------------------------------- method.groups_file (a partition the user brings)


def nbdt_graph(names) -> dict:
    """A small NBDT-style node-link graph: root -> two inner nodes -> the classes."""
    half = len(names) // 2
    nodes = [{"id": "root"}, {"id": "a"}, {"id": "b"}] + [{"id": f"n{i}", "label": n} for i, n in enumerate(names)]
    links = [{"source": "root", "target": "a"}, {"source": "root", "target": "b"}]
    links += [{"source": "a" if i < half else "b", "target": f"n{i}"} for i in range(len(names))]
    return {"nodes": nodes, "links": links}


@FUZZ
@given(data=st.data())
def test_groups_file_damaged(data, run, tiny_run):
    from ccn.hierarchy import read_groups_file
    classes = json.loads(original(tiny_run, "hierarchy.json"))["classes"]
    source = data.draw(st.sampled_from(["hierarchy", "nbdt"]))
    valid = json.loads(original(tiny_run, "hierarchy.json")) if source == "hierarchy" else nbdt_graph(classes)
    path = run / "groups.json"
    if data.draw(st.booleans()):
        path.write_text(json_text(data.draw(damaged_value(valid))))
    else:
        path.write_bytes(data.draw(damaged_bytes(json.dumps(valid).encode())))
    whole_tree = data.draw(st.booleans())
    tree = loads_or_refuses(lambda: read_groups_file(path, classes, whole_tree))
    if tree is not None:
        Hierarchy(classes, tree)  # a partition of exactly these classes, no empty group
