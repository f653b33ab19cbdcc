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
from typing import Any

import numpy as np
import torch
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from agdepth.artifacts.manifest import MANIFEST
from agdepth.ensemble import ensemble_depth
from agdepth.networks import LATENT_CHANNELS, vae_networks
from agdepth.runtime.backends import DepthBackend
from agdepth.runtime.preprocess import (
    RESAMPLE_METHODS,
    ImageInput,
    PreparedImage,
    as_image_list,
    image_size,
    preprocess,
    processed_size,
    resize,
    unpad,
)
from agdepth.runtime.preprocess import prepare as prepare_images

STAGES = ("preprocess", "encode", "unet", "decode", "ensemble", "postprocess")
REDUCTIONS = ("median", "mean")
OUTPUT_TYPES = ("np", "pt")


@dataclass
class DepthOutput(BaseOutput):
    """diffusers' ``MarigoldDepthOutput`` plus the time per stage: affine-invariant depth in [0, 1].

    ``prediction``/``uncertainty``: numpy [N,H,W,1] (``output_type="np"``) or torch [N,1,H,W] ("pt"); a list of
    per-image maps when the inputs have different sizes. ``latent``: the final latents [N·E,4,h,w] with
    ``output_latent=True``. ``timings``: seconds per stage (:data:`STAGES`) and ``total``.
    """

    prediction: np.ndarray | torch.Tensor | list[Any]
    uncertainty: np.ndarray | torch.Tensor | list[Any] | None = None
    latent: torch.Tensor | list[torch.Tensor] | None = None
    timings: dict[str, float] | None = None

    @property
    def depth(self) -> Any:
        """The prediction without its channel axis: [N,H,W] (or a list of [H,W] maps)."""
        return _squeeze_channel(self.prediction)

    @property
    def depth_uncertainty(self) -> Any:
        """The uncertainty without its channel axis, or None."""
        return None if self.uncertainty is None else _squeeze_channel(self.uncertainty)


