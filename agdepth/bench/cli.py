"""``depth-bench``: backend parity, latency per stage and backend, the accuracy/latency frontier, the roofline, and
test-time ensembling against diffusers. Every suite writes JSON + markdown (+ PNG) with the command and machine.

    depth-bench latency --json latency.json --md latency.md
    depth-bench all --quick --out /tmp/bench      # every suite, a few iterations, correctness checked

``--quick`` exits 1 only on what holds on any machine: every suite ran, its report is well-formed, network calls
counted per setting, FLOPs counted, agdepth's ensembling objective not above diffusers'. Wall-time relations (1 step
faster than 10, batched members faster per member, 1x1 faster than 4x2) are measured and reported with holds / does
not hold, never a failure: they are benchmark results, and a busy machine can invert them.
"""

from __future__ import annotations

import datetime
import json
import math
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agdepth.networks import VAE_CHOICES
from agdepth.runtime.options import (
    DEFAULT_BATCH_SIZE,
    DEVICES,
    inference_options,
    model_options,
    open_pipeline,
    torch_device,
)
from agdepth.schedule import TIMESTEP_SPACINGS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of the deployment backends."""


@main.command()
@click.option("--engine", "engines", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A depth-export directory (with --fp16 to include the fp16 graphs).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The checkpoint the engines came from. Default: the bundled model.")
@click.option("--count", type=int, default=5, show_default=True, help="Test scenes per procedural domain.")
@click.option("--settings", default="1x1,4x1,1x5,4x10", show_default=True,
              help="STEPSxENSEMBLE,... (trailing spacing; ensembles with the default ensembling).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def parity(engines: Path, checkpoint: Path | None, count: int, settings: str, json_path: Path | None,
           md_path: Path | None) -> None:
    """Compare PyTorch fp32 with ONNX Runtime fp32 / fp16, and TensorRT when the manifest has engines for this
    machine's TensorRT and GPU."""
    from agdepth import default_checkpoint
    from agdepth.bench.parity import ParityReport, compare_end_to_end, compare_networks
    from agdepth.export import Manifest
    from agdepth.machine import machine_info, package_versions, report_header

    ckpt = checkpoint or default_checkpoint()
    try:
        pairs = [tuple(int(v) for v in s.split("x")) for s in settings.split(",")]
    except ValueError:
        raise click.UsageError(f"--settings must look like 1x1,4x5; got {settings!r}") from None
    manifest = Manifest.load(engines)
    report = ParityReport(compare_networks(manifest, ckpt, click.echo),
                          compare_end_to_end(engines, ckpt, count, pairs, click.echo))  # type: ignore[arg-type]
    meta = {"command": "depth-bench parity " + shlex.join(sys.argv[2:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": package_versions(("torch", "onnxruntime", "polygraphy"))}
    text = "\n".join(["# Backend parity", "", *report_header(meta), "", report.markdown(), ""])
    click.echo(text)
    if json_path:
        json_path.write_text(json.dumps({**meta, "networks": report.networks, "end_to_end": report.end_to_end},
                                        indent=2) + "\n")
    if md_path:
        md_path.write_text(text)
    if not all(r["passed"] for r in report.networks):
        sys.exit(1)


# ------------------------------------------------------------------------------------------ shared options

SUITES = ("latency", "frontier", "roofline", "ensemble")
DEFAULT_BACKENDS = "torch,onnx-fp32,onnx-fp16,tensorrt,torch-fp16"


def _random_weights_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--random-weights", type=click.Choice(["sd2"]), default=None,
                        help="The full SD2 architecture with random weights (real-size cost without the weights).")(f)


def _output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None)(f)
    f = click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)(f)
    f = click.option("--quick", is_flag=True,
                     help="A few iterations on the tiny model (CI): exit 1 only if a check that holds on any machine "
                          "fails; wall-time relations are reported, never a failure.")(f)
    return f


