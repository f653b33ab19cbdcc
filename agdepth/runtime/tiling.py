"""Tiled high-resolution depth: a global prediction for the layout, overlapping tiles for the detail.

A model that sees the whole image at its processing resolution (64 px for the bundled tiny model) loses every
structure smaller than a few input pixels × (image side / processing resolution). :func:`predict_tiled` adds
detail without new engines:

1. **Global**: the plain pipeline call on the whole image at the processing resolution, upsampled to the input size
   (``match_input_resolution``). This fixes the frame the result is expressed in. Its *cell* is
   ``longer image side / processing resolution`` input pixels (16 px at 1024 px for the bundled model).
2. **Tiles**: a grid of overlapping *square* tiles of ``tile`` input pixels (:func:`plan_tiles`), each predicted at
   the same processing resolution — so each tile is seen ``image side / tile`` times finer than in the global call.
   All tiles go through one pipeline call (``batch_size`` rows per network call), each with its own initial noise
   (:meth:`DepthPipeline.initial_latents` with seed ``seed + 1 + k`` for tile ``k``, so a tile's noise does not depend
   on the batch it lands in or the device).
3. **Alignment**: each tile's prediction is mapped onto the global prediction over the tile's area by a least-squares
   scale and shift (``robust=True``: refitted once without the ``trim`` fraction of largest residuals — the pixels
   at depth edges, where the blurred global prediction and the sharp tile disagree most). A tile whose fit is
   degenerate (no depth variation, non-positive scale) contributes the global prediction instead.
4. **Blending**: separable raised-cosine ramps across each overlap (:func:`axis_weights`), normalised so the weights
   of the tiles covering a pixel sum to exactly 1: C¹-continuous transitions (:func:`seam_jump` measures seams).
5. **Detail** (``lowpass`` = σ in global cells, default ``LOWPASS_SCALE`` = 2): the result is the global prediction
   plus the blended tiles' high-frequency band, ``global + tiled − G_σ(tiled)`` (:func:`add_detail`), with G_σ a
   Gaussian of σ = ``lowpass`` × cell input pixels (32 px at 1024 px). The layout, and so the large-scale depth
   values, stay the global prediction's (a tile sees too little context to place its content in depth); the tiles
   contribute only structure finer than about σ — the depth edges the global call blurs. Between one and two
   cells the band overlaps the global prediction's own finest structure, where the two add up (edges the global
   call shows blurred get steeper). The low-pass is exact on planes (edges padded by odd reflection), so planar
   tiles add nothing. ``lowpass=None``: the blended tiles replace the global prediction (step 4's output).

**Tile rule** (``tile=None``): ``tile = TILE_SCALE × processing resolution`` input pixels (5 × 64 = 320 px for the
bundled model, i.e. each tile is downsampled 5× for the network instead of the whole image's 16× at 1024 px); never
smaller than the processing resolution (no detail would be gained) and never larger than the image's shorter side.
The grid is the smallest number of tiles per axis whose overlap is at least ``overlap`` × tile (default 50 %), spread
evenly (the actual overlap may be a little larger): 6 × 6 = 36 tiles at 1024 px. TILE_SCALE, the overlap and
LOWPASS_SCALE were chosen on validation-split scenes (``benchmarks/tiling.py``). An image no larger than the
processing resolution (longer edge ≤ it), or one a single tile covers, returns the plain prediction.

Every tile is square and is processed at the same processing resolution as the global call, so the tiles have the
global call's padded network shape: :func:`predict_tiled` checks the tile calls (shape and rows per call) against the
backend's exported range before any network runs, and refuses with a ValueError naming the tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import correlate1d

from agdepth.runtime.preprocess import PreparedImage, image_size

TILE_SCALE = 5  # default tile side, in multiples of the processing resolution (tuned on the val split)
LOWPASS_SCALE = 2.0  # default σ of the detail split, in global cells (image side / processing resolution)
DEFAULT_TRIM = 0.2  # robust alignment: fraction of largest residuals left out of the refit


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``side`` px on an ``height`` × ``width`` image: the tile (i, j) covers rows
    ``ys[i] : ys[i] + side`` and columns ``xs[j] : xs[j] + side``; tiles are listed row-major."""

    height: int
    width: int
    side: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) of every tile, row-major."""
        return [(y, y + self.side, x, x + self.side) for y in self.ys for x in self.xs]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.height, "width": self.width, "side": self.side, "rows": len(self.ys),
                "cols": len(self.xs), "tiles": len(self), "ys": list(self.ys), "xs": list(self.xs)}


def _starts(length: int, side: int, overlap: float) -> tuple[int, ...]:
    """Evenly spread starts of the fewest tiles of ``side`` covering ``length`` with overlaps ≥ overlap × side."""
    if side >= length:
        return (0,)
    stride = max(1.0, side * (1.0 - overlap))
    n = 1 + math.ceil((length - side) / stride)
    return tuple(round(i * (length - side) / (n - 1)) for i in range(n))


def plan_tiles(height: int, width: int, side: int, overlap: float = 0.5) -> TileGrid:
    """The tile grid of an image: square tiles of ``min(side, height, width)`` px, the fewest per axis whose
    overlap is at least ``overlap`` × side (0 ≤ overlap < 1), spread evenly from edge to edge."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    side = int(min(side, height, width))
    if side < 1:
        raise ValueError(f"tile side must be >= 1, got {side}")
    return TileGrid(int(height), int(width), side, _starts(height, side, overlap), _starts(width, side, overlap))


