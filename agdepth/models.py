"""The networks of the method, built or loaded through diffusers: one code path for the `tiny` and `sd2` presets.

The U-Net denoises depth latents conditioned on the RGB latent (Marigold): its input is
``cat([rgb_latent, noisy_depth_latent], dim=1)``, 8 channels. The text conditioning is a fixed embedding of the empty
prompt, computed once and stored with the checkpoint so that no text encoder is needed after training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from agdepth.networks import LATENT_CHANNELS, UNET_IN_CHANNELS

logger = logging.getLogger(__name__)



@dataclass
class TinyModelConfig:
    """Sizes of the `tiny` preset: the SD2 architecture family shrunk to train on a 2-core CPU."""

    unet_block_out_channels: tuple[int, ...] = (32, 64, 128)
    unet_layers_per_block: int = 1
    unet_attention_head_dim: int = 8
    unet_norm_num_groups: int = 8
    cross_attention_dim: int = 64
    text_tokens: int = 2  # SD2's empty prompt tokenises to [BOS, EOS]
    # 4 blocks → 3 downsamplings → 8× spatial reduction, like SD's VAE (3 blocks: 4×; the runtime follows the VAE)
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    vae_layers_per_block: int = 1
    vae_norm_num_groups: int = 8
    sample_size: int = 128

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae_block_out_channels) - 1)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TinyModelConfig:
        d = dict(d or {})
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown tiny model option(s): {sorted(unknown)}")
        return cls(**d)


def build_tiny_unet(cfg: TinyModelConfig) -> UNet2DConditionModel:
    """An 8-channel-input U-Net of the SD2 family (cross-attention, v-prediction) at a CPU-trainable size."""
    n = len(cfg.unet_block_out_channels)
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size // cfg.vae_scale_factor,
        in_channels=UNET_IN_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=cfg.unet_block_out_channels,
        layers_per_block=cfg.unet_layers_per_block,
        attention_head_dim=cfg.unet_attention_head_dim,
        norm_num_groups=cfg.unet_norm_num_groups,
        cross_attention_dim=cfg.cross_attention_dim,
        use_linear_projection=True,  # as SD2
    )


def build_tiny_vae(cfg: TinyModelConfig) -> AutoencoderKL:
    """An AutoencoderKL with SD's latent layout (4 channels, 8× down) at a CPU-trainable size."""
    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=cfg.vae_block_out_channels,
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=cfg.vae_norm_num_groups,
        sample_size=cfg.sample_size,
        scaling_factor=0.18215,
    )


def tiny_empty_text_embedding(cfg: TinyModelConfig, seed: int = 0) -> torch.Tensor:
    """The tiny preset has no CLIP: a fixed, seeded stand-in for the empty-prompt embedding, shape [1, L, C].

    The U-Net attends to a constant sequence either way, so any fixed embedding is equivalent up to what the
    cross-attention layers learn; its scale matches a layer-normed CLIP output (unit variance per feature).
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, cfg.text_tokens, cfg.cross_attention_dim, generator=g)


# Stable Diffusion 2's published U-Net and VAE configurations (stabilityai/stable-diffusion-2, unet/ and vae/
# config.json). With random weights they cost exactly what the real networks cost: used to measure memory and latency
# where the 5 GB of weights are not at hand (pretrained: random).
SD2_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "attention_head_dim": (5, 10, 20, 20),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024, "use_linear_projection": True, "norm_num_groups": 32,
}
SD2_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 768,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "scaling_factor": 0.18215,
}


def build_sd2_random(seed: int = 0, torch_dtype: torch.dtype = torch.float32) -> DepthModels:
    """SD2's architecture with random weights (8-channel conv_in, [1, 2, 1024] embedding): same cost as the real one."""
    torch.manual_seed(seed)
    unet = expand_conv_in(UNet2DConditionModel(**SD2_UNET_CONFIG))
    vae = AutoencoderKL(**SD2_VAE_CONFIG)
    if torch_dtype != torch.float32:
        unet, vae = unet.to(torch_dtype), vae.to(torch_dtype)
    emb = torch.randn(1, 2, SD2_UNET_CONFIG["cross_attention_dim"], generator=torch.Generator().manual_seed(seed))
    return DepthModels(unet=unet, vae=vae, empty_text_embedding=emb.to(torch_dtype), extra={"random": True})


