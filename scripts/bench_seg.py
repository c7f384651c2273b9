"""Speed of the weight-free segmentation: seconds per image at 512 and at full resolution.

Runs in one process with every numerical library limited to one thread, on the same images for
both scales, in one run, and prints the per-image times, their means and the ratio
full / 512. Reading the PNG files is not timed; the 512 figure includes the resize from the
original image (``segment(rgby_full, size=512)``), and is also given without it.

    python scripts/bench_seg.py [--images ../shared/data/hpa_sample/images] [--repeat 3]
    python scripts/bench_seg.py --model RUN/best.safetensors   # also the watershed model, as ratios

With ``--model`` (a ``wsss-seg-train`` checkpoint, torch on one thread) every image is instead timed
at the working size through the network without and with flip TTA and through the post-processing
alone, each printed as a ratio to the classical segmenter measured in the same run (CPU seconds).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "hpa_sample" / "images"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="Kaggle-layout folder")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per image and scale (median kept)")
    p.add_argument("--size", type=int, default=512, help="working size")
    p.add_argument("--limit", type=int, default=0, help="use only the first N ids (0 = all)")
    p.add_argument("--model", type=Path, default=None, help="a wsss-seg-train checkpoint to time against hpa_seg")
    return p


def timed(fn, repeat: int) -> tuple[float, float]:
    """Median wall and CPU (this process) seconds of ``fn()`` over ``repeat`` runs, after a warm-up.

    CPU time is the fairer figure when other jobs share the cores; both are printed.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = build_parser().parse_args(argv)
    cv2.setNumThreads(1)
    from hpa_seg import segment
    from hpa_seg.pipeline import to_working_scale
    from wsss.data.io import list_image_ids, read_rgby

    if not args.images.is_dir():
        print(f"bench_seg: {args.images}: not a folder", file=sys.stderr)
        return 2
    ids = list_image_ids(args.images)
    if args.limit:
        ids = ids[: args.limit]
    print(f"images: {args.images} ({len(ids)}), repeat {args.repeat}, threads: cv2 {cv2.getNumThreads()}, "
          f"OMP {os.environ['OMP_NUM_THREADS']}")
    if args.model is not None:
        bench_model(args, ids)
        return 0
    print(f"{'id':<38} {'side':>5} {'cells@' + str(args.size):>9} {'cells@full':>10} {'resize s':>9} "
          f"{'seg@' + str(args.size) + ' s':>10} {'total@' + str(args.size) + ' s':>12} {'(cpu)':>7} {'full s':>8} "
          f"{'(cpu)':>7} {'ratio':>7}")
    rows = []
    for image_id in ids:
        rgby = read_rgby(args.images, image_id)
        small = to_working_scale(rgby, args.size)
        n_small = int(segment(rgby, args.size)[0].max())
        n_full = int(segment(rgby, None)[0].max())
        t_resize, _ = timed(lambda: to_working_scale(rgby, args.size), args.repeat)
        t_seg, _ = timed(lambda: segment(small, None), args.repeat)
        t_total, c_total = timed(lambda: segment(rgby, args.size), args.repeat)
        t_full, c_full = timed(lambda: segment(rgby, None), args.repeat)
        rows.append((rgby.shape[0], t_resize, t_seg, t_total, t_full, c_total, c_full))
        print(f"{image_id:<38} {rgby.shape[0]:>5} {n_small:>9} {n_full:>10} {t_resize:>9.4f} {t_seg:>10.4f} "
              f"{t_total:>12.4f} {c_total:>7.4f} {t_full:>8.3f} {c_full:>7.3f} {t_full / t_total:>6.1f}x")
    for label, sel in (("all", rows), ("2048 px", [r for r in rows if r[0] == 2048])):
        if not sel:
            continue
        m = [statistics.mean(r[k] for r in sel) for k in range(1, 7)]
        print(f"mean over {label} ({len(sel)}): resize {m[0]:.4f} s, segment at {args.size} {m[1]:.4f} s, "
              f"total at {args.size} (resize + segment) {m[2]:.4f} s/img (cpu {m[4]:.4f}), "
              f"full resolution {m[3]:.3f} s/img (cpu {m[5]:.3f}), ratio full/{args.size} {m[3] / m[2]:.1f}x "
              f"(cpu {m[5] / m[4]:.1f}x)")
    return 0


def bench_model(args: argparse.Namespace, ids: list[str]) -> None:
    """CPU seconds per image of the watershed model (network, TTA network, post-processing) / hpa_seg, same run."""
    import torch

    from hpa_seg import segment
    from hpa_seg.pipeline import to_working_scale
    from wsss.data.io import read_rgby
    from wsss.watershed.postprocess import postprocess
    from wsss.watershed.predict import image_tensor, load_watershed, post_params, predict_probs

    torch.set_num_threads(1)
    net, cfg = load_watershed(args.model)
    params = post_params(cfg)
    ratios: dict[str, list[float]] = {"network": [], "network+tta": [], "post": [], "total": [], "total+tta": []}
    print(f"watershed model {args.model}: CPU s per image at {args.size} as a ratio to hpa_seg (same run, 1 thread)")
    for image_id in ids:
        small = to_working_scale(read_rgby(args.images, image_id), args.size)
        x = image_tensor(small, cfg, None)
        _, c_classic = timed(lambda: segment(small, None), args.repeat)
        _, c_net = timed(lambda: predict_probs(net, x, False), args.repeat)
        _, c_tta = timed(lambda: predict_probs(net, x, True), args.repeat)
        probs = {k: v[0].numpy() for k, v in predict_probs(net, x, False).items()}
        _, c_post = timed(lambda: postprocess(probs["semantic"], probs["energy"], params), args.repeat)
        for key, value in (("network", c_net), ("network+tta", c_tta), ("post", c_post),
                           ("total", c_net + c_post), ("total+tta", c_tta + c_post)):
            ratios[key].append(value / c_classic)
        print(f"{image_id:<38} hpa_seg {c_classic:.4f} s cpu; " + ", ".join(f"{k} {v[-1]:.1f}x" for k, v in ratios.items()))
    print("mean ratio to hpa_seg: " + ", ".join(f"{k} {statistics.mean(v):.1f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    raise SystemExit(main())