def _engines_dir(engine: Path | None) -> Path | None:
    return None if engine is None else (engine if engine.is_dir() else engine.parent)


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _gate_failures(report: dict[str, Any]) -> list[str]:
    """The report's relations that decide the exit status (``gate``) and do not hold."""
    return [r["relation"] for r in report.get("relations", []) if r["gate"] and not r["holds"]]


def _with_relations(body: str, report: dict[str, Any]) -> str:
    from agdepth.bench.latency import relations_markdown

    if not report.get("relations"):
        return body
    return (body.rstrip() + "\n\nChecks and relations (wall-time ones are reported, never a failure):\n\n"
            + relations_markdown(report["relations"]) + "\n")


def _report_timing(failed_timing: list[str]) -> None:
    if failed_timing:
        click.echo("note: wall-time relation(s) did not hold on this run (reported, not a failure: a busy machine "
                   "inverts them): " + "; ".join(failed_timing), err=True)


def _timing_misses(report: dict[str, Any]) -> list[str]:
    return [r["relation"] for r in report.get("relations", []) if not r["gate"] and not r["holds"]]


def _finish(title: str, report: dict[str, Any], body: str, json_path: Path | None, md_path: Path | None,
            failed: list[str]) -> None:
    from agdepth.bench.report import publish_report

    click.echo(publish_report(title, report, _with_relations(body, report), json_path, md_path))
    _report_timing(_timing_misses(report))
    if failed:
        click.echo("error: check(s) that hold on any machine failed: " + "; ".join(failed), err=True)
        sys.exit(1)


# ------------------------------------------------------------------------------------------------- latency


def latency_suite(engine: Path | None = None, checkpoint: Path | None = None, random_weights: str | None = None,
                  device: str = "auto", backends: str = DEFAULT_BACKENDS, processing_res: int | None = None,
                  steps: int | None = None, ensemble: int | None = None, timestep_spacing: str | None = None,
                  vae: str | None = None, seed: int = 0, images: int = 1, batch_size: int = DEFAULT_BATCH_SIZE,
                  warmup: int = 2, repeats: int = 20, compile_mode: str | None = None, quick: bool = False,
                  work_dir: Path = Path(".bench")) -> tuple[dict[str, Any], list[str]]:
    """Run the latency suite; returns the report and the checks that failed (quick mode; wall-time relations are
    reported in the report, never returned as failed)."""
    from agdepth.bench.latency import LatencySettings, checkpoint_defaults, choose_backends, relations, run_latency
    from agdepth.bench.report import report_meta

    device = torch_device(device)
    report = report_meta()
    if engine is None:
        d = checkpoint_defaults(checkpoint, random_weights)
    else:
        from agdepth.export import Manifest
        from agdepth.runtime.backends import RuntimeDefaults

        d = RuntimeDefaults(**Manifest.load(_engines_dir(engine)).data["defaults"])  # type: ignore[arg-type]
    res = processing_res or d.processing_resolution or 768
    if quick:
        warmup, repeats = 1, 3
    s = LatencySettings(resolution=res, steps=steps or d.steps, ensemble=ensemble or d.ensemble_size,
                        spacing=timestep_spacing or d.timestep_spacing, vae=vae or d.vae, seed=seed, images=images,
                        batch_size=batch_size, warmup=warmup, repeats=repeats)
    names = [n.strip() for n in backends.split(",") if n.strip()]
    choices = choose_backends(names, checkpoint, _engines_dir(engine), random_weights, device, compile_mode, res,
                              max(s.ensemble * images, 10), work_dir, click.echo)
    report.update(run_latency(choices, s, click.echo))
    if not quick:
        return report, []
    base = next(c.pipeline for c in choices if c.pipeline is not None)
    report["relations"] = [*_latency_checks(report, names), *relations(base, res)]
    return report, _gate_failures(report)


