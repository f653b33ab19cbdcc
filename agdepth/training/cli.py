"""depth-train: the training stages of the tiny and sd2 presets.

    depth-train all --config tiny --out runs/tiny                # vae -> autoencoder -> unet
    depth-train unet --config tiny --out runs/tiny --resume      # continue a stage bit-exactly
    depth-train distill-vae --checkpoint runs/tiny/checkpoint --out runs/distill   # + a light VAE (vae_light/)
    depth-train finetune --data data/mine --depth-scale 0.001 --out runs/mine      # the bundled model on your pairs
    torchrun --nproc_per_node 2 -m agdepth.training.cli unet --config sd2 --out runs/sd2 --set pretrained=DIR
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import click

from agdepth.training.config import RECIPE_STAGES, SourceConfig, StageConfig, TrainConfig, load_config

_common = [
    click.option("--config", "config", default="tiny", show_default=True,
                 help="Shipped config name (tiny, sd2) or a YAML file."),
    click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
                 help="Run directory: stage outputs, train_state/, logs/, and checkpoint/."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="Override a config value, e.g. --set stages.unet.iterations=100 (repeatable)."),
    click.option("--resume", is_flag=True, help="Continue from the stage's saved state in OUT/train_state/."),
    click.option("--overwrite", is_flag=True, help="Discard an existing saved state of the stage and restart."),
    click.option("--no-progress", is_flag=True, help="Disable the progress bar (logs still go to OUT/logs/)."),
]


def _with_common(f):  # type: ignore[no-untyped-def]
    for opt in reversed(_common):
        f = opt(f)
    return f


def _run(stages: tuple[str, ...], config: str, out: Path, overrides: tuple[str, ...], resume: bool,
         overwrite: bool, no_progress: bool, edit: Callable[[TrainConfig], None] | None = None) -> None:
    from agdepth.training.trainer import TooManyCorruptSamplesError, TrainingDivergedError, train_stage

    try:
        cfg = load_config(config, overrides)
        if edit is not None:  # command-line options that name files: set on the config, never parsed as YAML
            edit(cfg)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from e
    for name in stages:
        try:
            result = train_stage(name, cfg, out, resume=resume, overwrite=overwrite, progress=not no_progress)
        except (TrainingDivergedError, TooManyCorruptSamplesError, FileNotFoundError, FileExistsError,
                ValueError) as e:
            click.echo(f"depth-train {name}: error: {e}", err=True)
            sys.exit(1)
        click.echo(f"[{name}] done: {result}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train the autoencoder-guided depth diffusion model (stages: vae, autoencoder, unet; distill-vae adds a light
    VAE to a finished checkpoint)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _stage_command(name: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @_with_common
    def cmd(**kw) -> None:  # type: ignore[no-untyped-def]
        _run((name,), **kw)


_stage_command("vae", "Train the tiny preset's VAE on procedural RGB and depth (sd2 uses SD2's VAE).")
_stage_command("autoencoder", "Pretrain the depth autoencoder on normalised ground-truth depth (paper Fig. 1).")
_stage_command("unet", "Train the depth U-Net with L_v + L_BerHu + L_GM + L_feature; writes OUT/checkpoint.")


@main.command(name="distill-vae")
@click.option("--checkpoint", "checkpoint", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The checkpoint to distil: its VAE and U-Net are the frozen teacher.")
@click.option("--images", "images", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Train on this folder of RGB images (label-free) instead of the config's data sources.")
@click.option("--init", "init", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Start from a TAESD-layout AutoencoderTiny directory (e.g. madebyollin/taesd for SD2) instead "
                   "of random weights of the config's light_vae size.")
@_with_common
def distill_vae(checkpoint: Path, images: Path | None, init: Path | None, **kw) -> None:  # type: ignore[no-untyped-def]
    """Distil a light VAE (AutoencoderTiny) from a checkpoint's VAE; writes OUT/checkpoint = CKPT + vae_light/."""

    def edit(cfg: TrainConfig) -> None:
        scfg = cfg.stages.setdefault("distill_vae", StageConfig())
        scfg.checkpoint = str(checkpoint)
        if init is not None:
            scfg.init = str(init)
        if images is not None:
            cfg.data.sources = [SourceConfig(type="images", root=str(images))]

    _run(("distill_vae",), edit=edit, **kw)


def _holdout(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # a list file; the folder split checks that it exists


@main.command(name="finetune")
@click.option("--checkpoint", "checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="The checkpoint to fine-tune (agdepth, Marigold or SD2 directory). Default: the "
                                 "bundled model.")
@click.option("--data", "data", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of RGB-D pairs: DIR/rgb/NAME.* with DIR/depth/NAME.<png|npy|tif|exr> (DIR/mask/ "
                   "optional).")
@click.option("--depth-scale", type=float, default=1.0, show_default=True,
              help="Metres per depth-file unit (0.001 for 16-bit PNGs in millimetres).")
@click.option("--disparity", is_flag=True, help="The depth files hold disparity (depth = depth-scale / value).")
@click.option("--holdout", default="0.1", show_default=True,
              help="Held out for validation, never trained on: a fraction of the pairs (by a hash of each name) or "
                   "a file listing their images. The split is written to OUT/data_split/<name>/.")
@click.option("--replay", type=click.FloatRange(0, 1, max_open=True), default=0.75, show_default=True,
              help="Share of batches from the config's own sources (what the model was trained on), beside the "
                   "folder; 0 trains on the folder alone.")
@_with_common
def finetune(checkpoint: Path | None, data: Path, depth_scale: float, disparity: bool, holdout: str, replay: float,
             **kw) -> None:  # type: ignore[no-untyped-def]
    """Fine-tune a checkpoint's U-Net on your own RGB-D pairs; writes OUT/checkpoint.

    Runs the config's (default here: finetune) unet stage from CHECKPOINT's U-Net, VAE and schedule. When the
    checkpoint has no depth autoencoder and the feature loss is on, the autoencoder stage first pretrains one on the
    same data (into OUT/depth_autoencoder)."""
    from agdepth import default_checkpoint

    ckpt = checkpoint or default_checkpoint()
    if click.get_current_context().get_parameter_source("config") is click.core.ParameterSource.DEFAULT:
        kw["config"] = "finetune"

    def edit(cfg: TrainConfig) -> None:
        scfg = cfg.stages.setdefault("unet", StageConfig())
        scfg.checkpoint = str(ckpt)
        folder = SourceConfig(type="folder", root=str(data), depth_scale=depth_scale, disparity=disparity,
                              holdout=_holdout(holdout), probability=1.0 - replay)
        others = [s for s in cfg.data.sources if s.type != "folder"] if replay > 0 else []
        total = sum(s.probability for s in others)
        for s in others:
            s.probability = replay * s.probability / total if total > 0 else 0.0
        cfg.data.sources = [folder, *others]

    try:
        cfg = load_config(kw["config"], kw["overrides"])
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from e
    need_ae = (cfg.stage("unet").losses.feature > 0 and not (ckpt / "depth_autoencoder" / "config.json").is_file()
               and "autoencoder" in cfg.stages)
    _run(("autoencoder", "unet") if need_ae else ("unet",), edit=edit, **kw)


@main.command(name="all")
@_with_common
def all_stages(**kw) -> None:  # type: ignore[no-untyped-def]
    """Run every stage the preset needs, in order (tiny: vae, autoencoder, unet; sd2: autoencoder, unet)."""
    try:
        cfg = load_config(kw["config"], kw["overrides"])
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from e
    stages = tuple(s for s in RECIPE_STAGES if s in cfg.stages)
    _run(stages, **kw)


if __name__ == "__main__":
    main()
