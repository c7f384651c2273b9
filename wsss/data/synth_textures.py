"""Per-pixel fields and the reference stains (red, blue, yellow) of a synthetic field of view.

* red (microtubules): filaments that start near the nucleus and run outwards with a slowly
  turning direction until they leave their cell, over a faint diffuse cytoplasm; in a dividing
  cell, spindle fibres from two poles to the chromosomes instead;
* yellow (endoplasmic reticulum): a reticular network (the zero-level set of band-pass noise)
  whose density falls from the nuclear envelope to the cell edge;
* blue (nucleus): each nucleus with a per-cell brightness, chromatin texture, darker nucleoli and
  a soft edge; condensed, brighter chromosomes in dividing cells.

Values are floats, roughly 0..1 before the camera model (blur, shot and read noise) in
:func:`camera`. Lengths are relative to the image size (``scale = size / 512``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from wsss.data.synth_geometry import CellSpec, smooth_noise

logger = logging.getLogger(__name__)


@dataclass
class Fields:
    """Geometry-derived fields shared by every stain and pattern.

    ``dist_edge`` is the distance to the cell's own outline (neighbours and background count as
    outside, the image border does not), ``dist_nuc`` the distance to the nearest nucleus pixel,
    ``nuc_depth`` the depth inside a nucleus, ``rho`` the relative position in the cytoplasm
    (0 at the nuclear envelope, 1 at the cell outline).
    """

    size: int
    scale: float
    cells: np.ndarray
    nuclei: np.ndarray
    specs: list[CellSpec]
    boxes: list[tuple[slice, slice]]
    dist_edge: np.ndarray
    dist_nuc: np.ndarray
    nuc_depth: np.ndarray
    rho: np.ndarray
    nucleoli: list[np.ndarray] = field(default_factory=list)
    filaments: np.ndarray | None = None
    reticulum: np.ndarray | None = None


def _pad_box(sl: tuple[slice, slice], pad: int, size: int) -> tuple[slice, slice]:
    return (slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, size)),
            slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, size)))


def build_fields(cells: np.ndarray, nuclei: np.ndarray, specs: list[CellSpec]) -> Fields:
    """Compute the distance fields and per-cell boxes of a rasterised layout."""
    size = cells.shape[0]
    cells32 = cells.astype(np.int32)
    inner = find_boundaries(cells32, mode="inner")
    dist_edge = ndimage.distance_transform_edt((cells32 > 0) & ~inner).astype(np.float32)
    nuc_any = nuclei > 0
    dist_nuc = ndimage.distance_transform_edt(~nuc_any).astype(np.float32)
    nuc_inner = find_boundaries(nuclei.astype(np.int32), mode="inner")
    nuc_depth = ndimage.distance_transform_edt(nuc_any & ~nuc_inner).astype(np.float32)
    rho = np.where(cells32 > 0, dist_nuc / (dist_nuc + dist_edge + 1.0), 0.0).astype(np.float32)
    found = ndimage.find_objects(cells32, max_label=len(specs))
    boxes = [_pad_box(sl, 1, size) if sl is not None else (slice(0, 0), slice(0, 0)) for sl in found]
    return Fields(size=size, scale=size / 512.0, cells=cells32, nuclei=nuclei.astype(np.int32), specs=specs,
                  boxes=boxes, dist_edge=dist_edge, dist_nuc=dist_nuc, nuc_depth=nuc_depth, rho=rho)


def nucleus_radius(f: Fields, cell_id: int) -> float:
    """Equivalent radius of the nucleus of ``cell_id`` (from its visible area)."""
    sl = f.boxes[cell_id - 1]
    area = int((f.nuclei[sl] == cell_id).sum())
    return float(np.sqrt(max(area, 1) / np.pi))


def place_nucleoli(rng: np.random.Generator, f: Fields) -> None:
    """Choose 1-4 nucleoli ``(y, x, radius, angle)`` (absolute px) inside each interphase nucleus."""
    f.nucleoli = []
    for cid, spec in enumerate(f.specs, start=1):
        if spec.dividing:
            f.nucleoli.append(np.zeros((0, 4), dtype=np.float32))
            continue
        sl = f.boxes[cid - 1]
        rn = nucleus_radius(f, cid)
        depth = np.where(f.nuclei[sl] == cid, f.nuc_depth[sl], 0.0)
        k = int(rng.integers(1, 5))
        cand = np.argwhere(depth > 0.3 * rn)
        if cand.size == 0:
            cand = np.argwhere(depth > 0)
        if cand.size == 0:
            f.nucleoli.append(np.zeros((0, 4), dtype=np.float32))
            continue
        pick = cand[rng.choice(len(cand), size=min(k, len(cand)), replace=False)]
        radii = rn * rng.uniform(0.16, 0.28, size=len(pick))
        angles = rng.uniform(0, np.pi, size=len(pick))
        rows = np.column_stack([pick[:, 0] + sl[0].start, pick[:, 1] + sl[1].start, radii, angles])
        rows = rows.astype(np.float32)
        f.nucleoli.append(rows)


def walk_paths(rng: np.random.Generator, starts: np.ndarray, angles: np.ndarray, step: float, n_steps: int,
               turn: float, wave: float = 0.0) -> np.ndarray:
    """Random-walk polylines: ``(n, n_steps + 1, 2)`` array of ``(x, y)`` points.

    The heading of each path drifts by ``N(0, turn)`` per step; ``wave`` adds a slow sinusoidal
    swing of that amplitude (radians) around the drifting heading, for wavy filaments.
    """
    n = len(starts)
    starts = np.asarray(starts, dtype=np.float32)
    heading = (angles[:, None] + np.cumsum(rng.normal(0.0, turn, size=(n, n_steps)), axis=1)).astype(np.float32)
    if wave > 0:
        freq = rng.uniform(0.04, 0.12, size=(n, 1)) / max(step, 1e-3) * 1.5
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        heading = heading + wave * np.sin(freq * step * np.arange(n_steps)[None, :] + phase)
    steps = np.stack([np.cos(heading), np.sin(heading)], axis=-1) * step
    pts = np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
    return pts


def clip_paths_to_cell(paths: np.ndarray, cells: np.ndarray, cell_id: int) -> list[np.ndarray]:
    """Cut each path at the first point that leaves ``cell_id``; keep paths of >= 2 points."""
    h, w = cells.shape
    xs = np.clip(np.rint(paths[..., 0]).astype(np.int64), 0, w - 1)
    ys = np.clip(np.rint(paths[..., 1]).astype(np.int64), 0, h - 1)
    inside = (cells[ys, xs] == cell_id)
    inside &= (paths[..., 0] >= 0) & (paths[..., 0] < w) & (paths[..., 1] >= 0) & (paths[..., 1] < h)
    outside = np.concatenate([~inside, np.ones((inside.shape[0], 1), dtype=bool)], axis=1)
    ends = outside.argmax(axis=1)
    return [paths[k, :end] for k, end in enumerate(ends.tolist()) if end >= 2]


def draw_polylines(canvas: np.ndarray, paths: list[np.ndarray], value: float, thickness: int = 1,
                   offset: tuple[float, float] = (0.0, 0.0)) -> None:
    """Draw anti-aliased polylines into a float32 canvas, keeping the brighter value where they cross.

    Path points are ``(x, y)`` image coordinates; ``offset`` ``(x0, y0)`` is the canvas origin
    in the image (for drawing into a crop).
    """
    if not paths:
        return
    layer = np.zeros(canvas.shape, dtype=np.uint8)
    shift = np.asarray(offset, dtype=np.float64)
    flat = np.rint((np.concatenate(paths, axis=0) - shift) * 16).astype(np.int32).reshape(-1, 1, 2)
    pts = np.split(flat, np.cumsum([len(p) for p in paths])[:-1])
    cv2.polylines(layer, pts, False, 255, thickness=max(int(thickness), 1), lineType=cv2.LINE_AA, shift=4)
    np.maximum(canvas, layer.astype(np.float32) * (value / 255.0), out=canvas)


def spindle_geometry(spec: CellSpec, f: Fields) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Poles ``(2, 2)`` and plate end points ``(2, 2)`` (x, y) and the spindle axis unit vector."""
    axis = np.array([-np.sin(spec.nuc_angle), np.cos(spec.nuc_angle)])
    plate_dir = np.array([np.cos(spec.nuc_angle), np.sin(spec.nuc_angle)])
    centre = np.array([spec.nx, spec.ny])
    half = min(spec.radius * 0.78, spec.nuc_a * 1.6)
    poles = np.stack([centre - half * axis, centre + half * axis])
    plate = np.stack([centre - spec.nuc_a * plate_dir, centre + spec.nuc_a * plate_dir])
    return poles, plate, axis


