"""Robust scale-and-shift fitting: the closed-form, reweighted least squares the video stream's alignment and the
metric fit to sparse anchors share."""

from __future__ import annotations

import numpy as np

# Huber's and Tukey's tuning constants (95 % efficiency under Gaussian residuals), in units of the residuals' scale
HUBER_K = 1.345
TUKEY_C = 4.685
IRLS_ITERATIONS = 3  # per weight function


def fit_scale_shift_robust(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
                           iterations: int = IRLS_ITERATIONS, weights: np.ndarray | None = None,
                           ) -> tuple[float, float]:
    """(s, t) fitting s·x + t to y over ``mask``, robust to a large share of outliers: least squares, then
    iteratively reweighted least squares, ``iterations`` steps with Huber weights (k = 1.345) and as many with
    Tukey's biweight (c = 4.685, redescending: a pixel far off, such as one that moved across a depth edge, gets no
    weight at all); the residual scale is 1.4826 · their median absolute value. Each step is a closed-form 2×2
    solve. ``weights``: each point's base weight (e.g. 1/y² for relative residuals), multiplied into the robust
    weights; the residual scale is then taken on the weighted residuals."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    base = np.ones_like(x) if weights is None else np.asarray(weights, np.float64).ravel()
    m = np.isfinite(x) & np.isfinite(y) & np.isfinite(base) & (base > 0)
    if mask is not None:
        m &= np.asarray(mask, bool).ravel()
    x, y, base = x[m], y[m], base[m]
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"need at least 2 distinct values to fit a scale and shift, got {x.size} pixel(s)")
    w = base.copy()
    root = np.sqrt(base)
    s = t = 0.0
    steps = [_huber] * iterations + [_tukey] * iterations
    for it in range(len(steps) + 1):
        sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
        det = sw * (w * x * x).sum() - sx * sx
        if det <= 0:  # too few pixels kept to tell a scale: keep the last fit
            break
        sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
        s, t = (sw * sxy - sx * sy) / det, (sxx * sy - sx * sxy) / det
        if it == len(steps):
            break
        r = np.abs(s * x + t - y) * root
        sigma = 1.4826 * np.median(r)
        if sigma <= 0:  # more than half the pixels fit exactly
            break
        w = base * steps[it](r / sigma)
    return float(s), float(t)


def _huber(u: np.ndarray, k: float = HUBER_K) -> np.ndarray:
    return np.minimum(1.0, k / np.maximum(u, 1e-12))


def _tukey(u: np.ndarray, c: float = TUKEY_C) -> np.ndarray:
    return np.where(u < c, (1.0 - (u / c) ** 2) ** 2, 0.0)


def tukey_inliers(residuals: np.ndarray) -> np.ndarray:
    """The points Tukey's biweight keeps (weight > 0) for these residuals, at the fit's scale (1.4826 · median |r|)."""
    r = np.abs(np.asarray(residuals, np.float64))
    sigma = 1.4826 * np.median(r)
    return r < TUKEY_C * sigma if sigma > 0 else r <= 0


__all__ = ["HUBER_K", "IRLS_ITERATIONS", "TUKEY_C", "fit_scale_shift_robust", "tukey_inliers"]
