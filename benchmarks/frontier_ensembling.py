"""The frontier's ensemble rows under the new default ensembling (least squares) and the previous one (L-BFGS).

    python benchmarks/frontier_ensembling.py \
        --json benchmarks/results/frontier_ensembling.json --md benchmarks/results/frontier_ensembling.md

``depth-bench frontier``'s own measurement (:func:`agdepth.bench.frontier.run_frontier`: the procedural unseen domains
scored by ``evaluate_on_domains``, latency = the pipeline's ``timings["total"]`` of one 128² image, median of the
latency repeats after a warm-up) on a few of its settings, once per ensembling method: the pipeline is wrapped so that
every call of it gets ``ensembling_kwargs={"method": METHOD}`` (the frontier passes none, so its recorded rows used
the package default of the day). Both methods share one loaded model. ``run_frontier`` always adds the checkpoint's
default setting (1x1 trailing for the bundled model): with one member nothing is ensembled, so its rows are the
no-ensemble reference and equal for both methods.

The committed ``bench_frontier.json`` (recorded when L-BFGS of diffusers' objective was the default) is listed for
the same settings as the "recorded before" reference: its accuracy should equal the ``lbfgs`` rows here, its latency
only up to run-to-run (and machine-load) differences.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from agdepth import default_checkpoint
from agdepth.bench.frontier import METRICS, Setting, run_frontier
from agdepth.bench.report import publish_report, report_meta
from agdepth.ensemble import DEFAULT_METHOD
from agdepth.runtime import DepthPipeline

METHODS = ("least_squares", "lbfgs")  # the new default, the previous default
PREVIOUS = "lbfgs"
DEFAULT_SETTINGS = "1x1,1x5,1x10,4x5,4x10"
RECORDED = Path(__file__).resolve().parent / "results" / "bench_frontier.json"


class MethodPipeline(DepthPipeline):
    """A :class:`DepthPipeline` whose every call ensembles with ``method`` (other ensembling kwargs pass through)."""

    def __init__(self, backend: Any, method: str) -> None:
        super().__init__(backend)
        self.method = method

    def __call__(self, *args: Any, ensembling_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return super().__call__(*args, ensembling_kwargs={**(ensembling_kwargs or {}), "method": self.method},
                                **kwargs)


def parse_settings(text: str, spacing: str) -> list[Setting]:
    out = []
    for item in (v.strip() for v in text.split(",") if v.strip()):
        steps, ens = item.lower().split("x")
        out.append(Setting(int(steps), int(ens), spacing))
    return out


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"setting": row["setting"], "latency_s": row["latency_s"],
            "ensemble_s": row.get("timings", {}).get("ensemble", 0.0), "mean": row["mean"],
            "metrics": row["metrics"]}


def _pct(v: float, digits: int = 2) -> str:
    return f"{100 * v:.{digits}f}" if v is not None and math.isfinite(v) else "n/a"


def _f1(v: float | None) -> str:
    return f"{v:.3f}" if v is not None and math.isfinite(v) else "n/a"


def _signed(v: float, scale: float, digits: int) -> str:
    return f"{scale * v:+.{digits}f}" if math.isfinite(v) else "n/a"


def _sci(v: float) -> str:
    return f"{v:.1e}" if not math.isnan(v) else "n/a (other count, seed or methods)"


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _difference(report: dict[str, Any]) -> list[str]:
    doms = report["settings"]["domains"]
    lines = ["", "## least_squares − lbfgs", "",
             "Differences per setting (AbsRel and δ1 in percentage points; negative AbsRel = the new default is "
             "more accurate).", "",
             "| setting | Δ AbsRel pp | Δ δ1 pp | Δ edge F1 | Δ latency ms | "
             + " | ".join(f"{d} Δ AbsRel pp" for d in doms) + " |",
             "|---|---|---|---|---|" + "---|" * len(doms)]
    for label, d in report["difference"].items():
        cells = [_signed(d["mean"]["abs_rel"], 100, 2), _signed(d["mean"]["delta1"], 100, 2),
                 _signed(d["mean"]["edge_f1"], 1, 3), _signed(d["latency_s"], 1000, 1)]
        cells += [_signed(d["metrics"][dom]["abs_rel"], 100, 2) for dom in doms]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    st = report["settings"]
    doms = st["domains"]
    rows = report["rows"]
    lines = [
        f"The bundled model ({st['checkpoint']}), `depth-bench frontier`'s measurement (`run_frontier`) on "
        f"{', '.join(doms)} ({st['count']} test scenes each, {st['size'][0]}×{st['size'][1]}, seed {st['seed']}); "
        f"latency: one 128² image, median of {st['latency_repeats']} after a warm-up, on {st['device']} "
        f"(torch threads: {st['torch_threads']}). Ensembling: `least_squares` (the default now) or `lbfgs` "
        "(diffusers' objective solved exactly, the previous default), passed as `ensembling_kwargs={\"method\": …}` "
        "to every pipeline call. AbsRel, δ1 and edge F1 are means over the domains (AbsRel and δ1 in %); "
        "ensemble ms is the pipeline's ensembling stage within the latency. With one member nothing is ensembled "
        "(the 1x1 rows: the no-ensemble reference).", "",
        "| setting | method | AbsRel % | δ1 % | edge F1 | latency ms | ensemble ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in st["settings"]:
        for m in st["methods"]:
            r = rows[label][m]
            lines.append(f"| {label} | {m}{' (default)' if m == DEFAULT_METHOD else ''} | "
                         f"{_pct(r['mean']['abs_rel'])} | {_pct(r['mean']['delta1'], 1)} | "
                         f"{_f1(r['mean']['edge_f1'])} | {1000 * r['latency_s']:.1f} | "
                         f"{1000 * r['ensemble_s']:.1f} |")
    if "difference" in report:
        lines += _difference(report)
    rec = report.get("recorded")
    if rec:
        lines += ["", "## Recorded before", "",
                  f"`{rec['path']}` (command `{rec['command']}`, {rec['date']}; ensembling then: L-BFGS of "
                  "diffusers' objective, the package default of the day), the same settings; the last column is the "
                  "largest absolute difference of any per-domain metric (AbsRel, δ1, edge F1) from the `lbfgs` "
                  "row measured here.", "",
                  "| setting | AbsRel % | δ1 % | edge F1 | latency ms | max abs diff vs lbfgs now |",
                  "|---|---|---|---|---|---|"]
        for label in st["settings"]:
            r = rec["rows"].get(label)
            if r is None:
                lines.append(f"| {label} | not recorded | | | | |")
                continue
            lines.append(f"| {label} | {_pct(_num(r['mean']['abs_rel']))} | {_pct(_num(r['mean']['delta1']), 1)} | "
                         f"{_f1(_num(r['mean']['edge_f1']))} | {1000 * r['latency_s']:.1f} | "
                         f"{_sci(r['max_abs_diff_vs_lbfgs'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help="STEPSxENSEMBLE, comma-separated")
    ap.add_argument("--spacing", default="trailing", help="timestep spacing of every setting")
    ap.add_argument("--methods", default=",".join(METHODS), help="ensembling methods, comma-separated")
    ap.add_argument("--count", type=int, default=20, help="test scenes per unseen procedural domain")
    ap.add_argument("--latency-repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as depth-bench)")
    ap.add_argument("--recorded", type=Path, default=RECORDED, help="the frontier report recorded before")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()

    meta = report_meta("python benchmarks/frontier_ensembling.py " + shlex.join(sys.argv[1:]))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or default_checkpoint()
    backend = DepthPipeline.from_checkpoint(ckpt).backend
    settings = parse_settings(args.settings, args.spacing)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs: dict[str, dict[str, Any]] = {}
    for m in methods:
        print(f"method {m} ...", flush=True)
        runs[m] = run_frontier(MethodPipeline(backend, m), settings, count=args.count, seed=args.seed,
                               latency_repeats=args.latency_repeats, progress=True,
                               model=str(args.checkpoint or "agdepth/weights/tiny"))  # no machine paths
    ordered = sorted(runs[methods[0]]["rows"], key=lambda r: (r["spacing"], r["steps"], r["ensemble"]))
    labels = list(dict.fromkeys(r["setting"] for r in ordered))  # with the default run_frontier adds
    rows = {lab: {m: _summary(next(r for r in runs[m]["rows"] if r["setting"] == lab)) for m in methods}
            for lab in labels}
    first = runs[methods[0]]
    report: dict[str, Any] = {
        **meta,
        "settings": {"checkpoint": str(ckpt.name if args.checkpoint is None else ckpt), "count": args.count,
                     "size": first["size"], "domains": first["domains"], "seed": args.seed,
                     "latency_repeats": args.latency_repeats, "device": first["device"],
                     "processing_resolution": first["processing_resolution"], "settings": labels,
                     "methods": methods, "default_method": DEFAULT_METHOD,
                     "torch_threads": torch.get_num_threads()},
        "rows": rows,
        "frontier_runs": runs,
    }
    if DEFAULT_METHOD in methods and PREVIOUS in methods:
        report["difference"] = {
            lab: {"latency_s": rows[lab][DEFAULT_METHOD]["latency_s"] - rows[lab][PREVIOUS]["latency_s"],
                  "mean": {k: rows[lab][DEFAULT_METHOD]["mean"][k] - rows[lab][PREVIOUS]["mean"][k] for k in METRICS},
                  "metrics": {d: {k: rows[lab][DEFAULT_METHOD]["metrics"][d][k] - rows[lab][PREVIOUS]["metrics"][d][k]
                                  for k in METRICS} for d in first["domains"]}}
            for lab in labels}
    if args.recorded is not None and args.recorded.is_file():
        old = json.loads(args.recorded.read_text())
        by = {r["setting"]: r for r in old["rows"]}
        rec_rows = {}
        for lab in labels:
            if lab not in by:
                continue
            r = by[lab]
            diff = float("nan")
            if PREVIOUS in methods and old.get("count_per_domain") == args.count and old.get("seed") == args.seed:
                now = rows[lab][PREVIOUS]["metrics"]
                pairs = [(_num(r["metrics"][d][k]), now[d][k]) for d in first["domains"] for k in METRICS]
                diff = max((0.0 if math.isnan(a) and math.isnan(b) else abs(a - b) if math.isfinite(a - b) else math.inf
                            for a, b in pairs), default=0.0)
            rec_rows[lab] = {"setting": lab, "latency_s": r["latency_s"], "mean": r["mean"], "metrics": r["metrics"],
                             "max_abs_diff_vs_lbfgs": diff}
        try:
            path = str(args.recorded.resolve().relative_to(Path.cwd()))
        except ValueError:
            path = str(args.recorded)
        report["recorded"] = {"path": path, "command": old.get("command"), "date": old.get("date"),
                              "count_per_domain": old.get("count_per_domain"), "rows": rec_rows}
    text = publish_report("The frontier's ensemble rows: least-squares ensembling against L-BFGS", report,
                             markdown(report), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
