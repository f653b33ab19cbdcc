"""Training configuration: YAML files shipped in `agdepth/configs/`, validated into dataclasses.

A config names the preset (`tiny` or `sd2`), the data sources with their per-batch mixing probabilities, and one
section per training stage. Any value can be overridden from the command line with ``--set a.b.c=value``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.light_vae import FIXED, TAESD_CONFIG, check_light_vae_config
from agdepth.training.losses import LossWeights

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
STAGES = ("vae", "autoencoder", "unet", "distill_vae")
# what `depth-train all` runs (those a config has a section for): the model. distill_vae works on a finished
# checkpoint, on its own (`depth-train distill-vae --checkpoint ...`).
RECIPE_STAGES = ("vae", "autoencoder", "unet")
DECODER_LOSSES = ("l1", "mse")


@dataclass
class StageConfig:
    iterations: int = 100  # optimizer updates
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1  # micro-batches per update: effective batch = batch_size * grad_accum * world size
    lr: float = 3e-5
    lr_schedule: str = "constant"  # constant | cosine (to 0 at `iterations`), both after `warmup` linear updates
    warmup: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    log_every: int = 10
    val_every: int = 0  # 0: validate only at the end
    ckpt_every: int = 100
    mixed_precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast; fp16 adds a GradScaler)
    gradient_checkpointing: bool = False
    size: tuple[int, int] | None = None  # training crop/render size; None: data.size
    kl_weight: float = 1e-6  # vae stage: KL term of the AutoencoderKL
    # vae stage: decode a posterior sample (SD's VAE training) or its mean. Marigold only ever uses the mean; a short
    # from-scratch run that samples keeps the posterior noisy and can leave latent channels unused.
    sample_posterior: bool = True
    # vae stage: export scaling_factor = 1 / std of the latents of the last training batches (SD's rule), instead of
    # SD's 0.18215. Off by default, as the bundled model was trained.
    calibrate_scaling_factor: bool = False
    losses: LossWeights = field(default_factory=LossWeights)  # unet stage: eq. 8 terms, 0 switches a term off
    val_steps: int = 1  # unet stage: DDIM steps (trailing) of the validation prediction
    # unet stage: share of samples trained at the last timestep T-1, where 1-step trailing DDIM predicts from pure
    # noise (E2E-FT, arXiv 2409.11355). 0 = the paper's uniform DDPM sampling.
    final_timestep_prob: float = 0.0
    # unet stage: memoise the frozen VAE's latents per sample (keyed by content; equal to recomputing them). Pays off
    # when samples repeat, i.e. with a cached fixed pool (data.cache and a small source length).
    cache_latents: bool = False
    # unet stage: the pixel-space terms (BerHu, GM, feature) on the first N samples of each micro-batch, 0 = all.
    # Decoding through the VAE dominates a step's cost; L_v always uses the whole batch.
    pixel_batch: int = 0
    # unet stage: random zoom-in crops (side scale in [random_crop, 1]) of each sample, None = off
    # (agdepth.training.augment); makes every sample new, so the latent memo no longer saves encodes
    random_crop: float | None = None
    # distill_vae stage: the teacher checkpoint (depth-train distill-vae --checkpoint), whose full VAE and U-Net stay
    # frozen, and an optional TAESD-layout AutoencoderTiny directory to start from (--init; else `light_vae` sizes).
    # unet stage: fine-tune this checkpoint (depth-train finetune --checkpoint). An agdepth or Marigold checkpoint's
    # U-Net, frozen VAE, text embedding, noise schedule, depth autoencoder (else OUT/depth_autoencoder) and inference
    # defaults replace the preset's; an SD2 base directory is read as `pretrained` is (its conv_in expanded).
    checkpoint: str | None = None
    init: str | None = None
    # distill_vae stage: the U-Net prediction whose latent the light decoder learns to decode: 0 / null = the
    # checkpoint's default steps / spacing (what the runtime will run)
    teacher_steps: int = 0
    teacher_spacing: str | None = None
    # distill_vae stage: loss = encoder_weight * MSE(latents) + decoder_weight * decoder_loss (l1 | mse) of the depth
    encoder_weight: float = 1.0
    decoder_weight: float = 1.0
    decoder_loss: str = "mse"


@dataclass
class SourceConfig:
    # procedural | hypersim | vkitti | folder (a user's RGB-D pairs, agdepth.data.folder) | images (a folder of RGB
    # images, label-free: distill_vae only)
    type: str
    probability: float = 1.0  # share of batches drawn from this source
    domains: list[str] = field(default_factory=list)  # procedural
    length: int = 100_000  # procedural: virtual dataset length
    # procedural: replaces camera statistics of the domains, e.g. {pitch_deg: [-45, 5]} (see camera_overrides)
    camera: dict[str, Any] = field(default_factory=dict)
    root: str | None = None  # hypersim / vkitti / folder / images
    filename_list: str | None = None  # hypersim / vkitti / folder (folder: instead of matching rgb/ and depth/ names)
    resize: tuple[int, int] | None = None
    # folder: metres per depth-file unit (0.001: 16-bit PNGs in millimetres); disparity files: depth = scale / value
    depth_scale: float = 1.0
    disparity: bool = False
    depth_range: tuple[float, float] = (1e-3, 1000.0)  # folder: usable depths (metres), exclusive
    # folder: the held-out pairs (validation, never trained on): a fraction of the pairs, chosen by a hash of each
    # image name and the seed, or a file listing their images; null: none. The run writes both sides as filename lists
    # to OUT/data_split/<name>/ (depth-eval --dataset folder --filename-list).
    holdout: float | str | None = 0.1
    name: str | None = None  # folder: the domain name in logs and validation (default: the root folder's name)


@dataclass
class DataConfig:
    size: tuple[int, int] = (128, 128)
    sources: list[SourceConfig] = field(default_factory=list)
    hflip: bool = True
    val_domains: list[str] = field(default_factory=list)  # procedural unseen domains for periodic validation
    val_count: int = 8  # scenes per validation domain, and held-out pairs per folder source
    num_workers: int = 0
    # procedural sources: keep rendered scenes in memory (with a small source `length`, a fixed pool read for many
    # epochs instead of fresh scenes rendered every step)
    cache: bool = False
    max_corrupt: int = 50  # unreadable samples tolerated before the run stops
    # the share of the folder sources' pairs that may be missing or unreadable before the run stops (images without a
    # depth file are counted before training starts)
    max_corrupt_share: float = 0.1
    log_samples: bool = False  # debug: each rank logs the sample names it read and its final weight digest


# The `inference` section (a RuntimeDefaults, written into the checkpoint's model_index.json as Marigold v1.1 does) for
# keys a config omits: the tiny preset's few-step setting. RuntimeDefaults' own field defaults are something else,
# the fallbacks for a model_index.json that sets nothing.
CONFIG_INFERENCE = RuntimeDefaults(steps=1, ensemble_size=1, timestep_spacing="trailing", processing_resolution=128)
# RuntimeDefaults' fields a config may set (`assumed` is the runtime's record of what no file gave)
INFERENCE_KEYS = ("steps", "ensemble_size", "timestep_spacing", "processing_resolution")


@dataclass
class LightVAEConfig:
    """The light VAE's size (AutoencoderTiny arguments; agdepth.light_vae fixes the rest). Defaults: TAESD's (8x)."""

    encoder_block_out_channels: tuple[int, ...] = TAESD_CONFIG["encoder_block_out_channels"]
    decoder_block_out_channels: tuple[int, ...] = TAESD_CONFIG["decoder_block_out_channels"]
    num_encoder_blocks: tuple[int, ...] = TAESD_CONFIG["num_encoder_blocks"]
    num_decoder_blocks: tuple[int, ...] = TAESD_CONFIG["num_decoder_blocks"]
    act_fn: str = "relu"
    upsample_fn: str = "nearest"
    upsampling_scaling_factor: int = 2

    def kwargs(self) -> dict[str, Any]:
        """``agdepth.light_vae.build_light_vae``'s arguments."""
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    preset: str = "tiny"  # tiny | sd2
    pretrained: str | None = None  # sd2: local SD2 / Marigold diffusers directory
    seed: int = 0
    device: str = "auto"
    model: dict[str, Any] = field(default_factory=dict)  # tiny preset sizes (agdepth.models.TinyModelConfig)
    autoencoder: dict[str, Any] = field(default_factory=dict)  # DepthAutoencoder constructor arguments
    light_vae: LightVAEConfig = field(default_factory=LightVAEConfig)  # distill_vae stage: the light VAE's size
    data: DataConfig = field(default_factory=DataConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    inference: RuntimeDefaults = CONFIG_INFERENCE  # frozen, so one shared instance is safe

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        return self.stages.get(name, StageConfig())

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inference"] = {k: d["inference"][k] for k in INFERENCE_KEYS}  # no `assumed`: stays a loadable config
        return d


def _tuples(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _build(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown key(s) in config section {where!r}: {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if cls is StageConfig and k == "losses":
            v = _build(LossWeights, v, f"{where}.losses")
        elif k == "mixed_precision" and v in (False, None, "no"):
            v = "fp32"  # YAML reads a bare `no` as False
        elif k in ("size", "betas", "resize", "depth_range") and v is not None:
            v = _tuples(v)
        elif k == "holdout":
            pass  # a fraction or a list file's path
        elif isinstance(v, str) and str(names[k].type).split(" |")[0] in ("float", "int"):
            # YAML 1.1 reads `2e-3` (no dot) as a string: coerce numeric fields, or say which key is wrong
            try:
                v = float(v) if str(names[k].type).startswith("float") else int(v)
            except ValueError:
                raise ValueError(f"config key {where}.{k} must be a number, got {v!r}") from None
        kwargs[k] = v
    return cls(**kwargs)


def _build_inference(d: Any) -> RuntimeDefaults:
    """The `inference` section; keys it omits come from CONFIG_INFERENCE."""
    if isinstance(d, dict):
        if "denoising_steps" in d:
            raise ValueError("config key inference.denoising_steps is now inference.steps: rename it to `steps`")
        unknown = set(d) - set(INFERENCE_KEYS)
        if unknown:  # before _build, which would accept `assumed`
            raise ValueError(f"unknown key(s) in config section 'inference': {', '.join(sorted(unknown))}")
        d = {**{k: getattr(CONFIG_INFERENCE, k) for k in INFERENCE_KEYS}, **d}
    return _build(RuntimeDefaults, d, "inference")


def _build_light_vae(d: Any) -> LightVAEConfig:
    """The `light_vae` section: AutoencoderTiny sizes a light VAE can have (checked by agdepth.light_vae)."""
    if not isinstance(d, dict):
        raise ValueError(f"config section 'light_vae' must be a mapping, got {type(d).__name__}")
    check_light_vae_config(d, "light_vae")
    cfg = _build(LightVAEConfig, {k: v for k, v in d.items() if k not in FIXED}, "light_vae")  # FIXED: checked
    for f in dataclasses.fields(LightVAEConfig):
        v = getattr(cfg, f.name)
        if isinstance(v, list):
            setattr(cfg, f.name, tuple(v))
    return cfg


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    d = copy.deepcopy(d)
    light_vae = _build_light_vae(d.pop("light_vae", {}) or {})
    data = d.pop("data", {}) or {}
    sources = [_build(SourceConfig, s, f"data.sources[{i}]") for i, s in enumerate(data.pop("sources", []) or [])]
    data_cfg = _build(DataConfig, data, "data")
    data_cfg.sources = sources
    stages = {}
    for name, s in (d.pop("stages", {}) or {}).items():
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} in config; stages are {', '.join(STAGES)}")
        stages[name] = _build(StageConfig, s or {}, f"stages.{name}")
    inference = _build_inference(d.pop("inference", {}) or {})
    cfg = _build(TrainConfig, d, "top level")
    cfg.data, cfg.stages, cfg.inference, cfg.light_vae = data_cfg, stages, inference, light_vae
    for name, sc in stages.items():
        if sc.decoder_loss not in DECODER_LOSSES:
            raise ValueError(f"stages.{name}.decoder_loss must be one of {', '.join(DECODER_LOSSES)}, "
                             f"got {sc.decoder_loss!r}")
    if cfg.preset not in ("tiny", "sd2"):
        raise ValueError(f"preset must be 'tiny' or 'sd2', got {cfg.preset!r}")
    if cfg.preset == "sd2" and "vae" in stages:
        raise ValueError("the sd2 preset uses SD2's pretrained VAE: remove the 'vae' stage from the config")
    return cfg


def _set_dotted(d: Any, dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in nested dicts/lists (an integer key indexes a list, e.g. data.sources.0.root)."""
    keys = dotted.split(".")
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(d, list):
            if not k.isdigit() or int(k) >= len(d):
                raise ValueError(f"--set {dotted}: {k!r} is not an index of a list of {len(d)}")
            if last:
                d[int(k)] = value
            else:
                d = d[int(k)]
        elif isinstance(d, dict):
            if last:
                d[k] = value
            else:
                d = d.setdefault(k, {})
        else:
            raise ValueError(f"--set {dotted}: {k!r} is not inside a section")


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A shipped config by name (`tiny`, `sd2`) or a YAML file path."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a shipped config ({', '.join(names)})")


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML config and apply ``key.path=value`` overrides (values parsed as YAML)."""
    path = resolve_config_path(name_or_path)
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}")
        k, v = item.split("=", 1)
        _set_dotted(d, k.strip(), yaml.safe_load(v))
    return config_from_dict(d)
