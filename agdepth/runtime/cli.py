"""``depth-run``: folders of images -> depth maps, on PyTorch, ONNX Runtime (or TensorRT, later) by ``--engine``.

    depth-run examples/ --engine engines/unet.onnx --out outputs/

Unreadable inputs are reported one line each and skipped; the run goes on and exits non-zero at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from tqdm.auto import tqdm

from agdepth.imageio import (
    OUTPUT_FORMATS,
    ImageReadError,
    collect_inputs,
    existing_outputs,
    output_paths,
    read_image,
)
from agdepth.runtime.pipeline import STAGES, DepthPipeline
from agdepth.runtime.writer import BackgroundWriter, OutputWriteError


def torch_device(name: str) -> str:
    """--device: ``auto`` is CUDA when PyTorch sees a GPU, else the CPU; ``cuda`` without a GPU is a usage error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: PyTorch sees no CUDA GPU here (use --device cpu or auto)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_pipeline(engine: Path | None, device: str = "cpu") -> DepthPipeline:
    """--engine: .onnx / engines dir -> ONNX Runtime, checkpoint dir -> PyTorch on ``device``, none -> the bundled
    model on PyTorch."""
    if engine is None:
        from agdepth import default_checkpoint

        return DepthPipeline.from_checkpoint(default_checkpoint(), device=device)
    if engine.suffix == ".plan":  # TensorRT runs on the CUDA device; without one the backend says so in one line
        import torch

        if device == "cpu" and torch.cuda.is_available():
            raise click.UsageError("--device cpu: TensorRT engines run on a CUDA device (drop --device)")
        return DepthPipeline.from_engine(engine)
    return DepthPipeline.from_engine(engine, device=device)


def _backend_name(pipe: DepthPipeline) -> str:
    be = pipe.backend
    prec = getattr(be, "precision", None)
    return f"{type(be).__name__}" + (f" {prec}" if prec else "") + f" on {be.device}"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--engine", type=click.Path(path_type=Path), default=None,
              help="unet.onnx / unet.fp16.onnx (ONNX Runtime), an engines or checkpoint directory. "
                   "Default: the bundled model on PyTorch.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("outputs"), show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the PyTorch backend runs (auto: CUDA if PyTorch sees a GPU). ONNX Runtime picks its own "
                   "execution provider; TensorRT always runs on the GPU.")
@click.option("--steps", type=int, default=None, help="DDIM steps. Default: the model's.")
@click.option("--ensemble", type=int, default=None, help="Ensemble members per image. Default: the model's.")
@click.option("--timestep-spacing", type=click.Choice(["leading", "trailing"]), default=None)
@click.option("--processing-res", type=int, default=None,
              help="Longer side the networks see (0 = native). Default: the model's.")
@click.option("--batch-size", type=int, default=8, show_default=True,
              help="Most rows (members × images) per network call; images go through in groups that fit.")
@click.option("--seed", type=int, default=0, show_default=True, help="Initial noise seed (per group of images).")
@click.option("--formats", default="png16,npy,color", show_default=True,
              help=f"Comma-separated outputs: {', '.join(OUTPUT_FORMATS)}.")
@click.option("--uncertainty", is_flag=True, help="Also write <name>_uncertainty.png (needs --ensemble > 1).")
@click.option("--recursive", is_flag=True, help="Descend into sub-folders of INPUT folders.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def main(inputs: tuple[Path, ...], engine: Path | None, out: Path, device: str, steps: int | None, ensemble: int | None,
         timestep_spacing: str | None, processing_res: int | None, batch_size: int, seed: int, formats: str,
         uncertainty: bool, recursive: bool, overwrite: bool) -> None:
    """Predict depth for image files and folders (INPUT...)."""
    t_start = time.perf_counter()
    if not inputs:
        raise click.UsageError("no INPUT given: pass image files or folders")
    if batch_size < 1:
        raise click.UsageError("--batch-size must be >= 1")
    try:
        items = collect_inputs(inputs, recursive=recursive)
        plans = [(src, output_paths(out, stem, formats, uncertainty)) for src, stem in items]
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    if not overwrite:
        clash = existing_outputs([p for _, paths in plans for p in paths.values()])
        if clash:
            raise click.UsageError(f"{len(clash)} output file(s) exist already, e.g. {clash[0]}: pass --overwrite")
    try:
        pipe = load_pipeline(engine, torch_device(device))
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    d = pipe.backend.defaults
    ens = d.ensemble_size if ensemble is None else ensemble
    if uncertainty and ens < 2:
        raise click.UsageError("--uncertainty needs --ensemble > 1")
    res_px = d.processing_resolution if processing_res is None else processing_res
    click.echo(f"{len(items)} image(s) -> {out} | {_backend_name(pipe)} | steps {steps or d.steps}, ensemble {ens}, "
               f"{timestep_spacing or d.timestep_spacing}, processing res {res_px}")

    per_call = max(1, batch_size // ens)  # whole images per pipeline call
    timings = dict.fromkeys((*STAGES, "io"), 0.0)
    failures: list[str] = []
    done = 0
    bar = tqdm(total=len(plans), desc="depth", unit="img", dynamic_ncols=True)

    def predict(imgs: list[Any], seed_: int) -> Any:
        return pipe(imgs, steps=steps, ensemble=ens, processing_res=processing_res, timestep_spacing=timestep_spacing,
                    batch_size=batch_size, seed=seed_, output_uncertainty=uncertainty)

    # Outputs are encoded and written on a worker thread while the next chunk runs; "io" is the time the loop spends
    # reading inputs and waiting for that worker.
    writer = BackgroundWriter(max_pending=max(2 * per_call, 4))
    try:
        for k in range(0, len(plans), per_call):
            chunk, images = [], []
            t_io = time.perf_counter()
            for src, paths in plans[k:k + per_call]:
                try:
                    images.append(read_image(src))
                    chunk.append((src, paths))
                except ImageReadError as e:
                    failures.append(str(e))
                    tqdm.write(f"error: {e}", file=sys.stderr)
                    bar.update(1)
            timings["io"] += time.perf_counter() - t_io
            if not images:
                continue
            try:
                results = [(chunk, predict(images, seed + k))]
            except ValueError:  # e.g. a size outside the engine's range: retry one by one so only that image fails
                results = []
                for j, (item, img) in enumerate(zip(chunk, images, strict=True)):
                    try:
                        results.append(([item], predict([img], seed + k + j)))
                    except ValueError as e:
                        failures.append(f"{item[0]}: {e}")
                        tqdm.write(f"error: {item[0]}: {e}", file=sys.stderr)
                        bar.update(1)
            for part, res in results:
                for stage in STAGES:
                    timings[stage] += res.timings[stage]
                t_io = time.perf_counter()
                for j, (src, paths) in enumerate(part):
                    unc = res.uncertainty[j] if res.uncertainty is not None else None
                    writer.submit(str(src), paths, np.asarray(res.depth[j]), unc)
                    done += 1
                timings["io"] += time.perf_counter() - t_io
                bar.update(len(part))
        t_io = time.perf_counter()
        writer.close()
        timings["io"] += time.perf_counter() - t_io
    except OutputWriteError as e:
        writer.abandon()
        bar.close()
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    bar.close()
    wall = time.perf_counter() - t_start
    stages = ", ".join(f"{s} {v:.2f}" for s, v in timings.items() if v > 0)
    click.echo(f"done: {done} image(s) in {wall:.1f} s ({done / wall:.2f} img/s); seconds per stage: {stages}")
    if failures:
        click.echo(f"{len(failures)} input(s) failed:", err=True)
        for f in failures:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
