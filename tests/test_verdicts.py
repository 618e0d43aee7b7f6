"""Verdicts that match the statistics (issue 19): Holm within each family in the report's sentences,
the referee controls as their own family, pre-declared primary comparisons, and which code made
each run."""

import json
import re

import pytest

from ccn import config as cfgmod
from ccn.errors import CCNError, ConfigError
from ccn.experiment import _claim_folder
from ccn.grid import load_grid
from ccn.grid_statistics import comparisons
from ccn.report import _code_lines, _primary_lines, _sentence

GRID = "base: {data: {name: digits}}\nvariants: [flat, ccn, random, k-1, k-5, k-5-random]\nseeds: [0, 1, 2, 3]\n"
FLAT = [0.600, 0.610, 0.620, 0.630, 0.640, 0.650, 0.660, 0.670]


def planted_variants() -> dict:
    """k-5 beats flat unadjusted (every seed +1.0 to +1.4 points, p about 0.0001) while the rest
    are noise; `weak` is -0.1 to +1.2 points (unadjusted p 0.02) and does not survive Holm over 6."""
    shift = {"ccn": [0.004, -0.003, 0.002, -0.001, 0.003, -0.004, 0.001, 0.0],
             "random": [-0.002, 0.003, -0.001, 0.002, -0.003, 0.001, 0.0, -0.002],
             "k-5": [0.010, 0.012, 0.011, 0.014, 0.010, 0.013, 0.012, 0.011],
             "k-5-random": [0.009, 0.004, 0.012, -0.002, 0.011, 0.006, 0.010, 0.008],
             "k-1": [0.003, -0.002, 0.004, 0.001, -0.001, 0.002, 0.003, 0.0],
             "weak": [0.002, 0.012, -0.001, 0.011, 0.004, 0.010, 0.0, 0.003]}
    variants = {"flat": {"top1": FLAT}}
    variants.update({name: {"top1": [f + d for f, d in zip(FLAT, ds)]} for name, ds in shift.items()})
    return variants


def test_sentences_speak_with_the_holm_verdict_and_label_the_unadjusted_one():
    result = comparisons(planted_variants(), "flat", [])
    weak = result["paired"]["weak"]
    assert weak["verdict"] == "better" and weak["verdict_holm"] == "indistinguishable"  # the planted case
    sentence = _sentence("weak", "flat", weak, "the 6 comparisons with flat")
    assert sentence.startswith("- **weak** is indistinguishable from **flat** after Holm's adjustment")
    assert "unadjusted: better" in sentence
    strong = _sentence("k-5", "flat", result["paired"]["k-5"], "the 6 comparisons with flat")
    assert "is better than **flat** after Holm" in strong and "unadjusted" not in strong
    bare = {k: v for k, v in weak.items() if "holm" not in k}
    assert "(unadjusted, 95 %" in _sentence("weak", "flat", bare, "")


def test_referee_controls_are_adjusted_as_their_own_family():
    result = comparisons(planted_variants(), "flat", [])
    assert set(result["controls"]) == {"ccn_vs_random", "k-5_vs_k-5-random"}
    raw = sorted(c["p"] for c in result["controls"].values())
    holm = sorted(c["p_holm"] for c in result["controls"].values())
    assert holm[0] == pytest.approx(min(1.0, 2 * raw[0]))  # two tests in this family, not seven


def _claim(tmp_path, text: str, log=None):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    grid = load_grid(path)
    out = tmp_path / "exp"
    out.mkdir(exist_ok=True)
    messages = []
    _claim_folder(out, grid, log=messages.append)
    return grid, out, messages


