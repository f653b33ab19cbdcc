"""Each exported network described once: tensor names, dtypes, dynamic axes, shapes and optimisation profiles.

ONNX export (names, ``dynamic_axes``, sample inputs), the TensorRT engine build (min/opt/max profiles), the runtime
backends (feeds, shape checks) and the manifest all read these descriptions, so a name or an axis is never spelled
twice. Shapes are computed from the padded image size H×W in pixels (a multiple of the VAE's scale factor f); the
latent is h×w = H/f×W/f.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

LATENT_CHANNELS = 4  # SD's VAE latent
UNET_IN_CHANNELS = 2 * LATENT_CHANNELS  # Marigold: cat(rgb latent, noisy depth latent)
NETWORK_NAMES = ("unet", "vae_encoder", "vae_decoder")
# a checkpoint's light VAE (agdepth.light_vae): each light network -> the full network whose tensors it shares
LIGHT_NETWORKS = {"vae_encoder_light": "vae_encoder", "vae_decoder_light": "vae_decoder"}
# the VAE a prediction runs (``--vae``, ``DepthPipeline(vae=)``): choice -> (encoder network, decoder network)
VAE_CHOICES = {
    "full": ("vae_encoder", "vae_decoder"),
    "light": ("vae_encoder_light", "vae_decoder_light"),
    "light-encoder": ("vae_encoder_light", "vae_decoder"),  # the light encoder, the full decoder
    "light-decoder": ("vae_encoder", "vae_decoder_light"),  # the full encoder, the light decoder
}
BATCH, HEIGHT, WIDTH = "batch", "height", "width"  # dynamic axis names (pixel or latent H/W, by tensor)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, dtype and per-axis size rule.

    ``dims`` holds, per axis, an int (fixed), or one of "batch", "height"/"width" (pixels), "latent_height"/
    "latent_width" (pixels / f); every non-int axis is dynamic in the exported graph.
    """

    name: str
    dims: tuple[int | str, ...]
    dtype: str = "float32"

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}

    def shape(self, batch: int, height: int, width: int, f: int) -> tuple[int, ...]:
        sizes = {BATCH: batch, HEIGHT: height, WIDTH: width, "latent_height": height // f, "latent_width": width // f}
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    vae_scale_factor: int

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes`` argument."""
        return {t.name: t.dynamic_axes() for t in (*self.inputs, *self.outputs)}

    def input_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape(batch, height, width, self.vae_scale_factor) for t in self.inputs}

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape(batch, height, width, self.vae_scale_factor) for t in self.outputs}

    def sample_inputs(self, batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """Inputs in each tensor's value range (RGB in [-1,1], latents ~N(0,1), timesteps in [0,1000))."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for t, shape in zip(self.inputs, self.input_shapes(batch, height, width).values(), strict=True):
            if t.dtype == "int64":
                out[t.name] = torch.randint(0, 1000, shape, generator=g, dtype=torch.int64)
            elif t.name == "image":
                out[t.name] = torch.rand(shape, generator=g) * 2 - 1
            else:
                out[t.name] = torch.randn(shape, generator=g)
        return out

    def profile(self, shapes: ShapeRange) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """TensorRT optimisation profile: input name -> (min, opt, max) shape."""
        mn = self.input_shapes(shapes.min_batch, shapes.min_resolution, shapes.min_resolution)
        opt = self.input_shapes(shapes.opt_batch, shapes.opt_resolution, shapes.opt_resolution)
        mx = self.input_shapes(shapes.max_batch, shapes.max_resolution, shapes.max_resolution)
        return {k: (mn[k], opt[k], mx[k]) for k in mn}


@dataclass(frozen=True)
class ShapeRange:
    """The shapes an export supports: batch rows and padded image sides (pixels, multiples of f), min/opt/max."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_resolution: int
    opt_resolution: int
    max_resolution: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.batch}")
        if not 1 <= self.min_resolution <= self.opt_resolution <= self.max_resolution:
            raise ValueError(f"resolution range must satisfy 1 <= min <= opt <= max, got {self.resolution}")

    @property
    def batch(self) -> tuple[int, int, int]:
        return self.min_batch, self.opt_batch, self.max_batch

    @property
    def resolution(self) -> tuple[int, int, int]:
        return self.min_resolution, self.opt_resolution, self.max_resolution

    @property
    def is_static(self) -> bool:
        """One shape only (``depth-export --static``): a fixed batch and a square canvas."""
        return self.min_batch == self.max_batch and self.min_resolution == self.max_resolution

    @classmethod
    def for_model(cls, vae_scale_factor: int, max_resolution: int, opt_resolution: int, max_batch: int,
                  opt_batch: int = 1, min_resolution: int | None = None, static: bool = False) -> ShapeRange:
        """Round resolutions up to multiples of f (the padded sizes the runtime produces); ``static``: one shape."""
        f = vae_scale_factor

        def up(r: int) -> int:
            return -(-r // f) * f

        if static:
            return cls(opt_batch, opt_batch, opt_batch, up(opt_resolution), up(opt_resolution), up(opt_resolution))
        # the shorter side of a very elongated image pads to a few latent pixels: allow down to 2 latent pixels
        mn = up(min_resolution) if min_resolution else 2 * f
        return cls(1, opt_batch, max_batch, mn, up(opt_resolution), up(max_resolution))

    def check(self, batch: int, height: int, width: int) -> None:
        """Raise before any work when a call falls outside the exported range (names the range).

        Static ranges take any batch up to theirs (backends pad the rows; batch rows are independent) and exactly
        their canvas (the pipeline pads images to it)."""
        if self.is_static:
            side = self.max_resolution
            if batch > self.max_batch or (height, width) != (side, side):
                raise ValueError(f"static engines take up to {self.max_batch} rows of exactly {side}x{side} px, got "
                                 f"{batch} rows of {height}x{width} px (re-export without --static for other sizes)")
            return
        problems = []
        if not self.min_batch <= batch <= self.max_batch:
            problems.append(f"batch {batch} outside [{self.min_batch}, {self.max_batch}]")
        for side, v in (("height", height), ("width", width)):
            if not self.min_resolution <= v <= self.max_resolution:
                problems.append(f"{side} {v} px outside [{self.min_resolution}, {self.max_resolution}]")
        if problems:
            raise ValueError(
                "input outside the engine's shape range: " + "; ".join(problems)
                + " (lower --processing-res / --batch-size, or re-export with a larger --max-resolution/--max-batch)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"batch": list(self.batch), "resolution": list(self.resolution)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShapeRange:
        return cls(*d["batch"], *d["resolution"])


def vae_scale_factor(vae: Any) -> int:
    """The VAE's spatial downsampling: 2 ** (blocks - 1), as diffusers computes it (8 for SD's VAE)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def describe_networks(vae_scale_factor: int, text_tokens: int, text_dim: int) -> dict[str, NetworkSpec]:
    """The three networks of a checkpoint whose VAE downsamples by ``vae_scale_factor`` and whose empty-prompt
    embedding is [1, text_tokens, text_dim]."""
    f = vae_scale_factor
    lat = ("latent_height", "latent_width")
    return {
        "unet": NetworkSpec(
            "unet",
            (TensorSpec("sample", (BATCH, UNET_IN_CHANNELS, *lat)),
             TensorSpec("timestep", (BATCH,), "int64"),
             TensorSpec("encoder_hidden_states", (BATCH, text_tokens, text_dim))),
            (TensorSpec("v_prediction", (BATCH, LATENT_CHANNELS, *lat)),),
            f,
        ),
        "vae_encoder": NetworkSpec(
            "vae_encoder",
            (TensorSpec("image", (BATCH, 3, HEIGHT, WIDTH)),),
            (TensorSpec("latent", (BATCH, LATENT_CHANNELS, *lat)),),
            f,
        ),
        "vae_decoder": NetworkSpec(
            "vae_decoder",
            (TensorSpec("latent", (BATCH, LATENT_CHANNELS, *lat)),),
            (TensorSpec("depth", (BATCH, 1, HEIGHT, WIDTH)),),
            f,
        ),
    }


