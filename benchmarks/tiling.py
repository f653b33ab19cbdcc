"""Tiled high-resolution depth (agdepth.runtime.tiling.predict_tiled) vs the global-only prediction.

    python benchmarks/tiling.py --json benchmarks/results/tiling.json --md benchmarks/results/tiling.md

The bundled model on PyTorch (CPU), default settings, seed 0, on the unseen procedural domains (forest, tabletop):
``--count`` test-split scenes per domain rendered at ``--size``² (1024; 768 and 2048 work too). Both predictions are
scored at the full resolution by the procedural protocol (:func:`agdepth.evaluation.protocol.score_checked`:
least-squares alignment, depth range clip, AbsRel/δ1, boundary F1 at 10 % relative jumps, 1 px tolerance).

The protocol's boundary F1 counts pixels whose depth jumps ≥ 10 % to a neighbour. At 1024 px the tiny model's maps
(global or tiled) never jump that much between adjacent pixels (edges are ramps a few pixels wide), so that F1 is 0
for both and their ratio is undefined. The benchmark therefore also reports the same boundary F1 after subsampling
ground truth (nearest, pixel centres) and prediction (bilinear, as the protocol resizes) to ``--edge-size`` px
(128): edges within ±1 px there are within ±size/edge-size px at full resolution. It is labelled as such.

Seams: :func:`agdepth.runtime.tiling.seam_jump` (99th percentile of |second difference|, stride 4 px, of samples
centred < 4 px from a tile edge, taken across it / the same of samples ≥ 8 px from every tile edge) of the tiled map,
per image; the acceptance is on the largest per-image ratio. Also reported, as the acceptance reads literally: the
largest |second difference| across tile borders over the largest inside tiles, per image. Two references, not part
of the acceptance: the global map on the same grid, and the tiled map measured on the grid shifted by half a tile
stride (lines where no tile edge lies: how far the ratio moves with the scene content alone).
Latency: wall time per image of the global call and of ``predict_tiled`` (which includes its global call), on this
machine (load average in the header).

Tuning (``--tune-count`` scenes per domain of the *val* split, never the reported test scenes): a small sweep of tile
side, overlap and detail split (``lowpass``: σ in global cells; none = the blended tiles replace the global
prediction), reported beside the result; the module defaults (TILE_SCALE, overlap, LOWPASS_SCALE) were chosen from it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import DEPTH_RANGES, EVAL_DOMAINS, render_scene
from agdepth.evaluation.datasets import EvalSample
from agdepth.evaluation.protocol import resize_to, score_checked
from agdepth.metrics import aligned_depth, boundary_f1
from agdepth.runtime import DepthPipeline
from agdepth.runtime.tiling import (
    LOWPASS_SCALE,
    TILE_SCALE,
    TileGrid,
    default_tile_side,
    plan_tiles,
    predict_tiled,
    seam_jump,
)

DEFAULT_OVERLAP = 0.5  # predict_tiled's default


def load(domain: str, index: int, size: int, split: str) -> EvalSample:
    s = render_scene(domain, index, (size, size), split)
    return EvalSample(f"{domain}/{split}/{index:06d}", s.rgb, np.where(s.valid, s.depth, 0).astype(np.float32),
                      s.valid)


def edge_f1_at(pred: np.ndarray, sample: EvalSample, domain: str, edge_size: int) -> float:
    """Boundary F1 with ground truth and prediction subsampled to ``edge_size`` px (see the module docstring)."""
    h, w = sample.depth.shape
    ys = ((np.arange(edge_size) + 0.5) * h / edge_size).astype(int)
    xs = ((np.arange(edge_size) + 0.5) * w / edge_size).astype(int)
    gt, mask = sample.depth[np.ix_(ys, xs)], sample.mask[np.ix_(ys, xs)]
    p = resize_to(np.asarray(pred, np.float64), (edge_size, edge_size))
    return boundary_f1(aligned_depth(p, gt, mask, DEPTH_RANGES[domain]), gt, mask)["edge_f1"]


def score(pred: np.ndarray, sample: EvalSample, domain: str, edge_size: int) -> dict[str, float]:
    m = score_checked(pred, sample, DEPTH_RANGES[domain], "least_squares", True, origin=sample.name)
    return {"abs_rel": m["abs_rel"], "delta1": m["delta1"], "edge_f1": m["edge_f1"],
            "edge_f1_sub": edge_f1_at(pred, sample, domain, edge_size)}


def nanmean(values: list[float]) -> float:
    a = np.asarray(values, np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def shifted_grid(grid: TileGrid) -> TileGrid:
    """The grid with its inner tile edges moved by half the tile stride (a content-only reference for seam_jump)."""
    def move(starts: tuple[int, ...], length: int) -> tuple[int, ...]:
        off = (starts[1] - starts[0]) // 2 if len(starts) > 1 else 0
        return tuple(min(length - grid.side, v + off) if 0 < v < length - grid.side else v for v in starts)
    return TileGrid(grid.height, grid.width, grid.side, move(grid.ys, grid.height), move(grid.xs, grid.width))


def run_tiled(pipe: DepthPipeline, rgb: np.ndarray, tile: int | None, overlap: float, batch: int,
              lowpass: float | None) -> tuple[np.ndarray, Any, float]:
    t0 = time.perf_counter()
    depth, grid = predict_tiled(pipe, rgb, tile=tile, overlap=overlap, seed=0, batch_size=batch, lowpass=lowpass,
                                return_grid=True)
    return depth, grid, time.perf_counter() - t0


def tune(pipe: DepthPipeline, args: argparse.Namespace, res: int) -> list[dict[str, Any]]:
    samples = [(d, load(d, i, args.size, "val")) for d in args.domains for i in range(args.tune_count)]
    configs = [(None, None, None)] + [(k * res, o, lp) for k, o, lp in (
        (4, 0.5, None), (5, 0.5, None), (4, 0.5, 2.0), (5, 0.5, 1.0), (5, 0.5, 2.0), (5, 0.5, 3.0))]
    rows = []
    for tile, overlap, lowpass in configs:
        per, seams = [], []
        for dom, smp in samples:
            if tile is None:
                pred = predict_tiled(pipe, smp.rgb, tile=10**9, seed=0)  # one tile: the global prediction
            else:
                pred, g, _ = run_tiled(pipe, smp.rgb, tile, overlap, args.batch_size, lowpass)
                seams.append(seam_jump(pred, g)["ratio"])
            per.append(score(pred, smp, dom, args.edge_size))
        rows.append({"tile": tile, "overlap": overlap, "lowpass": lowpass,
                     **{f"{k}_{d}": nanmean([p[k] for (dd, _), p in zip(samples, per, strict=True) if dd == d])
                        for k in ("abs_rel", "edge_f1_sub") for d in args.domains},
                     **{k: nanmean([p[k] for p in per]) for k in per[0]},
                     "seam_ratio_mean": nanmean(seams), "seam_ratio_max": float(np.max(seams)) if seams else None})
        print(f"tune {tile} {overlap} {lowpass}: {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=8, help="test scenes per domain")
    ap.add_argument("--size", type=int, default=1024, help="render side, px (768, 1024, 2048)")
    ap.add_argument("--domains", nargs="+", default=list(EVAL_DOMAINS))
    ap.add_argument("--tile", type=int, default=None, help="tile side, px (default: predict_tiled's rule)")
    ap.add_argument("--overlap", type=float, default=DEFAULT_OVERLAP)
    ap.add_argument("--lowpass", type=float, default=LOWPASS_SCALE,
                    help="detail split σ in global cells (predict_tiled's lowpass; negative: none)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--edge-size", type=int, default=128, help="side of the subsampled boundary F1")
    ap.add_argument("--tune-count", type=int, default=3, help="val scenes per domain for the sweep (0: none)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    lowpass = None if args.lowpass < 0 else args.lowpass
    meta = report_meta("python benchmarks/tiling.py " + shlex.join(sys.argv[1:]))
    pipe = DepthPipeline.from_checkpoint(default_checkpoint())
    steps, _, res, _ = pipe.check_settings()
    tile = args.tile or default_tile_side(args.size, args.size, res)
    grid = plan_tiles(args.size, args.size, tile, args.overlap)
    predict_tiled(pipe, load(args.domains[0], 0, 256, "val").rgb, tile=128, batch_size=args.batch_size)  # warm-up

    tuning = tune(pipe, args, res) if args.tune_count > 0 else []

    per_domain: dict[str, dict[str, Any]] = {}
    images = []
    for dom in args.domains:
        rows = []
        for i in range(args.count):
            smp = load(dom, i, args.size, "test")
            lat = pipe.initial_latents(smp.rgb, seed=0)
            t0 = time.perf_counter()
            glob = np.asarray(pipe(smp.rgb, latents=lat).depth[0], np.float32)
            t_glob = time.perf_counter() - t0
            tiled, g, t_tiled = run_tiled(pipe, smp.rgb, args.tile, args.overlap, args.batch_size, lowpass)
            row = {"name": smp.name, "global": score(glob, smp, dom, args.edge_size),
                   "tiled": score(tiled, smp, dom, args.edge_size), "seam": seam_jump(tiled, g),
                   "seam_global": seam_jump(glob, g), "seam_shifted": seam_jump(tiled, shifted_grid(g)),
                   "latency_s": {"global": t_glob, "tiled": t_tiled}}
            rows.append(row)
            print(f"{smp.name}: global {row['global']} tiled {row['tiled']} seam {row['seam']['ratio']:.3f} "
                  f"{t_glob:.2f}s / {t_tiled:.2f}s", flush=True)
        images += rows
        per_domain[dom] = {
            kind: {k: nanmean([r[kind][k] for r in rows]) for k in rows[0][kind]} for kind in ("global", "tiled")}

    def mean(kind: str, key: str) -> float:
        return nanmean([per_domain[d][kind][key] for d in args.domains])

    seams = [r["seam"]["ratio"] for r in images]
    overall = {kind: {k: mean(kind, k) for k in ("abs_rel", "delta1", "edge_f1", "edge_f1_sub")}
               for kind in ("global", "tiled")}
    lat = {kind: statistics.median(r["latency_s"][kind] for r in images) for kind in ("global", "tiled")}
    acceptance = {
        "edge_f1_ratio": ratio(overall["tiled"]["edge_f1"], overall["global"]["edge_f1"]),
        "edge_f1_sub_ratio": ratio(overall["tiled"]["edge_f1_sub"], overall["global"]["edge_f1_sub"]),
        "abs_rel_no_worse": overall["tiled"]["abs_rel"] <= overall["global"]["abs_rel"],
        "seam_ratio_mean": float(np.mean(seams)), "seam_ratio_max": float(np.max(seams)),
        "seam_images_ok": int(np.sum(np.asarray(seams) <= 1.0)), "seam_images": len(seams),
        "abs_rel_no_worse_per_domain": {d: per_domain[d]["tiled"]["abs_rel"] <= per_domain[d]["global"]["abs_rel"]
                                        for d in args.domains},
        "seam_ok": bool(np.max(seams) <= 1.0),
        "seam_max_ratio_max": float(np.max([r["seam"]["max_ratio"] for r in images])),
    }
    acceptance["seam_max_ok"] = bool(acceptance["seam_max_ratio_max"] <= 1.0)
    acceptance["edge_f1_1_3x"] = bool(acceptance["edge_f1_ratio"] >= 1.3)  # NaN (global 0) -> False
    acceptance["edge_f1_sub_1_3x"] = bool(acceptance["edge_f1_sub_ratio"] >= 1.3)
    report = {
        **meta, "size": args.size, "count": args.count, "domains": args.domains, "processing_res": res,
        "steps": steps, "tile": tile, "tile_rule": f"TILE_SCALE={TILE_SCALE} x processing resolution",
        "overlap": args.overlap, "lowpass": lowpass, "grid": grid.to_dict(),
        "batch_size": args.batch_size, "edge_size": args.edge_size,
        "threads": torch.get_num_threads(), "per_domain": per_domain, "overall": overall,
        "latency_median_s": lat, "acceptance": acceptance, "tuning": {"split": "val", "count": args.tune_count,
                                                                      "rows": tuning},
        "images": images,
    }

    def f(x: float, p: int = 3) -> str:
        return "—" if not np.isfinite(x) else f"{x:.{p}f}"

    lines = [
        f"{args.count} test scenes per domain at {args.size}×{args.size}, bundled model (PyTorch CPU, "
        f"{torch.get_num_threads()} threads), processing resolution {res} px, {steps} step(s), seed 0. Tiles: "
        f"{tile} px ({grid.to_dict()['rows']}×{grid.to_dict()['cols']} = {len(grid)} tiles, overlap ≥ "
        f"{args.overlap:.0%}), {args.batch_size} tiles per network call; "
        + (f"detail split σ = {lowpass:g} global cells ({lowpass * args.size / res:.0f} px: result = global + tiled "
           "− G_σ(tiled))" if lowpass is not None else "no detail split (the blended tiles replace the global)")
        + f". Boundary F1 (protocol) at full resolution; "
        f"F1@{args.edge_size}: the same after subsampling to {args.edge_size} px (see the script's docstring).", "",
        "| domain | method | AbsRel | δ1 | boundary F1 | F1@" + str(args.edge_size) + " |", "|---|---|---|---|---|---|"]
    for dom in args.domains:
        for kind in ("global", "tiled"):
            m = per_domain[dom][kind]
            lines.append(f"| {dom} | {kind} | {f(m['abs_rel'], 4)} | {f(m['delta1'])} | {f(m['edge_f1'])} | "
                         f"{f(m['edge_f1_sub'])} |")
    for kind in ("global", "tiled"):
        m = overall[kind]
        lines.append(f"| **mean** | {kind} | {f(m['abs_rel'], 4)} | {f(m['delta1'])} | {f(m['edge_f1'])} | "
                     f"{f(m['edge_f1_sub'])} |")
    a = acceptance
    lines += [
        "", "| acceptance | measured | met |", "|---|---|---|",
        f"| boundary F1 ≥ 1.3× global (protocol, full res) | {f(overall['tiled']['edge_f1'])} vs "
        f"{f(overall['global']['edge_f1'])} (ratio {f(a['edge_f1_ratio'], 2)}) | "
        f"{'yes' if a['edge_f1_1_3x'] else 'no' if overall['global']['edge_f1'] else 'no (undefined: global is 0)'} |",
        f"| boundary F1@{args.edge_size} ≥ 1.3× global | {f(overall['tiled']['edge_f1_sub'])} vs "
        f"{f(overall['global']['edge_f1_sub'])} (ratio {f(a['edge_f1_sub_ratio'], 2)}) | "
        f"{'yes' if a['edge_f1_sub_1_3x'] else 'no'} |",
        f"| AbsRel no worse (mean of domains) | {f(overall['tiled']['abs_rel'], 4)} vs "
        f"{f(overall['global']['abs_rel'], 4)} | {'yes' if a['abs_rel_no_worse'] else 'no'} |",
        *(f"| AbsRel no worse ({d}) | {f(per_domain[d]['tiled']['abs_rel'], 4)} vs "
          f"{f(per_domain[d]['global']['abs_rel'], 4)} | {'yes' if a['abs_rel_no_worse_per_domain'][d] else 'no'} |"
          for d in args.domains),
        f"| seam: p99 \\|2nd diff\\| (stride 4 px) across tile borders ≤ inside, every image | ratio mean "
        f"{f(a['seam_ratio_mean'])}, max {f(a['seam_ratio_max'])}, ≤ 1 on {a['seam_images_ok']}/{a['seam_images']} "
        f"images (references: global map on the same grid mean "
        f"{f(float(np.nanmean([r['seam_global']['ratio'] for r in images])))}; tiled map on the half-stride-shifted "
        f"grid mean {f(float(np.nanmean([r['seam_shifted']['ratio'] for r in images])))}, max "
        f"{f(float(np.nanmax([r['seam_shifted']['ratio'] for r in images])))}) | {'yes' if a['seam_ok'] else 'no'} |",
        f"| seam: the largest \\|2nd diff\\| across tile borders ≤ the largest inside tiles, every image | largest "
        f"ratio {f(a['seam_max_ratio_max'])} | {'yes' if a['seam_max_ok'] else 'no'} |",
        f"| latency per image (median) | global {lat['global'] * 1000:.0f} ms, tiled {lat['tiled'] * 1000:.0f} ms "
        f"({ratio(lat['tiled'], lat['global']):.1f}×) | — |",
    ]
    if tuning:
        lines += ["", f"Tuning sweep on the **val** split ({args.tune_count} scenes per domain, same size; not the "
                  "reported scenes); lowpass: detail split σ in global cells, none = tiles replace the global:", "",
                  "| tile | overlap | lowpass | AbsRel | " + " | ".join(f"AbsRel {d}" for d in args.domains)
                  + " | boundary F1 | F1@" + str(args.edge_size) + " | seam ratio mean / max |",
                  "|---" * (7 + len(args.domains)) + "|"]
        for r in tuning:
            lines.append(
                f"| {r['tile'] or 'global only'} | {'' if r['overlap'] is None else r['overlap']} | "
                f"{'' if r['tile'] is None else 'none' if r['lowpass'] is None else r['lowpass']} | "
                f"{f(r['abs_rel'], 4)} | " + " | ".join(f(r[f'abs_rel_{d}'], 4) for d in args.domains)
                + f" | {f(r['edge_f1'])} | {f(r['edge_f1_sub'])} | "
                + ("" if r['tile'] is None else f"{f(r['seam_ratio_mean'], 2)} / {f(r['seam_ratio_max'], 2)}") + " |")
    title = f"Tiled depth vs global-only, {args.size}×{args.size}, procedural unseen domains"
    print(publish_report(title, report, "\n".join(lines), args.json, args.md))


if __name__ == "__main__":
    main()
