"""Test-time ensembling: agdepth.ensemble vs diffusers' MarigoldDepthPipeline.ensemble_depth on the same members.

    python benchmarks/bench_ensemble.py [--sizes 768 384] [--members 10] [--repeats 3] [--threads 1]
                                        [--json out.json] [--md out.md]

Members: a procedural indoor scene's depth (2%/98% normalised to [0, 1], as the training target), mapped per member
by a random affine map plus a smooth low-frequency field and pixel noise, clipped to [0, 1] like Marigold's decoder.
Both implementations run in this process, interleaved per repeat, on identical members (median reduction, lambda
0.02, max_res 1024). diffusers runs twice: with its defaults (max_iter=2, tol=1e-3: what the pipeline uses) and
with this module's (max_iter=50, tol=1e-6). Times are wall-clock medians over repeats; the speed ratio is
diffusers / ours. ``--threads`` sets torch's intra-op threads for both (default 1: on a CPU shared with other work,
OpenMP spin-waits made 2-thread runs of either implementation up to 100x slower and erratic).

Objectives (``ensemble_objective``, float64, on the members the solvers saw): "unit" evaluates each solution in the
unit-range gauge that agdepth returns (same ensembled output; see agdepth/ensemble.py for why this gauge), "raw"
evaluates diffusers at its own parameters and ours moved onto diffusers' [min m, max m]. Output error: RMSE against
the ground-truth map after a least-squares affine fit.
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
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout without installing the package
    sys.path.insert(0, str(ROOT))

import scipy.optimize  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from agdepth.data.procedural import render_scene  # noqa: E402
from agdepth.ensemble import ensemble_depth, ensemble_objective, solve_alignment  # noqa: E402
from agdepth.machine import cpu_model, package_versions, report_header  # noqa: E402

DIFFUSERS_SETTINGS = {"diffusers defaults": {"max_iter": 2, "tol": 1e-3},
                      "diffusers max_iter=50 tol=1e-6": {"max_iter": 50, "tol": 1e-6}}




def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"




def make_members(size: int, e: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(members [E,1,S,S] in diffusers' layout, ground truth [S,S])."""
    scene = render_scene("indoor", seed, (size, size))
    g, valid = torch.from_numpy(scene.depth), torch.from_numpy(scene.valid)
    lo, hi = torch.quantile(g[valid], 0.02), torch.quantile(g[valid], 0.98)
    g = ((g - lo) / (hi - lo)).clamp(0, 1)
    g[~valid] = 1
    gen = torch.Generator().manual_seed(seed)
    a = 0.6 + 0.8 * torch.rand(e, 1, 1, 1, generator=gen)
    b = 0.3 * torch.rand(e, 1, 1, 1, generator=gen) - 0.15
    low = F.interpolate(torch.randn(e, 1, 8, 8, generator=gen), (size, size), mode="bicubic") * 0.03
    d = (a * g + b + low + 0.01 * torch.randn(e, 1, size, size, generator=gen)).clamp(0, 1)
    return d, g


def fit_rmse(out: torch.Tensor, g: torch.Tensor) -> float:
    o, gg = out.flatten().double(), g.flatten().double()
    a = torch.stack([o, torch.ones_like(o)], 1)
    sol = torch.linalg.lstsq(a, gg[:, None]).solution
    return float((a @ sol - gg[:, None]).pow(2).mean().sqrt())