def _squeeze_channel(maps: Any) -> Any:
    if isinstance(maps, list):
        return [m[..., 0] if isinstance(m, np.ndarray) else m[0] for m in maps]
    return maps[..., 0] if isinstance(maps, np.ndarray) else maps[:, 0]


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
    """Monocular depth from RGB with a Marigold-style latent diffusion model, on any :class:`DepthBackend`.

    ``vae``: the VAE every call runs unless it passes its own (a key of :data:`agdepth.networks.VAE_CHOICES`:
    "full", "light", "light-encoder", "light-decoder"); None = the checkpoint's recommendation
    (``backend.defaults.vae``).
    """

    def __init__(self, backend: DepthBackend, vae: str | None = None) -> None:
        self.backend = backend
        self.vae = vae
        if vae is not None:
            self.vae_choice(vae)  # refuse an unknown or unavailable choice now, not at the first call

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        vae: str | None = None,
    ) -> DepthPipeline:
        """PyTorch backend over a checkpoint directory (agdepth layout or an official Marigold directory)."""
        from agdepth.runtime.backends import open_checkpoint

        return cls(open_checkpoint(path, device=device, dtype=dtype), vae=vae)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, providers: list[str] | None = None,
                        vae: str | None = None, **kwargs: Any) -> DepthPipeline:
        """diffusers' loading call: a local Marigold / agdepth checkpoint directory (PyTorch, ``torch_dtype``), or an
        export (an engines directory, ``*.onnx``, ``*.plan``) as :meth:`from_engine` opens it. No hub downloads:
        pass a local path. diffusers options this runtime does not implement raise rather than being ignored.
        ``vae="light"`` runs the checkpoint's light VAE (see the class docstring)."""
        if kwargs:
            raise TypeError(f"from_pretrained: unsupported argument(s) {', '.join(sorted(kwargs))} (a local directory "
                            "is loaded in full precision; pass torch_dtype= to cast it)")
        path = Path(pretrained_model_name_or_path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (from_pretrained loads local directories only)")
        is_checkpoint = path.is_dir() and not (path / MANIFEST).is_file()
        if is_checkpoint:
            return cls.from_checkpoint(path, device=device or "cpu", dtype=torch_dtype or torch.float32, vae=vae)
        if torch_dtype is not None:
            raise ValueError(f"{path}: an export's precision is chosen by the graph file (e.g. unet.fp16.onnx), "
                             "not torch_dtype")
        return cls.from_engine(path, providers=providers, device=device, vae=vae)

    @classmethod
    def from_engine(cls, path: str | Path, providers: list[str] | None = None,
                    device: str | torch.device | None = None, vae: str | None = None,
                    threads: int = 0) -> DepthPipeline:
        """The backend :func:`agdepth.runtime.backends.open_backend` picks for ``path`` (``*.onnx``, ``*.plan``, an
        engines directory or a checkpoint directory); ``vae`` as in the class docstring; ``threads``: ONNX Runtime's
        intra-op threads per session (0: its default)."""
        from agdepth.runtime.backends import open_backend

        return cls(open_backend(path, providers=providers, device=device, threads=threads), vae=vae)

    @property
    def image_processor(self) -> Any:
        """diffusers' ``MarigoldImageProcessor`` for this model, for its helpers: ``visualize_depth``,
        ``visualize_uncertainty``, ``export_depth_to_16bit_png`` (as ``MarigoldDepthPipeline.image_processor``)."""
        from diffusers.pipelines.marigold import MarigoldImageProcessor

        return MarigoldImageProcessor(vae_scale_factor=self.backend.vae_scale_factor)

    def to(self, *args: str | torch.device | torch.dtype, device: str | torch.device | None = None,
           dtype: torch.dtype | None = None) -> DepthPipeline:
        """``pipe.to("cuda")`` / ``pipe.to(torch.float16)`` as in diffusers, for the PyTorch backend; exported
        engines run where and in the precision they were built for, so moving them raises."""
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            else:
                device = a
        move = getattr(self.backend, "to", None)
        if move is None:
            if (device is None or torch.device(device) == self.backend.device) and dtype in (None, self.backend.dtype):
                return self
            raise ValueError(f"{type(self.backend).__name__} cannot be moved or cast: open the engine for the device "
                             "and precision you want (e.g. unet.fp16.onnx, a .plan built on that GPU)")
        move(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _latents_per_image(
        latents: torch.Tensor | list[torch.Tensor], shapes: list[tuple[int, int, int, int]], name: str = "latents"
    ) -> list[torch.Tensor]:
        """Split/validate caller latents into one [E,4,h,w] tensor per image (``shapes`` = expected per image)."""
        if isinstance(latents, torch.Tensor):
            if len(set(shapes)) != 1:
                raise ValueError(
                    f"images of different processed sizes need `{name}` as a list of per-image [E,4,h,w] tensors"
                )
            e, c, h, w = shapes[0]
            expected = (len(shapes) * e, c, h, w)
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"`{name}` has unexpected shape={tuple(latents.shape)} expected={expected} "
                    "([N·E, 4, h, w], image-major)"
                )
            return list(latents.split(e, dim=0))
        if not isinstance(latents, (list, tuple)) or len(latents) != len(shapes):
            raise ValueError(f"`{name}` must be a tensor or a list of {len(shapes)} per-image tensors")
        for i, (lat, expected) in enumerate(zip(latents, shapes, strict=True)):
            if not isinstance(lat, torch.Tensor) or tuple(lat.shape) != expected:
                got = tuple(lat.shape) if isinstance(lat, torch.Tensor) else type(lat).__name__
                raise ValueError(f"`{name}[{i}]` has unexpected shape={got} expected={expected}")
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
        if be.schedule.kind == "lcm" and timestep_spacing is not None:
            raise ValueError(f"timestep_spacing={timestep_spacing!r}: an LCM scheduler has its own timesteps")
        be.schedule.step_pairs(steps, spacing)  # steps within the schedule, a known spacing
        if res > 0:  # the longer edge, padded as preprocessing will: within the exported range?
            side = self._padded_size((res, res), res)[0]
            be.check_shapes(1, side, side)
        return steps, ens, res, spacing

    def vae_choice(self, vae: str | None = None) -> str:
        """The VAE a call with ``vae`` runs (None: the pipeline's, else the checkpoint's), checked against what the
        backend has: a ValueError names the choices."""
        choice = vae or self.vae or self.backend.defaults.vae
        vae_networks(choice)  # a known choice
        have = self.backend.vae_variants
        if choice not in have:
            raise ValueError(f"vae={choice!r}: this model has no light VAE (its VAE choices: {', '.join(have)}); "
                             "distil one with `depth-train distill-vae` and re-export")
        return choice

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

    def prepare(self, image: ImageInput | list[ImageInput], processing_resolution: int | None = None,
                resample_method_input: str = "bilinear", *, processing_res: int | None = None) -> list[PreparedImage]:
        """Preprocess images now (normalise, resize, pad), one :class:`PreparedImage` per image, for a later call
        with the same ``processing_resolution`` and ``resample_method_input``: that call skips the work, and its
        results equal those for the raw images. Thread-safe, so a loader can prepare the next images while the
        networks run; a call with other settings refuses them (ValueError)."""
        processing_resolution = _alias(processing_resolution, processing_res, "processing_resolution",
                                       "processing_res")
        res = self.check_settings(processing_res=processing_resolution)[2]
        if resample_method_input not in RESAMPLE_METHODS:
            raise ValueError(f"`resample_method_input` must be one of {RESAMPLE_METHODS}, got "
                             f"{resample_method_input!r}")
        be = self.backend
        image_list = as_image_list(image)
        for size in {image_size(img) for img in image_list}:  # before resizing: a huge size fails here, cheaply
            be.check_shapes(1, *self._padded_size(size, res))
        return prepare_images(image_list, res, be.device, be.dtype, resample_method_input, be.vae_scale_factor,
                              be.static_size)

    # ------------------------------------------------------------------ call

    @torch.no_grad()  # not inference_mode: ensemble_depth differentiates its alignment objective with autograd
    def __call__(
        self,
        image: ImageInput | list[ImageInput],
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        resample_method_input: str = "bilinear",
        resample_method_output: str = "bilinear",
        batch_size: int = 1,
        ensembling_kwargs: dict[str, Any] | None = None,
        latents: torch.Tensor | np.ndarray | list[torch.Tensor] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        output_uncertainty: bool = False,
        output_latent: bool = False,
        return_dict: bool = True,
        *,
        timestep_spacing: str | None = None,
        show_progress: bool = False,
        steps: int | None = None,
        ensemble: int | None = None,
        processing_res: int | None = None,
        seed: int | None = None,
        reduction: str | None = None,
        vae: str | None = None,
        strength: float = 1.0,
        init_latents: torch.Tensor | np.ndarray | list[torch.Tensor] | None = None,
    ) -> DepthOutput | tuple[Any, Any, Any]:
        """Predict depth: diffusers' ``MarigoldDepthPipeline.__call__``, same arguments, defaults and outputs.

        Args:
            image: a PIL image, a numpy array ([H,W], [H,W,C], [N,H,W,C]; unsigned ints or floats in [0, 1]), a
                torch tensor ([H,W], [C,H,W], [N,C,H,W]; uint8 or floats in [0, 1]), an image from :meth:`prepare`, or
                a list of them. Unlike diffusers, images of different sizes may share a call (their outputs are
                then lists).
            num_inference_steps, ensemble_size, processing_resolution: None = the checkpoint's defaults
                (``backend.defaults``; a Marigold directory recommends no ensemble size: 1, as diffusers).
                ``processing_resolution`` is the longer edge the networks see; 0 = native size.
            match_input_resolution: resize the outputs back to the input size (else: the processing size).
            resample_method_input, resample_method_output: torch interpolation modes (:data:`RESAMPLE_METHODS`).
            batch_size: rows (members × images) per network call, sliced as diffusers does; 0 = all of a size
                group at once (up to the backend's ``max_batch``).
            ensembling_kwargs: passed to :func:`agdepth.ensemble.ensemble_depth` (``reduction``,
                ``regularizer_strength``, ``max_iter``, ``tol``, ``max_res``, ``method``).
            latents: the initial noise, [N·E,4,h,w] image-major (torch or numpy), or a list of per-image [E,4,h,w]
                tensors (needed when images have different sizes). Excludes ``generator``.
            generator: a torch.Generator or a list of N·E of them, used as diffusers uses them (the initial noise,
                and the noise LCM adds between steps). None: the global RNG.
            output_type: "np" (prediction [N,H,W,1] float32 arrays) or "pt" ([N,1,H,W] tensors).
            output_uncertainty: also the ensemble's uncertainty (MAD for median, std for mean; ensemble > 1).
            output_latent: also the final latents [N·E,4,h,w], usable as ``latents=`` of another call.
            return_dict: False returns the tuple (prediction, uncertainty, latent).
            timestep_spacing: DDIM timestep spacing (None: the checkpoint's). LCM checkpoints have their own
                timesteps and refuse one.
            steps, ensemble, processing_res, seed, reduction: short aliases of ``num_inference_steps``,
                ``ensemble_size``, ``processing_resolution``, ``generator=torch.Generator(device).manual_seed(seed)``
                and ``ensembling_kwargs["reduction"]``.
            vae: the VAE this call runs ("full", "light", "light-encoder", "light-decoder"); None: the pipeline's
                (``DepthPipeline(vae=)``), else the checkpoint's recommendation.
            init_latents, strength: a warm start (as diffusers' img2img ``strength``): the run starts from
                ``init_latents`` (depth latents, e.g. an earlier call's ``output_latent``; the layout of ``latents``)
                noised with the initial noise to the timestep ``strength`` gives
                (:meth:`agdepth.schedule.NoiseSchedule.start_timestep`), and its steps span that timestep down to
                0. ``strength`` 1 starts at T − 1 as a plain call does; < 1 needs ``init_latents`` and a DDIM
                schedule.
        """
        t_start = time.perf_counter()
        be = self.backend
        num_inference_steps = _alias(num_inference_steps, steps, "num_inference_steps", "steps")
        ensemble_size = _alias(ensemble_size, ensemble, "ensemble_size", "ensemble")
        processing_resolution = _alias(processing_resolution, processing_res, "processing_resolution",
                                       "processing_res")
        ens_kwargs = dict(ensembling_kwargs or {})
        if not isinstance(ensembling_kwargs, (dict, type(None))):
            raise ValueError("`ensembling_kwargs` must be a dictionary.")
        if reduction is not None:
            ens_kwargs["reduction"] = _alias(ens_kwargs.get("reduction"), reduction, "ensembling_kwargs['reduction']",
                                             "reduction")
        if ens_kwargs.get("reduction", "median") not in REDUCTIONS:
            raise ValueError(f"ensembling_kwargs['reduction'] must be one of {REDUCTIONS}, got "
                             f"{ens_kwargs['reduction']!r}")
        if seed is not None:
            if generator is not None:
                raise ValueError("`seed` and `generator` cannot be used together")
            generator = torch.Generator(device=be.device).manual_seed(int(seed))
        used = {"steps": num_inference_steps is None, "processing_resolution": processing_resolution is None}
        if any(used[a] for a in be.defaults.assumed) and not getattr(self, "_warned_assumed", False):
            warnings.warn(be.defaults.describe_assumed() + " (num_inference_steps=, processing_resolution=)",
                          UserWarning, stacklevel=2)
            self._warned_assumed = True  # once per pipeline
        steps_, ens, res, spacing = self.check_settings(num_inference_steps, ensemble_size, processing_resolution,
                                                        timestep_spacing)
        encoder, decoder = vae_networks(self.vae_choice(vae))
        for name, method in (("resample_method_input", resample_method_input),
                             ("resample_method_output", resample_method_output)):
            if method not in RESAMPLE_METHODS:
                raise ValueError(f"`{name}` must be one of {RESAMPLE_METHODS}, got {method!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 0 (0 = all at once), got {batch_size}")
        if output_uncertainty and ens < 2:
            raise ValueError("output_uncertainty needs ensemble_size > 1")
        if latents is not None and generator is not None:
            raise ValueError("`latents` and `generator` cannot be used together")
        if strength != 1.0 and init_latents is None:
            raise ValueError(f"strength={strength} starts from init_latents: pass them (e.g. an earlier call's "
                             "output_latent)")
        canvas = be.static_size
        pairs = be.schedule.step_pairs(steps_, spacing, strength)
        device, dtype = be.device, be.dtype
        clock = _StageClock(device)

        # 1. preprocess
        with clock("preprocess"):
            image_list = as_image_list(image)
            n_images = len(image_list)
            if isinstance(generator, list) and len(generator) != n_images * ens:
                raise ValueError(f"`generator` is a list of {len(generator)}: it must hold one generator per "
                                 f"ensemble member of every image ({n_images} x {ens})")
            f = be.vae_scale_factor
            for size in {image_size(img) for img in image_list}:  # before resizing: a huge size fails here, cheaply
                be.check_shapes(1, *self._padded_size(size, res))
            groups = preprocess(image_list, res, device, dtype, resample_method=resample_method_input, align=f,
                                canvas=canvas)
            latent_shape: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * n_images
            for g in groups:
                h, w = g.image.shape[-2] // f, g.image.shape[-1] // f
                for i in g.indices:
                    latent_shape[i] = (ens, LATENT_CHANNELS, h, w)
            if isinstance(latents, np.ndarray):
                latents = torch.from_numpy(latents)
            fixed = None if latents is None else self._latents_per_image(latents, latent_shape)
            if isinstance(init_latents, np.ndarray):
                init_latents = torch.from_numpy(init_latents)
            init = None if init_latents is None else self._latents_per_image(init_latents, latent_shape,
                                                                                 "init_latents")
            emb = be.empty_text_embedding.to(device=device, dtype=dtype)

        if batch_size == 0:  # all at once, up to what the exported networks take
            batch_size = be.max_batch or max(len(g.indices) for g in groups) * ens
        for g in groups:  # every call's shape within the exported range, before any work
            be.check_shapes(min(batch_size, len(g.indices) * ens), *g.image.shape[-2:])
        n_calls = sum(math.ceil(len(g.indices) * ens / batch_size) for g in groups)
        bar = tqdm(total=n_calls * len(pairs), desc="denoising", disable=not show_progress, leave=False)
        depth: list[torch.Tensor | None] = [None] * n_images
        uncert: list[torch.Tensor | None] = [None] * n_images
        final: list[torch.Tensor | None] = [None] * n_images
        try:
            for g in groups:
                n, rows = len(g.indices), len(g.indices) * ens
                # 2. encode each image once, repeat for its members; initial noise (diffusers' prepare_latents)
                with clock("encode"):
                    rgb_latent = torch.cat([be.encode(g.image[i : i + batch_size], encoder)
                                            for i in range(0, n, batch_size)])
                    rgb_latent = rgb_latent.repeat_interleave(ens, dim=0)  # [n·E,4,h,w], image-major
                    if fixed is not None:
                        noise = torch.cat([fixed[i] for i in g.indices]).to(device=device, dtype=dtype)
                    else:  # one draw per group, diffusers' call (a list: one generator per member, in order)
                        gen = generator
                        if isinstance(generator, list):
                            gen = [generator[i * ens + k] for i in g.indices for k in range(ens)]
                        noise = randn_tensor(rgb_latent.shape, generator=gen, device=device, dtype=dtype)
                    if init is not None:  # a warm start: the given depth latents noised to the first timestep
                        z0 = torch.cat([init[i] for i in g.indices]).to(device=device, dtype=torch.float32)
                        noise = be.schedule.add_noise(z0, noise.float(), pairs[0][0])

                # 3. the denoising loop, `batch_size` rows per U-Net call, as diffusers slices them
                pred, lat = [], []
                for r0 in range(0, rows, batch_size):
                    with clock("unet"):
                        cond = rgb_latent[r0 : r0 + batch_size]
                        # the scheduler's state and update in float32 whatever the network dtype: in fp16/bf16 the ᾱ
                        # coefficients and the x̂0 = √ᾱ·z − √(1−ᾱ)·v cancellation lose most of the precision
                        z = noise[r0 : r0 + batch_size].float()
                        b = z.shape[0]
                        text = emb.expand(b, -1, -1)
                        for k, (t, prev_t) in enumerate(pairs):
                            ts = torch.full((b,), t, dtype=torch.int64, device=device)
                            v = be.denoise(torch.cat([cond, z.to(dtype)], dim=1), ts, text)
                            step_noise = None
                            if be.schedule.step_needs_noise(k, len(pairs)):  # LCM: fresh noise, diffusers' draw
                                step_noise = randn_tensor(v.shape, generator=generator, device=device,
                                                          dtype=dtype).float()
                            z = be.schedule.step(v.float(), t, prev_t, z, last=k == len(pairs) - 1,
                                                 noise=step_noise)[0]
                            bar.update(1)
                    lat.append(z)
                    with clock("decode"):
                        x = be.decode(z.to(dtype), decoder)
                        pred.append((x.clamp(-1.0, 1.0) + 1.0) / 2.0)
                # 4. unpad (before ensembling, as diffusers: padding must not sway alignment or the [0,1] range)
                with clock("postprocess"):
                    p = unpad(torch.cat(pred), g.padding)  # [n·E,1,PH,PW]
                    p = p.reshape(n, ens, *p.shape[-2:])
                    z_all = torch.cat(lat).to(dtype)
                # 5. ensemble the members of each image
                u = None
                if ens > 1:
                    with clock("ensemble"):
                        p, u = ensemble_depth(p, output_uncertainty=output_uncertainty, **ens_kwargs)
                else:
                    p = p[:, 0:1]
                # 6. back to the input size (no antialiasing, as diffusers)
                with clock("postprocess"):
                    p = p.reshape(n, 1, *p.shape[-2:])
                    if match_input_resolution:
                        p = resize(p, g.original_size, resample_method_output)
                    if u is not None and output_uncertainty:
                        u = u.reshape(n, 1, *u.shape[-2:])
                        if match_input_resolution:
                            u = resize(u, g.original_size, resample_method_output)
                    for j, i in enumerate(g.indices):
                        depth[i] = p[j]
                        final[i] = z_all[j * ens : (j + 1) * ens]
                        if u is not None and output_uncertainty:
                            uncert[i] = u[j]
        finally:
            bar.close()

        with clock("postprocess"):
            prediction = _collect(depth, output_type)  # type: ignore[arg-type]
            uncertainty = _collect(uncert, output_type) if output_uncertainty else None  # type: ignore[arg-type]
            latent = None
            if output_latent:
                same = len({tuple(z.shape) for z in final}) == 1  # type: ignore[union-attr]
                latent = torch.cat(final) if same else list(final)  # type: ignore[arg-type]
        timings = dict(clock.seconds)
        timings["total"] = time.perf_counter() - t_start
        if not return_dict:
            return prediction, uncertainty, latent
        return DepthOutput(prediction=prediction, uncertainty=uncertainty, latent=latent, timings=timings)


def _alias(value: Any, alias: Any, name: str, alias_name: str) -> Any:
    if alias is None:
        return value
    if value is not None and value != alias:
        raise ValueError(f"`{name}` and its alias `{alias_name}` disagree ({value!r} vs {alias!r})")
    return alias


def _collect(maps: list[torch.Tensor], output_type: str) -> Any:
    """Per-image [1,H,W] tensors -> diffusers' layout: np [N,H,W,1] / pt [N,1,H,W] (a list when sizes differ)."""
    if output_type == "np":
        arrays = [m.float().permute(1, 2, 0).cpu().numpy() for m in maps]
        return np.stack(arrays) if len({a.shape for a in arrays}) == 1 else arrays
    return torch.stack(maps) if len({tuple(m.shape) for m in maps}) == 1 else list(maps)


__all__ = ["STAGES", "DepthOutput", "DepthPipeline", "PreparedImage"]
