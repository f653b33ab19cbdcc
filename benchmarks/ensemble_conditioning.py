"""Ensembling's conditioning, accuracy and speed of the three methods of ``agdepth.ensemble.ensemble_depth``.

``least_squares`` (the default: each member fitted by least squares to the members' common reference), ``lbfgs``
(diffusers' objective solved exactly by agdepth's L-BFGS) and ``diffusers`` (diffusers' own
``MarigoldDepthPipeline.ensemble_depth``: scipy's finite-difference BFGS on that objective, stopped by its defaults
max_iter=2, tol=1e-3), each with its defaults (``agdepth.ensemble.METHOD_DEFAULTS``).

    python benchmarks/ensemble_conditioning.py \
        --json benchmarks/results/ensemble_conditioning.json --md benchmarks/results/ensemble_conditioning.md

Members are real predictions of a checkpoint (default: the bundled model, its default steps and processing
resolution) on procedural test scenes of the unseen domains: the pipeline called with ``ensemble=1`` and one
explicit initial latent per member (``DepthPipeline.initial_latents(image, ensemble=E, seed=scene index)``), so each
member is one single-member prediction at the scene's size (the pipeline's bilinear upsampling from its processing
resolution). The 5-member ensembles are the first 5 of the 10.

a. **Sensitivity**: each scene's members perturbed by uniform noise in [-1e-6, 1e-6] (about ONNX Runtime fp32 vs
   PyTorch) and by fp16 rounding (``.half().float()``, about an fp16 backend); the max abs change of the ensembled
   map (in [0, 1]), per scene, and the same divided by the members' own max abs change (amplification).
b. **Accuracy**: AbsRel and δ1 of each method's ensembled map, scored per image by the evaluation protocol
   (``agdepth.evaluation.protocol.score_checked``: least-squares scale and shift, clip to the domain's depth range;
   the map resized to the ground truth), averaged over the scenes of each domain. The first member alone is scored
   too, as the no-ensembling baseline.
c. **Speed**: median seconds per ``ensemble_depth`` call (median reduction, max_res 1024) on ``depth-bench
   ensemble``'s synthetic members (:func:`agdepth.bench.ensembling.make_members`), the methods interleaved
   (``--repeats`` rounds; ``diffusers``, seconds a call, only in the first ``--diffusers-repeats``), at ``--threads``
   torch threads (default 1, as ``depth-bench ensemble``: OpenMP spin-waits make multi-threaded runs on a shared CPU
   erratic). Ratios: ``least_squares`` / ``lbfgs`` and ``diffusers`` / ``least_squares``.
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
from agdepth.bench.ensembling import make_members
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import EVAL_DOMAINS
from agdepth.ensemble import DEFAULT_METHOD, ENSEMBLE_METHODS, METHOD_DEFAULTS, ensemble_depth
from agdepth.evaluation.datasets import ProceduralEvalDataset
from agdepth.evaluation.protocol import average, score_checked
from agdepth.runtime import DepthPipeline

NOISE = 1e-6
PERTURBATIONS = ("noise 1e-6", "fp16 rounding")


def perturb(d: torch.Tensor, kind: str, seed: int) -> torch.Tensor:
    if kind == "fp16 rounding":
        return d.half().float()
    gen = torch.Generator().manual_seed(seed)
    return d + NOISE * (2 * torch.rand(d.shape, generator=gen) - 1)


def scene_members(pipe: DepthPipeline, rgb: np.ndarray, members: int, seed: int, steps: int | None) -> torch.Tensor:
    """[E,H,W] float32: one single-member prediction per explicit initial latent."""
    lat = pipe.initial_latents(rgb, ensemble=members, seed=seed)[0]  # [E,4,h,w]
    out = pipe([rgb] * members, steps=steps, ensemble=1, latents=[lat[j : j + 1] for j in range(members)])
    return torch.from_numpy(np.asarray(out.depth, np.float32))


def measure_members(pipe: DepthPipeline, domains: list[str], count: int, size: int, ensembles: list[int],
                    steps: int | None) -> tuple[dict, dict]:
    """(sensitivity rows, accuracy) over the scenes of each domain."""
    sens: dict[str, dict[str, list[dict[str, float]]]] = {}
    acc: dict[str, dict[str, list[dict[str, float]]]] = {}
    for dom in domains:
        ds = ProceduralEvalDataset(dom, count, (size, size))
        t0 = time.perf_counter()
        for i in range(count):
            sample = ds.load(i)
            allm = scene_members(pipe, sample.rgb, max(ensembles), i, steps)
            scores = acc.setdefault("1 member", {}).setdefault(dom, [])
            scores.append(score_checked(allm[0].numpy(), sample, ds.depth_range, ds.alignment, ds.dense))
            for e in ensembles:
                d = allm[None, :e]  # [1,E,H,W]
                for method in ENSEMBLE_METHODS:
                    key = f"{method}, {e} members"
                    out = ensemble_depth(d, method=method)[0]
                    pred = out[0, 0].numpy()
                    acc.setdefault(key, {}).setdefault(dom, []).append(
                        score_checked(pred, sample, ds.depth_range, ds.alignment, ds.dense))
                    for kind in PERTURBATIONS:
                        dp = perturb(d, kind, seed=1000 + i)
                        out_p = ensemble_depth(dp, method=method)[0]
                        change = float((out_p - out).abs().max())
                        member_change = float((dp - d).abs().max())
                        sens.setdefault(f"{key}, {kind}", []).append(  # type: ignore[arg-type]
                            {"domain": dom, "scene": i, "output_change": change, "member_change": member_change})
        print(f"{dom}: {count} scenes, {time.perf_counter() - t0:.1f}s", flush=True)
    sensitivity = {}
    for key, rows in sens.items():
        ch = [r["output_change"] for r in rows]  # type: ignore[index]
        amp = [r["output_change"] / r["member_change"] for r in rows]  # type: ignore[index]
        sensitivity[key] = {"scenes": len(rows), "output_change_median": statistics.median(ch),
                            "output_change_max": max(ch),
                            "member_change_max": max(r["member_change"] for r in rows),  # type: ignore[index]
                            "amplification_median": statistics.median(amp), "amplification_max": max(amp),
                            "per_scene": rows}
    accuracy = {key: {dom: average(v) for dom, v in per_dom.items()} for key, per_dom in acc.items()}
    return sensitivity, accuracy


def measure_speed(sizes: list[int], members: int, repeats: dict[str, int]) -> list[dict[str, Any]]:
    """Median seconds per call of each method; ``repeats``: timed calls per method (interleaved rounds)."""
    rows = []
    for size in sizes:
        d, _ = make_members(size, members)
        for method in ENSEMBLE_METHODS:  # lazy init (torch, diffusers' import) outside the timings
            ensemble_depth(d[:2, :, :32, :32], method=method)
        times: dict[str, list[float]] = {m: [] for m in ENSEMBLE_METHODS}
        for i in range(max(repeats.values())):
            for method in ENSEMBLE_METHODS:  # interleaved, so load changes hit all alike
                if i >= repeats[method]:
                    continue
                t0 = time.perf_counter()
                ensemble_depth(d, method=method)
                times[method].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        rows.append({"size": [size, size], "members": members, "times_s": times, "time_s_median": med,
                     "ratio_least_squares_over_lbfgs": med["least_squares"] / med["lbfgs"],
                     "ratio_diffusers_over_least_squares": med["diffusers"] / med["least_squares"]})
        print(f"{size}px: " + ", ".join(f"{m} {v:.3f}s" for m, v in med.items()), flush=True)
    return rows


def _amp(v: float) -> str:
    return f"{v:.2f}" if v < 100 else f"{v:.3g}"


def markdown(report: dict[str, Any]) -> str:
    st = report["settings"]
    stop = ", ".join(f"`{m}` max_iter {it}, tol {tol:g}" for m, (it, tol) in st["method_defaults"].items())
    lines = [
        f"Members: the checkpoint's single-member predictions (one explicit initial latent each, seed = scene index; "
        f"{st['steps']} step(s), processing resolution {st['processing_res']} px) on "
        f"{st['count']} test scenes per domain ({', '.join(st['domains'])}), {st['size']}×{st['size']}; "
        f"the 5-member ensembles are the first 5 of the 10. Median reduction, max_res 1024. Methods: "
        f"`least_squares` (the default: least-squares fits to the members' common reference), `lbfgs` (diffusers' "
        "objective solved exactly by L-BFGS), `diffusers` (diffusers' own `MarigoldDepthPipeline.ensemble_depth`: "
        f"finite-difference BFGS on that objective); each with its default stopping ({stop}). Torch threads: "
        f"{st['torch_threads']}.", "",
        "## a. Sensitivity", "",
        "Max abs change of the ensembled map (in [0, 1]) when the members are perturbed, per scene: median and max "
        "over the scenes; amplification = that change / the members' own max abs change.", "",
        "| method | members | perturbation | member change (max) | output change, median | output change, max | "
        "amplification, median | amplification, max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in report["sensitivity"].items():
        method, e, kind = key.split(", ")
        lines.append(f"| {method} | {e.split()[0]} | {kind} | {r['member_change_max']:.1e} | "
                     f"{r['output_change_median']:.1e} | {r['output_change_max']:.1e} | "
                     f"{_amp(r['amplification_median'])} | {_amp(r['amplification_max'])} |")
    worst = {m: max(r["amplification_max"] for k, r in report["sensitivity"].items() if k.startswith(f"{m}, "))
             for m in st["methods"]}
    lines += ["", "Largest amplification over all scenes, ensemble sizes and perturbations: "
              + ", ".join(f"{m} {_amp(v)}" for m, v in worst.items()) + "."]
    doms = st["domains"]
    lines += ["", "## b. Accuracy", "",
              "Per-image least-squares scale and shift, clipped to the domain's depth range (the evaluation protocol); "
              "means over the scenes. AbsRel and δ1 in %.", "",
              "| ensembling | " + " | ".join(f"{d} AbsRel | {d} δ1" for d in doms) + " | mean AbsRel |",
              "|---|" + "---|---|" * len(doms) + "---|"]
    for key, per_dom in report["accuracy"].items():
        cells = " | ".join(f"{100 * per_dom[d]['abs_rel']:.2f} | {100 * per_dom[d]['delta1']:.2f}" for d in doms)
        mean = statistics.mean(per_dom[d]["abs_rel"] for d in doms)
        lines.append(f"| {key} | {cells} | {100 * mean:.2f} |")
    reps = st["repeats"]
    lines += ["", "## c. Speed", "",
              "Median seconds per `ensemble_depth` call, the methods interleaved (timed calls: "
              + ", ".join(f"`{m}` {n}" for m, n in reps.items()) + "), on `depth-bench ensemble`'s synthetic members "
              "(procedural indoor depth, affine maps plus a smooth field and noise, clipped to [0, 1]).", "",
              "| size | members | least_squares (s) | lbfgs (s) | diffusers (s) | least_squares / lbfgs | "
              "diffusers / least_squares |", "|---|---|---|---|---|---|---|"]
    for r in report["speed"]:
        t = r["time_s_median"]
        lines.append(f"| {r['size'][0]}×{r['size'][1]} | {r['members']} | {t['least_squares']:.3f} | "
                     f"{t['lbfgs']:.3f} | {t['diffusers']:.2f} | {r['ratio_least_squares_over_lbfgs']:.2f} | "
                     f"{r['ratio_diffusers_over_least_squares']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--count", type=int, default=20, help="test scenes per domain")
    ap.add_argument("--size", type=int, default=128, help="scene side (px)")
    ap.add_argument("--domains", default=",".join(EVAL_DOMAINS))
    ap.add_argument("--ensembles", default="5,10", help="members per ensemble (the smaller ones: the first members)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    ap.add_argument("--speed-sizes", default="768,384")
    ap.add_argument("--speed-members", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method and size")
    ap.add_argument("--diffusers-repeats", type=int, default=3,
                    help="timed calls of the (slow) diffusers method per size: the first of the --repeats rounds")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everything")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()

    meta = report_meta("python benchmarks/ensemble_conditioning.py " + shlex.join(sys.argv[1:]))
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or default_checkpoint()
    pipe = DepthPipeline.from_checkpoint(ckpt)
    steps = pipe.backend.defaults.steps if args.steps is None else args.steps
    domains = args.domains.split(",")
    ensembles = sorted(int(v) for v in args.ensembles.split(","))
    sensitivity, accuracy = measure_members(pipe, domains, args.count, args.size, ensembles, steps)
    repeats = {m: args.repeats for m in ENSEMBLE_METHODS}
    repeats["diffusers"] = min(args.diffusers_repeats, args.repeats)
    speed = measure_speed([int(v) for v in args.speed_sizes.split(",")], args.speed_members, repeats)
    report = {**meta,
              "settings": {"checkpoint": str(ckpt.name if args.checkpoint is None else ckpt), "count": args.count,
                           "size": args.size, "domains": domains, "ensembles": ensembles, "steps": steps,
                           "processing_res": pipe.backend.defaults.processing_resolution,
                           "noise": NOISE, "methods": list(ENSEMBLE_METHODS), "default_method": DEFAULT_METHOD,
                           "method_defaults": {m: list(v) for m, v in METHOD_DEFAULTS.items()},
                           "reduction": "median", "max_res": 1024, "torch_threads": torch.get_num_threads(),
                           "repeats": repeats},
              "sensitivity": sensitivity, "accuracy": accuracy, "speed": speed}
    text = publish_report("Ensembling methods: least_squares, lbfgs, diffusers", report,
                             markdown(report), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
