"""Per-epoch logs: a CSV, a training-curves PNG and TensorBoard scalars when tensorboard is installed.

The history is a list of flat dicts (one per epoch). The CSV and the PNG are rewritten from the
whole history after every epoch (atomically), so after a resume they hold the resumed run's
complete history without duplicate rows.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wsss.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

LOSS_TERMS: tuple[str, ...] = ("loss", "full", "puzzle", "rec")


def write_history_csv(path: Path | str, history: Sequence[Mapping[str, Any]]) -> Path:
    """Write the per-epoch history as CSV (columns in first-seen order)."""
    path = Path(path)
    columns: list[str] = []
    for row in history:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_bytes(path, buf.getvalue().encode())
    return path


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


SCORES: tuple[tuple[str, str], ...] = (("val_map", "macro mAP"), ("val_f1", "macro F1"), ("val_map_chance", "mAP chance"))


def plot_curves(path: Path | str, history: Sequence[Mapping[str, Any]], title: str = "",
                terms: Sequence[str] = LOSS_TERMS, scores: Sequence[tuple[str, str]] = SCORES) -> Path:
    """Training curves PNG: each loss term train vs val (first four ``terms``), the validation ``scores``
    (``(column, label)`` pairs in 0..1; defaults: macro mAP / F1 / chance) and the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, term in zip(axes.flat[:4], terms):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [_num(row.get(f"{split}_{term}")) for row in history]
            if any(math.isfinite(v) for v in values):
                ax.plot(epochs, values, style, ms=3, label=split)
        ax.set_title("ComboLoss" if term == "loss" else f"{term} term")
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    ax = axes.flat[4]
    for key, label in scores:
        values = [_num(row.get(key)) for row in history]
        if any(math.isfinite(v) for v in values):
            ax.plot(epochs, values, "--" if key.endswith("chance") else "-o", ms=3, label=label)
    ax.set_ylim(0, 1)
    ax.set_title("validation scores")
    ax.set_xlabel("epoch")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes.flat[5]
    ax.plot(epochs, [_num(row.get("lr")) for row in history], "-o", ms=3)
    ax.set_yscale("log")
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class TensorBoardLogger:
    """TensorBoard scalars if ``torch.utils.tensorboard`` can be imported, otherwise a no-op."""

    def __init__(self, log_dir: Path | str, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.debug("tensorboard not installed: skipping TensorBoard logs")
            return
        self.writer = SummaryWriter(str(log_dir))

    def log(self, row: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            v = _num(value)
            if key != "epoch" and math.isfinite(v):
                self.writer.add_scalar(key.replace("_", "/", 1), v, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
