"""Depth autoencoder of the paper (Fig. 1): 5 encoder stages, a low-dimensional latent, 4 decoder stages.

It is pretrained to reconstruct normalised GT depth (1 channel, values in [-1, 1]) and then frozen; during diffusion
fine-tuning its 5 encoder feature maps of d and d_hat feed L_feature (eq. 7). It is a diffusers ``ModelMixin`` so it
saves/loads as ``config.json`` + ``diffusion_pytorch_model.safetensors`` (a ``depth_autoencoder/`` subfolder of a
checkpoint).

Layout for the default ``block_out_channels=(16, 32, 64, 128, 256)`` and an ``H x W`` input::

    encoder stage 1: conv 1->16            (H,    W)     -> F_1
    encoder stage 2: stride-2 conv 16->32  (H/2,  W/2)   -> F_2
    encoder stage 3: stride-2 conv 32->64  (H/4,  W/4)   -> F_3
    encoder stage 4: stride-2 conv 64->128 (H/8,  W/8)   -> F_4
    encoder stage 5: stride-2 conv 128->256(H/16, W/16)  -> F_5
    bottleneck:      1x1 conv 256->latent_channels (default 8: 32x fewer values than the input)
    decoder 4 stages: nearest x2 upsample + conv, 256->128->64->32->16, then conv 16->1 and tanh.

Every conv is followed by GroupNorm + SiLU (``layers_per_block`` extra such convs per stage). GroupNorm has no
running statistics, so train/eval mode gives identical features, and the frozen AE behaves the same either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DepthAutoencoder"]


class _ConvBlock(nn.Sequential):
    """3x3 conv -> GroupNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
        )


class _Upsample(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        # Nearest + conv rather than transposed conv: no checkerboard artefacts at depth edges.
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class DepthAutoencoder(ModelMixin, ConfigMixin):
    """Convolutional depth autoencoder whose encoder features drive the paper's feature loss.

    Input ``[B, in_channels, H, W]`` with H and W multiples of ``2 ** (len(block_out_channels) - 1)`` (16 by
    default). Inputs are cast to the model's dtype so an fp16/bf16 VAE decode can feed an fp32 autoencoder.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        block_out_channels: tuple[int, ...] = (16, 32, 64, 128, 256),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        latent_channels: int = 8,
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in block_out_channels)  # config.json stores a list
        if len(channels) < 2:
            raise ValueError("block_out_channels needs at least 2 stages")
        if in_channels < 1 or latent_channels < 1 or layers_per_block < 0:
            raise ValueError("in_channels and latent_channels must be >= 1, layers_per_block >= 0")
        bad = [c for c in channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every block_out_channels entry, not {bad}")
        g = norm_num_groups

        def extra(c: int) -> list[nn.Module]:
            return [_ConvBlock(c, c, g) for _ in range(layers_per_block)]

        stages: list[nn.Module] = [nn.Sequential(_ConvBlock(in_channels, channels[0], g), *extra(channels[0]))]
        for c_in, c_out in itertools.pairwise(channels):
            stages.append(nn.Sequential(_ConvBlock(c_in, c_out, g, stride=2), *extra(c_out)))
        self.encoder_stages = nn.ModuleList(stages)

        # Bottleneck: the paper's AE "compresses the depth map into a low-dimensional latent". Without this
        # projection the last stage (256 ch at 1/16 res) would hold as many values as the input pixels.
        self.to_latent = nn.Conv2d(channels[-1], latent_channels, kernel_size=1)
        self.from_latent = _ConvBlock(latent_channels, channels[-1], g)

        # No U-Net skip connections: skips would let fine detail bypass the bottleneck, so the encoder features
        # would not be forced to encode the depth structure that L_feature is meant to compare.
        rev = channels[::-1]
        self.decoder_stages = nn.ModuleList(
            nn.Sequential(_Upsample(), _ConvBlock(c_in, c_out, g), *extra(c_out))
            for c_in, c_out in itertools.pairwise(rev)
        )
        self.conv_out = nn.Conv2d(channels[0], in_channels, kernel_size=3, padding=1)

    @property
    def downsample_factor(self) -> int:
        """H and W must be multiples of this (one factor of 2 per encoder stage after the first)."""
        return 2 ** (len(self.encoder_stages) - 1)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"DepthAutoencoder needs H and W to be multiples of {f} ({len(self.encoder_stages) - 1} "
                f"downsamplings by 2); got {h}x{w}"
            )
        return x.to(self.dtype)

    def encode_features(self, x: Tensor) -> list[Tensor]:
        """The encoder stages' outputs F_1..F_5 (strides 1, 2, 4, 8, 16), the inputs of L_feature."""
        h = self._check_input(x)
        feats = []
        for stage in self.encoder_stages:
            h = stage(h)
            feats.append(h)
        return feats

    def encode(self, x: Tensor) -> Tensor:
        """Low-dimensional latent ``[B, latent_channels, H/16, W/16]``."""
        return self.to_latent(self.encode_features(x)[-1])

    def decode_latent(self, z: Tensor) -> Tensor:
        """Reconstruct depth in [-1, 1] from a latent of :meth:`encode`."""
        h = self.from_latent(z)
        for stage in self.decoder_stages:
            h = stage(h)
        # tanh keeps the output in the normalised depth range while still giving gradients near +-1 (a clamp would
        # zero them for saturated pixels).
        return torch.tanh(self.conv_out(h))

    def decode(self, feats: Sequence[Tensor]) -> Tensor:
        """Reconstruct from :meth:`encode_features` output; only the deepest map is used (no skips, see above)."""
        if len(feats) != len(self.encoder_stages):
            raise ValueError(f"expected {len(self.encoder_stages)} feature maps, got {len(feats)}")
        return self.decode_latent(self.to_latent(feats[-1]))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction of ``x``, same shape, values in [-1, 1]."""
        return self.decode(self.encode_features(x))
