"""What a run reports: one console line per epoch, `metrics.jsonl`, TensorBoard when installed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from ccn.files import atomic_write, fault_point, open_for_append, read_regular_bytes
from ccn.errors import WriteError


MAX_METRICS_BYTES = 256 * 2**20  # metrics.jsonl: one row of about 1 KB per epoch


class RunLog:
    """Writes nothing when `enabled` is False (the non-zero ranks of a distributed run)."""

    def __init__(self, out_dir: Optional[Path], enabled: bool = True, stream=None):
        self.enabled, self.out_dir = enabled, Path(out_dir) if out_dir is not None else None
        self.stream = stream or sys.stdout
        self.tensorboard = None
        self._tensorboard_tried = False

    def _tensorboard(self):
        """The TensorBoard writer, made at the first epoch: nothing is written into the run folder
        before the run has started (--force keeps the old run until then)."""
        if not self._tensorboard_tried and self.enabled and self.out_dir is not None:
            self._tensorboard_tried = True
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
            except (ImportError, ModuleNotFoundError):
                self.tensorboard = None  # tensorboard is optional: pip install 'ccn[tensorboard]'
        return self.tensorboard

    def info(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def epoch(self, row: dict) -> None:
        """Append one row to metrics.jsonl, print its console line, add TensorBoard scalars."""
        if not self.enabled:
            return
        self.info(format_epoch(row))
        if self.out_dir is not None:
            # fault point: a crash mid-line leaves a torn last line, which truncate drops on resume
            append_line(self.out_dir / "metrics.jsonl", json.dumps(row), fault=f"mid-metrics-line-{row['epoch']}")
        if self._tensorboard() is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self.tensorboard.add_scalar(key, value, row["epoch"])
            self.tensorboard.flush()

    def truncate(self, last_epoch: int) -> None:
        """Keep only metrics.jsonl rows up to `last_epoch` (a resumed run replays the later epochs).

        A row a crash cut short, or any line that is not a row, is dropped too: the log then holds
        exactly the epochs the checkpoint has, and resuming never fails on it."""
        path = self.out_dir / "metrics.jsonl" if self.enabled and self.out_dir is not None else None
        if path is None or not os.path.lexists(path):
            return
        data = read_regular_bytes(path, MAX_METRICS_BYTES, "metrics log", "move it aside to resume without it")
        lines = data.decode("utf-8", errors="replace").splitlines()
        kept = [line for line in lines if _row_epoch(line) is not None and _row_epoch(line) <= last_epoch]
        dropped = sum(1 for line in lines if line.strip() and _row_epoch(line) is None)
        if dropped:
            self.info(f"  metrics.jsonl: dropped {dropped} damaged line(s) (a crash mid-write)")
        atomic_write(path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def append_line(path: Path, line: str, fault: Optional[str] = None) -> None:
    """Append one line; when the disk is full or read-only, cut the file back to its last whole line
    and raise WriteError (a resumed run reads every line)."""
    if path.is_symlink():
        raise WriteError(f"{path} is a symbolic link: ccn does not write through links; remove it, or resume "
                         "from a folder of your own")
    size = path.stat().st_size if path.exists() else 0
    try:
        with open_for_append(path) as handle:
            text = line + "\n"
            handle.write(text[: len(text) // 2])
            handle.flush()
            if fault is not None:
                fault_point(fault)  # testing hook: the resume tests kill the process mid-line here
            handle.write(text[len(text) // 2:])
    except OSError as err:
        try:
            os.truncate(path, size)
        except OSError:
            pass
        raise WriteError(f"could not write {path} ({err.strerror or err}): free disk space or make the folder "
                         "writable; the lines before are unchanged") from None


def _row_epoch(line: str) -> Optional[int]:
    """The epoch of a metrics.jsonl line, or None when the line is not a whole row."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    epoch = row.get("epoch") if isinstance(row, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def format_epoch(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}/{row['epochs']}", f"stage {row['stage']:<5}", f"loss {row['loss']:.4f}"]
    for key in ("cluster", "within"):
        if key in row:
            parts.append(f"{key} {row[key]:.3f}")
    weights = " (ema)" if row.get("weights") == "ema" else ""  # the score of the weights that will be saved
    parts += [f"top1{weights} {100 * row['top1']:.2f}%", f"top5 {100 * row['top5']:.2f}%",
              f"{row['images_per_s']:.0f} img/s", f"{row['seconds']:.1f}s"]
    return " | ".join(parts)