def _latency_checks(report: dict[str, Any], requested: list[str]) -> list[dict[str, Any]]:
    """The latency report's shape: each requested backend ran or says why not; times finite, totals positive."""
    from agdepth.bench.latency import relation

    rows = report["backends"]
    ran = [r for r in rows if "stages" in r]
    times = [v for r in ran for stage in r["stages"].values() for v in stage.values()]
    return [
        relation("every requested backend ran or was skipped with the reason",
                 [r["backend"] for r in rows] == requested and all("stages" in r or r.get("skipped") for r in rows),
                 "report"),
        relation("stage times finite and >= 0, total p50 > 0, network calls counted",
                 bool(ran) and _finite(*times) and min(times) >= 0 and all(
                     r["stages"]["total"]["p50"] > 0 and r["network_calls_per_run"] >= 3 for r in ran), "report"),
    ]


@main.command()
@model_options
@_random_weights_option
@click.option("--backends", default=DEFAULT_BACKENDS, show_default=True,
              help="Comma-separated; those that cannot run here are listed as skipped, with the reason. --engine is "
                   "the export the ONNX/TensorRT backends run (default: the checkpoint exported into --work-dir); "
                   "--checkpoint the weights of the PyTorch ones.")
@inference_options
@click.option("--images", type=click.IntRange(min=1), default=1, show_default=True, help="Images per pipeline call.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--compile", "compile_mode", type=click.Choice(["default", "reduce-overhead"]), default=None,
              help="torch-fp16 on CUDA: torch.compile the U-Net (reduce-overhead = CUDA graphs).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".bench"),
              show_default=True, help="Where the ONNX graphs are exported when no --engine is given (reused).")
@_output_options
def latency(engine: Path | None, checkpoint: Path | None, device: str, random_weights: str | None, backends: str,
            steps: int | None, ensemble: int | None, timestep_spacing: str | None, processing_res: int | None,
            vae: str | None, seed: int, batch_size: int, images: int, warmup: int, repeats: int,
            compile_mode: str | None, work_dir: Path, quick: bool, json_path: Path | None,
            md_path: Path | None) -> None:
    """Wall time per stage (preprocess, VAE encode, U-Net per step, VAE decode, ensembling, write), p50/p90,
    images/s and peak memory, for each backend on the same images in one run."""
    try:
        report, failed = latency_suite(engine, checkpoint, random_weights, device, backends, processing_res, steps,
                                       ensemble, timestep_spacing, vae, seed, images, batch_size, warmup, repeats,
                                       compile_mode, quick, work_dir)
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    from agdepth.bench.latency import markdown

    _finish("Latency per stage and backend", report, markdown(report), json_path, md_path, failed)