def describe_light_networks(vae_scale_factor: int) -> dict[str, NetworkSpec]:
    """The light VAE's two networks: the same tensors (names, dtypes, shapes, axes) as ``vae_encoder`` and
    ``vae_decoder`` of :func:`describe_networks`, under the names of :data:`LIGHT_NETWORKS`, so either can stand in
    for the other."""
    full = describe_networks(vae_scale_factor, 1, 1)  # the text sizes concern the U-Net only
    return {name: NetworkSpec(name, full[of].inputs, full[of].outputs, vae_scale_factor)
            for name, of in LIGHT_NETWORKS.items()}


def vae_networks(choice: str) -> tuple[str, str]:
    """(encoder, decoder) network names of a VAE choice (:data:`VAE_CHOICES`); a ValueError lists the choices."""
    try:
        return VAE_CHOICES[choice]
    except (KeyError, TypeError):
        raise ValueError(f"vae must be one of {', '.join(VAE_CHOICES)}, got {choice!r}") from None


def vae_variants(networks: Any) -> tuple[str, ...]:
    """The VAE choices a set of network names can run (in :data:`VAE_CHOICES` order)."""
    have = set(networks)
    return tuple(c for c, pair in VAE_CHOICES.items() if set(pair) <= have)


# ------------------------------------------------------------------------- the PyTorch side of each network


