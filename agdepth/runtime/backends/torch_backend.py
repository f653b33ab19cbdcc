"""PyTorch backend: the diffusers U-Net and VAE of a checkpoint directory, called eagerly."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from agdepth.artifacts.checkpoint import checkpoint_schedule, load_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.networks import torch_modules, vae_scale_factor
from agdepth.runtime.backends import BackendBase, DepthBackend
from agdepth.schedule import NoiseSchedule


class TorchBackend(BackendBase, DepthBackend):
    """:class:`DepthBackend` over in-memory diffusers modules (any device / floating dtype torch supports)."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        empty_text_embedding: torch.Tensor,
        schedule: NoiseSchedule,
        defaults: RuntimeDefaults | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self._f = vae_scale_factor(vae)
        self._device = torch.device(device)
        self._dtype = dtype
        self.unet = self._place(unet, self._device, dtype)
        self.vae = self._place(vae, self._device, dtype)
        self._emb = empty_text_embedding.to(device=self._device, dtype=dtype)
        self._schedule = schedule
        self._defaults = defaults or RuntimeDefaults()
        # the exported networks' own PyTorch definitions, so the eager path and the ONNX graphs cannot drift apart
        self.networks = torch_modules(self.unet, self.vae)

    @staticmethod
    def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        # cast only when needed: diffusers warns on every .to(dtype) (from_checkpoint already loads in `dtype`)
        if next(module.parameters()).dtype != dtype:
            module = module.to(dtype=dtype)
        return module.to(device=device).eval()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> TorchBackend:
        """Move (and cast) the networks in place, as ``DiffusionPipeline.to`` does."""
        self._device = torch.device(device) if device is not None else self._device
        self._dtype = dtype or self._dtype
        self.unet = self._place(self.unet, self._device, self._dtype)
        self.vae = self._place(self.vae, self._device, self._dtype)
        self._emb = self._emb.to(device=self._device, dtype=self._dtype)
        return self

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> TorchBackend:
        """Load an agdepth or official Marigold checkpoint directory (safetensors only)."""
        models = load_checkpoint(path, torch_dtype=dtype)
        index = models.extra.get("model_index") or {}
        sched_cfg = models.extra.get("scheduler_config")
        schedule = checkpoint_schedule(sched_cfg, source=Path(path) / "scheduler" / "scheduler_config.json")
        defaults = RuntimeDefaults.from_model_index(index, sched_cfg)
        return cls(models.unet, models.vae, models.empty_text_embedding, schedule, defaults, device, dtype)

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.networks["vae_encoder"](rgb.to(device=self._device, dtype=self._dtype))

    @torch.no_grad()
    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.networks["unet"](sample, timestep, encoder_hidden_states)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.networks["vae_decoder"](latent)
