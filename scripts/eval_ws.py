"""Watershed model vs the classical segmenter on the same images: cell AP@0.6, and their fusions.

Two modes:

* ``synth DIR --model CKPT``: a ``wsss-synth`` folder held out from training; every image is
  segmented at ``--size`` by ``hpa_seg`` and by the model (TTA off/on, markers from the model's
  cores or from the classical nuclei) and scored against ``DIR/masks/{ID}_cells.png``; the
  segmentation-level fusions (:func:`wsss.ensemble.fuse_segmentations`: agreed cells kept, the rest
  from a primary; agreed masks from the other segmenter or the intersection; with agreed masks taken
  from the primary the fusion is the primary itself) are scored too;
* ``real --model CKPT``: the real fields of view of ``../shared/data/hpa_sample`` (reference masks
  from HPA-Cell-Segmentation); maps are resized to the reference's size by nearest neighbour.

Prints per-method pooled AP (tp / (tp + fp + fn) over all images), mean per-image AP and recall.

    python scripts/eval_ws.py synth /work/wsdata/held512 --model RUN/best.safetensors
    python scripts/eval_ws.py real --model RUN/best.safetensors
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "hpa_sample"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("synth", "real"))
    p.add_argument("dir", type=Path, nargs="?", default=None, help="wsss-synth folder (synth) or hpa_sample (real)")
    p.add_argument("--model", type=Path, required=True, help="wsss-seg-train checkpoint")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iou", type=float, default=0.6)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--ids", type=Path, default=None, help="only the ids of this file (one per line), e.g. a validation fold")
    p.add_argument("--quick", action="store_true", help="only hpa_seg, ws and ws+tta (e.g. to tune --post on validation ids)")
    p.add_argument("--post", action="append", default=[], metavar="NAME=VALUE", help="post-processing override")
    return p


def _images(args: argparse.Namespace) -> tuple[Path, list[str], Callable[[str], np.ndarray]]:
    from wsss.data.io import list_image_ids
    from wsss.data.synth import read_truth
    from wsss.masks import read_label_file

    if args.mode == "synth":
        root = args.dir
        return root / "train", list_image_ids(root / "train"), lambda i: read_truth(root, i)[0]
    root = args.dir or DEFAULT_REAL
    return (root / "images", list_image_ids(root / "images"),
            lambda i: read_label_file(root / "masks" / f"{i}_predictedmask.png"))


def _score(maps: dict, ref: np.ndarray, iou: float, results: dict, image_id: str, resize, agreement) -> None:
    """Score every map of one image against ``ref``; print the classical and the TTA model's AP."""
    line = []
    for name, cells in maps.items():
        a = agreement(resize(cells, *ref.shape), ref, iou)
        results.setdefault(name, []).append(a)
        if name in ("hpa_seg", "ws+tta"):
            line.append(f"{name} AP {a.ap:.3f} ({a.n_pred}/{a.n_ref})")
    print(f"{image_id}: " + ", ".join(line), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table."""
    import cv2
    import torch

    from hpa_seg import segment
    from hpa_seg.evaluate import agreement
    from hpa_seg.pipeline import segment_with_model, to_working_scale
    from wsss.data.io import read_rgby
    from wsss.ensemble import fuse_segmentations
    from wsss.masks import resize_labels
    from wsss.watershed.predict import load_watershed, post_params, segment_image

    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    images, ids, truth = _images(args)
    if args.ids is not None:
        wanted = {line.strip() for line in args.ids.read_text().splitlines() if line.strip()}
        ids = [i for i in ids if i in wanted]
    if args.limit:
        ids = ids[: args.limit]
    net, cfg = load_watershed(args.model)
    params = post_params(cfg, {k: float(v) for k, v in (item.split("=", 1) for item in args.post)})
    results: dict[str, list] = {}
    for image_id in ids:
        rgby = read_rgby(images, image_id)
        ref = truth(image_id)
        small = to_working_scale(rgby, args.size)
        maps = {"hpa_seg": segment(small, None)[0]}
        maps["ws"] = segment_image(net, cfg, small, None, tta=False, params=params)[0]
        maps["ws+tta"] = segment_image(net, cfg, small, None, tta=True, params=params)[0]
        if args.quick:
            _score(maps, ref, args.iou, results, image_id, resize_labels, agreement)
            continue
        maps["ws+tta nuclei markers"] = segment_with_model(small, net, cfg, None, tta=True, markers="nuclei")[0]
        maps["ws+tta (cells with a nucleus)"] = segment_with_model(small, net, cfg, None, tta=True, markers="cores")[0]
        for ws_name in ("ws+tta", "ws+tta nuclei markers"):
            for agreed in ("other", "intersection"):
                maps[f"fuse primary={ws_name} agreed={agreed}"] = fuse_segmentations(
                    maps[ws_name], maps["hpa_seg"], args.iou, agreed)[0]
                maps[f"fuse primary=hpa_seg ({ws_name}) agreed={agreed}"] = fuse_segmentations(
                    maps["hpa_seg"], maps[ws_name], args.iou, agreed)[0]
        _score(maps, ref, args.iou, results, image_id, resize_labels, agreement)
    print(f"\n| method ({args.mode}, {len(ids)} images, {args.size} px) | pooled AP@{args.iou} | mean AP | mean recall | "
          f"tp | fp | fn |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        tp, fp, fn = (sum(getattr(a, k) for a in rows) for k in ("tp", "fp", "fn"))
        print(f"| {name} | {tp / max(tp + fp + fn, 1):.3f} | {np.mean([a.ap for a in rows]):.3f} | "
              f"{np.mean([a.recall for a in rows]):.3f} | {tp} | {fp} | {fn} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
