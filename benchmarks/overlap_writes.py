"""Throughput of predict-then-write with the outputs written inline against on depth-run's background writer.

    python benchmarks/overlap_writes.py --device cuda --json benchmarks/results/overlap_writes_h200.json \
        --md benchmarks/results/overlap_writes_h200.md

The bundled model at its default setting on ``--device``, ``--count`` procedural test images of ``--size`` (H W),
8 images per pipeline call as depth-run does, depth-run's default outputs (png16, npy, color). Inline:
``write_outputs`` after each call; background: ``runtime.writer.BackgroundWriter``, as depth-run writes. The two
modes alternate, ``--repeats`` times each, and the median is reported.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.imageio import output_paths, write_outputs
from agdepth.runtime import DepthPipeline
from agdepth.runtime.writer import BackgroundWriter

FORMATS = "png16,npy,color"


def run_once(pipe: DepthPipeline, images: list[np.ndarray], out: Path, background: bool) -> float:
    """Seconds to predict and write every image."""
    writer = BackgroundWriter(max_pending=16) if background else None
    t0 = time.perf_counter()
    for k in range(0, len(images), 8):
        res = pipe(images[k:k + 8], seed=k)
        for j, depth in enumerate(res.depth):
            paths = output_paths(out, f"{k + j:04d}", FORMATS, False)
            if writer is not None:
                writer.submit(str(k + j), paths, depth)
            else:
                write_outputs(paths, depth)
    if writer is not None:
        writer.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--count", type=int, default=48)
    ap.add_argument("--size", type=int, nargs=2, default=(768, 1024), metavar=("H", "W"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/overlap_writes.py " + shlex.join(sys.argv[1:]), ("torch", "pillow", "numpy"))
    size = (args.size[0], args.size[1])
    images = [render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, size, "test").rgb for i in range(args.count)]
    pipe = DepthPipeline.from_checkpoint(default_checkpoint(), device=args.device)
    times: dict[str, list[float]] = {"inline": [], "background": []}
    with tempfile.TemporaryDirectory() as tmp:
        run_once(pipe, images[:8], Path(tmp) / "warm", background=False)
        for r in range(args.repeats):
            for mode in times:
                times[mode].append(run_once(pipe, images, Path(tmp) / f"{mode}{r}", mode == "background"))
    rate = {m: args.count / statistics.median(v) for m, v in times.items()}
    report = {
        **meta,
        "device": args.device, "count": args.count, "size": list(size), "formats": FORMATS,
        "seconds": times, "images_per_s": rate,
    }
    lines = [f"{args.count} procedural test images of {size[0]}×{size[1]}, the bundled model at its default setting, "
             f"8 images per call, outputs {FORMATS}; median of {args.repeats} alternating runs per mode.", "",
             "| writes | seconds (runs) | images/s |", "|---|---|---|"]
    for m, v in times.items():
        lines.append(f"| {m} | {statistics.median(v):.2f} ({', '.join(f'{x:.2f}' for x in v)}) | {rate[m]:.1f} |")
    lines += ["", f"Background over inline: {rate['background'] / rate['inline']:.2f}×."]
    title = f"Writing outputs inline or on depth-run's background writer ({args.device})"
    text = publish_report(title, report, "\n".join(lines), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
