"""Depth evaluation: least-squares alignment and the standard per-image metrics (Marigold's definitions).

Everything is numpy float64 on one image at a time; torch tensors (any device) are accepted and converted. Training
validation, ``depth-eval`` and the benchmarks all call :func:`evaluate` so their numbers agree.

Protocol (Marigold ``eval.py``): align the affine-invariant prediction to the ground truth on valid pixels, clip to
the dataset's depth range, clamp to ≥ :data:`PRED_EPS`, compute metrics on valid pixels, average per image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

ArrayLike = np.ndarray | torch.Tensor
Alignment = Literal["least_squares", "least_squares_disparity"] | None

METRIC_NAMES: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
    "i_rmse",
    "silog_rmse",
)

# Predictions are clamped to at least this before metrics (Marigold's eval does the same) so log/ratio metrics stay
# finite; callers should already have clipped to the dataset range.
PRED_EPS: float = 1e-6
# Disparity-space alignment clips aligned disparity to at least this before inverting (Marigold: 1e-3).
MIN_DISPARITY: float = 1e-3


def _np(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x).astype(dtype, copy=False)


def _inputs(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 pred/gt and bool mask of one shape; the mask is restricted to finite gt > 0."""
    p, g = _np(pred), _np(gt)
    m = np.ones(g.shape, dtype=bool) if mask is None else _np(mask, bool)
    if not (p.shape == g.shape == m.shape):
        # tolerate singleton batch/channel dims ([1,1,H,W] vs [H,W]) but nothing else
        p, g, m = np.squeeze(p), np.squeeze(g), np.squeeze(m)
        if not (p.shape == g.shape == m.shape):
            raise ValueError(f"shape mismatch: pred {p.shape}, gt {g.shape}, mask {m.shape}")
    with np.errstate(invalid="ignore"):
        m = m & np.isfinite(g) & (g > 0)
    return p, g, m


def _fit_scale_shift(x: np.ndarray, y: np.ndarray, mask: np.ndarray, max_resolution: int | None) -> tuple[float, float]:
    """argmin_{s,t} Σ_mask (s·x + t − y)², optionally fitted on a nearest-downsampled copy."""
    if max_resolution is not None and x.ndim >= 2:
        factor = min(max_resolution / x.shape[-2], max_resolution / x.shape[-1])
        if factor < 1:
            # Fitting two numbers does not need every pixel; this mirrors Marigold's --alignment_max_res.
            # (Marigold's own code only shrinks the width; we shrink both axes.)
            def down(a: np.ndarray) -> np.ndarray:
                t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).reshape(1, 1, *a.shape[-2:])
                return F.interpolate(t, scale_factor=factor, mode="nearest").numpy()[0, 0]

            x, y, mask = down(x), down(y), down(mask) > 0.5
    m = mask & np.isfinite(x)
    if int(m.sum()) < 2:
        raise ValueError(f"need at least 2 valid pixels for scale/shift alignment, got {int(m.sum())}")
    xm, ym = x[m], y[m]
    a = np.stack([xm, np.ones_like(xm)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, ym, rcond=None)
    return float(s), float(t)


def align_least_squares(
    pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None, max_resolution: int | None = None
) -> tuple[np.ndarray, float, float]:
    """Scale s and shift t minimising ‖s·pred + t − gt‖² over valid pixels (mask & finite gt > 0).

    Returns ``(s·pred + t, s, t)`` with the aligned map covering every pixel (float64, pred's shape after
    singleton-squeezing if shapes differed). ``max_resolution`` fits on a nearest-downsampled copy whose longer side
    is at most that. Raises ValueError with fewer than 2 valid pixels.
    """
    p, g, m = _inputs(pred, gt, mask)
    s, t = _fit_scale_shift(p, g, m, max_resolution)
    return s * p + t, s, t


def align_least_squares_disparity(
    pred_disparity: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None, max_resolution: int | None = None
) -> tuple[np.ndarray, float, float]:
    """Marigold's "least_square_disparity": fit the prediction, taken as affine-invariant *disparity*, to 1/gt.

    The fit uses valid pixels where the prediction is also > 0 (as Marigold); aligned disparity is clipped to
    ≥ :data:`MIN_DISPARITY` and inverted. Returns ``(depth, s, t)`` with s, t the disparity-space scale/shift.
    """
    p, g, m = _inputs(pred_disparity, gt, mask)
    gt_disp = np.zeros_like(g)
    gt_disp[m] = 1.0 / g[m]
    with np.errstate(invalid="ignore"):
        fit_mask = m & (p > 0)
    s, t = _fit_scale_shift(p, gt_disp, fit_mask, max_resolution)
    disp = np.maximum(s * p + t, MIN_DISPARITY)
    return 1.0 / disp, s, t


def compute_metrics(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None) -> dict[str, float]:
    """Metrics of one depth map on valid pixels (mask & finite gt > 0), keys :data:`METRIC_NAMES`.

    ``pred`` is metric depth (already aligned/clipped); it is clamped to ≥ :data:`PRED_EPS`. ``silog_rmse`` is
    100·sqrt(mean(d²) − mean(d)²) with d = ln p − ln g, and ``i_rmse`` the RMSE of 1/p − 1/g, as in Marigold.
    Raises ValueError if no pixel is valid.
    """
    p, g, m = _inputs(pred, gt, mask)
    if not m.any():
        raise ValueError("no valid ground-truth pixels")
    p, g = np.maximum(p[m], PRED_EPS), g[m]
    err = p - g
    dlog = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(err) / g)),
        "sq_rel": float(np.mean(err**2 / g)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rmse_log": float(np.sqrt(np.mean(dlog**2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
        "i_rmse": float(np.sqrt(np.mean((1.0 / p - 1.0 / g) ** 2))),
        # max(·, 0): the variance can round to a tiny negative number for a near-perfect prediction
        "silog_rmse": float(100.0 * np.sqrt(max(np.mean(dlog**2) - np.mean(dlog) ** 2, 0.0))),
    }


