"""`ccn --help`, a mistyped argument and a bad config value answer without importing torch, scipy or
numpy (seconds on a loaded machine); the package's public names still import on first use."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "numpy")

# runs the command line in-process, then prints which heavy packages it imported
PROBE = """
import sys
from ccn.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print(status, sorted({m.split('.')[0] for m in sys.modules} & set(%r)))
""" % (HEAVY,)


@pytest.mark.parametrize("argv, status", [
    (["--help"], 0),
    (["train", "--help"], 0),
    (["train", "--no-such-flag"], 2),
    (["predict"], 2),
    (["train", "--set", "train.lr=abc"], 2),
    (["train", "--resume", "R", "--out", "S"], 2),
    (["--version"], 0),
    (["configs"], 0),
    (["train", "--config", "no_such_recipe"], 2),
])
def test_the_command_line_answers_without_torch(argv, status):
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    answer = result.stdout.strip().splitlines()[-1]
    assert answer == f"{status} []", (answer, result.stderr)


def test_a_bad_grid_file_is_refused_without_torch(tmp_path):
    """`ccn experiment` reads and checks its grid (ccn.grid) before it imports what trains the runs."""
    grid = tmp_path / "g.yaml"
    grid.write_text("variants: [no-such-variant]\n")
    result = subprocess.run([sys.executable, "-c", PROBE, "experiment", "--config", str(grid)], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.strip().splitlines()[-1] == "2 []", result.stderr
    assert "variant 'no-such-variant' is not built in" in result.stderr


def test_import_ccn_errors_is_light():
    code = "import sys, ccn.errors, ccn.config; print(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (HEAVY,)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_the_public_names_import_on_first_use():
    import ccn
    from ccn import (CCNError, Config, ConfigError, DataError, FlatHead, Hierarchy, ThreeLevelHead, TreeHead,
                     agreement, build_hierarchy, class_profiles, profiles_from_logits)
    from ccn.errors import CCNError as direct
    from ccn.heads import ThreeLevelHead as head
    assert CCNError is direct and ThreeLevelHead is head and issubclass(ConfigError, CCNError)
    assert set(ccn.__all__) <= set(dir(ccn))
    assert all(callable(x) for x in (Config, DataError, FlatHead, Hierarchy, TreeHead, agreement, build_hierarchy,
                                     class_profiles, profiles_from_logits))
    from ccn import config as cfgmod  # a submodule is still reachable through the facade
    assert cfgmod.Config is Config
    with pytest.raises(AttributeError, match="no_such_name"):
        ccn.no_such_name  # noqa: B018
