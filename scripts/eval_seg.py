"""Agreement of the weight-free segmentation with reference masks, per image.

Two modes:

* ``real``: the real HPA fields of view in ``../shared/data/hpa_sample`` (reference masks from
  HPA-Cell-Segmentation). Each image is segmented at every ``--sizes`` value (0 = full
  resolution); the cell map is resized to the reference's resolution by nearest neighbour and
  matched at IoU 0.6. Prints AP (tp / (tp + fp + fn)), recall (matched reference cells /
  reference cells), precision, mean IoU of matched cells and the seconds spent.
* ``synth DIR``: a ``wsss-synth`` output folder; cells and nuclei are scored against the
  ground-truth maps ``DIR/masks/{ID}_cells.png`` and ``_nuclei.png`` the same way.

``--pictures DIR`` writes one agreement picture per image and size (matched green, extra
magenta, missed reference cells yellow).

    python scripts/eval_seg.py real [--data ../shared/data/hpa_sample] [--sizes 512 0]
    python scripts/eval_seg.py synth /tmp/synth [--size 512]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "hpa_sample"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    real = sub.add_parser("real", help="agreement with HPA-Cell-Segmentation masks")
    real.add_argument("--data", type=Path, default=DEFAULT_REAL)
    real.add_argument("--sizes", type=int, nargs="+", default=[512, 0], help="working sizes (0 = full)")
    syn = sub.add_parser("synth", help="AP against wsss-synth ground truth")
    syn.add_argument("dir", type=Path)
    syn.add_argument("--size", type=int, default=512, help="working size (0 = full)")
    for sp in (real, syn):
        sp.add_argument("--iou", type=float, default=0.6)
        sp.add_argument("--pictures", type=Path, default=None, help="folder for agreement pictures")
        sp.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="override a SegParams field")
    return p


def _params(items: list[str]):
    from hpa_seg.params import SegParams

    kw = {}
    for item in items:
        name, _, value = item.partition("=")
        kw[name] = float(value)
    return SegParams().with_overrides(**kw)


def _picture(path: Path, rgby: np.ndarray, pred: np.ndarray, ref: np.ndarray, iou: float, title: str) -> None:
    from hpa_seg.overlay import draw_agreement
    from hpa_seg.pipeline import to_working_scale
    from wsss.viz import save_png

    small = to_working_scale(rgby, 768)
    save_png(path, draw_agreement(small, pred, ref, iou, title=title))


def eval_real(args: argparse.Namespace) -> int:
    """Per-image agreement with the reference masks at each working size."""
    from hpa_seg import segment
    from hpa_seg.evaluate import agreement
    from wsss.masks import read_label_file, resize_labels
    from wsss.data.io import list_image_ids, read_rgby

    images = args.data / "images"
    if not images.is_dir():
        print(f"eval_seg: {images}: not a folder", file=sys.stderr)
        return 2
    params = _params(args.param)
    print(f"| id | side | size | ref cells | pred cells | matched | AP@{args.iou} | recall | precision | mean IoU | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    summary: dict[int, list] = {s: [] for s in args.sizes}
    for image_id in list_image_ids(images):
        rgby = read_rgby(images, image_id)
        ref = read_label_file(args.data / "masks" / f"{image_id}_predictedmask.png")
        for size in args.sizes:
            t0 = time.perf_counter()
            cells, _ = segment(rgby, size or None, params)
            dt = time.perf_counter() - t0
            a = agreement(resize_labels(cells, *ref.shape), ref, args.iou)
            summary[size].append(a)
            label = size or "full"
            print(f"| {image_id[:8]} | {rgby.shape[0]} | {label} | {a.n_ref} | {a.n_pred} | {a.tp} | {a.ap:.3f} | "
                  f"{a.recall:.3f} | {a.precision:.3f} | {a.mean_iou:.3f} | {dt:.2f} |")
            if args.pictures:
                _picture(args.pictures / f"{image_id}_{label}.png", rgby, cells, ref, args.iou,
                         f"{image_id[:8]} @{label}: AP {a.ap:.2f} recall {a.recall:.2f}")
    _print_summary({("full" if s == 0 else s): v for s, v in summary.items()})
    return 0


def _print_summary(groups: dict) -> None:
    for name, rows in groups.items():
        if not rows:
            continue
        tp = sum(a.tp for a in rows)
        fp = sum(a.fp for a in rows)
        fn = sum(a.fn for a in rows)
        mean_ap = float(np.mean([a.ap for a in rows]))
        mean_rec = float(np.mean([a.recall for a in rows]))
        pooled = tp / max(tp + fp + fn, 1)
        print(f"{name}: images {len(rows)}, mean AP {mean_ap:.3f}, mean recall {mean_rec:.3f}, "
              f"pooled AP {pooled:.3f} (tp {tp}, fp {fp}, fn {fn}), pooled recall {tp / max(tp + fn, 1):.3f}")


def eval_synth(args: argparse.Namespace) -> int:
    """Cell and nucleus agreement with the synthetic ground truth."""
    from hpa_seg import segment
    from hpa_seg.evaluate import agreement
    from wsss.masks import resize_labels
    from wsss.data.io import list_image_ids, read_rgby
    from wsss.data.synth import read_truth

    images = args.dir / "train"
    if not images.is_dir():
        print(f"eval_seg: {images}: not a folder (expected a wsss-synth output)", file=sys.stderr)
        return 2
    params = _params(args.param)
    cells_rows, nuc_rows = [], []
    times = []
    print(f"| id | side | true cells | pred cells | cell AP@{args.iou} | cell recall | true nuclei | pred nuclei | "
          f"nucleus AP@{args.iou} | nucleus recall |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for image_id in list_image_ids(images):
        rgby = read_rgby(images, image_id)
        true_cells, true_nuc = read_truth(args.dir, image_id)
        t0 = time.perf_counter()
        cells, nuclei = segment(rgby, args.size or None, params)
        times.append(time.perf_counter() - t0)
        a = agreement(resize_labels(cells, *true_cells.shape), true_cells, args.iou)
        b = agreement(resize_labels(nuclei, *true_nuc.shape), true_nuc, args.iou)
        cells_rows.append(a)
        nuc_rows.append(b)
        print(f"| {image_id} | {rgby.shape[0]} | {a.n_ref} | {a.n_pred} | {a.ap:.3f} | {a.recall:.3f} | "
              f"{b.n_ref} | {b.n_pred} | {b.ap:.3f} | {b.recall:.3f} |")
        if args.pictures:
            _picture(args.pictures / f"{image_id}_cells.png", rgby, cells, true_cells, args.iou,
                     f"{image_id} cells AP {a.ap:.2f}")
    _print_summary({"cells": cells_rows, "nuclei": nuc_rows})
    print(f"segmentation time at {args.size or 'full'}: {np.mean(times):.4f} s/img (mean of {len(times)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the chosen evaluation."""
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    return eval_real(args) if args.mode == "real" else eval_synth(args)


if __name__ == "__main__":
    raise SystemExit(main())