# ------------------------------------------------------------------------------------------------ frontier


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def frontier_suite(engine: Path | None = None, checkpoint: Path | None = None, device: str = "auto",
                   steps: str = "1,2,4,10,50", ensembles: str = "1,5,10", spacings: str = "leading,trailing",
                   count: int = 20, latency_repeats: int = 3, seed: int = 0, quick: bool = False,
                   png: Path | None = None, vaes: str | None = None) -> tuple[dict[str, Any], list[str]]:
    from agdepth.bench.frontier import grid, plot_frontier, run_frontier
    from agdepth.bench.report import report_meta

    if quick:
        steps, ensembles, spacings, count, latency_repeats, vaes = "1,4", "1,2", "trailing", 2, 3, "full"
    report = report_meta()
    pipe = open_pipeline(engine, checkpoint, device)
    label = str(engine or checkpoint or "bundled tiny model (agdepth/weights/tiny)")
    # default: the full VAE, and the light one when the model has it
    vae_list = ([v for v in ("full", "light") if v in pipe.backend.vae_variants] if vaes is None
                else [v.strip() for v in vaes.split(",") if v.strip()])
    for v in vae_list:
        pipe.vae_choice(v)  # unknown or unavailable: a ValueError naming the choices, before any work
    settings = grid(_ints(steps, "--steps"), _ints(ensembles, "--ensembles"),
                    [v.strip() for v in spacings.split(",") if v.strip()], vae_list)
    report.update(run_frontier(pipe, settings, count=count, latency_repeats=latency_repeats, seed=seed, model=label))
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_frontier(report, png)
        report["plot"] = png.name
    if not quick:
        return report, []
    from agdepth.bench.latency import WALL_TIME, relation

    rows = report["rows"]
    by = {r["setting"]: r for r in rows}
    checks = [
        relation("every setting scored: finite mean AbsRel and delta1, latency > 0",
                 bool(rows) and all(_finite(r["mean"]["abs_rel"], r["mean"]["delta1"], r["latency_s"])
                                    and r["latency_s"] > 0 for r in rows), "report"),
        relation("the Pareto front is not empty", bool(report["front"]), "report"),
    ]
    if png is not None:
        checks.append(relation("the plot was written", png.is_file() and png.stat().st_size > 0, "report"))
    # 1x1 against 4x2 (8x the U-Net calls): usually faster by far, but a wall-time order, so reported only
    cheap, dear = by["1x1 trailing"], by["4x2 trailing"]
    checks.append(relation("1x1 faster than 4x2 (8x the U-Net calls)", cheap["latency_s"] < dear["latency_s"],
                           WALL_TIME, [cheap["latency_s"], dear["latency_s"]], "s"))
    report["relations"] = checks
    return report, _gate_failures(report)


@main.command()
@model_options
@click.option("--steps", default="1,2,4,10,50", show_default=True, help="DDIM steps of the grid (comma-separated).")
@click.option("--ensembles", default="1,5,10", show_default=True, help="Ensemble sizes of the grid.")
@click.option("--spacings", default="leading,trailing", show_default=True,
              help=f"Timestep spacings of the grid ({', '.join(TIMESTEP_SPACINGS)}).")
@click.option("--vaes", default=None,
              help=f"VAE choices of the grid ({', '.join(VAE_CHOICES)}). Default: full, and light when the model "
                   "has a light VAE.")
