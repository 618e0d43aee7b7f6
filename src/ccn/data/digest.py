"""A digest of what a run trains and scores on, kept in its checkpoints so `--resume` continues only
on the same data (ccn.pipeline).

It covers the class names in order, every label, and the images' content: the decoded pixels when
the images are held (a tensor, or a memory or disk store), and for a streamed store (which holds no
pixels) each file's class folder and name, size and bytes. Never inodes or modification times, so a
data set restored from a backup, copied or decoded again with the same bytes still resumes, while
two class folders swapped (the same counts, the same file names) or an image edited in place do not.

Cost: one pass over the decoded images (or the files) at the first checkpoint and at each resume,
hashed with SHA-256 (the CPU's SHA instructions; measured 0.35 GiB/s on the project's loaded 2-core VM,
BLAKE2b 0.21): about 4 s for Tiny ImageNet's memory store (110,000 images at 64 px, 1.35 GB),
extrapolated, not measured on it; ImageNet's 140 GB of files (a stream) about 7 minutes per start
and per resume, small beside the days such a run trains, but not nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from ccn.files import open_regular

CHUNK_BYTES = 64 * 2**20  # pixels hashed at a time from a store: memory stays flat


def data_digest(ds) -> str:
    """Hex digest of `ds` (an ImageDataset): classes, labels and image content of both splits."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"classes": ds.classes, "ids": ds.class_ids}).encode())
    for split, images, labels in (("train", ds.train_images, ds.train_labels), ("test", ds.test_images, ds.test_labels)):
        digest.update(f"|{split}|{len(labels)}|".encode())
        digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
        _add_images(digest, images)
    return digest.hexdigest()


def _add_images(digest, images) -> None:
    if isinstance(images, torch.Tensor):
        digest.update(images.contiguous().numpy().tobytes())
    elif hasattr(images, "paths"):  # a stream: no pixels held, so the files themselves
        for path in images.paths:
            _add_file(digest, Path(path))
    else:
        digest.update(repr(tuple(images.shape)).encode())
        rows = max(1, CHUNK_BYTES // max(1, int(torch.tensor(images.shape[1:]).prod())))
        for chunk in images.chunks(rows):
            digest.update(chunk.contiguous().numpy().tobytes())


def _add_file(digest, path: Path) -> None:
    """A file by its class folder, name, size and bytes (not where the data set lives, nor when)."""
    with open_regular(path, None, "image") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(f"{path.parent.name}/{path.name}|{size}\n".encode("utf-8", "surrogateescape"))
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
