"""Checks for the files ccn reads back (results.json, hierarchy.json, checkpoint headers, YAML).

A reader parses its file, then checks every value it will use with the tiny functions below. Each
raises `Invalid` naming the field and what it must hold; `checked(path, fix)` turns that into one
`CCNError` line naming the file as well, so a damaged or hand-edited file never ends in a traceback
or, worse, in a silently wrong result.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ccn.errors import CCNError
from ccn.files import node_problem, read_regular_bytes

MAX_JSON_BYTES = 256 * 2**20  # results.json / hierarchy.json of 100k classes stay far below this
NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS, Windows)
PATH_MAX = 4095  # bytes in a whole path (Linux)


class Invalid(ValueError):
    """One field of a file does not hold what it must; `checked` adds the file's name."""


@contextmanager
def checked(path, fix: str) -> Iterator[None]:
    """Turn `Invalid` (and a too-deep structure) raised inside into CCNError('<path>: <problem>: <fix>')."""
    try:
        yield
    except Invalid as err:
        raise CCNError(f"{path}: {err}: {fix}") from None
    except RecursionError:
        raise CCNError(f"{path}: its structure is nested too deeply: {fix}") from None


# ---------------------------------------------------------------- names ccn prints

# bidirectional overrides and isolates: they reorder what a terminal shows after them
_REORDERING = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text) -> str:
    """`text` with every character that could forge or hide output escaped as Python writes it: control
    characters (a newline in a class folder's name printed a line of its own, an ESC sequence recolours
    the terminal), line and paragraph separators, bidirectional overrides, and the lone surrogates that
    stand for the bytes of a name that is not UTF-8 (printing them raised UnicodeEncodeError). Every
    name and path ccn prints as text (predict, clusters, the error line) goes through here."""
    text = str(text)
    if text.isprintable() and not _REORDERING.intersection(text):
        return text
    return "".join(ch if ch.isprintable() and ch not in _REORDERING else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if 0xDC80 <= ord(ch) <= 0xDCFF:  # os.fsdecode's stand-in for one byte that is not UTF-8
        return f"\\x{ord(ch) - 0xDC00:02x}"
    return repr(ch)[1:-1]  # \n, \x1b, \u202e: Python escapes every character it does not print


# ---------------------------------------------------------------- paths


def check_path(path, what: str, error: type = CCNError) -> None:
    """CCNError unless `path` (a path a user gave, named `what`: "--out", "data.root") could name a file:
    every name in it at most NAME_MAX bytes, the whole at most PATH_MAX, no NUL byte. Checked before
    the path is used, where the system would raise OSError (Path.exists included) from deep inside."""
    text = str(path)
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate, from a JSON or YAML escape
        encoded = b"\0"
    if b"\0" in encoded:
        raise error(f"{what} {text[:60]!r} holds a character no file name may have (NUL, or a lone "
                    "surrogate): remove it")
    if len(encoded) > PATH_MAX:
        raise error(f"{what} is {len(encoded)} bytes long, more than the {PATH_MAX} a path may have: "
                    "choose a shorter path")
    for name in encoded.split(b"/"):
        if len(name) > NAME_MAX:
            shown = os.fsdecode(name)
            raise error(f"{what} {text[:40]}...: the name {shown[:20]}...{shown[-10:]} is {len(name)} bytes long, "
                        f"more than the {NAME_MAX} a file or folder name may have: choose a shorter name")


def file_problem(path: Path) -> Optional[str]:
    """Why `path` cannot be read as a file ("does not exist", "is a folder", "is a FIFO, not a regular
    file" ...), or None when it can. A FIFO or device would block a reader or never end, so it is named."""
    try:
        mode = Path(path).stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    return node_problem(mode) or None


# ---------------------------------------------------------------- reading

UTF8_BOM = "\ufeff"  # a byte-order mark some editors (Notepad, Excel's "CSV UTF-8") put first; not content


def read_text(path: Path, what: str, fix: str, limit: int = MAX_JSON_BYTES) -> str:
    """The file's text, refusing a missing, huge, binary or non-UTF-8 file, a folder, FIFO or device
    (ccn.files.read_regular_bytes: never a hang or a read without end) with one line. A leading UTF-8
    byte-order mark is dropped."""
    path = Path(path)
    data = read_regular_bytes(path, limit, what, fix)
    if b"\0" in data:
        raise CCNError(f"{what} {path} is a binary file, not text: {fix}")
    try:
        return data.decode("utf-8").removeprefix(UTF8_BOM)
    except UnicodeDecodeError as err:
        raise CCNError(f"{what} {path} is not UTF-8 text (byte {err.start}): {fix}") from None


def refuse_constant(name: str):
    """json.loads(parse_constant=...): NaN, Infinity and -Infinity are not numbers a ccn file holds."""
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, source, fix: str) -> Any:
    """json.loads that refuses NaN/Infinity and names `source` when the text is not JSON."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except ValueError as err:  # JSONDecodeError is a ValueError; so is a refused constant
        raise CCNError(f"{source} is not valid JSON ({err}): {fix}") from None
    except RecursionError:
        raise CCNError(f"{source} is nested too deeply to be a ccn file: {fix}") from None


def read_json(path: Path, what: str, fix: str) -> Any:
    return parse_json(read_text(path, what, fix), path, fix)


# ---------------------------------------------------------------- checks; each returns its value


def require_mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be a mapping, got {_short(value)}")
    return value


def require_keys(mapping: dict, keys, where: str = "") -> dict:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise Invalid(f"{where + ' ' if where else ''}lacks {', '.join(repr(k) for k in missing)}")
    return mapping


def require_str(value, where: str, choices=None) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"{where} must be non-empty text, got {_short(value)}")
    if choices is not None and value not in choices:
        raise Invalid(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def require_int(value, where: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{where} must be a whole number, got {_short(value)}")
    _require_range(value, where, low, high)
    return value


def require_number(value, where: str, low: Optional[float] = None, high: Optional[float] = None) -> float:
    """A finite int or float (never a bool, nan or inf) within [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise Invalid(f"{where} must be a finite number, got {_short(value)}")
    _require_range(value, where, low, high)
    return value


def require_list(value, where: str, length: Optional[int] = None, min_length: int = 0) -> list:
    if not isinstance(value, list):
        raise Invalid(f"{where} must be a list, got {_short(value)}")
    if length is not None and len(value) != length:
        raise Invalid(f"{where} must have {length} entries, has {len(value)}")
    if len(value) < min_length:
        if min_length == 1:
            raise Invalid(f"{where} must not be empty")
        raise Invalid(f"{where} must have at least {min_length} entries, has {len(value)}")
    return value


def require_list_of_str(value, where: str, length: Optional[int] = None, unique: bool = True) -> list[str]:
    require_list(value, where, length)
    for i, item in enumerate(value):
        require_str(item, f"{where}[{i}]")
    if unique and len(set(value)) != len(value):
        repeated = next(v for i, v in enumerate(value) if v in value[:i])
        raise Invalid(f"{where} names {repeated!r} twice")
    return value


def require_numbers(value, where: str, length: Optional[int] = None, low=None, high=None,
                    allow_none: bool = False) -> list:
    require_list(value, where, length)
    for i, item in enumerate(value):
        if item is None and allow_none:
            continue
        require_number(item, f"{where}[{i}]", low, high)
    return value


def require_matrix(value, where: str, rows: int, cols: int) -> list:
    """A rows x cols list of lists of finite numbers."""
    require_list(value, where, rows)
    for i, row in enumerate(value):
        require_numbers(row, f"{where}[{i}]", cols)
    return value


def _require_range(value, where: str, low, high) -> None:
    if low is not None and value < low:
        raise Invalid(f"{where} must be {low} or more, got {value!r}")
    if high is not None and value > high:
        raise Invalid(f"{where} must be at most {high}, got {value!r}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