def aligned_depth(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    depth_range: tuple[float, float] | None = None,
    alignment: Alignment = "least_squares",
    max_resolution: int | None = None,
) -> np.ndarray:
    """The prediction as it is scored: aligned to gt (or not, with ``alignment=None``), then clipped to
    ``depth_range`` (min, max) if given. Useful for saving aligned maps next to their metrics."""
    if alignment == "least_squares":
        out, _, _ = align_least_squares(pred, gt, mask, max_resolution)
    elif alignment == "least_squares_disparity":
        out, _, _ = align_least_squares_disparity(pred, gt, mask, max_resolution)
    elif alignment is None:
        out = _inputs(pred, gt, mask)[0]
    else:
        raise ValueError(f"unknown alignment {alignment!r}")
    if depth_range is not None:
        lo, hi = depth_range
        if not 0 <= lo < hi:
            raise ValueError(f"depth_range must satisfy 0 <= min < max, got {depth_range}")
        out = np.clip(out, lo, hi)
    return out


def evaluate(
    pred: ArrayLike,
    gt: ArrayLike,
    mask: ArrayLike | None = None,
    depth_range: tuple[float, float] | None = None,
    alignment: Alignment = "least_squares",
    max_resolution: int | None = None,
) -> dict[str, float]:
    """Align, clip to ``depth_range`` and :func:`compute_metrics` — the whole per-image protocol.

    ``mask`` should be the dataset's evaluation mask (e.g. Eigen crop & gt in range); gt ≤ 0 / non-finite are
    excluded regardless. With ``"least_squares_disparity"`` the prediction is taken to be disparity.
    """
    p, g, m = _inputs(pred, gt, mask)
    return compute_metrics(aligned_depth(p, g, m, depth_range, alignment, max_resolution), g, m)