def spindle_paths(rng: np.random.Generator, spec: CellSpec, f: Fields, n_per_pole: int) -> list[np.ndarray]:
    """Straight fibres from each spindle pole to points spread along the chromosome plate."""
    poles, plate, _ = spindle_geometry(spec, f)
    paths: list[np.ndarray] = []
    for pole in poles:
        t = rng.uniform(0.0, 1.0, size=n_per_pole)
        ends = plate[0][None, :] * (1 - t[:, None]) + plate[1][None, :] * t[:, None]
        for end in ends:
            mid = 0.5 * (pole + end) + rng.normal(0, 0.6 * f.scale, size=2)
            paths.append(np.stack([pole, mid, end]))
    return paths


def render_filaments(rng: np.random.Generator, f: Fields) -> np.ndarray:
    """Microtubule-like filament density (about 0..1): a curved meshwork radiating from each nucleus.

    Filaments start around the nucleus (most near one side, the microtubule organising centre),
    run outwards with a drifting heading and stop at the cell outline; overlapping filaments add
    up, so the network is denser near the nucleus. Dividing cells get spindle fibres instead.
    """
    canvas = np.zeros((f.size, f.size), dtype=np.float32)
    step = max(1.5 * f.scale, 0.8)
    for cid, spec in enumerate(f.specs, start=1):
        sl = f.boxes[cid - 1]
        own = f.cells[sl] == cid
        if spec.dividing:
            spindle = np.zeros(own.shape, dtype=np.float32)
            draw_polylines(spindle, spindle_paths(rng, spec, f, 14), 0.6, offset=(sl[1].start, sl[0].start))
            canvas[sl] += (spindle + 0.25) * own
            continue
        area = int((f.cells[sl] == cid).sum())
        rn = nucleus_radius(f, cid)
        # lines are one pixel wide at any size, so smaller images need fewer of them
        n = int(np.clip(area * min(f.scale, 1.0) / (22.0 * f.scale ** 2), 10, 260))
        theta = rng.uniform(0, 2 * np.pi, size=n)
        r0 = rn * rng.uniform(0.6, 1.3, size=n)
        starts = np.column_stack([spec.nx + r0 * np.cos(theta), spec.ny + r0 * np.sin(theta)])
        n_steps = int(np.ceil(2.4 * spec.radius * np.sqrt(spec.elong) / step))
        paths = walk_paths(rng, starts, theta + rng.normal(0, 0.5, size=n), step, n_steps, 0.09)
        kept = clip_paths_to_cell(paths, f.cells, cid)
        lengths = rng.integers(max(n_steps // 4, 3), n_steps + 2, size=len(kept))
        kept = [p[:max(int(k), 2)] for p, k in zip(kept, lengths)]
        origin = (sl[1].start, sl[0].start)
        shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        layer = np.zeros(shape, dtype=np.float32)
        groups = rng.integers(0, 4, size=len(kept))
        for g in range(4):
            part = np.zeros(shape, dtype=np.float32)
            draw_polylines(part, [p for p, gg in zip(kept, groups) if gg == g], 1.0, offset=origin)
            layer += part
        canvas[sl] += np.minimum(layer * 0.38, 1.0) * own
    return canvas


def render_reticulum(rng: np.random.Generator, f: Fields) -> np.ndarray:
    """ER-like reticular network (0..1): thin ridges at the zero crossings of band-pass noise."""
    white = rng.standard_normal((f.size, f.size), dtype=np.float32)
    s1, s2 = max(1.1 * f.scale, 0.6), max(3.0 * f.scale, 1.5)
    band = cv2.GaussianBlur(white, (0, 0), s1) - cv2.GaussianBlur(white, (0, 0), s2)
    band /= float(band.std()) + 1e-6
    ridges = np.exp(-(band / 0.45) ** 2)
    return ridges.astype(np.float32)


def ellipse_blob(shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float,
                 softness: float = 1.0) -> np.ndarray:
    """A soft-edged filled ellipse (0..1) in an array of ``shape``."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (xs - cx) * ca + (ys - cy) * sa
    v = -(xs - cx) * sa + (ys - cy) * ca
    r = np.sqrt((u / max(a, 0.3)) ** 2 + (v / max(b, 0.3)) ** 2)
    edge = max(softness / max(min(a, b), 0.3), 1e-3)
    return np.clip((1.0 - r) / edge + 0.5, 0.0, 1.0).astype(np.float32)


def render_red(f: Fields, levels: np.ndarray) -> np.ndarray:
    """Microtubule stain: filaments plus a faint diffuse cytoplasm, dimmer over the nucleus."""
    assert f.filaments is not None
    cellmask = f.cells > 0
    nuc = f.nuclei > 0
    level = levels[f.cells]
    diffuse = 0.14 * (1.0 - 0.4 * f.rho)
    base = np.where(nuc, 0.35, 1.0) * (diffuse + 0.8 * f.filaments)
    return np.where(cellmask, level * base, 0.0).astype(np.float32)


def render_yellow(f: Fields, levels: np.ndarray) -> np.ndarray:
    """ER stain: reticulum dense near the nuclear envelope, thinning towards the cell edge."""
    assert f.reticulum is not None
    cellmask = f.cells > 0
    nuc = f.nuclei > 0
    level = levels[f.cells]
    density = np.exp(-1.6 * f.rho)
    envelope = np.exp(-((f.dist_nuc / max(1.5 * f.scale, 0.8)) ** 2))
    cyto = (0.25 + 1.1 * f.reticulum) * density + 0.3 * envelope
    out = np.where(nuc, 0.1 + 0.3 * np.exp(-f.nuc_depth / max(1.5 * f.scale, 0.8)), cyto)
    return np.where(cellmask, level * out, 0.0).astype(np.float32)


def nucleoli_map(f: Fields, cell_id: int, sl: tuple[slice, slice]) -> np.ndarray:
    """Soft nucleolus blobs (0..1) of ``cell_id`` in the crop ``sl``."""
    shape = (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    out = np.zeros(shape, dtype=np.float32)
    for y, x, r, angle in f.nucleoli[cell_id - 1]:
        blob = ellipse_blob(shape, y - sl[0].start, x - sl[1].start, r * 1.15, r * 0.9, float(angle),
                            softness=max(0.8 * f.scale, 0.5))
        np.maximum(out, blob, out=out)
    return out


def render_blue(rng: np.random.Generator, f: Fields, levels: np.ndarray) -> np.ndarray:
    """Nuclear stain: chromatin texture, darker nucleoli, soft edges; condensed chromosomes in mitosis."""
    coarse = smooth_noise(rng, (f.size, f.size), 2.5 * f.scale)
    fine = smooth_noise(rng, (f.size, f.size), 0.9 * f.scale)
    out = np.zeros((f.size, f.size), dtype=np.float32)
    edge = max(1.4 * f.scale, 0.7)
    for cid, spec in enumerate(f.specs, start=1):
        sl = f.boxes[cid - 1]
        nmask = f.nuclei[sl] == cid
        profile = np.clip(f.nuc_depth[sl] / edge + 0.45, 0.0, 1.0)
        if spec.dividing:
            tex = 1.5 * (0.85 + 0.12 * coarse[sl] + 0.12 * fine[sl])
        else:
            tex = 0.78 + 0.1 * coarse[sl] + 0.06 * fine[sl]
            tex = tex * (1.0 - 0.45 * nucleoli_map(f, cid, sl)) + 0.08 * profile * (profile < 1)
        out[sl][nmask] = (levels[cid] * profile * tex)[nmask]
    return out


def camera(rng: np.random.Generator, image: np.ndarray, scale: float, gain: float, background: float,
           read_noise: float = 0.004, shot: float = 0.0025) -> np.ndarray:
    """Optics and sensor: slight blur, offset, shot (Poisson-like) and read noise; returns uint8."""
    sigma = max(0.6 * scale, 0.5)
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), sigma) * gain + background
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    noisy = blurred + noise * np.sqrt(np.maximum(blurred, 0.0) * shot + read_noise ** 2)
    return np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