def reduced(d: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (s.double().reshape(-1, 1, 1, 1) * d.double() + t.double().reshape(-1, 1, 1, 1)).median(0).values


def run_diffusers(d: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    from diffusers import MarigoldDepthPipeline

    captured = {}
    minimize = scipy.optimize.minimize

    def spy(fun, x0, **k):  # capture the solution diffusers does not return
        res = minimize(fun, x0, **k)
        captured.update(x=torch.from_numpy(res.x), nit=int(res.nit), nfev=int(res.nfev))
        return res

    with mock.patch.object(scipy.optimize, "minimize", spy):
        t0 = time.perf_counter()
        out, _ = MarigoldDepthPipeline.ensemble_depth(d, **kw)
        dt = time.perf_counter() - t0
    x = captured["x"]
    return out, x[: len(d)], x[len(d) :], dt, captured


def bench_size(size: int, e: int, repeats: int) -> dict:
    d, g = make_members(size, e)
    # objectives are evaluated on what the solvers saw (diffusers and we both resize to max_res=1024 first)
    res: dict = {"size": [size, size], "members": e, "runs": {}}
    times: dict[str, list[float]] = {"agdepth": [], **{k: [] for k in DIFFUSERS_SETTINGS}}
    sols: dict = {}
    ensemble_depth(d[:2, :, :32, :32])  # warm-up (lazy torch init)
    for _ in range(repeats):
        for name, kw in DIFFUSERS_SETTINGS.items():  # interleaved: each diffusers run followed by ours
            out, s, t, dt, info = run_diffusers(d, **kw)
            times[name].append(dt)
            sols[name] = (out, s, t, info)
            t0 = time.perf_counter()
            out_a, _ = ensemble_depth(d)
            times["agdepth"].append(time.perf_counter() - t0)
            sols["agdepth"] = (out_a, None, None, {})
        print(f"  {size}px: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    s_a, t_a = solve_alignment(d)
    f_a = float(ensemble_objective(d, s_a, t_a))
    out_a = sols["agdepth"][0]
    res["agdepth"] = {"time_s_median": statistics.median(times["agdepth"]), "times_s": times["agdepth"],
                      "objective_unit": f_a, "output_rmse_vs_gt": fit_rmse(out_a, g)}
    for name in DIFFUSERS_SETTINGS:
        out, s, t, info = sols[name]
        m = reduced(d, s, t)
        lo, r = m.min(), m.max() - m.min()
        entry = {
            "time_s_median": statistics.median(times[name]), "times_s": times[name],
            "bfgs_iterations": info["nit"], "objective_evaluations": info["nfev"],
            "objective_raw": float(ensemble_objective(d, s, t)),
            "objective_unit": float(ensemble_objective(d, s / r, (t - lo) / r)),
            "agdepth_objective_raw_in_this_gauge": float(ensemble_objective(d, s_a.double() * r,
                                                                           t_a.double() * r + lo)),
            "output_rmse_vs_gt": fit_rmse(out, g),
            "mean_abs_diff_to_agdepth": float((out - out_a).abs().mean()),
        }
        entry["speed_ratio"] = entry["time_s_median"] / res["agdepth"]["time_s_median"]
        res["runs"][name] = entry
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[768, 384], help="square image sides")
    ap.add_argument("--members", type=int, default=10, help="ensemble size E (the paper: 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both implementations)")
    ap.add_argument("--json", type=Path, help="write results as JSON here")
    ap.add_argument("--md", type=Path, help="write a markdown summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    load_before = loadavg()
    results = []
    for size in args.sizes:
        results.append(bench_size(size, args.members, args.repeats))
    report = {
        "command": "python benchmarks/bench_ensemble.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
                    "torch_threads": torch.get_num_threads(), "loadavg_before": load_before,
                    "loadavg_after": loadavg()},
        "versions": package_versions(("torch", "diffusers", "scipy", "numpy")),
        "repeats": args.repeats,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Test-time ensembling: agdepth.ensemble vs diffusers ensemble_depth", "",
        *report_header(report), "",
        f"**Shared CPU:** a training run was using the same 2 cores during this benchmark (load average "
        f"{m['loadavg_before']} before, {m['loadavg_after']} after), so absolute times are inflated and noisy; the "
        "ratio is what matters: both implementations ran in one process, interleaved, on identical members.", "",
        f"Members: procedural indoor depth, E members each an affine map of it plus a smooth field and pixel noise, "
        f"clipped to [0, 1]; median reduction, lambda 0.02, max_res 1024. Times: wall-clock median of "
        f"{report['repeats']} repeats (full `ensemble_depth` call), torch threads {m['torch_threads']} for both "
        "(2-thread runs were erratic on the shared CPU, diffusers' up to 100x slower). Objectives: "
        "`ensemble_objective` (float64); *unit* = solution in the unit-range gauge agdepth returns (same "
        "ensembled output), *raw* = diffusers at its own parameters vs agdepth's solution moved onto diffusers' "
        "[min m, max m]. Output error: RMSE vs the ground-truth map after a least-squares affine fit.", "",
        "| size | E | solver | time (s) | speed-up of agdepth | objective (unit) | objective (raw, diffusers gauge) | "
        "output RMSE vs GT | mean abs diff to agdepth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        size, e, a = f"{r['size'][0]}x{r['size'][1]}", r["members"], r["agdepth"]
        lines.append(f"| {size} | {e} | agdepth | {a['time_s_median']:.2f} | - | {a['objective_unit']:.5f} | "
                     f"see rows below | {a['output_rmse_vs_gt']:.5f} | 0 |")
        for name, x in r["runs"].items():
            lines.append(
                f"| {size} | {e} | {name} (BFGS {x['bfgs_iterations']} it, {x['objective_evaluations']} evals) | "
                f"{x['time_s_median']:.2f} | **{x['speed_ratio']:.1f}x** | {x['objective_unit']:.5f} | "
                f"{x['objective_raw']:.5f} (agdepth: {x['agdepth_objective_raw_in_this_gauge']:.5f}) | "
                f"{x['output_rmse_vs_gt']:.5f} | {x['mean_abs_diff_to_agdepth']:.4f} |")
    lines += [
        "", "Notes:",
        "- diffusers' BFGS uses finite differences of a float32 objective and usually stops with \"precision loss\" "
        "after a few iterations: max_iter=50 costs an order of magnitude more time and still ends well above "
        "agdepth's objective.",
        "- The raw objective has no minimiser once the members disagree by more than lambda in total (it decreases "
        "towards lambda as every member is shrunk to a constant); agdepth minimises it over unit-range "
        "representatives, which fixes the ensembled output. See the agdepth/ensemble.py docstring.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
