"""docs/bad-input.md stays true: every test it names exists (with the parametrised id it names),
the cases are numbered once each, there are at least 100, and every numeric config key's limit is
documented."""

import re
from pathlib import Path

from ccn import config as cfgmod

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "bad-input.md").read_text()
ROWS = [line for line in DOC.splitlines() if re.match(r"\| \d+ \|", line)]


def test_cases_are_numbered_once_and_at_least_100():
    numbers = [int(line.split("|")[1]) for line in ROWS]
    assert len(numbers) == len(set(numbers)), sorted(n for n in numbers if numbers.count(n) > 1)
    assert len(numbers) >= 100


def test_every_named_test_and_id_exists():
    missing = []
    for line in ROWS:
        for file, func, case in re.findall(r"(test_\w+\.py)::(\w+)(?:\[([\w.-]+)\])?", line.split("|")[4]):
            path = REPO / "tests" / file
            text = path.read_text() if path.is_file() else ""
            if f"def {func}(" not in text or (case and f'"{case}"' not in text):
                missing.append(f"{file}::{func}" + (f"[{case}]" if case else ""))
    assert not missing, f"docs/bad-input.md names tests that do not exist: {missing}"


def test_every_numeric_limit_is_documented():
    limits = DOC[DOC.index("### Limits"):]
    assert not [key for key in cfgmod.LIMITS if key.split(".")[-1] not in limits]