def test_primary_declared_before_the_runs_then_one_added_later(tmp_path):
    grid, out, _ = _claim(tmp_path, GRID + "primary: [ccn, [ccn, k-1]]\n")
    assert grid.primary == [["ccn", "flat"], ["ccn", "k-1"]]
    records = grid.primary_records
    assert [r["compare"] for r in records] == [["ccn", "flat"], ["ccn", "k-1"]]
    assert all(r["before_any_run"] for r in records)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", records[0]["declared"])
    (out / "runs" / "flat-s0").mkdir(parents=True)  # a run has started: its folder holds its config
    cfgmod.dump(grid.config_for("flat", 0), out / "runs" / "flat-s0" / "config.yaml")
    grid, _, messages = _claim(tmp_path, GRID + "primary: [ccn, [ccn, k-1], k-5]\n")
    assert grid.primary_records[:2] == records  # declared ones keep their time
    assert grid.primary_records[2]["compare"] == ["k-5", "flat"] and not grid.primary_records[2]["before_any_run"]
    assert any("added later" in m for m in messages)
    grid, _, _ = _claim(tmp_path, GRID)  # the same grid without primary: the records stay
    assert len(grid.primary_records) == 3
    saved = (out / "grid.yaml").read_text()
    assert "before_any_run: false" in saved and saved.count("declared:") == 3

    result = comparisons(planted_variants(), "flat", grid.primary_records)
    planned = [p for p in result["primary"] if p["before_any_run"]]
    assert [p["compare"] for p in planned] == [["ccn", "flat"], ["ccn", "k-1"]] and all("p_holm" in p for p in planned)
    later = [p for p in result["primary"] if not p["before_any_run"]]
    assert later and "p_holm" not in later[0]
    lines = "\n".join(_primary_lines(result))
    assert "Pre-planned comparisons" in lines and "Holm over these 2" in lines
    assert "after runs had started (so not pre-planned" in lines and "**k-5** is better than **flat** (unadjusted" in lines


@pytest.mark.parametrize("primary, words", [
    pytest.param("primary: [wobble]", "'wobble' is not one of the grid's variants", id="primary-unknown-variant"),
    pytest.param("primary: [[ccn, ccn]]", "not a variant name or a pair of two different names", id="primary-self-pair"),
    pytest.param("primary: ccn", "primary must be a list", id="primary-not-a-list"),
    pytest.param("primary: [ccn, [ccn, flat]]", "declared twice", id="primary-twice"),
    pytest.param("primary: [[ccn, flat], [flat, ccn]]", "flat vs ccn is declared twice (in either order it is one "
                 "comparison)", id="primary-twice-reversed"),
    pytest.param("primary: [flat]", "'flat' is the reference, and a name alone is compared with the reference",
                 id="primary-the-reference"),
])
def test_bad_primary_is_one_line(tmp_path, primary, words):
    path = tmp_path / "g.yaml"
    path.write_text(GRID + primary + "\n")
    with pytest.raises(ConfigError, match=re.escape(words)) as err:
        load_grid(path)
    assert "\n" not in str(err.value)


def test_damaged_primary_records_in_grid_yaml_are_named(tmp_path):
    _, out, _ = _claim(tmp_path, GRID + "primary: [ccn]\n")
    saved = out / "grid.yaml"
    damaged = saved.read_text().replace("before_any_run: true", "before_any_run: maybe")
    saved.write_text(damaged)
    with pytest.raises(CCNError, match="primary: section") as err:
        _claim(tmp_path, GRID + "primary: [ccn]\n")
    assert str(saved) in str(err.value) and saved.read_text() == damaged


def test_a_primary_record_naming_no_variant_of_the_grid_is_damage(tmp_path):
    _, out, _ = _claim(tmp_path, GRID + "primary: [ccn]\n")
    saved = out / "grid.yaml"
    damaged = saved.read_text().replace("- ccn\n", "- bogus\n", 1)
    assert "bogus" in damaged
    saved.write_text(damaged)
    with pytest.raises(CCNError, match="with a and b variants of the grid"):
        _claim(tmp_path, GRID + "primary: [ccn]\n")


def test_a_primary_declared_again_in_the_other_order_is_not_a_second_comparison(tmp_path):
    grid, _, _ = _claim(tmp_path, GRID + "primary: [[ccn, flat]]\n")
    grid, _, _ = _claim(tmp_path, GRID + "primary: [[flat, ccn]]\n")  # edited before any run
    assert [r["compare"] for r in grid.primary_records] == [["ccn", "flat"]]


