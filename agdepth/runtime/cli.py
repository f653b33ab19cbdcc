"""``depth-run``: folders of images -> depth maps, on PyTorch, ONNX Runtime or TensorRT by ``--engine``.

    depth-run examples/ --engine engines/unet.onnx --out outputs/

Every option is checked before any image is read; outputs never replace inputs; a rerun resumes (images whose outputs
are complete are skipped). Unreadable inputs are reported one line each and skipped; the run goes on and exits 1 at
the end. Usage and model-loading errors exit 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from tqdm.auto import tqdm

from agdepth.imageio import ImageReadError, collect_inputs, read_image, write_bytes_atomic
from agdepth.pointcloud import IntrinsicsFile
from agdepth.runtime.clips import FOLDER_FPS, FRAME_FORMATS, is_clip, plan_clips, run_clips
from agdepth.runtime.image_outputs import (
    ASSUMED_FOV,
    ImageReport,
    OutputOptions,
    parse_camera_option,
    write_image_outputs,
)
from agdepth.runtime.options import (
    inference_options,
    model_label,
    model_options,
    open_run_pipeline,
    output_options,
)
from agdepth.runtime.outputs import Job, OutputPlanError, plan_outputs, protected_jobs
from agdepth.runtime.pipeline import STAGES, DepthPipeline
from agdepth.runtime.stream import DEFAULT_STRENGTH, DepthStream
from agdepth.runtime.tiling import predict_tiled
from agdepth.runtime.writer import (
    BackgroundWriter,
    OutputWriteError,
    ReadAhead,
    default_readers,
    default_writers,
)


def _backend_name(pipe: DepthPipeline) -> str:
    be = pipe.backend
    prec = getattr(be, "precision", None)
    return f"{type(be).__name__}" + (f" {prec}" if prec else "") + f" on {be.device}"


ANCHOR_REPORT = "anchors_fit.csv"


class TiledResult:
    """What depth-run's loop reads from a pipeline result, for tiled predictions."""

    def __init__(self, maps: list[np.ndarray], seconds: dict[str, float]) -> None:
        self.depth = maps
        self.uncertainty = None
        self.timings = {**dict.fromkeys(STAGES, 0.0), **seconds}


def device_image(img: np.ndarray, device: torch.device) -> Any:
    """An image as read -> what the pipeline is given, prepared on a reader thread.

    On a CUDA device an 8-bit image goes to the GPU as it is (bytes, not floats), as a [3,H,W] uint8 tensor copied
    from page-locked memory without blocking: the pipeline then casts, normalises and resizes it there. That is the
    pipeline's own uint8-tensor path, the same operations on the same device in the same order as for the [H,W,3]
    array (whose float copy is made on the host), so depth maps are bit-identical. On the CPU, and for 16-bit images
    (which the tensor path does not take), the array is passed on as it is.
    """
    if device.type != "cuda" or img.dtype != np.uint8 or img.ndim != 3:
        return img
    host = torch.empty((3, *img.shape[:2]), dtype=torch.uint8, pin_memory=True)
    np.copyto(host.numpy(), img.transpose(2, 0, 1))
    # queued on the device's current stream, before the pipeline's kernels that read it
    return host.to(device, non_blocking=True)


