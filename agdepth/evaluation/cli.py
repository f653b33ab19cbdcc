"""depth-eval: the paper's benchmark protocol on any backend, and its tables.

    depth-eval --dataset nyu --data-root data/nyuv2 --checkpoint agdepth/weights/tiny --out eval/nyu/tiny
    depth-eval --dataset kitti --data-root data/kitti --engine engines/unet.fp16.onnx --steps 1 --ensemble 1
    depth-eval --dataset procedural-forest --predictions my_method/forest --label my-method
    depth-eval table 1 eval/*/ --md table1.md
    depth-eval video --dataset procedural-forest-video --modes frames,stream
    depth-eval datasets

Exit status of a run: 0 when every sample was scored; 1 when any sample failed (unless --allow-failures) or none
was scored; 2 on a usage error.
"""

from __future__ import annotations

import json
import shlex
import sys
import zlib
from pathlib import Path
from typing import Any

import click
import numpy as np

from agdepth import default_checkpoint
from agdepth.anchors import MIN_ANCHORS, fit_metric
from agdepth.data.procedural import DEPTH_RANGES
from agdepth.evaluation.datasets import EvalSample
from agdepth.evaluation.protocol import (
    NO_ALIGNMENT,
    STATUSES,
    PredictionsDir,
    Predictor,
    evaluate_dataset,
    markdown_row,
    weights_fingerprint,
)
from agdepth.evaluation.registry import DATASETS, PROCEDURAL, build_dataset, protocol_defaults
from agdepth.evaluation.tables import assemble, load_results
from agdepth.evaluation.video import (
    FRAME_FOLDERS,
    MODES,
    VIDEO_DATASETS,
    VideoSequence,
    evaluate_clips,
    frame_folder_sequences,
    predict_clip,
    procedural_sequences,
)
from agdepth.imageio import write_bytes_atomic
from agdepth.networks import VAE_CHOICES
from agdepth.runtime.options import inference_options, model_options, open_pipeline

ALIGNMENTS = {"depth": "least_squares", "disparity": "least_squares_disparity"}


class _RunByDefault(click.Group):
    """``depth-eval --dataset ...`` means ``depth-eval run --dataset ...`` (the short form the docs use)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_RunByDefault, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Evaluate depth predictions on a benchmark (run, the default) or assemble the paper's tables (table)."""


class _ModelPredictor:
    """A model's predictions; ``origin`` names the model in the reason of an unusable prediction."""

    def __init__(self, predict: Predictor, origin: str) -> None:
        self.predict, self._origin = predict, origin

    def __call__(self, sample: EvalSample) -> np.ndarray:
        return self.predict(sample)

    def origin(self, sample: EvalSample) -> str:
        return self._origin


class _AnchoredPredictor:
    """A predictor's depth made metric with ``count`` ground-truth pixels of each sample as anchors (drawn from the
    scored pixels, seeded by the sample's name, so reruns draw the same); pixels without a metric depth (a disparity
    fit's far side) get the range's far end."""

    def __init__(self, inner: Any, count: int, depth_range: tuple[float, float], seed: int) -> None:
        self.inner, self.count, self.depth_range, self.seed = inner, count, depth_range, seed

    def __call__(self, sample: EvalSample) -> np.ndarray:
        pred = np.asarray(self.inner(sample), np.float64)
        valid = sample.mask & np.isfinite(sample.depth) & (sample.depth > 0)
        if pred.shape != sample.depth.shape or valid.sum() < self.count:
            return pred  # scored (and refused) as it is: another size, or too few scored pixels to draw from
        rng = np.random.default_rng([self.seed, zlib.crc32(sample.name.encode())])
        anchors = np.full(sample.depth.shape, np.nan)
        idx = rng.choice(np.flatnonzero(valid), self.count, replace=False)
        anchors.flat[idx] = sample.depth.flat[idx]
        metric = fit_metric(pred, anchors, name=sample.name).depth
        return np.where(np.isfinite(metric), metric, self.depth_range[1]).astype(np.float32)

    def origin(self, sample: EvalSample) -> str:
        return getattr(self.inner, "origin", lambda s: "prediction")(sample)


def _model_predictor(engine: Path | None, checkpoint: Path | None, device: str, steps: int | None,
                     ensemble: int | None, spacing: str | None, processing_res: int | None, vae: str | None,
                     seed: int, batch_size: int) -> tuple[Predictor, dict[str, Any]]:
    pipe = open_pipeline(engine, checkpoint, device)
    steps_, ens, res, spacing_ = pipe.check_settings(steps, ensemble, processing_res, spacing)
    vae_ = pipe.vae_choice(vae)
    used = {"steps": steps_, "ensemble": ens, "timestep_spacing": spacing_, "processing_res": res, "vae": vae_,
            "seed": seed}

    def predict(sample: EvalSample) -> np.ndarray:
        out = pipe([sample.rgb], steps=steps_, ensemble=ens, seed=seed, processing_res=res,
                   timestep_spacing=spacing_, vae=vae_, batch_size=batch_size)
        return out.depth[0]

    return predict, used