def default_tile_side(height: int, width: int, processing_res: int) -> int:
    """The module docstring's rule: TILE_SCALE × processing resolution, within [processing resolution, shorter
    side]."""
    return int(max(min(TILE_SCALE * processing_res, min(height, width)), min(processing_res, min(height, width))))


def axis_weights(starts: tuple[int, ...], side: int, length: int) -> np.ndarray:
    """[n, side] blending weights of n tiles along one axis (float64): a raised-cosine ramp from 0 to 1 across the
    overlap with each neighbouring tile (none at the image's border), normalised so that at every position the weights
    of the tiles covering it sum to 1. The 2-D weight of tile (i, j) is ``wy[i][:, None] * wx[j][None, :]``; those
    sum to 1 everywhere too (the product of two partitions of unity)."""
    n = len(starts)
    u = np.arange(side, dtype=np.float64) + 0.5  # pixel centres inside a tile
    raw = np.ones((n, side))
    for i, s in enumerate(starts):
        if i > 0:
            ov = starts[i - 1] + side - s  # overlap with the previous tile, px
            if ov > 0:
                ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip(u / ov, 0.0, 1.0))
                raw[i] *= ramp
        if i < n - 1:
            ov = s + side - starts[i + 1]
            if ov > 0:
                ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip((side - u) / ov, 0.0, 1.0))
                raw[i] *= ramp
    total = np.zeros(length)
    for i, s in enumerate(starts):
        total[s : s + side] += raw[i]
    if np.any(total <= 0):
        raise ValueError("the tiles do not cover the image")  # unreachable for plan_tiles' grids
    return np.stack([raw[i] / total[s : s + side] for i, s in enumerate(starts)])


def blend_weights(grid: TileGrid) -> list[np.ndarray]:
    """Per tile (row-major) its [side, side] weight map; placed at their boxes they sum to 1 at every pixel."""
    wy = axis_weights(grid.ys, grid.side, grid.height)
    wx = axis_weights(grid.xs, grid.side, grid.width)
    return [wy[i][:, None] * wx[j][None, :] for i in range(len(grid.ys)) for j in range(len(grid.xs))]


