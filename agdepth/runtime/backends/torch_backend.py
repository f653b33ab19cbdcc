"""PyTorch backend: the diffusers U-Net and VAE (and light VAE, when there is one) of a checkpoint, called eagerly."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from agdepth.artifacts.checkpoint import checkpoint_schedule, load_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.networks import light_modules, torch_modules, vae_scale_factor, vae_variants
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
        light_vae: torch.nn.Module | None = None,
    ) -> None:
        """``light_vae``: the checkpoint's ``vae_light/`` (an ``AutoencoderTiny``, :mod:`agdepth.light_vae`), which
        adds the light VAE choices."""
        self._f = vae_scale_factor(vae)
        self._device = torch.device(device)
        self._dtype = dtype
        self.unet = self._place(unet, self._device, dtype)
        self.vae = self._place(vae, self._device, dtype)
        self._emb = empty_text_embedding.to(device=self._device, dtype=dtype)
        self._schedule = schedule
        self._defaults = defaults or RuntimeDefaults()
        self.light_vae = None if light_vae is None else self._place(light_vae, self._device, dtype)
        self._wrap()

    @property
    def runs_in_torch_threads(self) -> bool:  # type: ignore[override]
        return self._device.type == "cpu"

    def _wrap(self) -> None:
        # the exported networks' own PyTorch definitions, so the eager path and the ONNX graphs cannot drift apart
        self.networks = torch_modules(self.unet, self.vae)
        if self.light_vae is not None:
            self.networks.update(light_modules(self.light_vae))
        self._vae_variants = vae_variants(self.networks)

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
        if self.light_vae is not None:
            self.light_vae = self._place(self.light_vae, self._device, self._dtype)
        self._emb = self._emb.to(device=self._device, dtype=self._dtype)
        self._wrap()
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
        return cls(models.unet, models.vae, models.empty_text_embedding, schedule, defaults, device, dtype,
                   light_vae=models.extra.get("vae_light"))

    def _network(self, name: str) -> torch.nn.Module:
        try:
            return self.networks[name]
        except KeyError:
            raise ValueError(f"no {name!r} network in this checkpoint (VAE choices here: "
                             f"{', '.join(self._vae_variants)}; a light VAE comes from depth-train distill-vae)"
                             ) from None

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor, network: str = "vae_encoder") -> torch.Tensor:
        return self._network(network)(rgb.to(device=self._device, dtype=self._dtype))

    @torch.no_grad()
    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.networks["unet"](sample, timestep, encoder_hidden_states)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        return self._network(network)(latent)