@main.command("run")
@click.option("--dataset", required=True, help="Benchmark name (see `depth-eval datasets`).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help="Folder holding the dataset (not needed for the procedural domains).")
@model_options
@click.option("--predictions", type=click.Path(path_type=Path), default=None,
              help="Folder of saved predictions <sample name>.npy (any method's) to score instead of a model.")
@inference_options
@click.option("--alignment", type=click.Choice(sorted(ALIGNMENTS)), default=None,
              help="Least-squares fit in depth or disparity space. Default: the dataset's (depth).")
@click.option("--min-depth", type=float, default=None, help="Override the dataset's depth range (metres).")
@click.option("--max-depth", type=float, default=None)
@click.option("--filename-list", type=click.Path(path_type=Path), default=None,
              help="Split list (default: the dataset's list inside --data-root).")
@click.option("--kitti-crop", type=click.Choice(["eigen", "garg", "none"]), default="eigen", show_default=True,
              help="KITTI evaluation crop.")
@click.option("--depth-scale", type=float, default=1.0, show_default=True,
              help="folder: metres per depth-file unit (0.001 for 16-bit PNGs in millimetres).")
@click.option("--disparity", is_flag=True, help="folder: the depth files hold disparity (depth = depth-scale / value).")
@click.option("--count", type=int, default=50, show_default=True, help="Procedural domains: test scenes.")
@click.option("--size", type=int, default=128, show_default=True, help="Procedural domains: image side.")
@click.option("--anchors-from-gt", type=click.IntRange(min=MIN_ANCHORS), default=None,
              help="Metric evaluation as depth-completion benchmarks do it: N ground-truth pixels per sample as "
                   "anchors (agdepth.anchors.fit_metric), scored without any alignment to the ground truth.")
@click.option("--label", default=None, help="Row label in tables. Default: the model or predictions folder name.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Result folder. Default: eval/<dataset>/<label>.")
@click.option("--save-predictions", is_flag=True, help="Also keep each raw prediction as OUT/predictions/<name>.npy.")
@click.option("--overwrite", is_flag=True, help="Discard results of other settings in OUT instead of refusing.")
@click.option("--allow-failures", is_flag=True,
              help="Exit 0 even when some samples failed (they are still listed and counted). Without it, any "
                   "failed sample makes the exit status 1; no scored sample always does.")
@click.option("--no-progress", is_flag=True)
def run(dataset: str, data_root: Path | None, engine: Path | None, checkpoint: Path | None, device: str,
        predictions: Path | None, steps: int | None, ensemble: int | None, timestep_spacing: str | None,
        processing_res: int | None, vae: str | None, seed: int, batch_size: int, alignment: str | None,
        min_depth: float | None, max_depth: float | None, filename_list: Path | None, kitti_crop: str,
        depth_scale: float, disparity: bool, count: int,
        size: int, anchors_from_gt: int | None, label: str | None, out: Path | None, save_predictions: bool,
        overwrite: bool, allow_failures: bool, no_progress: bool) -> None:
    """Score a model (or saved predictions) on one benchmark: per-sample CSV, summary JSON and a markdown row.

    The model is --engine or --checkpoint, else the bundled model. Without --processing-res a benchmark with a
    protocol resolution (e.g. native size) uses it, the others the model's default.

    A sample that cannot be read, has no prediction, an unusable prediction (not one [H, W] map; NaN or inf at a
    scored pixel) or no scored pixel fails: it is listed with its reason and never enters the means. Exit status:
    0 when every sample was scored, 1 when any failed (0 with --allow-failures) or none was scored, 2 on a usage
    error. A rerun into the same --out retries the failed samples.
    """
    sources = [s for s in (engine, checkpoint, predictions) if s is not None]
    if len(sources) > 1:
        raise click.UsageError("give at most one of --engine, --checkpoint, --predictions (none: the bundled model)")
    if dataset in VIDEO_DATASETS or dataset == FRAME_FOLDERS:
        raise click.UsageError(f"{dataset} is a video benchmark: depth-eval video --dataset {dataset}")
    options: dict[str, Any] = {}
    if dataset in PROCEDURAL:
        options = {"count": count, "size": (size, size)}
    else:
        if filename_list is not None:
            options["filename_list"] = filename_list
        options.update({k: v for k, v in (("min_depth", min_depth), ("max_depth", max_depth)) if v is not None})
        if dataset == "kitti":
            options["crop"] = None if kitti_crop == "none" else kitti_crop
        if dataset == "folder":
            options.update(depth_scale=depth_scale, disparity=disparity)
    try:
        ds = build_dataset(dataset, data_root, **options)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from e
    lo, hi = ds.depth_range
    depth_range = (lo if min_depth is None else min_depth, hi if max_depth is None else max_depth)
    settings: dict[str, Any] = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}}
    if predictions is not None:
        try:
            predict: Predictor = PredictionsDir(predictions)
        except FileNotFoundError as e:
            raise click.UsageError(f"{e.strerror}: {e.filename}") from e
        settings["source"] = {"predictions": str(predictions)}
    else:
        res = processing_res if processing_res is not None else ds.processing_res
        try:
            predict, used = _model_predictor(engine, checkpoint, device, steps, ensemble, timestep_spacing, res,
                                             vae, seed, batch_size)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            raise click.UsageError(str(e)) from e
        kind = "engine" if engine else "checkpoint"
        model = engine or checkpoint or default_checkpoint()
        sources = [model]
        settings["source"] = {kind: str(model), **used, "weights": weights_fingerprint(model)}
        predict = _ModelPredictor(predict, f"prediction of {kind} {model}")
    if anchors_from_gt is not None:
        if alignment is not None:
            raise click.UsageError("--anchors-from-gt scores metric depth: drop --alignment")
        predict = _AnchoredPredictor(predict, anchors_from_gt, depth_range, seed)
        settings["anchors_from_gt"] = anchors_from_gt
    label = label or sources[0].stem or sources[0].name
    out = out or Path("eval") / ds.name / label
    try:
        summary = evaluate_dataset(
            ds, predict, out, settings,
            alignment=NO_ALIGNMENT if anchors_from_gt else (ALIGNMENTS[alignment] if alignment else None),  # type: ignore[arg-type]
            depth_range=depth_range, label=label, save_predictions=save_predictions, overwrite=overwrite,
            progress=not no_progress, command="depth-eval " + shlex.join(sys.argv[1:]))
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    c = summary["count"]
    click.echo(f"{ds.name}: {c['scored']} of {c['total']} samples scored, {c['failed']} failed -> {out}")
    for note in summary["notes"]:
        click.echo(f"note: {note}")
    if c["failed"]:
        click.echo(f"{c['failed']} of {c['total']} samples not scored (listed with their reasons in "
                   f"{out / 'summary.json'} and per_sample.csv): "
                   + ", ".join(f"{c[s]} {s}" for s in STATUSES if s != "ok" and c[s]))
    click.echo(markdown_row(summary))
    if c["scored"] == 0:
        click.echo(f"error: no sample of {ds.name} was scored", err=True)
        sys.exit(1)
    if c["failed"] and not allow_failures:
        click.echo(f"error: {c['failed']} of {c['total']} samples failed (exit status 1; --allow-failures accepts "
                   "them; a rerun into the same --out retries them)", err=True)
        sys.exit(1)


