"""Throughput of the procedural RGB-D generator (single process), per domain.

    python benchmarks/bench_procedural.py [--size 128] [--n 200] [--repeats 3] [--json out.json] [--md out.md]

Each repeat renders ``n`` distinct scenes of a domain; the reported images/s is the median over repeats. The
one-off texture-bank build (first call in a process) is timed separately and excluded from the rates.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agdepth.data.procedural import DOMAINS, ProceduralDataset, _texture_bank, render_scene  # noqa: E402
from agdepth.machine import cpu_model, package_versions, report_header  # noqa: E402


def rate(fn: object, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)  # type: ignore[operator]
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="square image side in pixels")
    ap.add_argument("--n", type=int, default=200, help="images per repeat and domain")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="write results as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown summary here")
    args = ap.parse_args(argv)
    size = (args.size, args.size)

    t0 = time.perf_counter()
    _texture_bank()
    setup_s = time.perf_counter() - t0

    results: dict[str, dict] = {}
    for domain in DOMAINS:
        render_scene(domain, 0, size)  # warm-up
        runs = [rate(lambda i, d=domain, r=r: render_scene(d, r * args.n + i, size), args.n)
                for r in range(args.repeats)]
        results[domain] = {"images_per_s": statistics.median(runs), "runs": runs, "role": DOMAINS[domain].role}
        print(f"{domain:10s} {statistics.median(runs):7.1f} images/s  (runs: {', '.join(f'{x:.1f}' for x in runs)})")
    # what the trainer sees: dataset items (render + tensor conversion + hflip) over the training mix
    ds = ProceduralDataset(["indoor", "street"], args.n * args.repeats, size=size, hflip=True)
    runs = [rate(lambda i, r=r: ds[r * args.n + i], args.n) for r in range(args.repeats)]
    results["dataset[indoor,street]"] = {"images_per_s": statistics.median(runs), "runs": runs, "role": "train"}
    print(f"dataset    {statistics.median(runs):7.1f} images/s")

    report = {
        "command": "python benchmarks/bench_procedural.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                    "torch_threads": torch.get_num_threads()},
        "versions": package_versions(("numpy", "torch", "scikit-image", "scipy", "pillow")),
        "size": list(size), "n": args.n, "repeats": args.repeats,
        "texture_bank_setup_s": setup_s,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        lines = [
            "# Procedural RGB-D generator throughput", "",
            *report_header(report), "",
            f"Single process, {size[0]}x{size[1]} images, {args.n} scenes per repeat, median of {args.repeats} "
            f"repeats. One-off texture bank build: {setup_s:.2f} s (excluded).", "",
            "| domain | role | images/s (median) | runs |", "|---|---|---|---|",
        ]
        lines += [f"| {d} | {r['role']} | {r['images_per_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['runs'])} |"
                  for d, r in results.items()]
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