class UNetWrapper(torch.nn.Module):
    """unet: positional inputs in :func:`describe_networks` order, the v-prediction out."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VAEEncoderWrapper(torch.nn.Module):
    """vae_encoder: RGB in [-1,1] -> posterior mean × scaling factor (what the U-Net is conditioned on)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae, self.scale = vae, float(vae.config.scaling_factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mean * self.scale  # Marigold conditions on the posterior mean


class VAEDecoderWrapper(torch.nn.Module):
    """vae_decoder: scaled latent -> decoder -> mean of the 3 channels (unclipped, as the backends' decode)."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae, self.scale = vae, float(vae.config.scaling_factor)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.scale, return_dict=False)[0].mean(dim=1, keepdim=True)


class LightEncoderWrapper(torch.nn.Module):
    """vae_encoder_light: RGB in [-1,1] -> the scaled latent, as :class:`VAEEncoderWrapper` (a light VAE regresses
    the full encoder's posterior mean × scaling factor directly: no scaling here)."""

    def __init__(self, light_vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = light_vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image, return_dict=False)[0]


class LightDecoderWrapper(torch.nn.Module):
    """vae_decoder_light: scaled latent -> depth [B,1,H,W], as :class:`VAEDecoderWrapper` (unclipped). A 1-channel
    light decoder's output is the depth; an RGB one (a TAESD as published) is read like the full decoder, by the mean
    of its channels."""

    def __init__(self, light_vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = light_vae
        self.channels = int(light_vae.config.out_channels)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode(latent, return_dict=False)[0]
        return out if self.channels == 1 else out.mean(dim=1, keepdim=True)


def light_modules(light_vae: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The module each light network spec (:func:`describe_light_networks`) is exported from, in eval mode."""
    return {"vae_encoder_light": LightEncoderWrapper(light_vae).eval(),
            "vae_decoder_light": LightDecoderWrapper(light_vae).eval()}


def torch_modules(unet: torch.nn.Module, vae: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The module each network spec is exported from, in eval mode."""
    return {"unet": UNetWrapper(unet).eval(), "vae_encoder": VAEEncoderWrapper(vae).eval(),
            "vae_decoder": VAEDecoderWrapper(vae).eval()}


__all__ = ["LIGHT_NETWORKS", "NETWORK_NAMES", "VAE_CHOICES", "LightDecoderWrapper", "LightEncoderWrapper",
           "NetworkSpec", "ShapeRange", "TensorSpec", "describe_light_networks", "describe_networks", "light_modules",
           "torch_modules", "vae_networks", "vae_scale_factor", "vae_variants"]