def expand_conv_in(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Make a 4-channel SD U-Net take the 8-channel [rgb, depth] latent (Marigold's initialisation).

    Weights are repeated along the input axis and halved, so a depth latent equal to the RGB latent reproduces the
    pretrained activations; the bias is unchanged.
    """
    conv = unet.conv_in
    if conv.in_channels == UNET_IN_CHANNELS:
        return unet
    if conv.in_channels != LATENT_CHANNELS:
        raise ValueError(f"conv_in has {conv.in_channels} input channels; expected {LATENT_CHANNELS} or 8")
    new = torch.nn.Conv2d(
        UNET_IN_CHANNELS,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dtype=conv.weight.dtype,
        device=conv.weight.device,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.repeat(1, 2, 1, 1) * 0.5)
        new.bias.copy_(conv.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=UNET_IN_CHANNELS)
    return unet


@torch.no_grad()
def clip_empty_text_embedding(model_dir: str | Path, device: str | torch.device = "cpu") -> torch.Tensor:
    """Encode the empty prompt with the checkpoint's own CLIP text encoder, as Marigold does: [1, 2, C] for SD2.

    ``padding="do_not_pad"`` keeps only BOS/EOS, which is what Marigold was trained with.
    """
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("the sd2 preset needs `transformers`: pip install 'agdepth[train]'") from e
    model_dir = Path(model_dir)
    for sub in ("tokenizer", "text_encoder"):
        if not (model_dir / sub).is_dir():
            raise FileNotFoundError(
                f"{model_dir / sub} is missing: the sd2 preset needs the checkpoint's CLIP {sub} to compute the "
                "empty-prompt embedding once (or an empty_text_embedding.safetensors beside unet/)"
            )
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", use_safetensors=True).to(device)
    ids = tokenizer("", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids.to(device)
    return encoder(ids)[0].float().cpu()


@dataclass
class DepthModels:
    """The networks training and inference need; the text encoder is reduced to its one embedding."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    empty_text_embedding: torch.Tensor  # [1, L, C]
    extra: dict[str, Any] = field(default_factory=dict)


def load_sd2(model_dir: str | Path, torch_dtype: torch.dtype = torch.float32) -> DepthModels:
    """Load an SD2 (4-channel U-Net) or Marigold (8-channel) diffusers directory from local disk.

    Only safetensors weights are read. A stored ``empty_text_embedding.safetensors`` is preferred over running CLIP.
    """
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {model_dir}")
    for sub in ("unet", "vae"):
        if not (model_dir / sub / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_dir / sub / 'config.json'} is missing: not a diffusers SD2/Marigold directory"
            )
    # low_cpu_mem_usage=False is what happens without accelerate anyway; saying so silences diffusers' warning
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", use_safetensors=True,
                                                torch_dtype=torch_dtype, low_cpu_mem_usage=False)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", use_safetensors=True, torch_dtype=torch_dtype,
                                        low_cpu_mem_usage=False)
    expanded = unet.config.in_channels == LATENT_CHANNELS
    unet = expand_conv_in(unet)
    emb_file = model_dir / "empty_text_embedding.safetensors"
    if emb_file.is_file():
        emb = load_file(emb_file)["empty_text_embedding"]
    else:
        emb = clip_empty_text_embedding(model_dir)
    if emb.shape[-1] != unet.config.cross_attention_dim:
        raise ValueError(
            f"empty text embedding has width {emb.shape[-1]} but the U-Net expects {unet.config.cross_attention_dim}"
        )
    logger.info("loaded %s (conv_in %s)", model_dir, "expanded 4→8" if expanded else "already 8-channel")
    return DepthModels(unet=unet, vae=vae, empty_text_embedding=emb.to(torch_dtype), extra={"expanded": expanded})
