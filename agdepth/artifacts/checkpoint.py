"""Checkpoint directories in diffusers layout, safetensors only.

    checkpoint/
      model_index.json                   # diffusers' MarigoldDepthPipeline index + inference defaults + agdepth info
      unet/  vae/                        # loadable with UNet2DConditionModel / AutoencoderKL .from_pretrained
      scheduler/scheduler_config.json    # DDIMScheduler (or LCMScheduler), v-prediction, Marigold's settings
      depth_autoencoder/                 # agdepth.depth_autoencoder.DepthAutoencoder (training only)
      vae_light/                         # optional: AutoencoderTiny distilled from vae/ (agdepth.light_vae)
      empty_text_embedding.safetensors   # [1, L, C]: the text encoder reduced to the one embedding it is used for

Official Marigold directories (with text_encoder/ and tokenizer/ instead of the embedding file) load too.
Every write goes to a temporary sibling directory first and is swapped in whole, so a crash never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.light_vae import LIGHT_VAE_CLASS, LIGHT_VAE_FOLDER, load_light_vae
from agdepth.models import DepthModels, load_sd2
from agdepth.schedule import NoiseSchedule

EMBEDDING_FILE = "empty_text_embedding.safetensors"
EMBEDDING_KEY = "empty_text_embedding"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # what diffusers' from_pretrained(use_safetensors=True) reads
SCHEDULER_CONFIG = Path("scheduler") / "scheduler_config.json"
# the diffusers scheduler class that stores (and that diffusers' MarigoldDepthPipeline runs) each kind of schedule
_SCHEDULER_CLASS = {"ddim": DDIMScheduler, "lcm": LCMScheduler}

logger = logging.getLogger(__name__)


def _remove(path: Path) -> None:
    # a symlink is unlinked, never followed (shutil.rmtree refuses links; older versions left such a `.X.old` link)
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block completes.

    A symlinked ``target`` stays a link: the directory it points to is replaced. The new directory has the mode a
    plain ``mkdir`` gives (0o777 & ~umask). No temporary or ``.old`` directory is left behind, whether the block
    completes or fails.
    """
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()  # write beside the link's target and swap there: the link itself is untouched
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory")
    # mkdir, not tempfile.mkdtemp: mkdtemp's 0o700 would stay on the result (and on every later export)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(6)}")
    tmp.mkdir()
    old = target.with_name(f".{target.name}.old")
    try:
        yield tmp
        if target.exists():
            if os.path.lexists(old):
                _remove(old)  # left by an interrupted swap; `target` is newer
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old.exists() and not target.exists():
                os.replace(old, target)  # put the previous contents back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.lexists(old):  # the swap is done: failing to delete the previous contents is not a failed write
        try:
            _remove(old)
        except OSError as e:
            logger.warning("could not delete the previous contents of %s at %s (%s): delete it by hand", target, old, e)


def marigold_schedule(timestep_spacing: str = "trailing") -> NoiseSchedule:
    """SD2's training schedule with Marigold's DDIM settings: v-prediction, no clipping, ᾱ_final = ᾱ_0."""
    return NoiseSchedule(set_alpha_to_one=False, steps_offset=1, clip_sample=False, timestep_spacing=timestep_spacing)


def checkpoint_schedule(scheduler_config: dict[str, Any] | None, source: Path | str | None = None) -> NoiseSchedule:
    """The schedule of a checkpoint: its ``scheduler/scheduler_config.json`` (DDIMScheduler or LCMScheduler), else
    Marigold's DDIM settings with DDIM's default "leading" spacing. The PyTorch backend and the export both take it
    from here, so a checkpoint without a scheduler config denoises the same before and after export.

    A scheduler class or setting agdepth does not implement raises one ValueError, prefixed with ``source`` (the
    config file's path) when given."""
    if not scheduler_config:
        return marigold_schedule("leading")
    try:
        return NoiseSchedule.from_config(scheduler_config)
    except ValueError as e:
        if source is None:
            raise
        raise ValueError(f"{source}: {e}") from None


def scheduler_config(schedule: NoiseSchedule | None = None, timestep_spacing: str | None = None) -> dict[str, Any]:
    schedule = schedule or marigold_schedule()
    if timestep_spacing is not None:
        schedule = dataclasses.replace(schedule, timestep_spacing=timestep_spacing)
    return schedule.to_diffusers_config()  # with the "_class_name" of the schedule's kind


