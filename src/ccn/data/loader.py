"""Batches straight from tensors held on the training device (no DataLoader, no worker processes),
or gathered per batch from a store (ccn.data.store.ImageSource: a memory-mapped file, or image files
decoded a few batches ahead by worker processes) and moved to the device (through pinned memory on CUDA).

The permutation of an epoch and the augmentation of each batch come from generators seeded by
(seed, epoch, batch), so the same seed gives every variant the same data order, a resumed run
replays exactly, and each distributed rank takes its share of the same global batches.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

from ccn.data.augment import Augment, Normalize, Share
from ccn.data.store import ImageSource

_EPOCH_STRIDE = 1_000_003  # keeps the per-epoch and per-batch seeds of one run apart
_BATCH_STRIDE = 65_537
# torch.Generator.manual_seed takes 0 .. 2**64 - 1 and raises "Overflow when unpacking long long" above
# (seeds from 281,469,838 on reached it at the first batch). Reducing modulo 2**64 leaves every seed that
# fitted unchanged, so runs of the seeds that worked stay bit-identical.
GENERATOR_SEEDS = 2**64


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's permutation."""
    return (seed * _EPOCH_STRIDE + epoch) % GENERATOR_SEEDS


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """Seed of the augmentation draws of one global batch (from the unreduced epoch term)."""
    return ((seed * _EPOCH_STRIDE + epoch) * _BATCH_STRIDE + batch) % GENERATOR_SEEDS


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


class TensorBatches:
    """Iterate (normalised float images, labels) over uint8 images: a tensor that already lives on the
    device of `labels`, or an ImageSource gathered batch by batch. Either way the batches, their order
    and their augmentation draws are the same."""

    def __init__(self, images: torch.Tensor | ImageSource, labels: torch.Tensor, batch_size: int, normalize: Normalize,
                 augment: Optional[Augment] = None, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        """`augment` draws from the batch's generator (training); `transform` is deterministic
        (the evaluation crop, ccn.data.crops.CentreCrop), applied after it to every batch."""
        self.images, self.labels = images, labels
        self.transform = transform
        self.batch_size, self.normalize, self.augment = batch_size, normalize, augment
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.device = labels.device

    def _order(self, epoch: int) -> torch.Tensor:
        n = len(self.labels)
        order = epoch_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        return order.to(self.device)

    def _images(self, index_lists: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 images of each index list, on the device. A source is handed every list at once,
        so a stream can decode ahead while the device trains."""
        if isinstance(self.images, torch.Tensor):
            yield from (self.images[idx] for idx in index_lists)
            return
        for batch in self.images.batches(idx.cpu() for idx in index_lists):
            if self.device.type == "cuda":  # page-locked, so the copy runs beside the GPU's work
                yield batch.pin_memory().to(self.device, non_blocking=True)
            else:
                yield batch.to(self.device)

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at indices `idx` (in this set), on the batches' device, not augmented."""
        [images] = self._images([idx.to(self.device)])  # consumed whole: a stream's pool stays as it is
        return images

    def num_batches(self) -> int:
        """Global batches per epoch; with several ranks each takes its share of every batch."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of one epoch from `start_batch` on. With world_size ranks, each takes every
        world_size-th image of the same global batch and augments only those, with the random draws
        one process makes for the whole batch, so N ranks together see what a single process sees."""
        order = self._order(epoch)
        generator = torch.Generator(device=self.device)
        plan = []  # (batch number, share, this rank's indices) of every batch still to come
        for b in range(start_batch, self.num_batches()):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            share = Share(self.rank, self.world_size, len(idx))
            plan.append((b, share, share.of(idx)))
        # the images first: zip then reads the source to its end, so a stream's workers are kept for the
        # next epoch instead of being closed as an abandoned generator's
        for images, (b, share, idx) in zip(self._images([idx for _, _, idx in plan]), plan):
            if self.augment is not None:  # draws for the whole global batch, work on this rank's share only
                generator.manual_seed(batch_seed(self.seed, epoch, b))
                images = self.augment(images, generator, share, ids=idx, epoch=epoch)
            if self.transform is not None:
                images = self.transform(images)
            x = self.normalize(images)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
