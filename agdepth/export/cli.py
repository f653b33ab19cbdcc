"""``depth-export``: a checkpoint's U-Net and VAE to validated ONNX graphs (fp32, + fp16 with --fp16) and a manifest.

    depth-export --out engines/ --fp16
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from agdepth.export import MANIFEST, ExportOptions, build_engines_only, export_checkpoint, foreign_files
from agdepth.export.tensorrt_build import tensorrt_status

_DEFAULTS = ExportOptions()  # the CLI's defaults are the Python API's


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory (diffusers layout). Default: the bundled tiny model.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("engines"), show_default=True,
              help="Output directory for the ONNX graphs and manifest.json.")
@click.option("--fp16", is_flag=True, help="Also write fp16 graphs, checked end to end against fp32: *.fp16.onnx for "
              "ONNX Runtime (norms, softmax, timestep embedding kept fp32) and *.fp16-trt.onnx for TensorRT (attention "
              "in fp16, so TensorRT can fuse it); with TensorRT and a CUDA device, also the engines.")
@click.option("--max-resolution", type=int, default=_DEFAULTS.max_resolution, show_default=True,
              help="Largest padded image side (pixels) the graphs are validated and recorded for.")
@click.option("--opt-resolution", type=int, default=None,
              help="Most common side (TensorRT's opt shape). Default: the checkpoint's processing resolution.")
@click.option("--min-resolution", type=int, default=None, help="Smallest side. Default: 2 latent pixels.")
@click.option("--max-batch", type=int, default=_DEFAULTS.max_batch, show_default=True,
              help="Most rows per network call (ensemble members × images).")
@click.option("--static", is_flag=True, help="One shape only (for CUDA graphs): --opt-batch rows of a square canvas of "
              "--opt-resolution px; the runtime pads rows and images to it.")
@click.option("--opt-batch", type=int, default=None,
              help="Most common rows per call (TensorRT's opt shape; the only batch with --static). Default: the "
              "checkpoint's ensemble size.")
@click.option("--fp16-tolerance", type=float, default=_DEFAULTS.fp16_tolerance, show_default=True,
              help="Largest accepted AbsRel between fp16 and fp32 depth maps.")
@click.option("--opset", type=int, default=_DEFAULTS.opset, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing export in --out (a symlink stays a link: the "
              "folder it points to is replaced). Refused if --out holds files an export did not write.")
@click.option("--force", is_flag=True, help="--overwrite even if --out holds files an export did not write (they are "
              "deleted).")
@click.option("--engines-only", "engines_only", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Only build TensorRT engines for an existing --fp16 export directory.")
def main(checkpoint: Path | None, out: Path, fp16: bool, max_resolution: int, opt_resolution: int | None,
         min_resolution: int | None, max_batch: int, static: bool, opt_batch: int | None, fp16_tolerance: float,
         opset: int, overwrite: bool, force: bool, engines_only: Path | None) -> None:
    """Export a checkpoint to ONNX: unet, vae_encoder, vae_decoder, each validated against PyTorch; with --fp16 and
    TensorRT + a CUDA device present, also TensorRT engines."""
    from agdepth import default_checkpoint

    status = tensorrt_status()
    if engines_only is not None:
        if not status.available:
            click.echo(f"error: cannot build TensorRT engines here: {status.reason}", err=True)
            sys.exit(1)
        try:
            build_engines_only(engines_only, progress=click.echo)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        return

    if out.exists() and any(out.iterdir()):
        if not (overwrite or force):
            raise click.UsageError(f"{out} exists and is not empty: pass --overwrite to replace it")
        foreign = [] if force else foreign_files(out)
        if foreign:  # the whole folder is replaced: never delete what the user put there without being told so
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise click.UsageError(f"{out} holds files depth-export did not write ({shown}); --overwrite would delete "
                                   "them: choose another --out, or pass --force to replace the folder anyway")
    ckpt = checkpoint or default_checkpoint()
    t0 = time.perf_counter()
    click.echo(f"exporting {ckpt} -> {out}")
    try:
        manifest = export_checkpoint(ckpt, out, ExportOptions(
            fp16=fp16, max_resolution=max_resolution, opt_resolution=opt_resolution, min_resolution=min_resolution,
            max_batch=max_batch, opt_batch=opt_batch, static=static, opset=opset, fp16_tolerance=fp16_tolerance,
        ), progress=click.echo)
    except Exception as e:  # one readable line; the directory was not written (atomic)
        click.echo(f"error: export failed: {e}", err=True)
        sys.exit(1)
    r = manifest.shapes
    click.echo(f"wrote {out / MANIFEST}: batch {r.batch[0]}..{r.batch[2]}, sides {r.resolution[0]}..{r.resolution[2]} "
               f"px, precisions {', '.join(manifest.precisions)} ({time.perf_counter() - t0:.1f} s)")
    if "tensorrt" in manifest.data:
        click.echo(f"TensorRT engines: {', '.join(manifest.data['tensorrt']['files'].values())}")
    elif not fp16:
        click.echo("TensorRT engines: not built (they are built from fp16 graphs: add --fp16)")
    else:
        click.echo(f"TensorRT engines: not built ({status.reason}); on the target machine run: "
                   f"depth-export --engines-only {out}")


if __name__ == "__main__":
    main()