def save_checkpoint(
    out_dir: str | Path,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    empty_text_embedding: torch.Tensor,
    depth_autoencoder: torch.nn.Module | None = None,
    inference: RuntimeDefaults | Mapping[str, Any] | None = None,
    schedule: NoiseSchedule | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint atomically.

    ``inference`` (a RuntimeDefaults, or a mapping of its field names) is the settings model_index.json recommends;
    None writes nulls, so the runtime falls back to Marigold's and says so. Its spacing is the scheduler config's too.
    """
    from agdepth import __version__

    if isinstance(inference, Mapping):
        inference = RuntimeDefaults(**inference)
    if inference is None:
        spacing = "trailing"  # marigold_schedule's, as checkpoints saved without settings always had
        entries = RuntimeDefaults.unset_model_index_entries(spacing)
    else:
        spacing = inference.timestep_spacing
        entries = inference.model_index_entries()
    section = entries.pop("agdepth")
    with atomic_dir(out_dir) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        sched_cfg = scheduler_config(schedule, spacing)
        sched_cls = _SCHEDULER_CLASS[NoiseSchedule.from_config(sched_cfg).kind]
        sched_cls.from_config(sched_cfg).save_pretrained(tmp / "scheduler")
        if depth_autoencoder is not None:
            depth_autoencoder.save_pretrained(tmp / "depth_autoencoder", safe_serialization=True)
        save_file({EMBEDDING_KEY: empty_text_embedding.detach().float().cpu().contiguous()}, tmp / EMBEDDING_FILE)
        index = {
            "_class_name": "MarigoldDepthPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", sched_cls.__name__],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "prediction_type": "depth",
            "scale_invariant": True,
            "shift_invariant": True,
            **entries,  # default_denoising_steps, default_processing_resolution
            "agdepth": {
                "version": __version__,
                **section,  # ensemble_size, timestep_spacing
                "depth_autoencoder": "depth_autoencoder" if depth_autoencoder is not None else None,
                **(info or {}),
            },
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object (a {type(data).__name__})")
    return data


def _check_safetensors(path: Path, key: str | None = None) -> None:
    from safetensors import safe_open

    try:  # reads the header only; it must describe tensors that exactly fill the file, so truncation shows here
        with safe_open(path, "pt") as f:
            keys = set(f.keys())
    except Exception as e:  # SafetensorError derives from Exception only
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable safetensors file ({detail})") from None
    if key is not None and key not in keys:
        raise ValueError(f"{path}: has no tensor {key!r} (has: {sorted(keys)})")


def check_files(ckpt_dir: str | Path, subfolders: tuple[str, ...] = ("unet", "vae")) -> None:
    """Parse every config and weights file the load will read: a truncated or damaged one is one ValueError naming
    it (diffusers would raise an OSError traceback, after its warnings), a missing weights file a FileNotFoundError.
    Cheap: JSON parsing and safetensors headers. Subfolders without config.json are left to the loader to report."""
    root = Path(ckpt_dir)
    for cfg in (root / "model_index.json", root / "scheduler" / "scheduler_config.json"):
        if cfg.is_file():
            _read_json(cfg)
    for sub in subfolders:
        if not (root / sub / "config.json").is_file():
            continue
        _read_json(root / sub / "config.json")
        weights, index = root / sub / WEIGHTS_FILE, root / sub / f"{WEIGHTS_FILE}.index.json"
        if index.is_file() and not weights.is_file():  # sharded: the index names the shards
            shards = sorted({root / sub / str(f) for f in (_read_json(index).get("weight_map") or {}).values()})
        else:
            shards = [weights]
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{shard} is missing: {root / sub} has no weights")
            _check_safetensors(shard)
    if (root / EMBEDDING_FILE).is_file():
        _check_safetensors(root / EMBEDDING_FILE, EMBEDDING_KEY)


def read_model_index(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / "model_index.json"
    return _read_json(path) if path.is_file() else {}


def load_checkpoint(
    ckpt_dir: str | Path, torch_dtype: torch.dtype = torch.float32, with_autoencoder: bool = False
) -> DepthModels:
    """Load an agdepth or official Marigold checkpoint (or an SD2 directory, whose conv_in is expanded).

    A damaged config or weights file raises one ValueError naming it, before diffusers reads anything; so does a
    scheduler config whose class (or a setting) agdepth does not implement: only DDIMScheduler and LCMScheduler run.
    ``extra["scheduler_config"]`` is that config as its diffusers class reads it (diffusers' defaults filled in),
    with its ``_class_name``; ``extra["vae_light"]`` the light VAE (an ``AutoencoderTiny``) when the checkpoint has a
    ``vae_light/`` folder, checked like the other folders."""
    ae_dir = Path(ckpt_dir) / "depth_autoencoder"
    if with_autoencoder and not ae_dir.is_dir():
        raise FileNotFoundError(f"{ae_dir} is missing: this checkpoint has no depth autoencoder")
    light_dir = Path(ckpt_dir) / LIGHT_VAE_FOLDER
    has_light = light_dir.is_dir()
    if has_light and not (light_dir / "config.json").is_file():
        raise FileNotFoundError(f"{light_dir / 'config.json'} is missing: {light_dir} is no light VAE")
    check_files(ckpt_dir, ("unet", "vae", *(("depth_autoencoder",) if with_autoencoder else ()),
                           *((LIGHT_VAE_FOLDER,) if has_light else ())))
    sched_file = Path(ckpt_dir) / SCHEDULER_CONFIG
    sched_cls = None
    if sched_file.is_file():  # the scheduler class is checked before any weights load
        sched_cls = _SCHEDULER_CLASS[checkpoint_schedule(_read_json(sched_file), source=sched_file).kind]
    models = load_sd2(ckpt_dir, torch_dtype=torch_dtype)
    index = read_model_index(ckpt_dir)
    models.extra["model_index"] = index
    if sched_cls is not None:
        # the config's own class reads it: DDIMScheduler would read an LCM config as DDIM (and drop its LCM keys)
        sched_cfg = dict(sched_cls.from_pretrained(sched_file.parent).config)
        models.extra["scheduler_config"] = {**sched_cfg, "_class_name": sched_cls.__name__}
    if with_autoencoder:
        from agdepth.depth_autoencoder import DepthAutoencoder

        # low_cpu_mem_usage=False: what diffusers falls back to without `accelerate`, minus its warning on every load
        models.extra["depth_autoencoder"] = DepthAutoencoder.from_pretrained(ae_dir, use_safetensors=True,
                                                                             low_cpu_mem_usage=False)
    if has_light:  # the light VAE distilled from vae/ (depth-train distill-vae)
        models.extra["vae_light"] = load_light_vae(light_dir, torch_dtype=torch_dtype)
    return models


def save_light_checkpoint(source: str | Path, out_dir: str | Path, light_vae: torch.nn.Module,
                          info: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir`` atomically: a copy of the checkpoint ``source`` (any ``vae_light/`` it has left out) plus
    ``light_vae`` as ``vae_light/`` (safetensors), listed in model_index.json as ``"vae_light": ["diffusers",
    "AutoencoderTiny"]``; ``info`` goes to its ``agdepth.vae_light`` entry. ``out_dir`` may be ``source`` itself."""
    source = Path(source)
    if not (source / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a checkpoint directory (no vae/config.json)")
    index = read_model_index(source)
    with atomic_dir(out_dir) as tmp:
        for entry in sorted(source.iterdir()):
            if entry.name == LIGHT_VAE_FOLDER or entry.name.startswith("."):
                continue  # the new light VAE replaces an old one; hidden entries are temporary or foreign
            if entry.is_dir():
                shutil.copytree(entry, tmp / entry.name)
            else:
                shutil.copy2(entry, tmp / entry.name)
        light_vae.save_pretrained(tmp / LIGHT_VAE_FOLDER, safe_serialization=True)
        if index or (source / "model_index.json").is_file():
            index[LIGHT_VAE_FOLDER] = ["diffusers", LIGHT_VAE_CLASS]
            if info is not None:
                section = index.get("agdepth")
                if isinstance(section, dict):
                    section[LIGHT_VAE_FOLDER] = dict(info)
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)
