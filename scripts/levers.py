"""Measure each lever of the recipe on out-of-fold data, alone and together, over several seeds.

Steps (each one a project command called in-process; a finished step leaves ``OUT/steps/NAME.done``
and is skipped on a re-run, so a killed run resumes where it stopped):

1. data: ``wsss-synth`` (``--variability``: share of heterogeneous images), ``wsss-prepare``,
   ``wsss-folds`` (``--n-folds``), ``wsss-segment`` (``hpa_seg`` masks of every image);
2. per training seed and fold: ``wsss-train`` (fold ``k`` held out), then ``wsss-infer`` on fold ``k``:
   stage 1 plain, ``--tta d4``, ``--scales`` (multi-scale), both; stage 2 plain and ``--tta d4``;
   with the issue-13 cell classifier merged (``wsss-train --task cell``, ``wsss-infer --stage
   cell``, detected; skipped with a printed line when absent) also the cell classifier (crops with flips
   only) and a second one with the crops augmented by ``--cell-augment``, and with
   ``wsss-pseudo`` one pseudo-label round per ``--pseudo-rounds`` (a teacher's OOF per-cell table -> soft
   targets masked by the image labels -> the cell classifier retrained on them; the teacher, ``--pseudo-source``:
   ``cell``, the previous cell classifier's own D4 table (round 1: the one on the image labels), or
   ``ensemble``, the OOF ensemble of stage 1, stage 2 and that classifier);
3. per seed: ``wsss-oof`` joins each variant's folds; every method below is scored against the
   synthetic truth (:func:`wsss.metrics.references.summary_scores`: official and strict protocol,
   all and heterogeneous images, all classes and 0-17), with the truth-broadcast and the oracle
   references on the same masks;
4. the table: mean and spread (sample standard deviation) over the seeds, then each lever's change
   against the plain ``ensemble`` (stage 1 + stage 2, geometric mean) per seed, with a verdict:
   ``helps`` when it is higher in every seed, ``hurts`` when lower in every seed, else ``no clear gain``;
   ``helping levers`` is the baseline with the levers a greedy forward selection chose: from the baseline,
   add the lever whose gain is largest and holds in every seed, until none does; the gain is that of the
   mean of the official and strict scores on all images (``--select both``, the default: the issue's goals
   weigh both protocols) or the official one with the strict one not lower (``--select official``). A lever
   is thereby measured with the ones chosen before it (the image context helps the cell classifier, not
   the weak image model alone). Leaky levers (``LEAKY``: the OOF pseudo rounds) are never chosen. Chosen on
   the same data, so optimistic: confirm on another data seed, ``--data-seed``.

Methods: ``naive``, ``stage1``, ``stage2``, ``ensemble`` (the baseline), the TTA tables alone, then
one lever at a time on the baseline (``+tta d4``, ``+multi-scale``, ``+image context`` at two powers,
``--context-power`` and ``--context-power-strong``, whose powers add when both are on, ``+blend``, ``+negative
suppression``, ``+border``, ``+small``, ``+cell classifier`` (crops augmented with the D4 flips only,
``configs/augment/d4.yaml``), ``+cell classifier augmented`` (a second classifier trained with
``--cell-augment``, default ``configs/augment/cell.yaml``: D4, small affine moves, brightness, contrast and
gamma; with both on, the two classifiers are averaged in, each at the cell weight), ``+pseudo rounds``),
``all levers`` (both context levers: the powers' sum) and ``helping levers``.
Post-processing runs through :func:`wsss.postprocess.postprocess` (what ``wsss-ensemble --config``
does). Budgets (``--budget``): ``test`` (seconds, the test suite), ``tiny`` (a few minutes),
``real`` (the measurement of the issue: 400 images at 384 px, variability 0.7, 4 folds -> 300
training images per model, 2 seeds; about 13 minutes per Puzzle-CAM model on a 2-core AVX2 CPU at 2 threads,
20 minutes at 1 thread; ``--part`` splits a run over processes sharing ``--out``). Any budget
value can be overridden (``--count``, ``--size``, ``--epochs`` ...). Example::

    python scripts/levers.py --budget tiny --out levers_tiny
    python scripts/levers.py --budget real --out levers_real --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wsss.cli.demo import show_progress  # noqa: E402
from wsss.ensemble import Source, ensemble, naive_cells_from_images  # noqa: E402
from wsss.fileio import atomic_write_bytes  # noqa: E402
from wsss.metrics.cell import preds_from_cell_table, truth_from_label_dir  # noqa: E402
from wsss.metrics.references import (  # noqa: E402
    REFERENCES,
    heterogeneous_ids,
    references,
    summary_key,
    summary_scores,
)
from wsss.postprocess import PostParams, postprocess  # noqa: E402
from wsss.tables import read_cell_table  # noqa: E402

logger = logging.getLogger("levers")

BASELINE = "ensemble"
HELPING = "helping levers"
#: Bumped when the methods scored change, so cached scores of an older script are not reused.
SCORES_VERSION = 5
#: The metrics a verdict looks at (keys of :func:`summary_scores`).
BOTH = "official+strict all"
VERDICT_KEYS: tuple[str, ...] = ("official all", "strict all", "official all 0-17", BOTH)
#: How ``helping levers`` are chosen (``--select``): ``both``, the mean of the official and strict scores on all
#: images higher in every seed; ``official``, the official score higher in every seed and the strict not lower.
SELECTIONS: tuple[str, ...] = ("both", "official")
#: Stage-1 and stage-2 inference variants: name -> extra wsss-infer arguments.
STAGE1_VARIANTS: dict[str, list[str]] = {"plain": [], "d4": ["--tta", "d4"], "ms": ["--scales", "{scales}"],
                                         "d4ms": ["--tta", "d4", "--scales", "{scales}"]}
STAGE2_VARIANTS: dict[str, list[str]] = {"plain": [], "d4": ["--tta", "d4"]}
#: The cell classifier's inference variants: folder/step suffix -> extra wsss-infer arguments.
CELL_VARIANTS: dict[str, list[str]] = {"": [], "_d4": ["--tta", "d4"]}
#: The variants run for the reconstruction-loss lever's models (no multi-scale: that lever is the base model's).
REC_VARIANTS: dict[str, list[str]] = {"plain": [], "d4": ["--tta", "d4"]}
#: Puzzle-CAM's own defaults for the reconstruction term: weight 4 (alpha), reached linearly at half of the
#: training, L1 only over the classes the image holds.
REC_MAX_WEIGHT: float = 4.0


def rec_settings(epochs: int) -> list[str]:
    """``wsss-train --set`` options of the reconstruction-loss lever for a run of ``epochs`` epochs."""
    return ["--set", f"loss.w_rec={REC_MAX_WEIGHT}", "--set", f"loss.rec_warmup_epochs={epochs / 2:g}",
            "--set", "loss.rec_mask_by_labels=true"]


@dataclass(frozen=True)
class Budget:
    """How much work a run does."""

    count: int
    size: int
    variability: float
    n_folds: int
    epochs: int
    seeds: tuple[int, ...]
    config: str = "configs/cpu_demo.yaml"
    batch_size: int = 16
    cell_epochs: int = 12
    cell_config: str = "configs/cell_cpu.yaml"
    cell_size: int | None = None  # crop side of the cell classifier; None: a quarter of the field (crop_side)


BUDGETS: dict[str, Budget] = {
    "test": Budget(count=16, size=128, variability=0.7, n_folds=2, epochs=1, seeds=(0, 1), batch_size=8, cell_epochs=1),
    "tiny": Budget(count=128, size=128, variability=0.7, n_folds=2, epochs=10, seeds=(0, 1), batch_size=8,
                   cell_epochs=6),
    "real": Budget(count=400, size=384, variability=0.7, n_folds=4, epochs=24, seeds=(0, 1), cell_size=96,
                   cell_epochs=24),
}


@dataclass(frozen=True)
class Levers:
    """The post-processing levers' settings (each measured alone and in ``all levers``)."""

    scales: str = "0.5,1,1.5,2"
    blend_cell: float = 0.7
    blend_image: float = 0.3
    border_factor: float = 0.5
    small_factor: float = 0.5
    small_area: float = 0.5
    pseudo_rounds: int = 1
    pseudo_source: str = "cell"
    pseudo_scheme: str = "oof"
    context_power: float = 0.5
    context_power_strong: float = 2.0  # the second image-context lever (both on: the powers add)
    cell_weight: float = 8.0  # the cell classifier's weight in the geometric mean (stage 1 and stage 2: 1 each)
    cell_augment_base: str = "configs/augment/d4.yaml"  # the "cell" lever's crop augmentation (flips only)
    cell_augment: str | None = "configs/augment/cell.yaml"  # the "cell_aug" lever's (None: no such lever)
    rec: bool = True