@click.option("--count", type=int, default=20, show_default=True, help="Test scenes per unseen procedural domain.")
@click.option("--latency-repeats", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the plot here.")
@_output_options
def frontier(engine: Path | None, checkpoint: Path | None, device: str, steps: str, ensembles: str, spacings: str,
             vaes: str | None, count: int, latency_repeats: int, seed: int, png: Path | None, quick: bool,
             json_path: Path | None, md_path: Path | None) -> None:
    """Accuracy (AbsRel, δ1, edge F1 on the procedural unseen domains) against latency over steps × ensemble ×
    spacing × VAE, with the Pareto front, and the default setting against the paper's 50×10 (full VAE)."""
    try:
        report, failed = frontier_suite(engine, checkpoint, device, steps, ensembles, spacings, count,
                                        latency_repeats, seed, quick, png, vaes)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    from agdepth.bench.frontier import markdown

    body = markdown(report) + (f"\n\n![frontier]({png.name})" if png is not None else "")
    _finish("Accuracy/latency frontier", report, body, json_path, md_path, failed)


# ------------------------------------------------------------------------------------------------ roofline


def roofline_suite(checkpoint: Path | None = None, random_weights: str | None = None, device: str = "auto",
                   processing_res: int | None = None, batch_size: int = 1, steps: int | None = None,
                   ensemble: int | None = None, repeats: int = 5, peak_n: int = 2048, quick: bool = False
                   ) -> tuple[dict[str, Any], list[str]]:
    from agdepth import default_checkpoint
    from agdepth.artifacts.checkpoint import load_checkpoint
    from agdepth.bench.report import report_meta
    from agdepth.bench.roofline import roofline
    from agdepth.runtime.backends import RuntimeDefaults

    if quick:
        repeats, peak_n = 2, 512
    report = report_meta()
    if random_weights == "sd2":
        from agdepth.bench.latency import sd2_random_defaults
        from agdepth.models import build_sd2_random

        models = build_sd2_random()
        d = sd2_random_defaults()
    else:
        models = load_checkpoint(checkpoint or default_checkpoint())
        d = RuntimeDefaults.from_model_index(models.extra.get("model_index"), models.extra.get("scheduler_config"))
    report["model"] = "SD2 architecture, random weights" if random_weights else str(checkpoint or "bundled tiny")
    report.update(roofline(models, processing_res or d.processing_resolution or 768, batch_size, steps or d.steps,
                           ensemble or d.ensemble_size, torch_device(device), repeats, peak_n))
    from agdepth.bench.latency import relation

    nets = report["networks"]
    timed = relation("seconds per call finite and > 0", all(_finite(r["seconds_per_call"]) and r["seconds_per_call"] > 0
                                                           for r in nets.values()), "report")
    report["relations"] = [
        relation("every network has FLOPs counted (> 0)", all(r["flops_per_call"] > 0 for r in nets.values()),
                 "FLOP count", [r["flops_per_call"] for r in nets.values()], "FLOPs"),
        timed,
    ]
    # FLOPs are counted, not timed: checked with or without --quick, as before
    failed = [f"{n}: no FLOPs counted" for n, r in nets.items() if not r["flops_per_call"] > 0]
    return report, failed + ([timed["relation"]] if quick and not timed["holds"] else [])


@main.command("roofline")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint directory. Default: the bundled tiny model.")
@_random_weights_option
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where PyTorch runs (auto: CUDA if PyTorch sees a GPU).")
@click.option("--processing-res", type=click.IntRange(min=1), default=None,
              help="Padded square side. Default: the checkpoint's.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Rows per network call.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="For the pipeline total. Default: the checkpoint's.")
@click.option("--ensemble", type=click.IntRange(min=1), default=None,
              help="For the pipeline total. Default: the checkpoint's.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--peak-n", type=int, default=2048, show_default=True, help="Matmul side for the measured peak.")
@_output_options
def roofline_cmd(checkpoint: Path | None, random_weights: str | None, device: str, processing_res: int | None,
                 batch_size: int, steps: int | None, ensemble: int | None, repeats: int, peak_n: int, quick: bool,
                 json_path: Path | None, md_path: Path | None) -> None:
    """FLOPs per network (torch's FLOP counter), achieved FLOP/s against a measured matmul peak, and an RTX 3090
    projection (labelled as such)."""
    report, failed = roofline_suite(checkpoint, random_weights, device, processing_res, batch_size, steps, ensemble,
                                    repeats, peak_n, quick)
    from agdepth.bench.roofline import markdown

    _finish("Roofline", report, markdown(report), json_path, md_path, failed)


# ------------------------------------------------------------------------------------------------ ensemble


def ensemble_suite(sizes: str, members: int, repeats: int, threads: int, quick: bool
                   ) -> tuple[dict[str, Any], list[str]]:
    from agdepth.bench.ensembling import relations, run_ensembling
    from agdepth.bench.report import report_meta

    size_list = [96] if quick else _ints(sizes, "--sizes")
    members, repeats = (5, 1) if quick else (members, repeats)
    report = report_meta(packages=("torch", "diffusers", "scipy", "numpy"))
    report.update(run_ensembling(size_list, members, repeats, threads, progress=click.echo))
    from agdepth.bench.latency import relation

    rows = [r["agdepth"] for r in report["results"]] + [x for r in report["results"] for x in r["runs"].values()]
    report["relations"] = [
        relation("every solver timed and scored: finite times and objectives",
                 bool(rows) and all(_finite(x["time_s_median"], x["objective_unit"]) for x in rows), "report"),
        # the speed ratio is in the report and its target line: a wall-time result, not a check
        *(relation(name, ok, "objective") for name, ok in relations(report)),
    ]
    return report, _gate_failures(report) if quick else []


@main.command("ensemble")
@click.option("--sizes", default="768,384", show_default=True, help="Square member sides.")
@click.option("--members", type=int, default=10, show_default=True, help="Ensemble size (the paper: 10).")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch intra-op threads for both.")
@_output_options
def ensemble_cmd(sizes: str, members: int, repeats: int, threads: int, quick: bool, json_path: Path | None,
                 md_path: Path | None) -> None:
    """This project's test-time ensembling against diffusers' ensemble_depth on the same members: time ratio and
    objective values."""
    report, failed = ensemble_suite(sizes, members, repeats, threads, quick)
    from agdepth.bench.ensembling import markdown

    _finish("Test-time ensembling: agdepth against diffusers", report, markdown(report), json_path, md_path, failed)


# ------------------------------------------------------------------------------------------------ all


@main.command("all")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for bench_<suite>.json/.md (+ bench_frontier.png).")
@click.option("--quick", is_flag=True,
              help="A few iterations of every suite on the tiny model; exit 1 only if a check that holds on any "
                   "machine fails (wall-time relations are reported, never a failure).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where PyTorch runs (auto: CUDA if PyTorch sees a GPU).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".bench"),
              show_default=True, help="Where the latency suite exports the ONNX graphs (reused).")
def all_suites(out: Path, quick: bool, device: str, work_dir: Path) -> None:
    """Every suite with its defaults (or --quick), one report per suite in OUT.

    Exit 1 if a suite raised (the others still run; its report names the error), if a network has no FLOPs counted,
    or, with --quick, if another check that holds on any machine failed: a malformed report, wrong U-Net call counts,
    agdepth's ensembling objective above diffusers'. Wall-time relations (fewer steps faster, batched members
    faster, 1x1 faster than 4x2) are measured and reported as holding or not in each suite's JSON/markdown, never a
    failure."""
    from agdepth.bench.ensembling import markdown as ensemble_md
    from agdepth.bench.frontier import markdown as frontier_md
    from agdepth.bench.latency import markdown as latency_md
    from agdepth.bench.report import publish_report, report_meta
    from agdepth.bench.roofline import markdown as roofline_md

    png = out / "bench_frontier.png"
    runs = {
        "latency": lambda: latency_suite(device=device, quick=quick, work_dir=work_dir),
        "frontier": lambda: frontier_suite(device=device, quick=quick, png=png),
        "roofline": lambda: roofline_suite(device=device, quick=quick),
        "ensemble": lambda: ensemble_suite("768,384", 10, 3, 1, quick),
    }
    bodies = {"latency": ("Latency per stage and backend", latency_md),
              "frontier": ("Accuracy/latency frontier", lambda r: frontier_md(r) + f"\n\n![frontier]({png.name})"),
              "roofline": ("Roofline", roofline_md),
              "ensemble": ("Test-time ensembling: agdepth against diffusers", ensemble_md)}
    failed: list[str] = []
    timing: list[str] = []
    for name, run in runs.items():
        click.echo(f"== {name}")
        title, body = bodies[name]
        try:
            report, bad = run()
            text = body(report)
        except Exception as e:  # a suite that raises fails the run, after the others have run
            report, bad = report_meta(), [f"raised {type(e).__name__}: {e}"]
            report["error"] = bad[0]
            text = f"**The suite did not run to the end**: {bad[0]}\n"
            click.echo(traceback.format_exc().rstrip() + f"\nerror: {name}: {bad[0]}", err=True)
        publish_report(title, report, _with_relations(text, report), out / f"bench_{name}.json",
                       out / f"bench_{name}.md")
        failed += [f"{name}: {b}" for b in bad]
        timing += [f"{name}: {t}" for t in _timing_misses(report)]
    click.echo(f"wrote {', '.join(f'bench_{n}' for n in runs)} (.json/.md) and {png.name} to {out}")
    _report_timing(timing)
    if failed:
        click.echo("error: check(s) that hold on any machine failed: " + "; ".join(failed), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
