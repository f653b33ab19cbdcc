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

from agdepth.robust_fit import fit_scale_shift_robust
from agdepth.runtime.pipeline import DepthPipeline
from agdepth.runtime.preprocess import ImageInput, image_size

ALIGN_MODES = ("previous", "none")
DEFAULT_STRENGTH = 1.0  # the warm start of depth-run's videos and of a DepthStream (1: none)
ALIGN_MAX_SIDE = 32  # the fit uses a strided grid of at most this many pixels per side: two numbers need few pixels


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


__all__ = ["ALIGN_MODES", "DEFAULT_STRENGTH", "DepthStream", "StreamFrame", "stream_depth"]
