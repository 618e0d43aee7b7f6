"""Progress bars for the long waits (training batches, decoding an image folder, experiment runs).

A bar shows done/total, the rate and the time left; it is drawn on stderr only when stderr is a
terminal, so logs, pipes and CI output stay clean. `train.progress=false` turns it off everywhere.
Built on tqdm, which handles terminal widths, rates and nested bars.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional

from tqdm import tqdm


_enabled = True  # the process-wide switch: the CLI sets it from train.progress


def set_enabled(flag: bool) -> None:
    """Turn every bar of this process on (still only on a terminal) or off."""
    global _enabled
    _enabled = bool(flag)


def is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Optional[Iterable] = None, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, stream=None, initial: int = 0) -> tqdm:
    """A tqdm bar over `iterable` (or updated by hand), silent unless `enabled`, the process-wide switch
    is on and `stream` (default stderr) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    enabled = enabled and _enabled
    return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, file=stream, leave=False, dynamic_ncols=True,
                mininterval=0.5, disable=not (enabled and is_terminal(stream)))


def echo(message: str, stream=None) -> None:
    """Print a line without tearing a progress bar that is being drawn."""
    tqdm.write(message, file=stream if stream is not None else sys.stdout)
