"""benchmarks/results_file.py: every benchmark appends its section the same way, and never rewrites
the sections already in RESULTS.md."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("results_file", REPO / "benchmarks" / "results_file.py")
results_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_file)


def test_a_missing_file_starts_with_the_header(tmp_path):
    path = tmp_path / "RESULTS.md"
    results_file.append_section("## first\nbody", path)
    assert path.read_text() == results_file.HEADER + "\n## first\nbody\n"


def test_sections_are_one_blank_line_apart_whatever_their_edges(tmp_path):
    path = tmp_path / "RESULTS.md"
    for ending in ("kept as it was", "kept as it was\n", "kept as it was\n\n"):
        path.write_text(ending)
        results_file.append_section("\n\n## next\nbody\n\n\n", path)
        assert path.read_text() == ending + "\n" * (2 - (len(ending) - len(ending.rstrip("\n")))) + "## next\nbody\n"
        results_file.append_section("## third", path)
        assert path.read_text().endswith("## next\nbody\n\n## third\n")