@main.command("video")
@click.option("--dataset", required=True,
              help=f"{', '.join(VIDEO_DATASETS)}, or {FRAME_FOLDERS} (a folder-of-frames dataset in --data-root).")
@click.option("--data-root", type=click.Path(path_type=Path), default=None,
              help=f"{FRAME_FOLDERS}: ROOT/<sequence>/rgb/<frame>.png and ROOT/<sequence>/depth/<frame>.npy|.png.")
@click.option("--min-depth", type=float, default=None, help=f"{FRAME_FOLDERS}: the depth range (metres).")
@click.option("--max-depth", type=float, default=None)
@click.option("--depth-scale", type=float, default=1000.0, show_default=True,
              help=f"{FRAME_FOLDERS}: 16-bit depth PNG values per metre.")
@model_options
@click.option("--steps", type=click.IntRange(min=1), default=None, help="DDIM steps. Default: the model's.")
@click.option("--processing-res", type=click.IntRange(min=0), default=None,
              help="Longer side the networks see (0 = native). Default: the model's.")
@click.option("--vae", type=click.Choice(list(VAE_CHOICES)), default=None, help="The VAE. Default: the model's.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--modes", default=",".join(MODES), show_default=True,
              help="frames: each frame on its own (seed + i); stream: DepthStream.")
@click.option("--strength", type=click.FloatRange(min=0, max=1, min_open=True), default=None,
              help="The stream's warm start (1 = none). Default: DepthStream's.")
