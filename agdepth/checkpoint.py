"""Checkpoint directories in diffusers layout, safetensors only.

    checkpoint/
      model_index.json                   # diffusers' MarigoldDepthPipeline index + inference defaults + agdepth info
      unet/  vae/                        # loadable with UNet2DConditionModel / AutoencoderKL .from_pretrained
      scheduler/scheduler_config.json    # DDIM, v-prediction, Marigold's settings
      depth_autoencoder/                 # agdepth.training.depth_autoencoder.DepthAutoencoder (training only)
      empty_text_embedding.safetensors   # [1, L, C]: the text encoder reduced to the one embedding it is used for

Official Marigold directories (with text_encoder/ and tokenizer/ instead of the embedding file) load too.
Every write goes to a temporary sibling directory first and is swapped in whole, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from agdepth.models import DepthModels, load_sd2
from agdepth.schedule import NoiseSchedule

EMBEDDING_FILE = "empty_text_embedding.safetensors"
EMBEDDING_KEY = "empty_text_embedding"


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block completes."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def marigold_schedule(timestep_spacing: str = "trailing") -> NoiseSchedule:
    """SD2's training schedule with Marigold's DDIM settings: v-prediction, no clipping, ᾱ_final = ᾱ_0."""
    return NoiseSchedule(set_alpha_to_one=False, steps_offset=1, clip_sample=False, timestep_spacing=timestep_spacing)


def scheduler_config(schedule: NoiseSchedule | None = None, timestep_spacing: str | None = None) -> dict[str, Any]:
    schedule = schedule or marigold_schedule()
    if timestep_spacing is not None:
        schedule = dataclasses.replace(schedule, timestep_spacing=timestep_spacing)
    return schedule.to_diffusers_config()


def save_checkpoint(
    out_dir: str | Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    empty_text_embedding: torch.Tensor,
    depth_autoencoder: torch.nn.Module | None = None,
    inference: Any | None = None,
    schedule: NoiseSchedule | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint atomically; ``inference`` is an InferenceDefaults (or dict) for model_index."""
    from agdepth import __version__

    inf = asdict(inference) if hasattr(inference, "__dataclass_fields__") else dict(inference or {})
    spacing = inf.get("timestep_spacing", "trailing")
    with atomic_dir(out_dir) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        DDIMScheduler.from_config(scheduler_config(schedule, spacing)).save_pretrained(tmp / "scheduler")
        if depth_autoencoder is not None:
            depth_autoencoder.save_pretrained(tmp / "depth_autoencoder", safe_serialization=True)
        save_file({EMBEDDING_KEY: empty_text_embedding.detach().float().cpu().contiguous()}, tmp / EMBEDDING_FILE)
        index = {
            "_class_name": "MarigoldDepthPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "prediction_type": "depth",
            "scale_invariant": True,
            "shift_invariant": True,
            "default_denoising_steps": inf.get("denoising_steps"),
            "default_processing_resolution": inf.get("processing_resolution"),
            "agdepth": {
                "version": __version__,
                "ensemble_size": inf.get("ensemble_size"),
                "timestep_spacing": spacing,
                "depth_autoencoder": "depth_autoencoder" if depth_autoencoder is not None else None,
                **(info or {}),
            },
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def read_model_index(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "model_index.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_checkpoint(
    ckpt_dir: str | Path, torch_dtype: torch.dtype = torch.float32, with_autoencoder: bool = False
) -> DepthModels:
    """Load an agdepth or official Marigold checkpoint (or an SD2 directory, whose conv_in is expanded)."""
    models = load_sd2(ckpt_dir, torch_dtype=torch_dtype)
    index = read_model_index(ckpt_dir)
    models.extra["model_index"] = index
    sched_dir = Path(ckpt_dir) / "scheduler"
    if (sched_dir / "scheduler_config.json").is_file():
        models.extra["scheduler_config"] = dict(DDIMScheduler.from_pretrained(sched_dir).config)
    ae_dir = Path(ckpt_dir) / "depth_autoencoder"
    if with_autoencoder:
        if not ae_dir.is_dir():
            raise FileNotFoundError(f"{ae_dir} is missing: this checkpoint has no depth autoencoder")
        from agdepth.training.depth_autoencoder import DepthAutoencoder

        models.extra["depth_autoencoder"] = DepthAutoencoder.from_pretrained(ae_dir, use_safetensors=True)
    return models
