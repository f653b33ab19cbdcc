"""Causal depth for video: :class:`DepthStream` turns frames, one at a time, into depth in one frame of reference.

Per-frame prediction flickers: every frame has its own affine ambiguity (the pipeline's output is normalised to
[0, 1] per image) and its own noise. A stream, with no look-ahead:

* **fixed noise**: every frame starts from the same initial noise (drawn once, from ``seed``);
* **warm start**: from the second frame on, the denoising starts from the previous frame's depth latent noised to the
  timestep of ``strength`` (:meth:`agdepth.schedule.NoiseSchedule.start_timestep`) instead of from pure noise, so
  each frame refines the last one's depth under its own RGB condition (``strength=1`` turns it off);
* **online alignment**: each frame's affine-invariant depth is mapped by a scale and shift into the stream's frame of
  reference (the first frame's), fitted in closed form to the previous output on their common pixels, reweighted
  (Huber, then Tukey's biweight) so pixels that moved across a depth edge do not pull the fit.

The per-frame math is the image pipeline's own (:class:`agdepth.runtime.pipeline.DepthPipeline`), on any backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from agdepth.runtime.pipeline import DepthPipeline
from agdepth.runtime.preprocess import ImageInput, image_size

ALIGN_MODES = ("previous", "none")
DEFAULT_STRENGTH = 1.0  # the warm start of depth-run's videos and of a DepthStream (1: none)
ALIGN_MAX_SIDE = 32  # the fit uses a strided grid of at most this many pixels per side: two numbers need few pixels
# Huber's and Tukey's tuning constants (95 % efficiency under Gaussian residuals), in units of the residuals' scale
HUBER_K = 1.345
TUKEY_C = 4.685
IRLS_ITERATIONS = 3  # per weight function


@dataclass
class StreamFrame:
    """One frame's result. ``depth`` = ``scale · raw + shift``: the stream's frame of reference (the first frame's
    [0, 1] range; later frames may leave it a little where the scene's depth range grows)."""

    index: int
    depth: np.ndarray  # float32 [H,W]
    raw: np.ndarray  # float32 [H,W]: this frame's own affine-invariant depth in [0, 1]
    scale: float
    shift: float
    timings: dict[str, float] = field(default_factory=dict)  # the pipeline's stages, plus "align" and "total"


def fit_scale_shift_robust(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None,
                           iterations: int = IRLS_ITERATIONS) -> tuple[float, float]:
    """(s, t) fitting s·x + t to y over ``mask``, robust to a large share of outliers: least squares, then
    iteratively reweighted least squares, ``iterations`` steps with Huber weights (k = 1.345) and as many with
    Tukey's biweight (c = 4.685, redescending: a pixel far off, such as one that moved across a depth edge, gets no
    weight at all); the residual scale is 1.4826 · their median absolute value. Each step is a closed-form 2×2
    solve."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    m = np.isfinite(x) & np.isfinite(y)
    if mask is not None:
        m &= np.asarray(mask, bool).ravel()
    x, y = x[m], y[m]
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"need at least 2 distinct values to fit a scale and shift, got {x.size} pixel(s)")
    w = np.ones_like(x)
    s = t = 0.0
    weights = [_huber] * iterations + [_tukey] * iterations
    for it in range(len(weights) + 1):
        sw, sx, sy = w.sum(), (w * x).sum(), (w * y).sum()
        det = sw * (w * x * x).sum() - sx * sx
        if det <= 0:  # too few pixels kept to tell a scale: keep the last fit
            break
        sxx, sxy = (w * x * x).sum(), (w * x * y).sum()
        s, t = (sw * sxy - sx * sy) / det, (sxx * sy - sx * sxy) / det
        if it == len(weights):
            break
        r = np.abs(s * x + t - y)
        sigma = 1.4826 * np.median(r)
        if sigma <= 0:  # more than half the pixels fit exactly
            break
        w = weights[it](r / sigma)
    return float(s), float(t)


def _huber(u: np.ndarray, k: float = HUBER_K) -> np.ndarray:
    return np.minimum(1.0, k / np.maximum(u, 1e-12))


def _tukey(u: np.ndarray, c: float = TUKEY_C) -> np.ndarray:
    return np.where(u < c, (1.0 - (u / c) ** 2) ** 2, 0.0)


def _grid(a: np.ndarray, max_side: int = ALIGN_MAX_SIDE) -> np.ndarray:
    step = max(1, -(-max(a.shape) // max_side))
    return a[::step, ::step]


class DepthStream:
    """Frames in, depth out, causally: ``stream.push(frame) -> StreamFrame``.

    ``steps``, ``processing_res``, ``timestep_spacing``, ``vae``: as the pipeline's call (None: the model's defaults);
    one ensemble member per frame. ``seed``: the fixed initial noise. ``strength``: the warm start (see the module
    docstring; 1 = none; needs a DDIM schedule when < 1). ``align``: "previous" (the online alignment) or "none"
    (each frame's own [0, 1] depth). Frames must keep one size; :meth:`reset` starts a new clip.
    """

    def __init__(self, pipeline: DepthPipeline, *, steps: int | None = None, processing_res: int | None = None,
                 timestep_spacing: str | None = None, vae: str | None = None, seed: int = 0,
                 strength: float = DEFAULT_STRENGTH, align: str = "previous") -> None:
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.pipe = pipeline
        self.steps, _, self.processing_res, self.timestep_spacing = pipeline.check_settings(
            steps, 1, processing_res, timestep_spacing)
        self.vae = pipeline.vae_choice(vae)
        self.strength = float(strength)
        # the warm start's schedule, checked now rather than at the second frame
        pipeline.backend.schedule.step_pairs(self.steps, self.timestep_spacing, self.strength)
        self.seed = int(seed)
        self.align = align
        self.reset()

    def reset(self) -> None:
        """Forget the clip: the next frame starts a new one (fresh frame of reference, no warm start)."""
        self.index = 0
        self._size: tuple[int, int] | None = None
        self._noise: list[torch.Tensor] | None = None
        self._latent: torch.Tensor | None = None
        self._previous: np.ndarray | None = None

    def push(self, frame: ImageInput) -> StreamFrame:
        """The next frame's depth (any image input the pipeline takes, one image)."""
        t0 = time.perf_counter()
        size = image_size(frame)
        if self._size is None:
            self._size = size
            self._noise = self.pipe.initial_latents([frame], 1, self.processing_res, seed=self.seed)
        elif size != self._size:
            raise ValueError(f"frame {self.index} is {size[1]}x{size[0]} px, the stream's frames are "
                             f"{self._size[1]}x{self._size[0]}: call reset() to start another clip")
        warm = self._latent is not None and self.strength < 1.0
        out = self.pipe(frame, steps=self.steps, ensemble=1, processing_res=self.processing_res,
                        timestep_spacing=self.timestep_spacing, vae=self.vae, latents=self._noise,
                        init_latents=[self._latent] if warm else None, strength=self.strength if warm else 1.0,
                        output_latent=True)
        raw = np.asarray(out.depth[0], np.float32)
        t_align = time.perf_counter()
        scale, shift = 1.0, 0.0
        if self.align == "previous" and self._previous is not None:
            scale, shift = fit_scale_shift_robust(_grid(raw), _grid(self._previous))
        depth = raw if (scale, shift) == (1.0, 0.0) else (scale * raw + shift).astype(np.float32)
        timings = dict(out.timings or {})
        timings["align"] = time.perf_counter() - t_align
        timings["total"] = time.perf_counter() - t0
        self._latent = out.latent[0:1] if isinstance(out.latent, torch.Tensor) else None
        self._previous = depth
        result = StreamFrame(index=self.index, depth=depth, raw=raw, scale=scale, shift=shift, timings=timings)
        self.index += 1
        return result

    def __call__(self, frame: ImageInput) -> StreamFrame:
        return self.push(frame)


def stream_depth(pipeline: DepthPipeline, frames: Any, **kwargs: Any) -> list[StreamFrame]:
    """Every frame of ``frames`` (an iterable of images) through one :class:`DepthStream` (``kwargs``)."""
    stream = DepthStream(pipeline, **kwargs)
    return [stream.push(f) for f in frames]


__all__ = ["ALIGN_MODES", "DEFAULT_STRENGTH", "DepthStream", "StreamFrame", "fit_scale_shift_robust", "stream_depth"]