def align_tile(pred: np.ndarray, target: np.ndarray, robust: bool = True, trim: float = DEFAULT_TRIM,
               min_std: float = 1e-6) -> tuple[np.ndarray, float, float, bool]:
    """``pred`` mapped onto ``target`` by least-squares scale s and shift t (``robust``: refitted once on the pixels
    whose residual is within the (1 − trim) quantile). Returns (aligned, s, t, ok); when the fit is degenerate (a
    flat tile, s ≤ 0 or not finite) ``ok`` is False and ``aligned`` is ``target`` itself."""
    x = pred.astype(np.float64).ravel()
    y = target.astype(np.float64).ravel()

    def fit(m: np.ndarray | slice) -> tuple[float, float]:
        xm, ym = x[m], y[m]
        xc = xm - xm.mean()
        var = float(np.dot(xc, xc))
        if var <= min_std**2 * xm.size:
            return float("nan"), float("nan")
        s = float(np.dot(xc, ym - ym.mean()) / var)
        return s, float(ym.mean() - s * xm.mean())

    s, t = fit(slice(None))
    if robust and math.isfinite(s) and 0 < trim < 1:
        r = np.abs(s * x + t - y)
        keep = r <= np.quantile(r, 1.0 - trim)
        if int(keep.sum()) >= 2:
            s, t = fit(keep)
    if not (math.isfinite(s) and math.isfinite(t) and s > 0):
        return target.astype(np.float64), s, t, False
    return s * pred.astype(np.float64) + t, s, t, True


