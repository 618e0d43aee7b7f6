"""Giving freed memory back: a run's own (anonymous) memory must not grow with its data set.

Decoding a data set frees as much as it allocates: each chunk of decoded images arrives from a worker
as a pickled message, is unpickled into arrays, written away and freed. glibc's malloc keeps freed
blocks in its heaps (one per thread that allocated, and the pool's result thread is another) and
raises its mmap threshold after each large free, so these blocks come from the heaps and may be kept
(issue 30 reports ~820 MB while a 24,000-image store at 128 px was built; on the 2-core VM the build
stayed near 190 MB with or without this, benchmarks/RESULTS.md, so it guards against an allocator
behaviour that depends on the glibc version and the number of workers). `trim()`
(malloc_trim) hands the free pages of every heap back to the system; ccn calls it after every
TRIM_EVERY chunks of a store build or batches of a stream, and once after a store is built. A fixed
small mmap threshold (MALLOC_MMAP_THRESHOLD_=65536) would keep the heap small too, but it maps and
faults in every tensor above it: a CPU training step took 1.6-2x as long here, so ccn does not set it.
Elsewhere than glibc (musl, macOS) this does nothing: their allocators return memory themselves."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Optional

TRIM_EVERY = 16  # chunks of a store build (32 images each) or batches of a stream between two trims


@lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        return libc if hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


def trim() -> None:
    """Return the free pages of every malloc heap to the system (glibc; elsewhere nothing to do)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