def _summarise_extras(reports: list[ImageReport], out: Path, anchored: bool) -> None:
    """The metric fits (and the images without one) on the terminal and in OUT/anchors_fit.csv; assumed cameras."""
    for note in sorted(n for r in reports for n in r.notes):
        click.echo(f"note: {note}", err=True)
    if not anchored or not reports:
        return
    fits = [r.fit for r in reports if r.fit is not None]
    for r in sorted(reports, key=lambda r: r.source):
        if r.problem:
            click.echo(f"warning: no metric depth, affine-invariant outputs written: {r.problem}", err=True)
    rows = ["source,space,scale,shift,anchors,inliers,residual,problem"]
    for r in sorted(reports, key=lambda r: r.source):
        f = r.fit
        cells = ([f.space, f"{f.scale:.6g}", f"{f.shift:.6g}", str(f.anchors), str(f.inliers), f"{f.residual:.6g}"]
                 if f else [""] * 6)
        rows.append(",".join([_csv_cell(r.source), *cells, _csv_cell(r.problem or "")]))
    write_bytes_atomic(out / ANCHOR_REPORT, ("\n".join(rows) + "\n").encode())
    if fits:
        click.echo(f"metric depth for {len(fits)} of {len(reports)} image(s): median residual "
                   f"{100 * float(np.median([f.residual for f in fits])):.2f} %, inliers "
                   f"{int(np.median([f.inliers for f in fits]))} of {int(np.median([f.anchors for f in fits]))} "
                   f"(median); per image: {out / ANCHOR_REPORT}")
    else:
        click.echo(f"no metric depth: no image had usable anchors ({out / ANCHOR_REPORT})", err=True)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _open_or_exit(engine: Path | None, checkpoint: Path | None, device: str) -> DepthPipeline:
    """The run's pipeline; a model that cannot be loaded is one error line and exit status 2."""
    try:
        return open_run_pipeline(engine, checkpoint, device)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _run_videos(inputs: list[str], engine: Path | None, checkpoint: Path | None, device: str, out: Path,
                steps: int | None, ensemble: int | None, timestep_spacing: str | None, processing_res: int | None,
                vae: str | None, seed: int, formats: str, uncertainty: bool, overwrite: bool, stride: int,
                max_frames: int | None, fps: float | None, side_by_side: bool, strength: float | None,
                t_start: float) -> None:
    """depth-run's video branch (see :mod:`agdepth.runtime.clips`)."""
    if uncertainty or (ensemble is not None and ensemble != 1):
        raise click.UsageError("videos run one ensemble member per frame: drop --ensemble/--uncertainty")
    kinds = [k.strip() for k in formats.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in (*FRAME_FORMATS, "color")]
    if unknown or not kinds:
        raise click.UsageError(f"--formats {formats!r}: videos write {', '.join(FRAME_FORMATS)} per frame and color "
                               "(the coloured depth video)")
    try:
        clips = plan_clips(inputs, out, kinds, overwrite)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    pipe = _open_or_exit(engine, checkpoint, device)
    try:
        stream = DepthStream(pipe, steps=steps, processing_res=processing_res, timestep_spacing=timestep_spacing,
                             vae=vae, seed=seed, strength=DEFAULT_STRENGTH if strength is None else strength)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"{len(clips)} clip(s) -> {out} | {_backend_name(pipe)} | steps {stream.steps}, "
               f"{stream.timestep_spacing}, processing res {stream.processing_res}, {stream.vae} VAE, warm start "
               f"strength {stream.strength:g}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        done, failures = run_clips(stream, clips, kinds, stride, max_frames, fps, side_by_side)
    except OutputWriteError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: the frames written so far are kept; run the same command with --overwrite to redo "
                   "the clip", err=True)
        sys.exit(130)
    wall = time.perf_counter() - t_start
    click.echo(f"done: {done} frame(s) of {len(clips)} clip(s) in {wall:.1f} s ({done / wall:.2f} frames/s)")
    if failures:
        click.echo(f"{len(failures)} clip(s) failed:", err=True)
        for f in failures:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, type=str)
@model_options
@output_options
@inference_options
@click.option("--uncertainty", is_flag=True, help="Also write <name>_uncertainty.png (needs --ensemble > 1).")
@click.option("--anchors", type=click.Path(exists=True, path_type=Path), default=None,
              help="Sparse metric depth per image (a file, or a folder of <stem>.png|npy|csv): metric outputs.")
@click.option("--intrinsics", metavar="FX,FY,CX,CY|FILE", default=None,
              help="Point clouds (--formats ...,ply): the camera as fx,fy,cx,cy (px), or a CSV file of one per image "
                   "(header name,fx,fy,cx,cy; name: the image's file name or stem). An image whose row is bad or "
                   f"missing falls back to EXIF, then a {ASSUMED_FOV:g}° field of view, with a note.")
@click.option("--fov", type=click.FloatRange(0, 180, min_open=True, max_open=True), default=None,
              help="Point clouds: the horizontal field of view in degrees (instead of --intrinsics).")
