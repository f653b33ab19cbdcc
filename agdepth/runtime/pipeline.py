"""The runtime's depth pipeline: preprocessing, the DDIM loop, decoding, ensembling, postprocessing.

Backend-agnostic: networks are reached only through :class:`agdepth.runtime.backends.DepthBackend`, and the DDIM
loop is this module's own code on :class:`agdepth.schedule.NoiseSchedule` (no diffusers scheduler), so the PyTorch,
ONNX Runtime and TensorRT backends all run exactly the same math. With equal inputs (``latents=``, or the same seed on
the same device) the result equals diffusers' ``MarigoldDepthPipeline`` for ensemble size 1.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from agdepth.ensemble import ensemble_depth
from agdepth.networks import LATENT_CHANNELS
from agdepth.runtime.backends import DepthBackend
from agdepth.runtime.preprocess import ImageInput, as_image_list, image_size, preprocess, processed_size, resize, unpad

STAGES = ("preprocess", "encode", "unet", "decode", "ensemble", "postprocess")
REDUCTIONS = ("median", "mean")


@dataclass
class DepthOutput:
    """Affine-invariant depth in [0, 1] at each input's own size.

    ``depth``/``uncertainty`` are float32 [N,H,W] arrays when all inputs share one size, else lists of [H,W] arrays.
    ``timings`` holds seconds per stage (:data:`STAGES`) and ``total``.
    """

    depth: np.ndarray | list[np.ndarray]
    uncertainty: np.ndarray | list[np.ndarray] | None
    timings: dict[str, float]


class _StageClock:
    """Accumulates wall time per stage; synchronises CUDA so asynchronous kernels are charged to their stage."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = dict.fromkeys(STAGES, 0.0)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - t0


