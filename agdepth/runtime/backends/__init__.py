"""The backend interface: the network calls the runtime's DDIM loop needs, and the settings that go with them.

A backend owns the networks (PyTorch modules, ONNX Runtime sessions or TensorRT engines) and nothing else: the DDIM
loop, pre/post-processing and ensembling live in :mod:`agdepth.runtime.pipeline` and are shared by every backend.
Tensors cross the interface as torch tensors on :attr:`DepthBackend.device` in :attr:`DepthBackend.dtype`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.schedule import NoiseSchedule


@runtime_checkable
class DepthBackend(Protocol):
    """What :class:`agdepth.runtime.pipeline.DepthPipeline` needs from a set of networks.

    Shapes: B batch rows, H×W the padded image (a multiple of f = :attr:`vae_scale_factor`), h×w = H/f×W/f the
    latent, L×C the text embedding.
    """

    @property
    def vae_scale_factor(self) -> int:
        """The VAE's spatial downsampling: 8 for SD's VAE (2 ** (VAE blocks - 1), as diffusers computes it)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where inputs are expected and outputs are returned."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of inputs and outputs (latents, noise and images use it too)."""
        ...

    @property
    def empty_text_embedding(self) -> torch.Tensor:
        """[1, L, C] empty-prompt embedding on :attr:`device` in :attr:`dtype`."""
        ...

    @property
    def schedule(self) -> NoiseSchedule:
        """The checkpoint's noise schedule (from its scheduler config)."""
        ...

    @property
    def defaults(self) -> RuntimeDefaults:
        """The checkpoint's recommended inference settings."""
        ...

    @property
    def max_batch(self) -> int | None:
        """Most rows one network call takes (an exported range), None = no limit; the pipeline's batch_size=0 means
        this many."""
        ...

    @property
    def static_size(self) -> tuple[int, int] | None:
        """(H, W) in pixels when the networks take one padded size only (static engines), else None. The pipeline
        then pads every image to it (replicate, bottom/right) and removes the padding afterwards."""
        ...

    def check_shapes(self, batch: int, height: int, width: int) -> None:
        """Raise ValueError (naming the supported range) if network calls of ``batch`` rows at the padded image size
        H×W cannot run; called before any work. Backends without fixed ranges accept everything."""
        ...

    @property
    def vae_variants(self) -> tuple[str, ...]:
        """The VAE choices (keys of :data:`agdepth.networks.VAE_CHOICES`) this backend can run: ("full",), or all of
        them when the checkpoint or export has a light VAE."""
        ...

    def encode(self, rgb: torch.Tensor, network: str = "vae_encoder") -> torch.Tensor:
        """[B,3,H,W] RGB in [-1,1] -> [B,4,h,w]: VAE posterior mean × the VAE's scaling factor (``network``:
        "vae_encoder", or "vae_encoder_light", which regresses the same)."""
        ...

    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """U-Net: [B,8,h,w] = cat(rgb latent, noisy depth latent), [B] int64 timesteps, [B,L,C] -> [B,4,h,w]."""
        ...

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        """[B,4,h,w] -> [B,1,H,W]: latent / scale factor -> VAE decoder -> mean of the 3 channels, NOT clipped
        (``network``: "vae_decoder", or "vae_decoder_light", the 1-channel light decoder)."""
        ...


class NonFiniteOutputError(RuntimeError):
    """A network returned NaN/Inf (typically an fp16 overflow)."""


class BackendBase:
    """The settings half of :class:`DepthBackend`, shared by the concrete backends: they set these attributes and
    implement ``encode``/``denoise``/``decode``. ``_shapes`` (a :class:`agdepth.networks.ShapeRange`) limits the calls
    of exported networks; None accepts any shape."""

    _f: int
    _device: torch.device
    _dtype: torch.dtype
    _emb: torch.Tensor
    _schedule: NoiseSchedule
    _defaults: RuntimeDefaults
    _shapes: Any = None
    _vae_variants: tuple[str, ...] = ("full",)
    # the networks run in PyTorch's own CPU threads (the PyTorch backend on the CPU); elsewhere (ONNX Runtime's
    # thread pool, a GPU) PyTorch only does the pipeline's light tensor work around the network calls
    runs_in_torch_threads: bool = False

    @property
    def vae_scale_factor(self) -> int:
        return self._f

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def empty_text_embedding(self) -> torch.Tensor:
        return self._emb

    @property
    def schedule(self) -> NoiseSchedule:
        return self._schedule

    @property
    def defaults(self) -> RuntimeDefaults:
        return self._defaults

    @property
    def max_batch(self) -> int | None:
        return None if self._shapes is None else self._shapes.max_batch

    @property
    def vae_variants(self) -> tuple[str, ...]:
        return self._vae_variants

    @property
    def static_size(self) -> tuple[int, int] | None:
        if self._shapes is None or not self._shapes.is_static:
            return None
        return self._shapes.max_resolution, self._shapes.max_resolution

    def check_shapes(self, batch: int, height: int, width: int) -> None:
        if self._shapes is not None:
            self._shapes.check(batch, height, width)


ENGINE_KINDS = "*.onnx (ONNX Runtime), *.plan (TensorRT), an engines directory or a checkpoint directory"


def open_checkpoint(checkpoint: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> DepthBackend:
    """PyTorch over a checkpoint directory (agdepth layout or an official Marigold directory)."""
    from agdepth.runtime.backends.torch_backend import TorchBackend  # diffusers only when actually needed

    return TorchBackend.from_checkpoint(checkpoint, device=device, dtype=dtype)


def _onnx_backend(manifest: Any, precision: str, providers: list[str] | None, threads: int) -> DepthBackend:
    from agdepth.runtime.backends.onnx_backend import OnnxBackend  # onnxruntime only when actually needed

    return OnnxBackend(manifest, precision, providers, threads=threads)


def open_backend(path: str | Path, providers: list[str] | None = None,
                 device: str | torch.device | None = None, threads: int = 0) -> DepthBackend:
    """The backend for what ``path`` is: ``*.onnx`` -> ONNX Runtime at that file's precision (siblings and settings
    from the manifest beside it); an engines directory -> its fp32 ONNX graphs; a checkpoint directory -> PyTorch on
    ``device`` (default CPU); ``*.plan`` -> TensorRT on ``device`` (default ``cuda``; the engines of the manifest
    beside it, NaN/Inf checked with the fp32 decoder as fallback; a clear error without TensorRT). ``threads``: ONNX
    Runtime's intra-op threads per session (0: its default)."""
    path = Path(path)
    if path.suffix == ".plan":
        from agdepth.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path.parent, device=device or "cuda")
    from agdepth.artifacts.manifest import MANIFEST, Manifest

    if path.is_dir():
        if (path / MANIFEST).is_file():
            return _onnx_backend(path, "fp32", providers, threads)
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            return open_checkpoint(path, device=device or "cpu")
        raise FileNotFoundError(f"{path} has neither {MANIFEST} (depth-export output) nor model_index.json")
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: unknown engine type {path.suffix!r} (expected {ENGINE_KINDS})")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    manifest = Manifest.load(path.parent)
    _, precision = manifest.precision_of(path)
    return _onnx_backend(manifest, precision, providers, threads)


__all__ = ["ENGINE_KINDS", "BackendBase", "DepthBackend", "NonFiniteOutputError", "RuntimeDefaults", "open_backend",
           "open_checkpoint"]