@click.option("--count", type=int, default=8, show_default=True, help="Procedural: camera paths per domain.")
@click.option("--frames", type=int, default=24, show_default=True, help="Procedural: frames per path.")
@click.option("--size", type=int, nargs=2, default=(96, 128), show_default=True, help="Procedural: frame H W.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the per-sequence and mean scores here.")
def video(dataset: str, data_root: Path | None, min_depth: float | None, max_depth: float | None, depth_scale: float,
          engine: Path | None, checkpoint: Path | None, device: str, steps: int | None, processing_res: int | None,
          vae: str | None, seed: int, modes: str, strength: float | None, count: int, frames: int,
          size: tuple[int, int], json_path: Path | None) -> None:
    """Score video depth per sequence: one scale and shift per sequence, per-frame metrics averaged over the frames,
    and the temporal error between consecutive frames (see agdepth.metrics.temporal_error), per prediction mode."""
    chosen = [m.strip() for m in modes.split(",") if m.strip()]
    if not chosen or any(m not in MODES for m in chosen):
        raise click.UsageError(f"--modes {modes!r}: choose from {', '.join(MODES)}")
    if dataset in VIDEO_DATASETS:
        def sequences() -> list[VideoSequence]:
            return list(procedural_sequences(VIDEO_DATASETS[dataset], count, frames, size))
    elif dataset == FRAME_FOLDERS:
        if data_root is None or min_depth is None or max_depth is None:
            raise click.UsageError(f"{FRAME_FOLDERS} needs --data-root, --min-depth and --max-depth")
        root, depth_range = data_root, (min_depth, max_depth)

        def sequences() -> list[VideoSequence]:
            return list(frame_folder_sequences(root, depth_range, depth_scale))
    else:
        raise click.UsageError(f"unknown video dataset {dataset!r}; choose from "
                               f"{', '.join((*VIDEO_DATASETS, FRAME_FOLDERS))}")
    try:
        pipe = open_pipeline(engine, checkpoint, device)
        seqs = sequences()
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        raise click.UsageError(str(e)) from e
    results: dict[str, Any] = {}
    click.echo("| mode | AbsRel | δ1 | temporal error | temporal change | ms per frame |")
    click.echo("|---|---|---|---|---|---|")
    for mode in chosen:
        def predict(rgb: list[np.ndarray], mode: str = mode) -> tuple[list[np.ndarray], float]:
            return predict_clip(pipe, rgb, mode, steps=steps, processing_res=processing_res, vae=vae, seed=seed,
                                strength=strength)
        try:
            results[mode] = evaluate_clips(seqs, predict)
        except ValueError as e:
            raise click.UsageError(str(e)) from e
        m = results[mode]["mean"]
        click.echo(f"| {mode} | {m['abs_rel']:.4f} | {m['delta1']:.4f} | {m['temporal_error']:.4f} | "
                   f"{m['temporal_change']:.4f} | {1e3 * m['seconds_per_frame']:.1f} |")
    if json_path is not None:
        write_bytes_atomic(json_path, (json.dumps({"dataset": dataset, "results": results}, indent=1) + "\n").encode())


@main.command("table")
@click.argument("table", type=click.Choice(["1", "2", "3"]))
@click.argument("folders", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--datasets", default=None, help="Comma-separated column datasets. Default: the paper's five, "
              "or the datasets of the results when they are not the paper's.")
@click.option("--no-paper", is_flag=True, help="Leave out the paper's published rows.")
@click.option("--md", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write to this file.")
def table(table: str, folders: tuple[Path, ...], datasets: str | None, no_paper: bool, md: Path | None) -> None:
    """Assemble Table 1 (AbsRel/δ1), 2 (δ1/δ2/δ3) or 3 (ablation rows) from result folders."""
    try:
        results = load_results(folders)
    except FileNotFoundError as e:
        raise click.UsageError(str(e)) from e
    text = assemble(int(table), results, datasets.split(",") if datasets else None, include_paper=not no_paper)
    if md:
        md.write_text(text)
    click.echo(text, nl=False)


@main.command("datasets")
def list_datasets() -> None:
    """List the benchmarks with their protocol defaults."""
    for name in DATASETS:
        src = protocol_defaults(name)
        res = src.processing_res
        click.echo(f"{name}: depth {src.depth_range[0]:g}-{src.depth_range[1]:g} m, processing res "
                   f"{'model default' if res is None else ('native' if res == 0 else res)}, "
                   f"{src.expected_count or '-'} samples")
    for name, domain in VIDEO_DATASETS.items():
        lo, hi = DEPTH_RANGES[domain]
        click.echo(f"{name}: depth {lo:g}-{hi:g} m, camera paths of the {domain} domain (depth-eval video)")
    click.echo(f"{FRAME_FOLDERS}: a folder-of-frames video dataset in --data-root (depth-eval video)")

if __name__ == "__main__":
    main()