def _stack_or_list(maps: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(maps) if len({m.shape for m in maps}) == 1 else maps


class DepthPipeline:
    """Monocular depth from RGB with a Marigold-style latent diffusion model, on any :class:`DepthBackend`."""

    def __init__(self, backend: DepthBackend) -> None:
        self.backend = backend

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> DepthPipeline:
        """PyTorch backend over a checkpoint directory (agdepth layout or an official Marigold directory)."""
        from agdepth.runtime.backends import open_checkpoint

        return cls(open_checkpoint(path, device=device, dtype=dtype))

    @classmethod
    def from_engine(cls, path: str | Path, providers: list[str] | None = None,
                    device: str | torch.device | None = None) -> DepthPipeline:
        """The backend :func:`agdepth.runtime.backends.open_backend` picks for ``path`` (``*.onnx``, ``*.plan``, an
        engines directory or a checkpoint directory)."""
        from agdepth.runtime.backends import open_backend

        return cls(open_backend(path, providers=providers, device=device))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _latents_per_image(
        latents: torch.Tensor | list[torch.Tensor], shapes: list[tuple[int, int, int, int]]
    ) -> list[torch.Tensor]:
        """Split/validate caller latents into one [E,4,h,w] tensor per image (``shapes`` = expected per image)."""
        if isinstance(latents, torch.Tensor):
            if len(set(shapes)) != 1:
                raise ValueError(
                    "images of different processed sizes need `latents` as a list of per-image [E,4,h,w] tensors"
                )
            e, c, h, w = shapes[0]
            expected = (len(shapes) * e, c, h, w)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"`latents` has unexpected shape={tuple(latents.shape)} expected={expected} "
                    "([N·E, 4, h, w], image-major)"
                )
            return list(latents.split(e, dim=0))
        if not isinstance(latents, (list, tuple)) or len(latents) != len(shapes):
            raise ValueError(f"`latents` must be a tensor or a list of {len(shapes)} per-image tensors")
        for i, (lat, expected) in enumerate(zip(latents, shapes, strict=True)):
            if not isinstance(lat, torch.Tensor) or tuple(lat.shape) != expected:
                got = tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__
                raise ValueError(f"`latents[{i}]` has unexpected shape={got} expected={expected}")
        return list(latents)

    def _processing_resolution(self, processing_res: int | None) -> int:
        """The longer edge the networks see: the argument, else the checkpoint's default; static engines take their
        canvas side only."""
        canvas = self.backend.static_size
        if canvas is None:
            return self.backend.defaults.processing_resolution if processing_res is None else int(processing_res)
        side = max(canvas)
        if processing_res is not None and int(processing_res) != side:
            raise ValueError(f"the engines are static ({canvas[0]}x{canvas[1]} px): processing_res must be {side} "
                             f"or None, got {processing_res}")
        return side

    def check_settings(self, steps: int | None = None, ensemble: int | None = None, processing_res: int | None = None,
                       timestep_spacing: str | None = None) -> tuple[int, int, int, str]:
        """The settings a call would use (None = the checkpoint's default), validated without touching an image:
        ranges, and the processing resolution against the backend's exported shape range. Raises ValueError."""
        be = self.backend
        d = be.defaults
        steps = d.steps if steps is None else int(steps)
        ens = d.ensemble_size if ensemble is None else int(ensemble)
        spacing = d.timestep_spacing if timestep_spacing is None else timestep_spacing
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if ens < 1:
            raise ValueError(f"ensemble must be >= 1, got {ens}")
        if processing_res is not None and int(processing_res) < 0:
            raise ValueError(f"processing_res must be >= 0 (0 = native resolution), got {processing_res}")
        res = self._processing_resolution(processing_res)
        be.schedule.ddim_step_pairs(steps, spacing)  # steps within the schedule, a known spacing
        if res > 0:  # the longer edge, padded as preprocessing will: within the exported range?
            side = self._padded_size((res, res), res)[0]
            be.check_shapes(1, side, side)
        return steps, ens, res, spacing

    def _padded_size(self, size: tuple[int, int], res: int) -> tuple[int, int]:
        """(H, W) the networks see for an input of ``size`` at processing resolution ``res``: resized as
        :func:`preprocess` does, then padded to a multiple of f or to the static canvas."""
        canvas = self.backend.static_size
        if canvas is not None:
            return canvas
        f = self.backend.vae_scale_factor
        h, w = processed_size(size, res)
        return -(-h // f) * f, -(-w // f) * f

    def initial_latents(self, images: ImageInput | list[ImageInput], ensemble: int | None = None,
                        processing_res: int | None = None, seed: int = 0) -> list[torch.Tensor]:
        """Initial noise drawn on the CPU, one [E,4,h,w] tensor per image, for ``latents=``: the same numbers
        whatever the backend's device (a CUDA generator draws other numbers from the same seed)."""
        be = self.backend
        ens = be.defaults.ensemble_size if ensemble is None else int(ensemble)
        res = self._processing_resolution(processing_res)
        f = be.vae_scale_factor
        g = torch.Generator().manual_seed(int(seed))
        out: list[torch.Tensor] = []
        for img in as_image_list(images):
            h, w = self._padded_size(image_size(img), res)
            out.append(torch.randn((ens, LATENT_CHANNELS, h // f, w // f), generator=g))
        return out

    # ------------------------------------------------------------------ call

    @torch.no_grad()  # not inference_mode: ensemble_depth differentiates its alignment objective with autograd
    def __call__(
        self,
        images: ImageInput | list[ImageInput],
        steps: int | None = None,
        ensemble: int | None = None,
        processing_res: int | None = None,
        timestep_spacing: str | None = None,
        batch_size: int = 0,
        seed: int | None = None,
        latents: torch.Tensor | list[torch.Tensor] | None = None,
        output_uncertainty: bool = False,
        reduction: str = "median",
        show_progress: bool = False,
    ) -> DepthOutput:
        """Predict depth for one image or a list (PIL images or [H,W,3] / [H,W] numpy arrays; uint8 or float [0,1]).

        Args:
            steps, ensemble, processing_res, timestep_spacing: None = the checkpoint's defaults
                (``backend.defaults``). ``processing_res`` is the longer edge the networks see; 0 = native size.
            batch_size: at most this many rows per network call (0 = a whole size group at once, or the backend's
                ``max_batch``). Members of one image share a call whenever batch_size ≥ ensemble.
            seed: initial noise from ``torch.Generator(backend.device).manual_seed(seed)``, drawn per size group as
                one ``randn([n·E,4,h,w])`` (exactly diffusers' draw for a single size). None = global RNG.
            latents: fixed initial noise instead: [N·E,4,h,w] image-major, or a list of per-image [E,4,h,w]
                (needed when images have different sizes). Excludes ``seed``.
            output_uncertainty: also return the ensemble's uncertainty (MAD for median, std for mean; ensemble > 1).
            reduction: "median" or "mean" ensembling.
        """
        t_start = time.perf_counter()
        be = self.backend
        used = {"steps": steps is None, "processing_resolution": processing_res is None}
        if any(used[a] for a in be.defaults.assumed) and not getattr(self, "_warned_assumed", False):
            warnings.warn(be.defaults.describe_assumed() + " (steps=, processing_res=)", UserWarning, stacklevel=2)
            self._warned_assumed = True  # once per pipeline
        steps, ens, res, spacing = self.check_settings(steps, ensemble, processing_res, timestep_spacing)
        canvas = be.static_size
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0 = all at once), got {batch_size}")
        if batch_size == 0 and be.max_batch is not None:
            batch_size = be.max_batch  # "all at once" up to what the exported networks take
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if output_uncertainty and ens < 2:
            raise ValueError("output_uncertainty needs ensemble > 1")
        if latents is not None and seed is not None:
            raise ValueError("`latents` and `seed` cannot be used together")
        pairs = be.schedule.ddim_step_pairs(steps, spacing)  # validates steps and spacing
        device, dtype = be.device, be.dtype
        clock = _StageClock(device)

        # 1. preprocess
        with clock("preprocess"):
            image_list = as_image_list(images)
            f = be.vae_scale_factor
            for size in {image_size(img) for img in image_list}:  # before resizing: a huge size fails here, cheaply
                be.check_shapes(1, *self._padded_size(size, res))
            groups = preprocess(image_list, res, device, dtype, align=f, canvas=canvas)
            n_images = len(image_list)
            latent_shape: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * n_images
            for g in groups:
                h, w = g.image.shape[-2] // f, g.image.shape[-1] // f
                for i in g.indices:
                    latent_shape[i] = (ens, LATENT_CHANNELS, h, w)
            fixed = None if latents is None else self._latents_per_image(latents, latent_shape)
            generator = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
            emb = be.empty_text_embedding.to(device=device, dtype=dtype)

        rows_per_group = [len(g.indices) * ens for g in groups]
        if batch_size == 0:
            chunk_rows = list(rows_per_group)
        else:  # whole images per call when the members fit, else split the members
            chunk_rows = [batch_size // ens * ens if batch_size >= ens else batch_size] * len(groups)
        for g, rows, total in zip(groups, chunk_rows, rows_per_group, strict=True):  # fail before any work
            n_enc = len(g.indices) if batch_size == 0 else min(batch_size, len(g.indices))
            be.check_shapes(max(min(rows, total), n_enc), *g.image.shape[-2:])
        n_calls = sum(math.ceil(r / c) for r, c in zip(rows_per_group, chunk_rows, strict=True))
        bar = tqdm(total=n_calls * len(pairs), desc="denoising", disable=not show_progress, leave=False)

        depth: list[np.ndarray | None] = [None] * n_images
        uncert: list[np.ndarray | None] = [None] * n_images
        try:
            for g, rows in zip(groups, chunk_rows, strict=True):
                n = len(g.indices)
                # 2. encode each image once, repeat for its members; initial noise (diffusers' prepare_latents)
                with clock("encode"):
                    enc_step = n if batch_size == 0 else batch_size
                    rgb_latent = torch.cat([be.encode(g.image[i : i + enc_step]) for i in range(0, n, enc_step)])
                    rgb_latent = rgb_latent.repeat_interleave(ens, dim=0)  # [n·E,4,h,w], image-major
                    if fixed is not None:
                        noise = torch.cat([fixed[i] for i in g.indices]).to(device=device, dtype=dtype)
                    else:  # one draw per group, same call as diffusers' randn_tensor
                        noise = torch.randn(rgb_latent.shape, generator=generator, device=device, dtype=dtype)

                # 3. DDIM loop, `rows` latents per U-Net call
                pred = []
                for r0 in range(0, n * ens, rows):
                    with clock("unet"):
                        cond = rgb_latent[r0 : r0 + rows]
                        # DDIM state and update in float32 whatever the network dtype: in fp16/bf16 the ᾱ
                        # coefficients and the x̂0 = √ᾱ·z − √(1−ᾱ)·v cancellation lose most of the precision
                        z = noise[r0 : r0 + rows].float()
                        b = z.shape[0]
                        text = emb.expand(b, -1, -1)
                        for t, prev_t in pairs:
                            ts = torch.full((b,), t, dtype=torch.int64, device=device)
                            v = be.denoise(torch.cat([cond, z.to(dtype)], dim=1), ts, text)
                            z = be.schedule.ddim_step(v.float(), t, prev_t, z)[0]
                            bar.update(1)
                    with clock("decode"):
                        x = be.decode(z.to(dtype))
                        pred.append((x.clamp(-1.0, 1.0) + 1.0) / 2.0)
                # 4. unpad (before ensembling, as diffusers: padding must not sway alignment or the [0,1] range)
                with clock("postprocess"):
                    p = unpad(torch.cat(pred), g.padding)  # [n·E,1,PH,PW]
                    p = p.reshape(n, ens, *p.shape[-2:])
                # 5. ensemble the members of each image
                u = None
                if ens > 1:
                    with clock("ensemble"):
                        p, u = ensemble_depth(p, output_uncertainty=output_uncertainty, reduction=reduction)
                # 6. back to the input size (bilinear, no antialiasing, as diffusers)
                with clock("postprocess"):
                    p = resize(p.reshape(n, 1, *p.shape[-2:]), g.original_size, "bilinear")
                    p_np = p[:, 0].float().cpu().numpy()
                    u_np = None
                    if u is not None and output_uncertainty:
                        u = resize(u.reshape(n, 1, *u.shape[-2:]), g.original_size, "bilinear")
                        u_np = u[:, 0].float().cpu().numpy()
                    for j, i in enumerate(g.indices):
                        depth[i] = p_np[j]
                        if u_np is not None:
                            uncert[i] = u_np[j]
        finally:
            bar.close()

        timings = dict(clock.seconds)
        timings["total"] = time.perf_counter() - t_start
        return DepthOutput(
            depth=_stack_or_list(depth),  # type: ignore[arg-type]
            uncertainty=_stack_or_list(uncert) if output_uncertainty else None,  # type: ignore[arg-type]
            timings=timings,
        )


__all__ = ["DepthOutput", "DepthPipeline", "STAGES"]
