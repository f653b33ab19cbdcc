"""Time of the 16-bit depth PNG write at zlib levels 1 (the project's), 3 and 6 (Pillow's default), and file sizes.

    python benchmarks/png_write.py --json benchmarks/results/png_write.json --md benchmarks/results/png_write.md

Maps: the bundled model's predictions of procedural test scenes rendered at --size (the runtime writes at the input
size), as fp32 maps and rounded through float16 (what an fp16 decoder hands back). Each write goes through
``agdepth.imageio.write_depth_png16``; the level is switched through ``imageio.PNG_COMPRESS_LEVEL``.
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

from agdepth import default_checkpoint, imageio
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.runtime import DepthPipeline

LEVELS = (1, 3, 6)  # 6: Pillow's default


def time_writes(maps: list[np.ndarray], level: int, repeats: int, folder: Path) -> tuple[float, float]:
    """(median seconds per map, mean file size in bytes) at zlib ``level``."""
    imageio.PNG_COMPRESS_LEVEL = level
    times, sizes = [], []
    for r in range(repeats):
        for i, m in enumerate(maps):
            path = folder / f"{level}_{r}_{i}.png"
            t0 = time.perf_counter()
            imageio.write_depth_png16(path, m)
            times.append(time.perf_counter() - t0)
            sizes.append(path.stat().st_size)
            path.unlink()
    return statistics.median(times), float(np.mean(sizes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/png_write.py " + shlex.join(sys.argv[1:]), ("pillow", "numpy"))
    pipe = DepthPipeline.from_checkpoint(default_checkpoint())
    rgb = [render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, (args.size, args.size), "test").rgb
           for i in range(args.images)]
    fp32 = list(pipe(rgb, seed=0).depth)
    kinds = {"fp32 prediction": fp32, "fp16-rounded prediction": [m.astype(np.float16).astype(np.float32)
                                                                  for m in fp32]}
    default_level = imageio.PNG_COMPRESS_LEVEL
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, maps in kinds.items():
            for level in LEVELS:
                seconds, size = time_writes(maps, level, args.repeats, Path(tmp))
                rows.append({"maps": kind, "level": level, "ms": 1000 * seconds, "kib": size / 1024})
    imageio.PNG_COMPRESS_LEVEL = default_level
    report = {
        **meta,
        "size": args.size, "images": args.images, "repeats": args.repeats, "project_level": default_level,
        "rows": rows,
    }
    by = {(r["maps"], r["level"]): r for r in rows}
    lines = [f"Median of {args.images} maps × {args.repeats} repeats per row; the project writes at level "
             f"{default_level}, Pillow's default is 6.", "",
             "| maps | level | write | file | faster than level 6 | larger than level 6 |", "|---|---|---|---|---|---|"]
    for r in rows:
        ref = by[(r["maps"], 6)]
        lines.append(f"| {r['maps']} | {r['level']} | {r['ms']:.1f} ms | {r['kib']:.0f} KiB | "
                     f"{ref['ms'] / r['ms']:.1f}× | {100 * (r['kib'] / ref['kib'] - 1):.1f} % |")
    title = f"16-bit depth PNG write, {args.size}×{args.size}, by zlib level"
    text = publish_report(title, report, "\n".join(lines), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
