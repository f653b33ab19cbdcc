"""``depth-batch``: ``depth-run`` on Ray Data, for image collections beyond one machine.

    depth-batch photos/ --out depth/ --engine engines/unet.onnx --actors 4
    depth-batch /mnt/shared/photos --out /mnt/shared/depth --address auto --num-gpus 1 --engine engines/unet.onnx

The inputs, outputs, ledger, resume and seeds are ``depth-run``'s, so the two write the same files. Exit status: 0
when every image was written, 1 when any failed (listed in the report file), 2 on a usage or model error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from tqdm.auto import tqdm

from agdepth.cluster.batch import REPORT, run_batch
from agdepth.cluster.predictor import ModelSpec
from agdepth.cluster.ray_env import LOCAL, init_ray
from agdepth.imageio import collect_inputs
from agdepth.runtime.options import inference_options, model_options, output_options
from agdepth.runtime.outputs import OutputPlanError, protected_jobs


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, type=str)
@model_options
@output_options
@inference_options
@click.option("--address", default=LOCAL, show_default=True,
              help="Ray cluster to join (`ray start --head` prints it; auto: RAY_ADDRESS), or local: a Ray of this "
                   "machine, bound to the loopback interface.")
@click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True,
              help="Actors, each holding the model.")
@click.option("--num-cpus", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="CPUs per actor. Fractions leave room for Ray Data's read tasks (whole CPUs on a small machine "
                   "can starve them).")
@click.option("--num-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per actor on a GPU cluster (e.g. 1, or 0.5 for two actors per GPU).")
def main(inputs: tuple[str, ...], engine: Path | None, checkpoint: Path | None, device: str, out: Path,
         steps: int | None, ensemble: int | None, timestep_spacing: str | None, processing_res: int | None,
         vae: str | None, seed: int, batch_size: int, formats: str, recursive: bool, overwrite: bool, address: str,
         actors: int, num_cpus: float, num_gpus: float) -> None:
    """Predict depth for image files and folders (INPUT...) on a pool of Ray actors; outputs as depth-run's."""
    if not inputs:
        raise click.UsageError("no INPUT given: pass image files or folders")
    if "ply" in formats:
        raise click.UsageError("--formats ply: point clouds are written by depth-run (they need the camera)")
    problems: list[str] = []
    try:
        items = collect_inputs(inputs, recursive=recursive, exclude=[out], problems=problems)
        jobs = protected_jobs(items, out, formats, False)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    spec = ModelSpec(engine=None if engine is None else str(engine.resolve()),
                     checkpoint=None if checkpoint is None else str(checkpoint.resolve()), device=device, steps=steps,
                     ensemble=ensemble, timestep_spacing=timestep_spacing, processing_res=processing_res, vae=vae,
                     seed=seed, batch_size=batch_size)
    init_ray(address)
    click.echo(f"{len(jobs)} image(s) -> {out} | Ray at {address}, {actors} actor(s) of {num_cpus:g} CPU, "
               f"{num_gpus:g} GPU")
    bar = tqdm(total=len(jobs), desc="depth", unit="img", dynamic_ncols=True)
    try:
        result = run_batch(jobs, out, spec, overwrite, actors, num_cpus, num_gpus, progress=bar.update)
    except OutputPlanError as e:
        bar.close()
        raise click.UsageError(str(e)) from None
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        bar.close()
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    bar.close()
    if not result.done and not result.failed:
        click.echo(f"nothing to do: all {result.skipped} image(s) have their outputs in {out} (--overwrite redoes "
                   "them)")
        return
    click.echo(f"done: {result.done} image(s) in {result.seconds:.1f} s ({result.done / result.seconds:.2f} img/s)"
               + (f", {result.skipped} done earlier" if result.skipped else "") + f"; report: {out / REPORT}")
    failed = [*problems, *(f"{f['reason']}" for f in result.failed)]
    if failed:
        click.echo(f"{len(failed)} input(s) failed:", err=True)
        for f in failed:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
