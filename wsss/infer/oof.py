"""Out-of-fold merge: join the per-fold OOF runs of a stage into one table over all training ids.

Each fold's run (``wsss-infer --fold k --folds folds.csv``) wrote ``processed_{tag}.parquet`` (the
ids it finished, with their fold), ``cells_{tag}.parquet`` and, for stage 1,
``images_{tag}.parquet``. :func:`merge_oof` checks coverage against ``folds.csv``:

* *missing*: training ids no run processed (not run yet, or skipped as unreadable);
* *duplicates*: ids processed by more than one run;
* *wrong fold*: ids processed by a run whose fold is not the id's validation fold in
  ``folds.csv`` (a model that saw the image in training: not out-of-fold);
* *extra*: processed ids that are not in ``folds.csv``.

A run folder's tables are gathered from its finished parts when it has them (every rank's parts
of a sharded run, even one stopped before rank 0 consolidated them; :func:`wsss.infer.tables.gather_tables`),
else read from its consolidated ``{table}_{tag}.parquet`` files. The merged tables keep, for every id, the rows of the first run (in the order given) whose fold
matches ``folds.csv``; wrong-fold and extra rows are left out. The merge is complete when every
training id is covered exactly once by a run of its own fold (:attr:`OOFReport.complete`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from wsss.fileio import atomic_write_bytes
from wsss.infer.tables import TableError, empty_frame, gather_tables, part_dirs, read_parquet, write_parquet

logger = logging.getLogger(__name__)


@dataclass
class OOFReport:
    """Coverage of an OOF merge (see the module doc)."""

    stage: int | str
    n_expected: int
    n_covered: int
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    wrong_fold: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    n_cells: int = 0

    @property
    def complete(self) -> bool:
        """True when every training id is covered exactly once by its own fold's run."""
        return not (self.missing or self.duplicates or self.wrong_fold)

    def to_dict(self) -> dict:
        """JSON-friendly form with counts."""
        out = asdict(self)
        out["complete"] = self.complete
        for key in ("missing", "duplicates", "wrong_fold", "extra"):
            out[f"n_{key}"] = len(out[key])
        return out

    def lines(self, show: int = 10) -> list[str]:
        """Human-readable summary lines (at most ``show`` ids per list)."""
        out = [f"stage {self.stage} OOF: {self.n_covered}/{self.n_expected} training ids covered, "
               f"{self.n_cells} cells from {len(self.runs)} runs"]
        for key in ("missing", "duplicates", "wrong_fold", "extra"):
            ids = getattr(self, key)
            if ids:
                more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
                out.append(f"{key}: {len(ids)}: {', '.join(ids[:show])}{more}")
        return out


def _read_run(run: Path, tag: str, tables: Sequence[str]) -> dict[str, pd.DataFrame]:
    if part_dirs(run, tag):
        return gather_tables(run, tag, tables)
    frames = {"processed": read_parquet(run / f"processed_{tag}.parquet")}
    for table in tables:
        frames[table] = read_parquet(run / f"{table}_{tag}.parquet")
    return frames


def merge_oof(runs: Sequence[Path | str], folds: pd.DataFrame, stage: int | str = 1
              ) -> tuple[dict[str, pd.DataFrame], OOFReport]:
    """Merge the OOF runs of ``stage``; returns ``({"cells": ..., "images": ...}, report)``."""
    tag = f"stage{stage}"
    tables = ("cells", "images") if stage == 1 else ("cells",)
    expected = dict(zip(folds["ID"].astype(str), folds["fold"].astype(int)))
    processed_all, per_table = [], {t: [] for t in tables}
    for order, run in enumerate(runs):
        run = Path(run)
        frames = _read_run(run, tag, tables)
        proc = frames["processed"].assign(_run=order)
        processed_all.append(proc)
        for table in tables:
            per_table[table].append(frames[table].assign(_run=order))
    processed = pd.concat(processed_all, ignore_index=True) if processed_all else empty_frame("done").assign(_run=0)
    processed["image_id"] = processed["image_id"].astype(str)
    processed["expected_fold"] = processed["image_id"].map(expected)
    own = processed[processed["fold"].astype(int) == processed["expected_fold"]]
    counts = processed.groupby("image_id").size()
    report = OOFReport(stage=stage, n_expected=len(expected), n_covered=int(own["image_id"].nunique()),
                       runs=[str(r) for r in runs])
    report.missing = sorted(set(expected) - set(own["image_id"]))
    report.duplicates = sorted(counts[counts > 1].index.astype(str))
    report.extra = sorted(set(processed["image_id"]) - set(expected))
    known = processed["expected_fold"].notna()
    wrong = processed[known & (processed["fold"].astype(int) != processed["expected_fold"])]
    report.wrong_fold = sorted(set(wrong["image_id"]) - set(report.extra))
    keep = own.drop_duplicates("image_id", keep="first")[["image_id", "_run"]]
    merged: dict[str, pd.DataFrame] = {}
    for table in tables:
        parts = per_table[table]
        frame = pd.concat(parts, ignore_index=True) if parts else empty_frame(table).assign(_run=0)
        frame = frame.merge(keep, on=["image_id", "_run"], how="inner").drop(columns="_run")
        merged[table] = frame.sort_values([c for c in ("image_id", "cell_id") if c in frame]).reset_index(drop=True)
    report.n_cells = len(merged["cells"])
    return merged, report


def write_oof(out_dir: Path | str, merged: dict[str, pd.DataFrame], report: OOFReport) -> dict[str, Path]:
    """Write ``oof_{table}_stage{n}.parquet``, ``oof_report_stage{n}.json`` and ``oof_missing_stage{n}.csv``."""
    out_dir = Path(out_dir)
    tag = f"stage{report.stage}"
    paths = {t: write_parquet(f, out_dir / f"oof_{t}_{tag}.parquet") for t, f in merged.items()}
    paths["report"] = out_dir / f"oof_report_{tag}.json"
    atomic_write_bytes(paths["report"], json.dumps(report.to_dict(), indent=2).encode())
    paths["missing"] = out_dir / f"oof_missing_{tag}.csv"
    atomic_write_bytes(paths["missing"], pd.DataFrame({"image_id": report.missing}).to_csv(index=False).encode())
    return paths


__all__ = ["OOFReport", "TableError", "merge_oof", "write_oof"]