@click.option("--voxel", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Point clouds: one point per voxel of this size (the depth's unit).")
@click.option("--tile", is_flag=True,
              help="High resolution: refine the prediction with overlapping tiles at a finer scale (slower).")
@click.option("--video", is_flag=True, help="Take INPUT folders as videos: their frames in name order.")
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Videos: every n-th frame.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Videos: at most this many frames each.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"Videos: the input's frame rate (default: the file's; {FOLDER_FPS:g} for frame folders).")
@click.option("--side-by-side", is_flag=True, help="Videos: the coloured depth video shows the input on its left.")
@click.option("--strength", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help=f"Videos: the warm start, from the previous frame's depth (1 = none) [default: "
                   f"{DEFAULT_STRENGTH:g}].")
def main(inputs: tuple[str, ...], engine: Path | None, checkpoint: Path | None, device: str, out: Path,
         steps: int | None, ensemble: int | None, timestep_spacing: str | None, processing_res: int | None,
         vae: str | None, seed: int, batch_size: int, formats: str, uncertainty: bool, recursive: bool,
         overwrite: bool, anchors: Path | None, intrinsics: str | None, fov: float | None, voxel: float | None,
         tile: bool, video: bool, stride: int, max_frames: int | None, fps: float | None, side_by_side: bool,
         strength: float | None) -> None:
    """Predict depth for image files and folders (INPUT...). Image i of the run uses seed + i, so a resumed run
    equals a whole one; images go through in groups that fit --batch-size. Video files (and with --video, folders
    of frames) go through a causal stream instead: fixed noise, a warm start from the previous frame and one scale
    and shift per clip."""
    t_start = time.perf_counter()
    if not inputs:
        raise click.UsageError("no INPUT given: pass image files or folders")
    clip_inputs = [p for p in inputs if is_clip(p, video)]
    if clip_inputs and (anchors or intrinsics or fov or voxel or tile):
        raise click.UsageError("--anchors, --intrinsics, --fov, --voxel and --tile are for images, not videos")
    if tile and (uncertainty or (ensemble is not None and ensemble != 1)):
        raise click.UsageError("--tile runs one member per image: drop --ensemble/--uncertainty")
    if intrinsics is not None and fov is not None:
        raise click.UsageError("give --intrinsics or --fov, not both")
    try:
        camera = None if intrinsics is None else parse_camera_option(intrinsics)
    except ValueError as e:
        raise click.UsageError(f"--intrinsics {intrinsics!r}: {e}") from None
    for problem in camera.unnamed if isinstance(camera, IntrinsicsFile) else ():  # rows that name no image
        click.echo(f"warning: {intrinsics}: {problem}", err=True)
    extras = OutputOptions(anchors=anchors, intrinsics=camera, fov=fov, voxel=voxel)
    if clip_inputs:
        if len(clip_inputs) != len(inputs):
            raise click.UsageError("give videos (files, or folders with --video) or images, not both in one run")
        _run_videos(list(inputs), engine, checkpoint, device, out, steps, ensemble, timestep_spacing, processing_res,
                     vae, seed, formats, uncertainty, overwrite, stride, max_frames, fps, side_by_side, strength,
                     t_start)
        return
    video_only = {"--stride": stride != 1, "--max-frames": max_frames is not None, "--fps": fps is not None,
                  "--side-by-side": side_by_side, "--strength": strength is not None}
    if any(video_only.values()):
        given = ", ".join(k for k, v in video_only.items() if v)
        raise click.UsageError(f"{given}: for video inputs only (video files, or folders with --video)")
    if uncertainty and ensemble is not None and ensemble < 2:
        raise click.UsageError("--uncertainty needs --ensemble > 1")
    failures: list[str] = []
    try:  # input discovery never descends into the output folder, nor reads outputs a ledger lists
        items = collect_inputs(inputs, recursive=recursive, exclude=[out], problems=failures)
        jobs = protected_jobs(items, out, formats, uncertainty)
    except (FileNotFoundError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    pipe = _open_or_exit(engine, checkpoint, device)
    try:  # every setting, against the model and its exported range, before any image is read
        steps_, ens, res, spacing = pipe.check_settings(steps, ensemble, processing_res, timestep_spacing)
        vae_ = pipe.vae_choice(vae)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if uncertainty and ens < 2:
        raise click.UsageError(f"--uncertainty needs --ensemble > 1 (the model's default is {ens})")
    d = pipe.backend.defaults
    if (steps is None and "steps" in d.assumed) or (processing_res is None and "processing_resolution" in d.assumed):
        click.echo(f"note: {d.describe_assumed()} (--steps, --processing-res)", err=True)
    if tile and ens != 1:
        raise click.UsageError(f"--tile runs one member per image (the model's default ensemble is {ens}): "
                               "pass --ensemble 1")
    settings = {"model": model_label(engine, checkpoint), "steps": steps_, "ensemble": ens,
                "timestep_spacing": spacing, "processing_res": res, "vae": vae_, "seed": seed}
    if tile:
        settings["tile"] = True
    if anchors is not None:  # metric outputs: another run's files are not these
        settings["anchors"] = str(anchors.resolve())
    try:
        plan = plan_outputs(jobs, out, settings, overwrite)
    except OutputPlanError as e:
        raise click.UsageError(str(e)) from None
    skipped = f" | {len(plan.done)} done earlier, skipped" if plan.done else ""
    click.echo(f"{len(items)} image(s) -> {out} | {_backend_name(pipe)} | steps {steps_}, ensemble {ens}, {spacing}, "
               f"processing res {res}, {vae_} VAE{skipped}")
    for problem in failures:
        click.echo(f"error: {problem}", err=True)

    per_call = max(1, batch_size // ens)  # whole images per pipeline call
    timings = dict.fromkeys((*STAGES, "io"), 0.0)
    done = 0
    bar = tqdm(total=len(plan.jobs), desc="depth", unit="img", dynamic_ncols=True)

    wants_rgb = "ply" in formats
    rgbs: dict[int, np.ndarray] = {}  # the decoded images a point cloud takes its colours from, until written
    reports: list[ImageReport] = []

    def load(job: Job) -> Any:  # on a reader thread: decoded, normalised, resized and padded, ready for the networks
        rgb = read_image(job.source)
        if wants_rgb:
            rgbs[job.index] = rgb
        if tile:  # tiles are cut from the image as read
            return rgb
        return pipe.prepare(device_image(rgb, pipe.backend.device), processing_res=res)[0]

    def write(job: Job, depth: np.ndarray, unc: Any, rgb: np.ndarray | None) -> None:  # on a writer thread
        reports.append(write_image_outputs(job.paths, depth, unc, job.source, rgb, extras))

    def predict(imgs: list[Any], seeds: list[int]) -> Any:
        if tile:  # each image on its own: the global prediction, refined by batched overlapping tiles
            t0 = time.perf_counter()
            maps = [predict_tiled(pipe, img, processing_res=res, seed=s, batch_size=batch_size, steps=steps_,
                                  vae=vae_) for img, s in zip(imgs, seeds, strict=True)]
            return TiledResult(maps, {"unet": time.perf_counter() - t0})
        # per-image noise (seed + the image's index in the run): results do not depend on grouping or resuming
        lat = [pipe.initial_latents([img], ens, res, seed=s)[0] for img, s in zip(imgs, seeds, strict=True)]
        return pipe(imgs, steps=steps_, ensemble=ens, processing_res=res, timestep_spacing=spacing, vae=vae_,
                    batch_size=batch_size, latents=lat, output_uncertainty=uncertainty)

    # A pipeline of three stages: the next images are read, decoded and preprocessed on reader threads (one chunk
    # ahead, in input order) while the networks run on this thread, and outputs are encoded and written on writer
    # threads. Chunks are
    # the same slices of the job list as when everything ran in turn, so results are too. "io" is the time this
    # thread spends waiting for inputs and for the writers.
    writer = BackgroundWriter(max_pending=max(2 * per_call, 2 * default_writers(), 4))
    reads: ReadAhead[Job, Any] = ReadAhead(plan.jobs, load, depth=per_call + default_readers())
    try:
        for k in range(0, len(plan.jobs), per_call):
            chunk, images = [], []
            t_io = time.perf_counter()
            for job in plan.jobs[k:k + per_call]:
                try:
                    images.append(reads.take())
                    chunk.append(job)
                except (ImageReadError, ValueError) as e:  # unreadable, or a size the engines do not take
                    problem = str(e) if isinstance(e, ImageReadError) else f"{job.source}: {e}"
                    failures.append(problem)
                    tqdm.write(f"error: {problem}", file=sys.stderr)
                    bar.update(1)
            timings["io"] += time.perf_counter() - t_io
            if not images:
                continue
            try:
                results = [(chunk, predict(images, [seed + j.index for j in chunk]))]
            except ValueError:  # e.g. a size outside the engine's range: retry one by one so only that image fails
                results = []
                for job, img in zip(chunk, images, strict=True):
                    try:
                        results.append(([job], predict([img], [seed + job.index])))
                    except ValueError as e:
                        failures.append(f"{job.source}: {e}")
                        tqdm.write(f"error: {job.source}: {e}", file=sys.stderr)
                        bar.update(1)
            for part, res_ in results:
                for stage in STAGES:
                    timings[stage] += res_.timings[stage]
                t_io = time.perf_counter()
                for j, job in enumerate(part):
                    unc = res_.depth_uncertainty[j] if res_.uncertainty is not None else None
                    writer.submit_call(str(job.source), write, job, np.asarray(res_.depth[j]), unc,
                                       rgbs.pop(job.index, None))
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
    except KeyboardInterrupt:  # finish the queued writes, so every image counted as done has its whole output set
        writer.abandon()
        bar.close()
        click.echo(f"interrupted after {done} image(s): run the same command again to finish the rest "
                   "(finished images are skipped)", err=True)
        sys.exit(130)
    finally:  # on any way out: the reads not yet started are dropped, the running ones finish
        reads.close()
    bar.close()
    wall = time.perf_counter() - t_start
    stages = ", ".join(f"{s} {v:.2f}" for s, v in timings.items() if v > 0)
    click.echo(f"done: {done} image(s) in {wall:.1f} s ({done / wall:.2f} img/s); seconds per stage: {stages}")
    _summarise_extras(reports, out, anchors is not None)
    if failures:
        click.echo(f"{len(failures)} input(s) failed:", err=True)
        for f in failures:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
