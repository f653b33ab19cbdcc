"""Metric depth from sparse anchors: a robust scale and shift that maps the affine-invariant prediction to metres.

Robots and phones often have some metric points (LiDAR, SfM, time of flight). Given an image's sparse depth, the
prediction ``p`` (affine-invariant depth in [0, 1]) is fitted to the anchors ``z`` (metres):

* in depth space, ``z ≈ s·p + t``, or in disparity space, ``1/z ≈ s·p + t`` (for a model whose output is
  disparity-like); ``space="auto"`` fits both and keeps the one whose depth has the lower median relative error on
  the anchors (as ground-truth alignment, the scale may come out negative where the prediction has near and far
  the wrong way round);
* with relative residuals (each anchor weighted by 1/z², as AbsRel weighs errors) and reweighting (Huber, then
  Tukey's biweight: :func:`agdepth.robust_fit.fit_scale_shift_robust`), so outlier anchors get no weight; the
  inliers are the anchors Tukey's weight keeps.

Anchor files, matched to an image by file name (stem): a 16-bit PNG of the image's size in millimetres (0 =
unknown), an ``.npy`` [H, W] in metres (NaN = unknown), or a CSV of ``u,v,z`` rows (pixel column, pixel row, metres;
a header line is allowed). Every problem is an :class:`AnchorError` with one line naming the file.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agdepth.robust_fit import fit_scale_shift_robust, tukey_inliers

ANCHOR_SUFFIXES = (".png", ".npy", ".csv")
SPACES = ("auto", "depth", "disparity")
MIN_ANCHORS = 3
MIN_DISPARITY = 1e-6  # a fitted disparity at or below this has no metric depth: those pixels are left NaN


class AnchorError(ValueError):
    """Anchors that cannot be used; ``str()`` is one line naming the file (or the image) and the reason."""


@dataclass
class MetricFit:
    depth: np.ndarray  # float32 [H,W] metres (NaN where a disparity fit gives no depth)
    space: str  # "depth" or "disparity"
    scale: float
    shift: float
    anchors: int  # valid anchors given
    inliers: int  # anchors the robust fit kept
    residual: float  # median |fitted depth − z| / z over the inliers


def read_anchors(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """The anchors of ``path`` as a float64 [H,W] map in metres, NaN where unknown (``size`` = the image's (H, W)).
    Raises :class:`AnchorError`: unreadable, another size, a pixel outside the image, zero/negative/non-finite depths
    where a depth is given, no anchor at all."""
    path = Path(path)
    h, w = size
    suffix = path.suffix.lower()
    try:
        if suffix == ".png":
            with Image.open(path) as img:
                raw = np.asarray(img)
            if raw.dtype not in (np.uint16, np.int32) and img.mode not in ("I;16", "I;16B", "I"):
                raise AnchorError(f"{path}: a {img.mode} PNG; anchors are 16-bit greyscale in millimetres")
            z = np.where(raw > 0, raw.astype(np.float64) / 1000.0, np.nan)
        elif suffix == ".npy":
            z = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
            if z.ndim != 2:
                raise AnchorError(f"{path}: anchors must be a [H, W] array, got shape {z.shape}")
            known = ~np.isnan(z)
            if (known & ~(np.isfinite(z) & (z > 0))).any():
                raise AnchorError(f"{path}: {int((known & ~(np.isfinite(z) & (z > 0))).sum())} anchor(s) with a "
                                  "zero, negative or infinite depth (use NaN for unknown pixels)")
        elif suffix == ".csv":
            z = _read_csv(path, size)
        else:
            raise AnchorError(f"{path}: unknown anchor format {suffix!r} (expected {', '.join(ANCHOR_SUFFIXES)})")
    except AnchorError:
        raise
    except (OSError, ValueError) as e:
        raise AnchorError(f"{path}: cannot read anchors ({e})") from e
    if z.shape != (h, w):
        raise AnchorError(f"{path}: anchors of {z.shape[1]}x{z.shape[0]} px for an image of {w}x{h} px")
    if not np.isfinite(z).any():
        raise AnchorError(f"{path}: no anchor (every pixel unknown)")
    return z


def _read_csv(path: Path, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    z = np.full((h, w), np.nan)
    with path.open(newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), start=1):
            if not row or (n == 1 and not _is_number(row[0])):
                continue  # a blank line, or a header
            if len(row) != 3:
                raise AnchorError(f"{path}: line {n} has {len(row)} fields, expected u,v,z")
            try:
                u, v, d = (float(x) for x in row)
            except ValueError:
                raise AnchorError(f"{path}: line {n} is not three numbers: {','.join(row)}") from None
            j, i = int(round(u)), int(round(v))
            if not (0 <= i < h and 0 <= j < w):
                raise AnchorError(f"{path}: line {n}: pixel ({u:g}, {v:g}) is outside the {w}x{h} image")
            if not (np.isfinite(d) and d > 0):
                raise AnchorError(f"{path}: line {n}: depth {d:g} (anchors are positive metres)")
            z[i, j] = d
    return z


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def find_anchor_file(anchors: str | Path, stem: str) -> Path | None:
    """The anchor file of image ``stem``: ``anchors`` itself when it is a file, else ``anchors/<stem>.{png,npy,csv}``
    (None when there is none)."""
    root = Path(anchors)
    if root.is_file():
        return root
    for suffix in ANCHOR_SUFFIXES:
        candidate = root / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def fit_metric(prediction: np.ndarray, anchors: np.ndarray, space: str = "auto", robust: bool = True,
               name: str = "image") -> MetricFit:
    """Fit ``prediction`` ([H,W], affine-invariant) to ``anchors`` ([H,W] metres, NaN unknown); see the module
    docstring. Raises :class:`AnchorError` (naming ``name``) for fewer than :data:`MIN_ANCHORS` anchors or anchors
    that cannot fix a scale (all on one predicted value)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    p = np.asarray(prediction, np.float64)
    z = np.asarray(anchors, np.float64)
    if p.shape != z.shape:
        raise AnchorError(f"{name}: anchors {z.shape} and prediction {p.shape} differ in size")
    known = np.isfinite(z) & (z > 0) & np.isfinite(p)
    n = int(known.sum())
    if n < MIN_ANCHORS:
        raise AnchorError(f"{name}: {n} usable anchor(s), a metric fit needs at least {MIN_ANCHORS}")
    pk, zk = p[known], z[known]
    if np.ptp(pk) <= 1e-9:
        raise AnchorError(f"{name}: the {n} anchors all fall on one predicted depth; they cannot fix a scale")
    fits = []
    for sp in (("depth", "disparity") if space == "auto" else (space,)):
        target = zk if sp == "depth" else 1.0 / zk
        if robust:
            s, t = fit_scale_shift_robust(pk, target, weights=1.0 / target**2)
        else:
            a = np.stack([pk, np.ones_like(pk)], axis=1) / target[:, None]
            s, t = np.linalg.lstsq(a, np.ones_like(pk), rcond=None)[0]
        fitted = s * pk + t
        if sp == "disparity":  # compared in depth terms, as the depth-space fit is
            with np.errstate(divide="ignore"):
                fitted = np.where(fitted > MIN_DISPARITY, 1.0 / fitted, np.inf)
        rel = np.abs(fitted - zk) / zk
        fits.append((float(np.median(rel)), sp, float(s), float(t), rel))
    _, sp, s, t, rel = min(fits, key=lambda f: f[0])
    keep = tukey_inliers(rel) if robust else np.ones_like(rel, bool)
    full = s * p + t
    if sp == "depth":
        depth = full
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(full > MIN_DISPARITY, 1.0 / full, np.nan)
    return MetricFit(depth=depth.astype(np.float32), space=sp, scale=s, shift=t, anchors=n, inliers=int(keep.sum()),
                     residual=float(np.median(rel[keep])) if keep.any() else float("nan"))


__all__ = ["ANCHOR_SUFFIXES", "MIN_ANCHORS", "SPACES", "AnchorError", "MetricFit", "find_anchor_file", "fit_metric",
           "read_anchors"]