#: Teachers of the pseudo-label rounds (``--pseudo-source``): ``cell``, the previous round's cell classifier (D4
#: table) alone; ``ensemble``, the OOF ensemble of stage 1, stage 2 and that classifier.
PSEUDO_SOURCES: tuple[str, ...] = ("cell", "ensemble")
#: How a round's teachers are trained (``--pseudo-scheme``): ``oof``, the previous round's out-of-fold models
#: (cheap, but the student of fold k learns from models that saw fold k: leaky, :data:`LEAKY`); ``nested``,
#: per pair of folds {j, k} one teacher trained on the other folds, so the targets of fold j for the student
#: of fold k come from a model that never saw fold k (K(K-1)/2 teachers per round; needs >= 3 folds).
PSEUDO_SCHEMES: tuple[str, ...] = ("oof", "nested")


def positive(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def augment_file(text: str) -> str | None:
    """``--cell-augment``: an augmentation file, or None for ``none``, ``null`` or an empty value (no such lever)."""
    return None if text.strip().lower() in ("", "none", "null") else text


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``scripts/levers.py``."""
    p = argparse.ArgumentParser(description="Measure each lever (TTA d4, multi-scale, blending, Negative suppression, "
                                            "border/small down-weighting, cell classifiers with flips only and "
                                            "augmented, pseudo-label rounds) on "
                                            "out-of-fold synthetic data, alone and together, over several seeds.")
    p.add_argument("--out", type=Path, required=True, help="working folder (resumable)")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="tiny", help="size of the run (default tiny)")
    p.add_argument("--count", type=int, default=None, help="synthetic images (default: the budget's)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: the budget's)")
    p.add_argument("--variability", type=float, default=None, help="wsss-synth --variability (default: the budget's)")
    p.add_argument("--n-folds", type=int, default=None, help="folds (default: the budget's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per model (default: the budget's)")
    p.add_argument("--seeds", default=None, help="training seeds, comma-separated (default: the budget's; >= 2)")
    p.add_argument("--cell-size", type=positive_int, default=None,
                   help="crop side of the cell classifier in px (default: the budget's, else a quarter of the field)")
    p.add_argument("--cell-epochs", type=positive_int, default=None, help="cell classifier epochs (default: the budget's)")
    p.add_argument("--config", default=None, help="training config (default configs/cpu_demo.yaml)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the budget's)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic data and the folds (default 0)")
    p.add_argument("--scales", default=Levers.scales, help=f"multi-scale factors (default {Levers.scales})")
    p.add_argument("--blend", default=f"{Levers.blend_cell},{Levers.blend_image}", help="cell,image blend weights")
    p.add_argument("--border-factor", type=float, default=Levers.border_factor, help="border-cell factor")
    p.add_argument("--small", default=f"{Levers.small_factor},{Levers.small_area}",
                   help="small-cell factor,area (area as a fraction of the image's median cell area)")
    p.add_argument("--pseudo-rounds", type=int, default=Levers.pseudo_rounds, help="pseudo-label rounds (wsss-pseudo)")
    p.add_argument("--pseudo-source", choices=PSEUDO_SOURCES, default=Levers.pseudo_source,
                   help="teacher of each pseudo-label round: 'cell' (default), the previous cell classifier's OOF D4 "
                        "table; 'ensemble', the OOF ensemble of stage 1, stage 2 and that classifier")
    p.add_argument("--pseudo-scheme", choices=PSEUDO_SCHEMES, default=Levers.pseudo_scheme,
                   help="teachers of the pseudo rounds: 'oof' (default), the previous round's out-of-fold models "
                        "(leaky: never chosen); 'nested', one teacher per pair of folds trained on the others, "
                        "leak-free (K(K-1)/2 extra classifiers per round, >= 3 folds; cell source only)")
    p.add_argument("--context-power", type=positive, default=Levers.context_power,
                   help=f"the image-context lever: every probability times the mean over its image's cells to this "
                        f"power (postprocess.context; default {Levers.context_power:g})")
    p.add_argument("--context-power-strong", type=positive, default=Levers.context_power_strong,
                   help=f"the second image-context lever's power (default {Levers.context_power_strong:g}); with both "
                        "image-context levers on, the powers add")
    p.add_argument("--select", choices=SELECTIONS, default="both",
                   help="how the helping levers are chosen: 'both' (default), the mean of the official and strict "
                        "scores on all images higher in every seed; 'official', the official score higher in every "
                        "seed and the strict one not lower in every seed")
    p.add_argument("--cell-weight", type=positive, default=Levers.cell_weight,
                   help=f"weight of each cell classifier (or the last pseudo round in the first one's place) in the "
                        f"geometric mean with stage 1 and stage 2 at 1 each (default {Levers.cell_weight:g}; 1: "
                        "equal weights)")
    p.add_argument("--cell-augment", type=augment_file, default=Levers.cell_augment,
                   help=f"crop augmentation of the 'cell classifier augmented' lever, a second cell classifier "
                        f"(data.train_augment; default {Levers.cell_augment}); 'none': no such lever. The 'cell "
                        f"classifier' lever trains with {Levers.cell_augment_base}. A folder keeps the file it was "
                        f"started with")
    p.add_argument("--rec-lever", action=argparse.BooleanOptionalAction, default=Levers.rec,
                   help="also train every fold with Puzzle-CAM's own reconstruction-loss defaults (L1 masked by the "
                        "image labels, weight ramped to 4 over half the epochs) and score it as a lever")
    p.add_argument("--workers", type=int, default=1, help="worker processes of synth/prepare/segment (default 1)")
    p.add_argument("--part", choices=PARTS, default="all",
                   help="run only these steps of --seeds and stop without a table: 'models' (the Puzzle-CAM models, "
                        "their inference variants and OOF merges), 'cell' (the cell classifier on the image labels; it "
                        "does not need the models); 'cell_aug' (the augmented cell classifier of --cell-augment); "
                        "'pseudo' (the pseudo-label rounds: they need the cell classifier, "
                        "which runs first, and the models only with --pseudo-source ensemble); 'all' (default): "
                        "everything, then the table. Several processes "
                        "or machines sharing --out can each take a part or a seed (never the same step at once)")
    return p


#: What ``--part`` can run on its own (see :func:`run_part`).
PARTS: tuple[str, ...] = ("all", "models", "cell", "cell_aug", "pseudo")


@dataclass(frozen=True)
class Run:
    """Resolved settings of one run (saved as ``OUT/settings.json``)."""

    out: Path
    budget: Budget
    levers: Levers
    data_seed: int = 0
    workers: int = 1
    select: str = "both"

    @property
    def synth(self) -> Path:
        return self.out / "synth"

    @property
    def cache(self) -> Path:
        return self.out / "cache"

    @property
    def seg(self) -> Path:
        return self.out / "seg"

    @property
    def folds(self) -> Path:
        return self.out / "folds.csv"

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"


def run_from_args(args: argparse.Namespace) -> Run:
    """:class:`Run` from the arguments: the budget, then every explicit value."""
    b = BUDGETS[args.budget]
    seeds = tuple(int(s) for s in args.seeds.split(",")) if args.seeds else b.seeds
    budget = replace(b, count=args.count or b.count, size=args.size or b.size,
                     variability=b.variability if args.variability is None else args.variability,
                     n_folds=args.n_folds or b.n_folds, epochs=args.epochs or b.epochs, seeds=seeds,
                     config=args.config or b.config, batch_size=args.batch_size or b.batch_size,
                     cell_size=args.cell_size or b.cell_size, cell_epochs=args.cell_epochs or b.cell_epochs)
    blend = [float(v) for v in args.blend.split(",")]
    small = [float(v) for v in args.small.split(",")]
    levers = Levers(scales=args.scales, blend_cell=blend[0], blend_image=blend[1], border_factor=args.border_factor,
                    small_factor=small[0], small_area=small[1], pseudo_rounds=args.pseudo_rounds,
                    pseudo_source=args.pseudo_source,
                    pseudo_scheme=args.pseudo_scheme, cell_weight=args.cell_weight, context_power=args.context_power,
                    context_power_strong=args.context_power_strong,
                    cell_augment=args.cell_augment,
                    rec=args.rec_lever)
    return Run(out=args.out, budget=budget, levers=levers, data_seed=args.data_seed, workers=args.workers,
               select=args.select)


# --------------------------------------------------------------------------- steps


class StepError(RuntimeError):
    """A step whose command failed."""


def step(run: Run, name: str, work: Callable[[], object]) -> bool:
    """Run ``work`` unless ``OUT/steps/NAME.done`` exists; mark it done after. True when it ran."""
    marker = run.out / "steps" / f"{name.replace('/', '_')}.done"
    if marker.is_file():
        print(f"[levers] {name}: done before, skipped", flush=True)
        return False
    start = time.perf_counter()
    print(f"[levers] {name} ...", flush=True)
    work()
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(marker, f"{time.time():.0f}\n".encode())
    print(f"[levers] {name}: {time.perf_counter() - start:.1f} s", flush=True)
    return True


def call(entry: Callable[[Sequence[str] | None], int], argv: list[str], ok: tuple[int, ...] = (0,)) -> None:
    """One console script's ``main`` in-process; an exit code outside ``ok`` raises :class:`StepError`."""
    code = entry(argv)
    if code not in ok:
        raise StepError(f"exit code {code}: {' '.join(argv)}")


def prepare_data(run: Run) -> list[str]:
    """Synthesise, prepare, fold and segment; return every id."""
    from wsss.cli.folds import main as folds_main
    from wsss.cli.prepare import main as prepare_main
    from wsss.cli.segment import main as segment_main
    from wsss.cli.synth import main as synth_main
    from wsss.data.folds import read_folds

    b, w = run.budget, str(run.workers)
    step(run, "synth", lambda: call(synth_main, [str(run.synth), "--count", str(b.count), "--size", str(b.size),
                                                 "--seed", str(run.data_seed), "--variability", str(b.variability),
                                                 "--workers", w, "--quiet", "--sheet", "0", "--no-gallery"]))
    step(run, "prepare", lambda: call(prepare_main, [str(run.synth / "train"), str(run.cache), "--size", str(b.size),
                                                     "--workers", w, "--quiet"]))
    step(run, "folds", lambda: call(folds_main, ["--csv", str(run.synth / "train.csv"), "--n-folds", str(b.n_folds),
                                                 "--seed", str(run.data_seed), "--out", str(run.folds)]))
    step(run, "segment", lambda: call(segment_main, [str(run.cache), str(run.seg), "--size", str(b.size),
                                                     "--workers", w, "--quiet"]))
    return sorted(read_folds(run.folds)["ID"].astype(str))


def train_model(run: Run, seed: int, fold: int, out: Path, extra: Sequence[str] = ()) -> None:
    """``wsss-train`` of one fold (resuming an unfinished run)."""
    from wsss.cli.train import main as train_main

    b = run.budget
    argv = ["--config", str(ROOT / b.config) if not Path(b.config).is_absolute() else b.config, "--fold", str(fold),
            "--cache", str(run.cache), "--folds", str(run.folds), "--out", str(out), "--epochs", str(b.epochs),
            "--batch-size", str(b.batch_size), "--set", f"data.size={b.size}", "--set", f"train.seed={seed}",
            "--set", "data.num_workers=0", "--quiet", *extra]
    if (out / "last.safetensors").is_file():
        argv.append("--resume")
    call(train_main, argv)


def crop_side(size: int) -> int:
    """The cell classifier's crop side for fields of ``size`` px: a quarter of the side (64 px at 256), a multiple of 16."""
    return max(32, 16 * round(size / 4 / 16))


def train_cell_model(run: Run, seed: int, fold: int, out: Path, targets: Path | None, folds: Path | None = None,
                     augment: str | None = None) -> None:
    """``wsss-train --task cell`` of one fold (of ``folds``, default the run's) on the run's label maps (soft
    per-cell ``targets`` if given), with the crop augmentation ``augment`` (default: the "cell" lever's,
    :attr:`Levers.cell_augment_base`)."""
    from wsss.cli.train import main as train_main

    b = run.budget
    argv = ["--config", str(ROOT / b.cell_config), "--task", "cell", "--fold", str(fold), "--cache", str(run.cache),
            "--folds", str(folds or run.folds), "--masks", str(run.seg), "--out", str(out),
            "--epochs", str(b.cell_epochs),
            "--set", f"data.size={b.cell_size or crop_side(b.size)}", "--set", f"train.seed={seed}",
            "--set", f"data.train_augment={augment or run.levers.cell_augment_base}", "--quiet"]
    if targets is not None:
        argv += ["--soft-labels", str(targets)]
    if (out / "last.safetensors").is_file():
        argv.append("--resume")
    call(train_main, argv)


def infer(run: Run, stage: str, ckpt: Path, out: Path, fold: int, extra: Sequence[str], folds: Path | None = None
          ) -> None:
    """``wsss-infer --stage STAGE`` on fold ``fold``'s validation ids (of ``folds``, default the run's)."""
    from wsss.cli.infer import main as infer_main

    argv = ["--stage", stage, "--ckpt", str(ckpt), "--images", str(run.cache), "--masks", str(run.seg),
            "--out", str(out), "--fold", str(fold), "--folds", str(folds or run.folds), "--workers", "0",
            *[a.replace("{scales}", run.levers.scales) for a in extra]]
    call(infer_main, argv, ok=(0, 1))


def oof(run: Run, runs: Sequence[Path], out: Path, stage: int) -> None:
    """``wsss-oof`` of the folds' runs of one variant."""
    from wsss.cli.oof import main as oof_main

    call(oof_main, [*map(str, runs), "--folds", str(run.folds), "--out", str(out), "--stage", str(stage),
                    "--allow-missing"])


# --------------------------------------------------------------------------- optional levers (issue 13)


def available(what: str) -> bool:
    """Whether the cell classifier's commands exist: ``train`` (``wsss-train --task``), ``infer``
    (``wsss-infer --stage cell``), ``pseudo`` (``wsss.cli.pseudo``)."""
    if what == "train":
        from wsss.cli.train import build_parser as train_parser

        return any("--task" in a.option_strings for a in train_parser()._actions)
    if what == "infer":
        from wsss.cli.infer import build_parser as infer_parser

        stage = next(a for a in infer_parser()._actions if "--stage" in a.option_strings)
        try:
            stage.type("cell")
        except argparse.ArgumentTypeError:
            return False
        return True
    return importlib.util.find_spec("wsss.cli.pseudo") is not None


def cell_table_of(folder: Path) -> Path:
    """The per-cell table a ``wsss-oof`` (or ``wsss-infer``) run of the cell classifier wrote in ``folder``."""
    found = sorted(folder.glob("oof_cells_*.parquet")) or sorted(folder.glob("cells_*.parquet"))
    if not found:
        raise StepError(f"{folder}: no per-cell table")
    return found[0]


def cell_classifier(run: Run, seed: int, name: str, targets: Path | Sequence[Path] | None,
                    augment: str | None = None) -> tuple[Path, Path] | None:
    """Train and run the cell classifier on every fold (soft ``targets`` from ``wsss-pseudo``, one table or one
    per fold; else the image labels; crop augmentation ``augment``, see :func:`train_cell_model`), plain and with
    ``--tta d4``; return its OOF per-cell tables (plain, d4), or None when the commands are absent or fail
    (printed)."""
    if not (available("train") and available("infer")):
        print(f"[levers] {name}: skipped (wsss-train --task cell / wsss-infer --stage cell not available)", flush=True)
        return None
    from wsss.cli.oof import main as oof_main

    base = run.seed_dir(seed) / name
    try:
        for fold in range(run.budget.n_folds):
            step(run, f"seed{seed}/{name}/train{fold}",
                 lambda f=fold: train_cell_model(run, seed, f, base / f"run_fold{f}",
                                                 targets[f] if isinstance(targets, Sequence) else targets,
                                                 augment=augment))
            for tag, extra in CELL_VARIANTS.items():
                step(run, f"seed{seed}/{name}/infer{tag}{fold}",
                     lambda f=fold, g=tag, e=extra: infer(run, "cell", base / f"run_fold{f}",
                                                           base / f"infer{g}_fold{f}", f, e))
        for tag in CELL_VARIANTS:
            step(run, f"seed{seed}/{name}/oof{tag}", lambda g=tag: call(oof_main, [
                *[str(base / f"infer{g}_fold{f}") for f in range(run.budget.n_folds)], "--folds", str(run.folds),
                "--out", str(base / f"oof{g}"), "--stage", "cell", "--allow-missing"]))
        plain, d4 = (cell_table_of(base / f"oof{tag}") for tag in CELL_VARIANTS)
        return plain, d4
    except (StepError, SystemExit) as exc:
        print(f"[levers] {name}: skipped, the cell classifier's commands failed ({exc}); adapt the arguments in "
              f"scripts/levers.py cell_classifier() to their final form", flush=True)
        return None


def pair_folds(folds: pd.DataFrame, j: int, k: int) -> pd.DataFrame:
    """A folds table whose fold 0 is the union of folds ``j`` and ``k`` and whose other folds are renumbered
    ``1..K-2`` in order: ``wsss-train --fold 0`` on it trains on every fold but ``j`` and ``k``."""
    others = sorted(f for f in folds["fold"].unique() if f not in (j, k))
    number = {j: 0, k: 0, **{f: i + 1 for i, f in enumerate(others)}}
    out = folds.copy()
    out["fold"] = out["fold"].map(number).astype(int)
    return out


def nested_teacher_table(pairs: Mapping[tuple[int, int], pd.DataFrame], folds: pd.DataFrame, k: int) -> pd.DataFrame:
    """The teacher table for the student of fold ``k``: for every other fold ``j`` the cells of fold ``j``'s
    images from the teacher of the pair ``{j, k}`` (which trained on neither)."""
    fold_of = dict(zip(folds["ID"].astype(str), folds["fold"].astype(int)))
    parts = []
    for j in sorted(set(fold_of.values()) - {k}):
        cells = pairs[(min(j, k), max(j, k))]
        parts.append(cells[cells["image_id"].astype(str).map(fold_of) == j])
    return pd.concat(parts, ignore_index=True)


def nested_targets(run: Run, seed: int) -> list[Path]:
    """Leak-free soft targets of one pseudo round, one table per fold (``--pseudo-scheme nested``): per pair of
    folds one cell classifier on the image labels trained on the other folds and run with ``--tta d4`` on the
    pair's images (``OUT/seedS/nested1/pairJK``), then per fold ``k`` ``wsss-pseudo`` of
    :func:`nested_teacher_table` (``targetsK``)."""
    from wsss.data.folds import read_folds

    n = run.budget.n_folds
    if n < 3:
        raise StepError(f"--pseudo-scheme nested needs at least 3 folds, the run has {n}")
    folds = read_folds(run.folds)
    base = run.seed_dir(seed) / "nested1"
    base.mkdir(parents=True, exist_ok=True)
    pairs: dict[tuple[int, int], pd.DataFrame] = {}
    for j in range(n):
        for k in range(j + 1, n):
            csv, ckpt, out = base / f"folds_{j}{k}.csv", base / f"pair{j}{k}", base / f"pair{j}{k}_d4"
            atomic_write_bytes(csv, pair_folds(folds, j, k).to_csv(index=False).encode())
            step(run, f"seed{seed}/nested1/pair{j}{k}/train", lambda c=csv, o=ckpt: train_cell_model(
                run, seed, 0, o, None, folds=c))
            step(run, f"seed{seed}/nested1/pair{j}{k}/infer_d4", lambda c=csv, o=ckpt, d=out: infer(
                run, "cell", o, d, 0, CELL_VARIANTS["_d4"], folds=c))
            pairs[(j, k)] = read_cell_table(cell_table_of(out))
    targets = []
    for k in range(n):
        table = base / f"teacher_for{k}.parquet"
        nested_teacher_table(pairs, folds, k).to_parquet(table, index=False)
        targets.append(pseudo_step(run, seed, f"nested1/targets{k}", table))
    return targets


def pseudo_name(run: Run, round_: int) -> str:
    """Folder and step name of one pseudo-label round's targets (``pseudo1_cell``, ``pseudo1_cell_nested``); its
    classifier's is ``cell_`` + that."""
    nested = "_nested" if run.levers.pseudo_scheme == "nested" else ""
    return f"pseudo{round_}_{run.levers.pseudo_source}{nested}"


def pseudo_step(run: Run, seed: int, name: str, table: Path) -> Path:
    """The step ``seedS/NAME``: ``wsss-pseudo`` of the teacher ``table`` into ``OUT/seedS/NAME``; returns its
    per-cell targets (raises :class:`StepError` or ``SystemExit`` when it fails)."""
    from wsss.cli.pseudo import main as pseudo_main  # type: ignore[import-not-found]

    out = run.seed_dir(seed) / name
    step(run, f"seed{seed}/{name}",
         lambda: call(pseudo_main, [str(table), "--folds", str(run.folds), "--out", str(out)]))
    return out / "cell_targets.parquet"


def pseudo_targets(run: Run, seed: int, round_: int, table: Path) -> Path | None:
    """``wsss-pseudo`` soft targets from an OOF per-cell ``table`` (the round's teacher), or None (printed) when
    absent or failing."""
    try:
        return pseudo_step(run, seed, pseudo_name(run, round_), table)
    except (StepError, SystemExit) as exc:
        print(f"[levers] pseudo round {round_}: skipped, wsss-pseudo failed ({exc})", flush=True)
        return None


# --------------------------------------------------------------------------- one seed


def run_seed(run: Run, seed: int) -> dict[str, Path]:
    """Train every fold, run every inference variant, merge out of fold; return the OOF tables by name
    (``s{1,2}_{variant}``, ``images``, and ``rec_s{1,2}_{variant}`` for the reconstruction-loss lever)."""
    tables = fold_models(run, seed, "", [], {1: STAGE1_VARIANTS, 2: STAGE2_VARIANTS})
    tables["images"] = run.seed_dir(seed) / "stage1_plain" / "oof" / "oof_images_stage1.parquet"
    if run.levers.rec:  # every fold trained again with Puzzle-CAM's reconstruction-loss defaults
        tables.update(fold_models(run, seed, "rec", rec_settings(run.budget.epochs), {1: REC_VARIANTS, 2: REC_VARIANTS}))
    return tables


def fold_models(run: Run, seed: int, name: str, train_extra: Sequence[str],
                variants: dict[int, dict[str, list[str]]]) -> dict[str, Path]:
    """One Puzzle-CAM model per fold (``wsss-train`` options ``train_extra``), its inference variants per stage
    on the held-out fold, and their out-of-fold merges; returns the OOF cell tables as
    ``[{name}_]s{stage}_{variant}``. Files go to ``OUT/seedS[/name]/``, steps are named ``seedS[/name]/...``."""
    sd = run.seed_dir(seed) / name if name else run.seed_dir(seed)
    prefix = f"seed{seed}/{name}" if name else f"seed{seed}"
    folds = range(run.budget.n_folds)
    for fold in folds:
        ckpt = sd / f"run_fold{fold}"
        step(run, f"{prefix}/train{fold}", lambda f=fold, c=ckpt: train_model(run, seed, f, c, train_extra))
        for stage, stage_variants in variants.items():
            for variant, extra in stage_variants.items():
                step(run, f"{prefix}/stage{stage}_{variant}/fold{fold}",
                     lambda s=stage, v=variant, e=extra, f=fold, c=ckpt: infer(
                         run, str(s), c, sd / f"stage{s}_{v}" / f"fold{f}", f, e))
    tables: dict[str, Path] = {}
    for stage, stage_variants in variants.items():
        for variant in stage_variants:
            out = sd / f"stage{stage}_{variant}" / "oof"
            step(run, f"{prefix}/stage{stage}_{variant}/oof",
                 lambda s=stage, v=variant, o=out: oof(run, [sd / f"stage{s}_{v}" / f"fold{f}" for f in folds], o, s))
            tables[f"{name}_s{stage}_{variant}" if name else f"s{stage}_{variant}"] = out / f"oof_cells_stage{stage}.parquet"
    return tables


def combined(tables: Sequence[pd.DataFrame], weights: Sequence[float] | None = None) -> pd.DataFrame:
    """The project's default ensemble (weighted geometric mean; weights 1 by default) of tables on the same masks."""
    weights = [1.0] * len(tables) if weights is None else list(weights)
    return ensemble([Source(f"t{i}", t, weight=w) for i, (t, w) in enumerate(zip(tables, weights, strict=True))],
                    method="geom", match="id")


#: The levers, in the order they are reported (``cell`` and ``pseudo`` only when their commands exist).
LEVERS: tuple[str, ...] = ("rec", "tta", "ms", "context", "context_strong", "blend", "negative", "border", "small",
                           "cell", "cell_aug", "pseudo")


def lever_label(key: str, lv: Levers) -> str:
    """The printed name of a lever."""
    return {"tta": "tta d4", "ms": "multi-scale", "context": f"image context (mean^{lv.context_power:g})",
            "context_strong": f"image context (mean^{lv.context_power_strong:g})",
            "blend": f"blend {lv.blend_cell:g}/{lv.blend_image:g}",
            "negative": "negative suppression", "border": f"border x{lv.border_factor:g}",
            "small": f"small x{lv.small_factor:g} (<{lv.small_area:g} median)",
            "cell": f"cell classifier x{lv.cell_weight:g}",
            "cell_aug": f"cell classifier augmented x{lv.cell_weight:g}",
            "pseudo": f"pseudo rounds ({lv.pseudo_rounds}, {lv.pseudo_source}) x{lv.cell_weight:g}, "
                      f"{'leaky' if lv.pseudo_scheme == 'oof' else 'nested'}",
            "rec": f"rec loss masked, w {REC_MAX_WEIGHT:g} ramped"}[key]


@dataclass
class SeedTables:
    """The OOF tables of one seed: stage variants ``s{1,2}_{variant}``, the image table, cell classifier tables."""

    stages: dict[str, pd.DataFrame]
    images: pd.DataFrame
    cell: pd.DataFrame | None = None
    cell_d4: pd.DataFrame | None = None  # the same classifier with --tta d4 (set with it; the tta lever's)
    rounds: list[tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=list)  # per pseudo round: plain, d4
    cell_aug: pd.DataFrame | None = None  # trained with Levers.cell_augment (the cell_aug lever; see with_levers)
    cell_aug_d4: pd.DataFrame | None = None

    @property
    def pseudo(self) -> pd.DataFrame | None:
        """The last pseudo round's classifier (None before any round)."""
        return self.rounds[-1][0] if self.rounds else None

    @property
    def pseudo_d4(self) -> pd.DataFrame | None:
        """The last pseudo round's classifier with --tta d4."""
        return self.rounds[-1][1] if self.rounds else None


def with_levers(t: SeedTables, chosen: set[str], lv: Levers) -> pd.DataFrame:
    """The baseline ensemble with the ``chosen`` levers switched on (TTA variants, extra sources, post-processing)."""
    tta, ms = "tta" in chosen, "ms" in chosen
    if "rec" in chosen and "rec_s1_plain" in t.stages:  # the reconstruction-loss models (no multi-scale runs)
        variant = "d4" if tta else "plain"
        sources = [t.stages[f"rec_s1_{variant}"], t.stages[f"rec_s2_{variant}"]]
    else:
        s1 = t.stages["s1_" + ("d4ms" if tta and ms else "d4" if tta else "ms" if ms else "plain")]
        sources = [s1, t.stages["s2_d4" if tta else "s2_plain"]]
    cells: list[pd.DataFrame] = []  # the cell classifiers in the ensemble, each at the cell weight
    if "pseudo" in chosen and t.pseudo is not None:
        cells.append(t.pseudo_d4 if tta else t.pseudo)
    elif "cell" in chosen and t.cell is not None:
        cells.append(t.cell_d4 if tta else t.cell)
    if "cell_aug" in chosen and t.cell_aug is not None:
        cells.append(t.cell_aug_d4 if tta else t.cell_aug)
    weights = [1.0] * len(sources) + [lv.cell_weight] * len(cells)
    sources += cells
    context = lv.context_power * ("context" in chosen) + lv.context_power_strong * ("context_strong" in chosen)
    params = PostParams(context_power=context,
                        blend_cell=lv.blend_cell if "blend" in chosen else 1.0,
                        blend_image=lv.blend_image if "blend" in chosen else 0.0,
                        negative_suppression="negative" in chosen,
                        border_factor=lv.border_factor if "border" in chosen else 1.0,
                        small_factor=lv.small_factor if "small" in chosen else 1.0,
                        small_area=lv.small_area if "small" in chosen else 0.0)
    return postprocess(combined(sources, weights), params, t.images)


def seed_tables(run: Run, seed: int, paths: dict[str, Path]) -> SeedTables:
    """Read one seed's OOF tables; run the cell classifiers and the pseudo-label rounds when they exist."""
    t = SeedTables(stages={k: read_cell_table(v) for k, v in paths.items() if k != "images"},
                   images=pd.read_parquet(paths["images"]))
    augmented = augmented_classifier(run, seed)
    if augmented is not None:
        t.cell_aug, t.cell_aug_d4 = (read_cell_table(p) for p in augmented)
    return pseudo_rounds(run, seed, t)


def augmented_classifier(run: Run, seed: int) -> tuple[Path, Path] | None:
    """The ``cell_aug`` lever's classifier (trained with :attr:`Levers.cell_augment`) on every fold: its OOF tables
    (plain, d4), or None when the lever is off or its commands failed (printed)."""
    if not run.levers.cell_augment:
        return None
    return cell_classifier(run, seed, "cell_aug", None, augment=run.levers.cell_augment)


def pseudo_rounds(run: Run, seed: int, t: SeedTables) -> SeedTables:
    """Run the (flips-only) cell classifier and the pseudo-label rounds it teaches into ``t`` (returned), as far as
    their commands work."""
    cell = cell_classifier(run, seed, "cell", None)
    if cell is None:
        print("[levers] pseudo rounds: skipped (they need the cell classifier)", flush=True)
        return t
    t.cell, t.cell_d4 = (read_cell_table(p) for p in cell)
    teacher = teacher_table(run, seed, t, "cell", cell[1])
    if run.levers.pseudo_rounds and not available("pseudo"):
        print("[levers] pseudo rounds: skipped (wsss-pseudo not available)", flush=True)
        return t
    for round_ in range(1, run.levers.pseudo_rounds + 1):
        targets: Path | list[Path] | None
        if run.levers.pseudo_scheme == "nested":
            try:
                targets = nested_targets(run, seed)
            except (StepError, SystemExit) as exc:
                print(f"[levers] nested pseudo round: skipped ({exc})", flush=True)
                targets = None
        else:
            targets = pseudo_targets(run, seed, round_, teacher)
        table = cell_classifier(run, seed, f"cell_{pseudo_name(run, round_)}", targets) if targets else None
        if table is None:
            break
        t.rounds.append((read_cell_table(table[0]), read_cell_table(table[1])))
        teacher = teacher_table(run, seed, t, "pseudo", table[1], round_)
    return t


def teacher_table(run: Run, seed: int, t: SeedTables, lever: str, d4_table: Path, round_: int = 0) -> Path:
    """The OOF per-cell table the next pseudo round learns from: with ``--pseudo-source cell`` the latest cell
    classifier's D4 table ``d4_table`` itself; with ``ensemble`` the baseline ensemble with that classifier
    (``lever``: ``cell`` or ``pseudo``), written to ``OUT/seedS/ensemble_{cell|pseudoR}.parquet``."""
    if run.levers.pseudo_source == "cell":
        return d4_table
    path = run.seed_dir(seed) / (f"ensemble_pseudo{round_}.parquet" if round_ else "ensemble_cell.parquet")
    with_levers(t, {lever}, run.levers).to_parquet(path, index=False)
    return path


def present_levers(t: SeedTables) -> list[str]:
    """The levers this seed can measure (the cell classifier and pseudo rounds need their commands)."""
    return [k for k in LEVERS if (k != "cell" or t.cell is not None) and (k != "pseudo" or t.pseudo is not None)
            and (k != "cell_aug" or t.cell_aug is not None) and (k != "rec" or "rec_s1_plain" in t.stages)]


def methods(run: Run, t: SeedTables) -> dict[str, pd.DataFrame]:
    """Every method's per-cell table of one seed (see the module doc)."""
    lv = run.levers
    out = {"naive": naive_cells_from_images(t.stages["s1_plain"], t.images), "stage1": t.stages["s1_plain"],
           "stage2": t.stages["s2_plain"], BASELINE: with_levers(t, set(), lv), "stage1 d4": t.stages["s1_d4"],
           "stage1 multi-scale": t.stages["s1_ms"], "stage1 d4+multi-scale": t.stages["s1_d4ms"],
           "stage2 d4": t.stages["s2_d4"]}
    if "rec_s1_plain" in t.stages:
        out["rec loss: stage1"], out["rec loss: stage2"] = t.stages["rec_s1_plain"], t.stages["rec_s2_plain"]
    if t.cell is not None:
        out["cell classifier"], out["cell classifier d4"] = t.cell, t.cell_d4
    if t.cell_aug is not None:
        out["cell classifier augmented"], out["cell classifier augmented d4"] = t.cell_aug, t.cell_aug_d4
    for round_, (plain, d4) in enumerate(t.rounds, start=1):
        tag = "leaky" if lv.pseudo_scheme == "oof" else "nested"
        out[f"cell classifier, pseudo round {round_} ({tag})"] = plain
        out[f"cell classifier, pseudo round {round_}, d4 ({tag})"] = d4
    keys = present_levers(t)
    for key in keys:
        out[f"+{lever_label(key, lv)}"] = with_levers(t, {key}, lv)
    out["all levers"] = with_levers(t, set(keys), lv)
    return out


def scores_digest(run: Run) -> str:
    """What the scores of a seed depend on beyond its tables: the levers' settings and which optional
    commands exist (so a re-run after the cell classifier is merged scores it)."""
    import hashlib

    key = {"version": SCORES_VERSION, "levers": asdict(run.levers), "available": [available(w) for w in ("train", "infer", "pseudo")]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def evaluate_seed(run: Run, seed: int, tables: Callable[[], SeedTables], ids: list[str]) -> pd.DataFrame:
    """Scores of every method and both references for one seed (cached in ``OUT/seedS/scores_DIGEST.csv``;
    ``tables()`` gives the seed's tables, called only when the scores are not cached)."""
    cached = run.seed_dir(seed) / f"scores_{scores_digest(run)}.csv"
    if cached.is_file():
        print(f"[levers] seed {seed}: scores done before, read back", flush=True)
        return pd.read_csv(cached)
    truth = truth_from_label_dir(run.synth, ids)
    preds = {name: preds_from_cell_table(table) for name, table in methods(run, tables()).items()}
    preds.update(references(preds["stage1"], truth))
    frame = score_all(seed, preds, truth)
    atomic_write_bytes(cached, frame.to_csv(index=False).encode())
    return frame


def score_all(seed: int, preds: dict, truth: dict) -> pd.DataFrame:
    """:func:`summary_scores` of every prediction, one row each, with a progress line."""
    hetero = heterogeneous_ids(truth)
    rows = []
    for name, pred in preds.items():
        start = time.perf_counter()
        rows.append({"seed": seed, "method": name, **summary_scores(pred, truth, hetero)})
        print(f"[levers] seed {seed}: scored {name} ({time.perf_counter() - start:.1f} s)", flush=True)
    return pd.DataFrame(rows)


#: Levers whose out-of-fold scores are optimistic by construction, reported but never chosen: with
#: ``--pseudo-scheme oof`` a pseudo round's student for fold k learns from targets that models trained on fold
#: k's images wrote, so what those models learned from fold k's labels reaches the student (measured in
#: docs/levers.md: a leak-free nested round on one fold gained nothing where the OOF round gained +0.067
#: strict). ``--pseudo-scheme nested`` is not leaky (:func:`leaky_levers`).
LEAKY: frozenset[str] = frozenset({"pseudo"})


def leaky_levers(run: Run) -> frozenset[str]:
    """The levers of :data:`LEAKY` that are leaky in this run (the pseudo rounds only with the ``oof`` scheme)."""
    return LEAKY if run.levers.pseudo_scheme == "oof" else LEAKY - {"pseudo"}


def gain(run: Run, current: pd.DataFrame, trial: pd.DataFrame) -> float | None:
    """The mean gain of ``trial`` over ``current`` (rows per seed) by the run's rule (:data:`SELECTIONS`), or None
    when it does not hold in every seed: ``both``, the mean of official and strict on all images higher;
    ``official``, the official score higher and the strict one not lower in every seed."""
    cur, new = current.set_index("seed"), trial.set_index("seed")
    if run.select == "both":
        delta = seed_deltas(cur, new, BOTH)
        return float(delta.mean()) if verdict(delta) == "helps" else None
    official, strict = seed_deltas(cur, new, "official all"), seed_deltas(cur, new, "strict all")
    return float(official.mean()) if verdict(official) == "helps" and verdict(strict) != "hurts" else None


def select_levers(run: Run, candidates: Sequence[str], score_of: Callable[[frozenset[str]], pd.DataFrame]
                  ) -> list[str]:
    """Greedy forward selection of the ``helping levers``: from the baseline (no lever), add the candidate with
    the largest :func:`gain` that holds in every seed, until none does. ``score_of(keys)`` gives the rows
    (one per seed, :func:`summary_scores` columns) of the baseline with the levers ``keys`` on. Levers of
    :data:`LEAKY` are never chosen (printed). A lever that replaces another when both are on (the pseudo rounds
    replace the cell classifier in :func:`with_levers`) is thereby measured against it. Chosen on the same data
    as the table: optimistic."""
    leaky = leaky_levers(run)
    for key in (k for k in candidates if k in leaky):
        print(f"[levers] +{lever_label(key, run.levers)}: never chosen (its out-of-fold scores are leaky: see LEAKY)",
              flush=True)
    pool = [k for k in candidates if k not in leaky]
    chosen: list[str] = []
    current = score_of(frozenset())
    while True:
        best: tuple[float, str, pd.DataFrame] | None = None
        for key in (k for k in pool if k not in chosen):
            trial = score_of(frozenset([*chosen, key]))
            g = gain(run, current, trial)
            if g is not None and (best is None or g > best[0]):
                best = (g, key, trial)
        if best is None:
            return chosen
        chosen.append(best[1])
        current = best[2]
        print(f"[levers] chosen: +{lever_label(best[1], run.levers)} (mean gain {best[0]:+.4f} by --select "
              f"{run.select})", flush=True)


def combination_scores(run: Run, seed: int, tables: Callable[[], SeedTables], ids: list[str], keys: frozenset[str]
                       ) -> pd.DataFrame:
    """Scores of the baseline with the levers ``keys`` on, for one seed (cached in
    ``OUT/seedS/scores_DIGEST_helping_KEYS.csv``; ``tables()`` is called only when they are not)."""
    name = "-".join(k for k in LEVERS if k in keys) or "none"
    cached = run.seed_dir(seed) / f"scores_{scores_digest(run)}_helping_{name}.csv"
    if cached.is_file():
        return pd.read_csv(cached)
    truth = truth_from_label_dir(run.synth, ids)
    frame = score_all(seed, {HELPING: preds_from_cell_table(with_levers(tables(), set(keys), run.levers))}, truth)
    atomic_write_bytes(cached, frame.to_csv(index=False).encode())
    return frame


# --------------------------------------------------------------------------- the table


def aggregate(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (sample sd; 0 with one seed) over seeds, per method, in first-seen order."""
    keys = [c for c in scores.columns if c not in ("seed", "method")]
    seen = list(dict.fromkeys(scores["method"]))
    order = [m for m in seen if m not in REFERENCES] + [m for m in seen if m in REFERENCES]
    grouped = scores.groupby("method", sort=False)[keys]
    mean, sd = grouped.mean().loc[order], grouped.std(ddof=1).fillna(0.0).loc[order]
    return mean.add_suffix(" mean").join(sd.add_suffix(" sd")).reset_index()


def metric(scores: pd.DataFrame, key: str) -> pd.Series:
    """One score column of :func:`summary_scores` rows, or :data:`BOTH`: the mean of official and strict, all images."""
    if key == BOTH:
        return (scores["official all"] + scores["strict all"]) / 2
    return scores[key]


def present_in(scores: pd.DataFrame, run: Run) -> list[str]:
    """The levers scored alone in every seed of ``scores`` (their ``+label`` rows), in :data:`LEVERS` order."""
    seeds = scores["seed"].nunique()
    counts = scores["method"].value_counts()
    return [k for k in LEVERS if counts.get(f"+{lever_label(k, run.levers)}", 0) == seeds]


def seed_deltas(before: pd.DataFrame, after: pd.DataFrame, key: str) -> np.ndarray:
    """Per seed, ``after`` minus ``before`` in :func:`metric` ``key`` (both frames indexed by seed)."""
    return (metric(after, key) - metric(before.loc[after.index], key)).to_numpy(dtype=float)


def verdict(delta: np.ndarray) -> str:
    """``helps`` when every seed's change is above 0, ``hurts`` when every one is below, else ``no clear gain``."""
    return "helps" if (delta > 0).all() else "hurts" if (delta < 0).all() else "no clear gain"


def lever_deltas(scores: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per lever (``+...`` and ``all levers``) the mean change against ``baseline`` and the verdict per metric."""
    base = scores[scores["method"] == baseline].set_index("seed")
    rows = []
    for name in dict.fromkeys(scores["method"]):
        if not (name.startswith("+") or name in ("all levers", HELPING)):
            continue
        this = scores[scores["method"] == name].set_index("seed")
        row: dict[str, object] = {"lever": name}
        for key in VERDICT_KEYS:
            delta = seed_deltas(base, this, key)
            row[f"{key} delta"] = float(np.mean(delta))
            row[f"{key} verdict"] = verdict(delta)
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(summary: pd.DataFrame, deltas: pd.DataFrame, run: Run, n_all: int, n_hetero: int,
                 helping: Sequence[str] = ()) -> str:
    """The printed table: methods x (protocol, subset, classes) as mean +- sd, then the levers' verdicts."""
    b = run.budget
    cols = [summary_key(p, s, c) for p in ("official", "strict") for s, c in
            (("all", ""), ("heterogeneous", ""), ("all", " 0-17"))]
    names = {summary_key(p, s, c): f"{p[:3]} {'het' if s == 'heterogeneous' else 'all'}{c}" for p in
             ("official", "strict") for s, c in (("all", ""), ("heterogeneous", ""), ("all", " 0-17"))}
    width = max(len(m) for m in summary["method"]) + 1
    lines = [f"per-cell mAP at mask IoU 0.6, out of fold ({n_all} images, {n_hetero} heterogeneous; {b.size} px, "
             f"variability {b.variability:g}, {b.n_folds} folds, {b.epochs} epochs, {Path(b.config).stem}); "
             f"mean +- sd over seeds {','.join(map(str, b.seeds))}; group ties",
             f"{'method':<{width}}" + "".join(f"{names[c]:>17}" for c in cols)]
    for row in summary.to_dict("records"):
        lines.append(f"{row['method']:<{width}}" + "".join(f"{row[c + ' mean']:>9.4f} +-{row[c + ' sd']:.3f}"
                                                           for c in cols))
    lines.append(f"{HELPING} = {' + '.join(helping) or 'none'} (--select {run.select}; chosen on these data: "
                 f"optimistic); references on the stage-1 masks")
    lines.append(f"\nlevers against '{BASELINE}' (mean change; helps = higher in every seed, hurts = lower in every seed)")
    lines.append(f"{'lever':<{width}}" + "".join(f"{k:>34}" for k in VERDICT_KEYS))
    for row in deltas.to_dict("records"):
        lines.append(f"{row['lever']:<{width}}" + "".join(
            f"{row[k + ' delta']:>+20.4f} {row[k + ' verdict']:>13}" for k in VERDICT_KEYS))
    return "\n".join(lines)


def check_settings(run: Run) -> None:
    """Refuse a folder holding a run with other data or training settings (the seeds may grow) or whose augmented
    cell classifier was trained with another ``--cell-augment`` file; record them."""
    path = run.out / "settings.json"
    now = {**asdict(run.budget), "seeds": None, "data_seed": run.data_seed}
    levers = asdict(run.levers)
    if path.is_file():
        before = json.loads(path.read_text())
        before_key = {**before.get("budget", {}), "seeds": None, "data_seed": before.get("data_seed")}
        diff = sorted(k for k in now if str(now[k]) != str(before_key.get(k)))
        augment = before.get("levers", {}).get("cell_augment")
        if augment and run.levers.cell_augment and augment != run.levers.cell_augment:
            diff.append("cell_augment")
        if diff:
            raise StepError(f"{run.out}: holds a run with other settings ({', '.join(diff)} differ); use a new --out")
        levers["cell_augment"] = run.levers.cell_augment or augment  # a run without the lever keeps the file
    settings = {"budget": {**asdict(run.budget), "seeds": list(run.budget.seeds)}, "levers": levers,
                "data_seed": run.data_seed}
    atomic_write_bytes(path, json.dumps(settings, indent=2).encode())


def run_part(run: Run, part: str, start: float) -> int:
    """``--part models|cell|cell_aug|pseudo``: the data steps, then only that part's steps for every seed of the run;
    no table."""
    try:
        with show_progress():
            prepare_data(run)
            for seed in run.budget.seeds:
                if part == "models":
                    run_seed(run, seed)
                elif part == "pseudo":
                    pseudo_part(run, seed)
                elif part == "cell_aug":
                    if not run.levers.cell_augment:
                        raise StepError("--part cell_aug: the augmented classifier is off (--cell-augment none)")
                    if augmented_classifier(run, seed) is None:
                        raise StepError(f"seed {seed}: the augmented cell classifier did not run (printed above)")
                elif cell_classifier(run, seed, "cell", None) is None:
                    raise StepError(f"seed {seed}: the cell classifier did not run (printed above)")
    except StepError as exc:
        print(f"levers: error: {exc}", file=sys.stderr)
        return 1
    print(f"[levers] part {part} of seeds {','.join(map(str, run.budget.seeds))} done in "
          f"{time.perf_counter() - start:.0f} s; run without --part for the table", flush=True)
    return 0


def pseudo_part(run: Run, seed: int) -> None:
    """The pseudo-label rounds of one seed (with the cell classifier first); the models too when the teacher is
    the ensemble (it reads stage 1 and 2)."""
    if run.levers.pseudo_source == "ensemble":
        t = seed_tables(run, seed, run_seed(run, seed))
    else:
        empty = SeedTables(stages={}, images=pd.DataFrame())
        t = pseudo_rounds(run, seed, empty)
    if len(t.rounds) < run.levers.pseudo_rounds:
        raise StepError(f"seed {seed}: {len(t.rounds)} of {run.levers.pseudo_rounds} pseudo rounds ran (printed above)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step (resumable) and print the lever table."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pseudo_scheme == "nested" and (args.pseudo_rounds > 1 or args.pseudo_source != "cell"):
        parser.error("--pseudo-scheme nested runs one round with --pseudo-source cell (its teachers are classifiers "
                     "on the image labels)")
    if args.context_power == args.context_power_strong:
        parser.error(f"--context-power and --context-power-strong are both {args.context_power:g}: the two image-context "
                     "levers need different powers")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run = run_from_args(args)
    if len(run.budget.seeds) < 2 and args.part == "all":
        print("[levers] warning: one seed gives no spread; use --seeds with at least 2", flush=True)
    run.out.mkdir(parents=True, exist_ok=True)
    try:
        check_settings(run)
    except StepError as exc:
        print(f"levers: error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    if args.part != "all":
        return run_part(run, args.part, start)
    try:
        with show_progress():
            ids = prepare_data(run)
            paths = {seed: run_seed(run, seed) for seed in run.budget.seeds}
            read = functools.cache(lambda seed: seed_tables(run, seed, paths[seed]))  # once per seed, when needed
            scores = pd.concat([evaluate_seed(run, seed, functools.partial(read, seed), ids)
                                for seed in run.budget.seeds], ignore_index=True)

            def score_of(keys: frozenset[str]) -> pd.DataFrame:
                return pd.concat([combination_scores(run, seed, functools.partial(read, seed), ids, keys)
                                  for seed in run.budget.seeds], ignore_index=True)

            keys = select_levers(run, present_in(scores, run), score_of)
            print(f"[levers] helping levers (greedy, --select {run.select}, every seed): "
                  f"{', '.join(lever_label(k, run.levers) for k in keys) or 'none'}", flush=True)
            scores = pd.concat([scores, score_of(frozenset(keys))], ignore_index=True)
    except StepError as exc:
        print(f"levers: error: {exc}", file=sys.stderr)
        return 1
    truth = truth_from_label_dir(run.synth, ids)
    summary, deltas = aggregate(scores), lever_deltas(scores)
    scores.to_csv(run.out / "levers_scores.csv", index=False)
    summary.to_csv(run.out / "levers_summary.csv", index=False)
    deltas.to_csv(run.out / "levers_deltas.csv", index=False)
    helping = [lever_label(k, run.levers) for k in keys]
    print(format_table(summary, deltas, run, len(truth), len(heterogeneous_ids(truth)), helping))
    print(f"[levers] total {time.perf_counter() - start:.0f} s; tables in {run.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
