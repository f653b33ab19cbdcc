"""Accuracy of checkpoints on the procedural unseen domains, per inference setting, against the trivial predictor.

    python benchmarks/eval_tiny.py --checkpoint bundled=agdepth/weights/tiny \
        --settings 1x1:trailing,50x10:trailing --count 50 \
        --json benchmarks/results/tiny_eval.json --md benchmarks/results/tiny_eval.md

A setting is STEPSxENSEMBLE:SPACING[@RES] (RES: processing resolution, default the checkpoint's).
Each checkpoint is LABEL=PATH (repeatable). The trivial predictor is the mean
training depth map aligned like every prediction (least squares per image). Also times one 1-step, 1-member
prediction at the checkpoint's default processing resolution (PyTorch, this machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.evaluation.procedural import evaluate_on_domains
from agdepth.machine import machine_info, package_versions, report_header
from agdepth.runtime import DepthPipeline
from agdepth.training.baseline import mean_depth_predictor

COLUMNS = ("abs_rel", "delta1", "edge_f1")


def parse_settings(text: str) -> list[tuple[int, int, str, int | None]]:
    """"STEPSxENSEMBLE[:SPACING][@RES],..." -> (steps, ensemble, spacing, processing resolution or None = default)."""
    out = []
    for item in text.split(","):
        item, _, res = item.partition("@")
        se, _, spacing = item.partition(":")
        steps, ens = se.lower().split("x")
        out.append((int(steps), int(ens), spacing or "trailing", int(res) if res else None))
    return out




def time_single_prediction(pipe: DepthPipeline, repeats: int = 10) -> float:
    img = render_scene(EVAL_DOMAINS[0], 0, size=(128, 128), split="test").rgb
    res = pipe.backend.defaults.processing_resolution
    pipe([img], steps=1, ensemble=1, timestep_spacing="trailing", seed=0)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe([img], steps=1, ensemble=1, timestep_spacing="trailing", seed=0, processing_res=res)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH (repeatable)")
    ap.add_argument("--settings", default="1x1:trailing,50x10:trailing")
    ap.add_argument("--count", type=int, default=50, help="test scenes per unseen domain")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--title", default="Procedural unseen domains")
    args = ap.parse_args()
    size = (args.size, args.size)
    rows = []
    if not args.no_baseline:
        t0 = time.perf_counter()
        res = evaluate_on_domains(mean_depth_predictor(size), EVAL_DOMAINS, args.count, size)
        rows.append({"model": "mean training depth (trivial)", "setting": "-", "metrics": res,
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    latency = {}
    for item in args.checkpoint:
        label, _, path = item.partition("=")
        pipe = DepthPipeline.from_checkpoint(path)
        latency[label] = time_single_prediction(pipe)
        for steps, ens, spacing, proc_res in parse_settings(args.settings):
            def predict(images: list[np.ndarray], pipe: DepthPipeline = pipe, steps: int = steps, ens: int = ens,
                        spacing: str = spacing, proc_res: int | None = proc_res) -> np.ndarray:
                return pipe(images, steps=steps, ensemble=ens, timestep_spacing=spacing, seed=args.seed,
                            processing_res=proc_res).depth

            t0 = time.perf_counter()
            res = evaluate_on_domains(predict, EVAL_DOMAINS, args.count, size)
            name = f"{steps}x{ens} {spacing}" + (f" @{proc_res}" if proc_res else "")
            rows.append({"model": label, "checkpoint": path, "setting": name, "metrics": res,
                         "seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": "python benchmarks/eval_tiny.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(("torch", "diffusers", "numpy")),
        "count_per_domain": args.count,
        "size": list(size),
        "domains": list(EVAL_DOMAINS),
        "single_prediction_seconds": latency,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    head = "| model | setting | " + " | ".join(f"{d} AbsRel | {d} δ1 | {d} edge F1" for d in EVAL_DOMAINS) + " |"
    lines = [
        f"# {args.title}: {', '.join(EVAL_DOMAINS)} ({args.count} test scenes each, {size[0]}×{size[1]})",
        "",
        *report_header(report),
        "",
        "Least-squares scale/shift per image, clipped to the domain's depth range; AbsRel and δ1 in %; edge F1 is the "
        "boundary F1 of `agdepth.metrics.boundary_f1` (10% relative depth jumps, 1 px tolerance).",
        "",
        head,
        "|" + "---|" * (2 + 3 * len(EVAL_DOMAINS)),
    ]
    for r in rows:
        cells = []
        for d in EVAL_DOMAINS:
            m = r["metrics"][d]
            cells += [f"{100 * m['abs_rel']:.1f}", f"{100 * m['delta1']:.1f}", f"{m['edge_f1']:.3f}"]
        lines.append(f"| {r['model']} | {r['setting']} | " + " | ".join(cells) + " |")
    if latency:
        lines += ["", "One 1-step, 1-member prediction at the default processing resolution (PyTorch, CPU, median "
                  "of 10): " + ", ".join(f"{k}: {1000 * v:.0f} ms" for k, v in latency.items())]
    text = "\n".join(lines) + "\n"
    if args.md:
        args.md.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
