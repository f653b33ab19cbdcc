"""ONNX Runtime fp32 / fp16 against PyTorch for a checkpoint, end to end on procedural test scenes, plus latency.

The accuracy part is ``depth-bench parity``'s end-to-end comparison (:mod:`agdepth.bench.parity`); this script adds
the single-image latency of each backend.

    python benchmarks/onnx_parity.py --engines engines --count 10 \
        --json benchmarks/results/onnx_parity.json --md benchmarks/results/onnx_parity.md

``--engines`` is a ``depth-export --fp16`` directory of the same checkpoint (default: the bundled model). Every
backend gets the same images and seed (so the same initial noise); the PyTorch depth is the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from agdepth import default_checkpoint
from agdepth.bench.parity import compare_end_to_end
from agdepth.data.procedural import DOMAINS, render_scene
from agdepth.machine import machine_info, package_versions, report_header
from agdepth.runtime import DepthPipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--count", type=int, default=10, help="test scenes per procedural domain")
    ap.add_argument("--settings", default="1x1,4x5", help="STEPSxENSEMBLE,... (trailing spacing)")
    ap.add_argument("--repeats", type=int, default=5, help="timed single-image predictions per backend")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()

    ckpt = args.checkpoint or default_checkpoint()
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    rows = [r for r in compare_end_to_end(args.engines, ckpt, args.count, settings, log=lambda s: None)
            if r["backend"] != "pytorch-fp32"]
    for r in rows:
        r["backend"] = {"onnxruntime-fp32": "ONNX Runtime fp32", "onnxruntime-fp16": "ONNX Runtime fp16"}[r["backend"]]
        print(json.dumps(r), flush=True)
    pipes = {"PyTorch fp32": DepthPipeline.from_checkpoint(ckpt),
             "ONNX Runtime fp32": DepthPipeline.from_engine(args.engines / "unet.onnx"),
             "ONNX Runtime fp16": DepthPipeline.from_engine(args.engines / "unet.fp16.onnx")}
    images = [render_scene("indoor", 0, size=(240, 320), split="test").rgb]
    latency = {}
    for name, p in pipes.items():  # one image, the checkpoint's default settings; median of interleaved repeats
        p(images[0], seed=0)
        latency[name] = statistics.median(_timed(p, images[0]) for _ in range(args.repeats))
    report = {
        "command": "python benchmarks/onnx_parity.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(("torch", "onnx", "onnxruntime", "onnxslim", "diffusers")),
        "checkpoint": str(ckpt.name if args.checkpoint is None else ckpt),
        "images": len(DOMAINS) * args.count, "size": [240, 320], "rows": rows, "single_image_seconds": latency,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# ONNX Runtime against PyTorch (end to end)", "", *report_header(report), "",
        f"{len(DOMAINS) * args.count} procedural test scenes (320×240, {args.count} per domain: "
        f"{', '.join(DOMAINS)}), same seed on every backend; the PyTorch fp32 depth map is the reference. AbsRel "
        "and δ1 (%) on pixels where the reference is > 0.01 (no alignment); max |Δ| over all pixels "
        "(depth in [0, 1]).", "",
        "| setting | backend | AbsRel % | δ1 % | max abs diff | finite |", "|---|---|---|---|---|---|",
        *(f"| {r['setting']} | {r['backend']} | {100 * r['abs_rel']:.4f} | {100 * r['delta1']:.2f} | "
          f"{r['max_abs']:.1e} | {r['finite']} |" for r in rows),
        "", "One image at the checkpoint's defaults, median of "
        f"{args.repeats} (seconds): " + ", ".join(f"{k} {v:.3f}" for k, v in latency.items()), "",
    ]
    if args.md:
        args.md.write_text("\n".join(lines))
    print("\n".join(lines))


def _timed(pipe: DepthPipeline, image: np.ndarray) -> float:
    t0 = time.perf_counter()
    pipe(image, seed=0)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