def mean_metrics(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Per-image average (each image weighs the same, as in Marigold and the papers' tables)."""
    rows = list(per_image)
    if not rows:
        raise ValueError("no metrics to average")
    keys = list(rows[0])
    for r in rows[1:]:
        if set(r) != set(keys):
            raise ValueError(f"metric keys differ between images: {sorted(keys)} vs {sorted(r)}")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


# ------------------------------------------------------------------------------------------- depth boundaries


def depth_edges(depth: ArrayLike, mask: ArrayLike | None = None, rel_threshold: float = 0.1) -> np.ndarray:
    """Depth-discontinuity pixels: a jump of more than ``rel_threshold`` (relative) to the right or lower neighbour.

    Both pixels of a pair must be valid; the edge is marked on both sides. Relative (log-depth) jumps make the
    threshold mean the same thing near and far.
    """
    d = _np(depth)
    m = np.ones(d.shape, bool) if mask is None else _np(mask, bool)
    m = m & np.isfinite(d) & (d > 0)
    logd = np.log(np.where(m, d, 1.0))
    edges = np.zeros(d.shape, bool)
    thr = np.log1p(rel_threshold)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        jump = (np.abs(logd[tuple(b)] - logd[tuple(a)]) > thr) & m[tuple(a)] & m[tuple(b)]
        edges[tuple(a)] |= jump
        edges[tuple(b)] |= jump
    return edges


def _dilate(x: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return x
    t = torch.from_numpy(x.astype(np.float32))[None, None]
    return F.max_pool2d(t, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0


def boundary_f1(
    pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None, rel_threshold: float = 0.1, tolerance: int = 1
) -> dict[str, float]:
    """Precision, recall and F1 of depth-discontinuity pixels, within ``tolerance`` pixels.

    The edge-accuracy measure of Hu et al., "Revisiting Single Image Depth Estimation: Toward Higher Resolution Maps
    with Accurate Object Boundaries" (WACV 2019, sec. 5.3): edges are thresholded depth gradients of the prediction
    and of the ground truth, compared as precision/recall/F1. Here the gradient is the relative jump between
    neighbours (:func:`depth_edges`) and a match may be ``tolerance`` pixels away. Needs dense ground truth (the
    procedural domains, Hypersim-like data); ``pred`` should be aligned depth (e.g. from :func:`aligned_depth`).
    Returns NaN precision/recall when the prediction/ground truth has no edge.
    """
    p, g, m = _inputs(pred, gt, mask)
    e_gt = depth_edges(g, m, rel_threshold)
    e_pred = depth_edges(np.clip(p, PRED_EPS, None), m, rel_threshold)
    n_pred, n_gt = int(e_pred.sum()), int(e_gt.sum())
    precision = float((e_pred & _dilate(e_gt, tolerance)).sum() / n_pred) if n_pred else float("nan")
    recall = float((e_gt & _dilate(e_pred, tolerance)).sum() / n_gt) if n_gt else float("nan")
    if n_pred and n_gt and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    else:
        f1 = 0.0 if n_gt else float("nan")
    return {"edge_precision": precision, "edge_recall": recall, "edge_f1": f1}


def backend_agreement(pred: ArrayLike, ref: ArrayLike, min_ref: float = 0.01) -> dict[str, float]:
    """How far one backend's [0,1] depth map is from another's (no alignment: both come from the same model).

    AbsRel and δ1 with ``ref`` as ground truth on pixels where ref > ``min_ref`` (relative error is undefined at the
    near end, 0), and the max absolute difference over all pixels.
    """
    p, r = _np(pred), _np(ref)
    out = compute_metrics(p, r, r > min_ref)
    return {"abs_rel": out["abs_rel"], "delta1": out["delta1"], "max_abs": float(np.abs(p - r).max())}


# ------------------------------------------------------------------------------------------------------- video


def _sequence(
    preds: Iterable[ArrayLike] | ArrayLike,
    gts: Iterable[ArrayLike] | ArrayLike,
    masks: Iterable[ArrayLike] | ArrayLike | None,
    min_frames: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per-frame ``_inputs`` of a sequence (a list of frames or a [T, ...] array/tensor), checked for equal lengths,
    at least ``min_frames`` frames and one frame shape."""
    p, g = list(preds), list(gts)
    m = [None] * len(g) if masks is None else list(masks)
    if not len(p) == len(g) == len(m):
        raise ValueError(f"sequence length mismatch: {len(p)} predictions, {len(g)} ground truths, {len(m)} masks")
    if len(g) < min_frames:
        raise ValueError(f"need at least {min_frames} frames, got {len(g)}")
    frames = [_inputs(*f) for f in zip(p, g, m, strict=True)]
    shapes = {f[1].shape for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"all frames must have one shape, got {sorted(shapes)}")
    return frames


def align_sequence_least_squares(
    preds: Iterable[ArrayLike] | ArrayLike,
    gts: Iterable[ArrayLike] | ArrayLike,
    masks: Iterable[ArrayLike] | ArrayLike | None = None,
) -> tuple[list[np.ndarray], float, float]:
    """ONE scale s and shift t for a whole sequence, as video-depth papers score (temporal consistency is then
    visible in the per-frame metrics): argmin_{s,t} Σ_frames Σ_valid (s·pred + t − gt)², valid as in
    :func:`align_least_squares` (mask & finite gt > 0), all frames' pixels fitted together.

    ``preds``/``gts``/``masks``: lists of frames or [T, H, W] arrays/tensors. Returns the aligned frames (float64,
    every pixel), s and t. Raises ValueError on mismatched lengths/shapes or fewer than 2 valid pixels in all.
    """
    frames = _sequence(preds, gts, masks, 1)
    p, g, m = (np.concatenate([f[k].ravel() for f in frames]) for k in range(3))
    s, t = _fit_scale_shift(p, g, m, None)
    return [s * f[0] + t for f in frames], s, t


def _pair_change(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], use_pred: bool) -> float:
    vals = []
    for (p0, g0, m0), (p1, g1, m1) in zip(frames[:-1], frames[1:], strict=True):
        m = m0 & m1
        if not m.any():
            continue  # no pixel valid in both frames: the pair carries no information
        dp = p1[m] - p0[m] if use_pred else 0.0
        vals.append(np.mean(np.abs(dp - (g1[m] - g0[m])) / g1[m]))
    if not vals:
        raise ValueError("no pair of consecutive frames shares a valid ground-truth pixel")
    return float(np.mean(vals))


def temporal_error(
    aligned_preds: Iterable[ArrayLike] | ArrayLike,
    gts: Iterable[ArrayLike] | ArrayLike,
    masks: Iterable[ArrayLike] | ArrayLike | None = None,
) -> float:
    """Temporal error of an (already aligned) depth sequence against ground truth (lower is better).

    For each pair of consecutive frames (t−1, t), t = 1..T−1, over the pixels valid in both frames (mask & finite
    gt > 0 in frame t−1 and in frame t), take ``e_t = mean |(p_t − p_{t−1}) − (g_t − g_{t−1})| / g_t``; the value is
    the mean of e_t over the pairs (each pair weighs the same; pairs without a common valid pixel are skipped). It
    is the per-frame change of the prediction's error, relative to depth: 0 for a perfect prediction (or one off by
    a constant shift), and exactly :func:`temporal_change` for a constant (frozen) prediction. Pixels are compared
    at the same image position (no motion compensation), so it also measures flicker on moving content. Raises
    ValueError with fewer than 2 frames, mismatched lengths/shapes, or no pair sharing a valid pixel.
    """
    return _pair_change(_sequence(aligned_preds, gts, masks, 2), use_pred=True)


def temporal_change(
    gts: Iterable[ArrayLike] | ArrayLike, masks: Iterable[ArrayLike] | ArrayLike | None = None
) -> float:
    """The true frame-to-frame change, the scale for :func:`temporal_error`: for each pair of consecutive frames,
    ``mean |g_t − g_{t−1}| / g_t`` over the pixels valid in both, then the mean over pairs (same rules as
    :func:`temporal_error`, whose value for a frozen prediction this is)."""
    g = list(gts)
    return _pair_change(_sequence(g, g, masks, 2), use_pred=False)


def evaluate_sequence(
    preds: Iterable[ArrayLike] | ArrayLike,
    gts: Iterable[ArrayLike] | ArrayLike,
    masks: Iterable[ArrayLike] | ArrayLike | None = None,
    depth_range: tuple[float, float] | None = None,
) -> dict[str, float]:
    """The video protocol: align the affine-invariant depth sequence with ONE scale/shift
    (:func:`align_sequence_least_squares`), clip to ``depth_range``, then :func:`compute_metrics` per frame averaged
    over frames (keys :data:`METRIC_NAMES`; frames without a valid pixel are left out of the average), plus
    ``temporal_error`` (of the clipped aligned frames), ``temporal_change`` (of the ground truth), ``scale`` and
    ``shift``. Needs at least 2 frames of one shape.
    """
    frames = _sequence(preds, gts, masks, 2)
    g, m = [f[1] for f in frames], [f[2] for f in frames]
    aligned, s, t = align_sequence_least_squares([f[0] for f in frames], g, m)
    if depth_range is not None:
        lo, hi = depth_range
        if not 0 <= lo < hi:
            raise ValueError(f"depth_range must satisfy 0 <= min < max, got {depth_range}")
        aligned = [np.clip(a, lo, hi) for a in aligned]
    out = mean_metrics(compute_metrics(a, gf, mf) for a, gf, mf in zip(aligned, g, m, strict=True) if mf.any())
    out["temporal_error"] = temporal_error(aligned, g, m)
    out["temporal_change"] = temporal_change(g, m)
    out["scale"], out["shift"] = s, t
    return out