def _odd_pad(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """``a`` extended by ``r`` samples at both ends of ``axis`` by odd reflection (2·edge − mirror image): linear
    functions continue exactly."""
    a = np.moveaxis(a, axis, 0)
    lo = 2 * a[:1] - a[r:0:-1]
    hi = 2 * a[-1:] - a[-2 : -r - 2 : -1]
    return np.moveaxis(np.concatenate([lo, a, hi]), 0, axis)


def gaussian_lowpass(x: np.ndarray, sigma: float) -> np.ndarray:
    """[H, W] map blurred by a separable Gaussian of ``sigma`` px (float64; truncated at 3σ, or at the map's size),
    edges padded by odd reflection: constant and planar maps are returned unchanged (up to rounding)."""
    a = np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError(f"gaussian_lowpass takes an [H, W] map, got shape {a.shape}")
    if not sigma > 0:
        return a.copy()
    for axis in (0, 1):
        n = a.shape[axis]
        r = min(int(math.ceil(3 * sigma)), n - 1)
        if r < 1:
            continue
        k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        k /= k.sum()
        # scipy's 1-D correlation: several times faster than a single-channel torch conv1d for wide kernels
        out = correlate1d(_odd_pad(a, r, axis), k, axis=axis, mode="constant")
        a = np.take(out, np.arange(r, r + n), axis=axis)
    return a


def add_detail(glob: np.ndarray, tiled: np.ndarray, sigma: float) -> np.ndarray:
    """``glob + tiled − gaussian_lowpass(tiled, sigma)`` (float64): the global map plus the tiled map's structure
    finer than about ``sigma`` px (step 5 of the module docstring). A planar ``tiled`` adds nothing."""
    t = np.asarray(tiled, np.float64)
    return np.asarray(glob, np.float64) + (t - gaussian_lowpass(t, sigma))


def _as_croppable(image: Any) -> np.ndarray | torch.Tensor:
    if isinstance(image, PreparedImage):
        raise TypeError("predict_tiled needs the raw image (a prepared image is already resized)")
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim in (2, 3):
        return image
    raise TypeError(f"predict_tiled takes one image (PIL, numpy [H,W(,C)], torch [(C,)H,W]), got "
                    f"{type(image).__name__} {getattr(image, 'shape', '')}")


def _crop(image: np.ndarray | torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image[..., y0:y1, x0:x1]
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def check_tiles(pipe: Any, grid: TileGrid, processing_res: int, batch_size: int) -> int:
    """Raise ValueError (naming the tiles and the exported range) when the tile calls fall outside the backend's
    shape range; returns the rows per network call the tiles will use (``batch_size``, 0 = the backend's maximum)."""
    be = pipe.backend
    rows = batch_size if batch_size > 0 else (be.max_batch or len(grid))
    side = pipe._padded_size((grid.side, grid.side), processing_res)
    try:
        be.check_shapes(min(rows, len(grid)), *side)
    except ValueError as e:
        raise ValueError(f"tiling: {len(grid)} tiles of {grid.side}x{grid.side} px (network input {side[0]}x"
                         f"{side[1]} px, {min(rows, len(grid))} rows per call) are outside the exported engines' "
                         f"range: {e}") from e
    return rows


def predict_tiled(
    pipe: Any,
    image: Any,
    tile: int | None = None,
    overlap: float = 0.5,
    processing_res: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    steps: int | None = None,
    vae: str | None = None,
    *,
    robust: bool = True,
    trim: float = DEFAULT_TRIM,
    lowpass: float | None = LOWPASS_SCALE,
    return_grid: bool = False,
) -> np.ndarray | tuple[np.ndarray, TileGrid | None]:
    """Depth of one image at its full resolution: the global prediction refined by overlapping tiles (see the module
    docstring for the method and the tile rule). Returns float32 [H, W], affine-invariant depth in the global
    prediction's frame (≈ [0, 1]; aligned tiles may overshoot it slightly); with ``return_grid`` also the
    :class:`TileGrid` (None when no tile was run). ``lowpass``: σ of the detail split in global cells (step 5; None:
    the blended tiles replace the global prediction). ``batch_size``: tile rows per network call (0 = the backend's
    maximum). Raises ValueError, before any network call, when the tiles fall outside the exported shape range."""
    img = _as_croppable(image)
    h, w = image_size(img)
    _, _, res, _ = pipe.check_settings(steps=steps, processing_res=processing_res)
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0 (0 = the backend's maximum), got {batch_size}")
    grid = None
    if res > 0 and max(h, w) > res:
        side = default_tile_side(h, w, res) if tile is None else int(tile)
        if side < 2 * pipe.backend.vae_scale_factor:
            raise ValueError(f"tile must be at least {2 * pipe.backend.vae_scale_factor} px, got {side}")
        grid = plan_tiles(h, w, side, overlap)
        if len(grid) == 1:
            grid = None  # one tile is the whole image (square): the plain prediction
    rows = check_tiles(pipe, grid, res, batch_size) if grid is not None else 1

    common = {"processing_res": res, "steps": steps, "vae": vae}
    lat = pipe.initial_latents(img, processing_res=res, seed=seed)
    glob = np.asarray(pipe(img, latents=lat, **common).depth[0], np.float32)
    if grid is None:
        return (glob, None) if return_grid else glob

    boxes = grid.boxes
    tiles = [_crop(img, *b) for b in boxes]
    lats = [pipe.initial_latents(t, processing_res=res, seed=seed + 1 + k)[0] for k, t in enumerate(tiles)]
    preds = pipe(tiles, latents=lats, batch_size=rows, **common).depth
    out = np.zeros((h, w), np.float64)
    for (y0, y1, x0, x1), p, wt in zip(boxes, preds, blend_weights(grid), strict=True):
        aligned = align_tile(np.asarray(p), glob[y0:y1, x0:x1], robust=robust, trim=trim)[0]
        out[y0:y1, x0:x1] += wt * aligned
    if lowpass is not None:
        out = add_detail(glob, out, float(lowpass) * max(h, w) / res)
    out = out.astype(np.float32)
    return (out, grid) if return_grid else out


def _border_lines(starts: tuple[int, ...], side: int, length: int) -> np.ndarray:
    """Positions b (0 < b < length) of tile edges inside the image: a tile edge lies between pixels b − 1 and b."""
    lines = {s for s in starts if s > 0} | {s + side for s in starts if s + side < length}
    return np.array(sorted(lines), dtype=np.int64)


def seam_jump(depth: np.ndarray, tile_grid: TileGrid, q: float = 99.0, step: int = 4) -> dict[str, float]:
    """How much larger the depth's curvature is across tile borders than inside tiles.

    The curvature is the |second difference| with stride ``step`` along each axis, |D[x+k] − 2·D[x] + D[x−k]| (k =
    ``step``; and in y). A stride of a few pixels makes the measure independent of the phase of an upsampled
    prediction's interpolation kinks (a map predicted at 64 px and resized ×4 is piecewise linear between
    4-px-spaced samples, so a stride-1 statistic depends on where a column falls in that pattern). *Border* samples
    are those centred less than k px from a tile edge inside the image (a tile's first/last row or column, where its
    blending weight starts/ends), taken across the edge (along x for vertical edges, along y for horizontal ones);
    their stencils straddle the edge. *Inside* samples are those of the same direction centred at least 2k px from
    every tile edge. A seam (a step, or a kink where a tile's weight starts) is a large second difference across the
    edge. Returns the ``q``-th percentiles (``border``, ``inside``), their ``ratio`` (border / inside: ≤ 1 means no
    seam stands out from the image's own structure), the means and their ``mean_ratio``, the largest values and their
    ``max_ratio`` (the largest jump across a border over the largest inside a tile), and the sample counts. NaN
    ratios when a side has no sample (one tile)."""
    d = np.asarray(depth, np.float64)
    if d.shape != (tile_grid.height, tile_grid.width):
        raise ValueError(f"depth shape {d.shape} does not match the tile grid's {tile_grid.height}x{tile_grid.width}")
    k = int(step)
    if k < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    border, inside = [], []
    for axis, starts, length in ((1, tile_grid.xs, tile_grid.width), (0, tile_grid.ys, tile_grid.height)):
        a = d if axis == 1 else d.T
        if length < 2 * k + 1:
            continue
        d2 = np.abs(a[:, 2 * k :] - 2 * a[:, k:-k] + a[:, : -2 * k])  # centred at k .. length-k-1
        centres = np.arange(k, length - k)
        lines = _border_lines(starts, tile_grid.side, length)
        if lines.size:  # an edge between pixels b-1 and b lies at b - 0.5
            dist = np.min(np.abs(centres[:, None] - (lines[None, :] - 0.5)), axis=1)
            at, far = dist < k, dist >= 2 * k
        else:
            at, far = np.zeros(centres.size, bool), np.ones(centres.size, bool)
        border.append(d2[:, at].ravel())
        inside.append(d2[:, far].ravel())
    b = np.concatenate(border) if border else np.zeros(0)
    i = np.concatenate(inside) if inside else np.zeros(0)

    def stat(x: np.ndarray, f: Any) -> float:
        return float(f(x)) if x.size else float("nan")

    bq, iq = stat(b, lambda x: np.percentile(x, q)), stat(i, lambda x: np.percentile(x, q))
    bm, im = stat(b, np.mean), stat(i, np.mean)
    bx, ix = stat(b, np.max), stat(i, np.max)
    return {
        "border": bq, "inside": iq, "ratio": bq / iq if b.size and iq > 0 else float("nan"),
        "border_mean": bm, "inside_mean": im, "mean_ratio": bm / im if b.size and im > 0 else float("nan"),
        "border_max": bx, "inside_max": ix, "max_ratio": bx / ix if b.size and ix > 0 else float("nan"),
        "border_samples": int(b.size), "inside_samples": int(i.size), "percentile": float(q), "step": k,
    }


__all__ = ["DEFAULT_TRIM", "LOWPASS_SCALE", "TILE_SCALE", "TileGrid", "add_detail", "align_tile", "axis_weights",
           "blend_weights", "check_tiles", "default_tile_side", "gaussian_lowpass", "plan_tiles", "predict_tiled",
           "seam_jump"]
