"""benchmarks/RESULTS.md, where every benchmark appends its section: one place that creates the file with
its header and keeps exactly one blank line between sections, whatever the section's own edges."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEvery section says the machine, torch version, date and command.\n"


def append_section(text: str, path: Path = RESULTS) -> None:
    """Append `text` after one blank line. Append only: the sections already there are never rewritten."""
    if not path.exists():
        path.write_text(HEADER)
    ending = path.read_bytes()[-2:]
    separator = "" if ending == b"\n\n" else "\n" if ending.endswith(b"\n") else "\n\n"
    with open(path, "a") as handle:
        handle.write(separator + text.strip("\n") + "\n")