def test_a_stray_file_in_runs_is_not_a_started_run(tmp_path):
    """A .DS_Store in OUT/runs/ must not turn a pre-planned comparison into one 'added later'."""
    (tmp_path / "exp" / "runs").mkdir(parents=True)
    (tmp_path / "exp" / "runs" / ".DS_Store").write_bytes(b"\0")
    grid, _, messages = _claim(tmp_path, GRID + "primary: [ccn]\n")
    assert grid.primary_records[0]["before_any_run"] and not messages
    (tmp_path / "exp" / "runs" / "flat-s0").mkdir()  # a run that has started holds its config
    cfgmod.dump(grid.config_for("flat", 0), tmp_path / "exp" / "runs" / "flat-s0" / "config.yaml")
    grid, _, messages = _claim(tmp_path, GRID + "primary: [ccn, k-1]\n")
    assert not grid.primary_records[1]["before_any_run"] and "declared after runs had started" in messages[0]


def test_runs_record_the_code_that_made_them(tiny_run):
    from ccn.provenance import SOURCE_ROOT, code_version
    code = json.loads((tiny_run / "results.json").read_text())["code"]
    assert set(code) == {"commit", "dirty", "ccn", "torch"} and code["torch"].startswith("2.")
    if (SOURCE_ROOT / ".git").exists():  # a clone: the commit this checkout is at
        assert re.fullmatch(r"[0-9a-f]{40}", code["commit"]) and isinstance(code["dirty"], bool)
        assert code_version()["commit"] == code["commit"]


def test_code_is_unknown_outside_a_checkout(tmp_path, monkeypatch):
    from ccn import provenance
    monkeypatch.setattr(provenance, "SOURCE_ROOT", tmp_path)
    provenance._is_checkout.cache_clear()
    provenance._code_of_this_process.cache_clear()
    try:
        assert provenance.code_version()["commit"] == "unknown" and provenance.code_version()["dirty"] == "unknown"
    finally:
        provenance._is_checkout.cache_clear()
        provenance._code_of_this_process.cache_clear()


def test_the_code_is_read_once_per_process(monkeypatch):
    """A grid process keeps the code it imported: a checkout that moves on must not relabel its later runs."""
    from ccn import provenance
    provenance._code_of_this_process.cache_clear()
    first = provenance.code_version()
    monkeypatch.setattr(provenance, "_git", lambda *args: "f" * 40)  # the tree moved to another commit
    try:
        assert provenance.code_version() == first
        first["commit"] = "edited by a caller"
        assert provenance.code_version()["commit"] != "edited by a caller"  # each caller gets its own copy
    finally:
        provenance._code_of_this_process.cache_clear()


def test_a_grid_run_with_two_code_versions_says_so():
    a = {"commit": "a" * 40, "dirty": False, "ccn": "0.1.0", "torch": "2.13.0+cpu"}
    b = {**a, "commit": "b" * 40, "dirty": True}
    one = _code_lines({"code": [{"code": a, "runs": ["flat-s0", "ccn-s0"]}]})
    assert one[0] == "Code: every run was produced by commit aaaaaaaaaa (clean), ccn 0.1.0, torch 2.13.0+cpu."
    two = "\n".join(_code_lines({"code": [{"code": a, "runs": ["flat-s0"]}, {"code": b, "runs": ["k-1-s0"]},
                                          {"code": None, "runs": ["ccn-s0"]}]}))
    assert "3 code versions" in two and "bbbbbbbbbb (with uncommitted changes)" in two and "k-1-s0" in two
    assert "code not recorded" in two


def test_a_folders_grid_yaml_reproduces_its_primary_comparisons(tmp_path):
    """docs/results/*/grid.yaml records each primary as {compare, declared, before_any_run}: given as
    --config for a new folder it declares the same comparisons there (anew, before that folder's runs)."""
    _, out, _ = _claim(tmp_path, GRID + "primary: [ccn, [ccn, k-1]]\n")
    again = load_grid(out / "grid.yaml")
    assert again.primary == [["ccn", "flat"], ["ccn", "k-1"]]
