"""The light VAE: one diffusers ``AutoencoderTiny`` (TAESD's architecture) per checkpoint, distilled from its full VAE.

Its two halves replace the full VAE's two exported networks at a fraction of their cost; the U-Net is unchanged:

- encoder: RGB in [-1, 1] -> the *scaled* latent the U-Net is conditioned on (the full encoder's posterior mean ×
  ``scaling_factor``, what :class:`agdepth.networks.VAEEncoderWrapper` returns). ``EncoderTiny`` maps [-1, 1] to
  TAESD's [0, 1] itself.
- decoder: a scaled 4-channel latent -> a 1-channel depth map, regressing :class:`agdepth.networks.VAEDecoderWrapper`
  (the full decoder's mean of 3 channels, unclipped, about [-1, 1]). ``DecoderTiny`` soft-clamps its input latent
  with ``tanh(z / 3) * 3`` and returns ``2 y - 1`` of its last convolution ``y``.

TAESD's latents are SD's scaled latents, so ``scaling_factor`` is 1 and ``shift_factor`` 0: the wrappers in
:mod:`agdepth.networks` add no scaling. Stored as the checkpoint subfolder ``vae_light/`` (safetensors), loadable with
``AutoencoderTiny.from_pretrained(ckpt / "vae_light")``.

Two constraints of diffusers' implementation shape the configs: ``EncoderTiny``/``DecoderTiny`` keep one width per
side (their downsampling/upsampling convolutions map a block's width to itself), so every entry of
``encoder_block_out_channels`` (and of ``decoder_block_out_channels``) must be equal; and ``EncoderTiny`` skips its
[-1, 1] -> [0, 1] input scaling under gradient checkpointing, so the light encoder is never checkpointed.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import AutoencoderTiny

LIGHT_VAE_FOLDER = "vae_light"  # the checkpoint subfolder
LIGHT_VAE_CLASS = "AutoencoderTiny"
# what every light VAE is, whatever its size: RGB in, one depth channel out, SD's 4-channel scaled latent
FIXED = {"in_channels": 3, "out_channels": 1, "latent_channels": 4, "scaling_factor": 1.0, "shift_factor": 0.0}
# the size settings a config may choose (AutoencoderTiny's other arguments keep diffusers' defaults)
SIZE_KEYS = ("encoder_block_out_channels", "decoder_block_out_channels", "num_encoder_blocks", "num_decoder_blocks",
             "act_fn", "upsample_fn", "upsampling_scaling_factor")
# TAESD (SD 1/2's tiny autoencoder): 64 channels, 8x down
TAESD_CONFIG: dict[str, Any] = {"encoder_block_out_channels": (64, 64, 64, 64),
                                "decoder_block_out_channels": (64, 64, 64, 64),
                                "num_encoder_blocks": (1, 3, 3, 3), "num_decoder_blocks": (3, 3, 3, 1)}


def check_light_vae_config(config: Mapping[str, Any], where: str = "light_vae") -> None:
    """Raise one ValueError naming the key for a size config ``AutoencoderTiny`` cannot build (see module doc)."""
    unknown = set(config) - set(SIZE_KEYS) - set(FIXED)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))} (size keys: {', '.join(SIZE_KEYS)})")
    for k, v in FIXED.items():
        if k in config and config[k] != v:
            raise ValueError(f"{where}.{k} must be {v!r} for a light VAE (RGB in, 1-channel depth out, SD's "
                             f"scaled 4-channel latent), got {config[k]!r}")
    for side in ("encoder", "decoder"):
        ch, nb = config.get(f"{side}_block_out_channels"), config.get(f"num_{side}_blocks")
        for key, val in ((f"{side}_block_out_channels", ch), (f"num_{side}_blocks", nb)):
            if val is not None and (not isinstance(val, (list, tuple)) or not val
                                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in val)):
                raise ValueError(f"{where}.{key} must be a non-empty list of integers, got {val!r}")
        if ch is not None and (min(ch) < 1 or len(set(ch)) != 1):
            raise ValueError(f"{where}.{side}_block_out_channels must repeat one positive width (diffusers' "
                             f"{side.capitalize()}Tiny keeps one width per side), got {list(ch)}")
        if nb is not None and min(nb) < 0:
            raise ValueError(f"{where}.num_{side}_blocks must be >= 0, got {list(nb)}")
        n_ch = len(ch) if ch is not None else len(TAESD_CONFIG[f"{side}_block_out_channels"])
        n_nb = len(nb) if nb is not None else len(TAESD_CONFIG[f"num_{side}_blocks"])
        if n_ch != n_nb:
            raise ValueError(f"{where}: {side}_block_out_channels ({n_ch} entries) and num_{side}_blocks ({n_nb}) "
                             "must have one entry per stage each")
    n_enc = len(config.get("num_encoder_blocks") or TAESD_CONFIG["num_encoder_blocks"])
    n_dec = len(config.get("num_decoder_blocks") or TAESD_CONFIG["num_decoder_blocks"])
    if n_enc != n_dec:
        raise ValueError(f"{where}: the encoder has {n_enc} stages and the decoder {n_dec}: both must scale by the "
                         "same factor")


def build_light_vae(**config: Any) -> AutoencoderTiny:
    """A randomly initialised light VAE; ``config`` holds :data:`SIZE_KEYS` (missing ones: TAESD's)."""
    from diffusers import AutoencoderTiny

    check_light_vae_config(config)
    kwargs = {**TAESD_CONFIG, **{k: v for k, v in config.items() if k not in FIXED}, **FIXED}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return AutoencoderTiny(**kwargs)


def light_vae_scale_factor(light_vae: Any) -> int:
    """The light VAE's spatial downsampling, 2 ** (stages - 1). (diffusers' ``AutoencoderTiny.spatial_scale_factor``
    is ``2 ** out_channels``, which is only right for 3 output channels and 8x.)"""
    cfg = light_vae.config
    return int(cfg.upsampling_scaling_factor) ** (len(cfg.num_encoder_blocks) - 1)


def light_vae_config(light_vae: Any) -> dict[str, Any]:
    """The size settings of a light VAE (lists, as in a YAML config)."""
    cfg = light_vae.config
    return {k: list(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k] for k in SIZE_KEYS}


class _QuietOwnConfigKey(logging.Filter):
    """AutoencoderTiny registers ``block_out_channels`` in its own config, then warns on every load that the key is
    not an argument: drop that one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("'block_out_channels'" in msg and "AutoencoderTiny" in msg)


@contextlib.contextmanager
def _quiet_load() -> Iterator[None]:
    log = logging.getLogger("diffusers.configuration_utils")
    flt = _QuietOwnConfigKey()
    log.addFilter(flt)
    try:
        yield
    finally:
        log.removeFilter(flt)


def _from_pretrained(path: str | Path, torch_dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    from diffusers import AutoencoderTiny

    with _quiet_load():
        # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, minus its warning on every load
        return AutoencoderTiny.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False,
                                               torch_dtype=torch_dtype)


def load_light_vae(path: str | Path, torch_dtype: torch.dtype = torch.float32) -> AutoencoderTiny:
    """``AutoencoderTiny.from_pretrained`` of a ``vae_light/`` folder, safetensors only."""
    return _from_pretrained(path, torch_dtype)


def init_from_taesd(path: str | Path) -> AutoencoderTiny:
    """A light VAE initialised from a TAESD-layout ``AutoencoderTiny`` directory (RGB out, e.g. ``madebyollin/taesd``
    for SD 1/2, whose latents are SD's scaled latents).

    The RGB decoder becomes a 1-channel one by averaging its last convolution's 3 output channels (weights and bias).
    As the decoder returns ``2 y - 1`` of that convolution's output ``y`` and ``y`` is linear in the weights, the new
    decoder returns exactly the mean of the RGB decoder's 3 channels, which is how a depth map is read from the full
    decoder: the initialisation is exact before any distillation."""
    from diffusers import AutoencoderTiny

    src = _from_pretrained(path)
    cfg = src.config
    if cfg.in_channels != 3 or cfg.latent_channels != FIXED["latent_channels"]:
        raise ValueError(f"{path}: not a TAESD-layout AutoencoderTiny (in_channels {cfg.in_channels}, "
                         f"latent_channels {cfg.latent_channels}; expected 3 and 4)")
    if float(cfg.scaling_factor) != 1.0 or float(cfg.get("shift_factor") or 0.0) != 0.0:
        raise ValueError(f"{path}: scaling_factor {cfg.scaling_factor} / shift_factor {cfg.get('shift_factor')}: a "
                         "light VAE works in the scaled latent space directly (1.0 / 0.0)")
    params = set(inspect.signature(AutoencoderTiny.__init__).parameters) - {"self"}
    light = build_light_vae(**{k: cfg[k] for k in SIZE_KEYS if k in params and k in cfg})
    state = src.state_dict()
    if cfg.out_channels != 1:
        last = _last_conv_prefix(src)
        state[f"{last}.weight"] = state[f"{last}.weight"].mean(dim=0, keepdim=True)
        state[f"{last}.bias"] = state[f"{last}.bias"].mean(dim=0, keepdim=True)
    light.load_state_dict(state)
    return light


def _last_conv_prefix(vae: AutoencoderTiny) -> str:
    layers = vae.decoder.layers
    last = len(layers) - 1
    if not isinstance(layers[last], torch.nn.Conv2d):
        raise ValueError("the decoder does not end with a convolution: not a TAESD-layout AutoencoderTiny")
    return f"decoder.layers.{last}"


__all__ = ["FIXED", "LIGHT_VAE_CLASS", "LIGHT_VAE_FOLDER", "SIZE_KEYS", "TAESD_CONFIG", "build_light_vae",
           "check_light_vae_config", "init_from_taesd", "light_vae_config", "light_vae_scale_factor",
           "load_light_vae"]
