"""Train recipe variants of the tiny preset side by side and score each on the unseen procedural domains.

    python benchmarks/recipe_search.py --out runs/search --jobs 4 \
        --variant base= \
        --variant 'pitch45=--set data.sources.0.pitch_deg=[-45,5]' \
        --json benchmarks/results/recipe_search.json --md benchmarks/results/recipe_search.md

Each variant is ``depth-train all --config tiny`` with its own ``--set`` overrides (after ``--common``), in its own
run directory, followed by ``benchmarks/eval_tiny.py`` on its checkpoint. Variants run in parallel processes
(``--jobs``), each limited to ``--threads`` CPU threads; on a CUDA machine they share the GPU. Results are written
after every finished variant, so a run cut short still reports what finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from agdepth.data.procedural import EVAL_DOMAINS
from agdepth.machine import machine_info, package_versions, report_header

HERE = Path(__file__).resolve().parent


def run_variant(label: str, overrides: list[str], args: argparse.Namespace) -> dict:
    run_dir = args.out / label
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    train = [sys.executable, "-m", "agdepth.training.cli", "all", "--config", args.config, "--out", str(run_dir),
             "--no-progress", *shlex.split(args.common), *overrides]
    evaluate = [sys.executable, str(HERE / "eval_tiny.py"), "--checkpoint", f"{label}={run_dir / 'checkpoint'}",
                "--settings", args.settings, "--count", str(args.count), "--no-baseline",
                "--json", str(args.out / f"{label}.eval.json")]
    row: dict = {"label": label, "overrides": overrides}
    with open(args.out / f"{label}.log", "w") as log:
        for step, cmd in (("train", train), ("eval", evaluate)):
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            row[f"{step}_seconds"] = time.perf_counter() - t0
            if rc != 0:
                row["error"] = f"{step} exited {rc} (see {label}.log)"
                return row
    report = json.loads((args.out / f"{label}.eval.json").read_text())
    row["results"] = {r["setting"]: r["metrics"] for r in report["rows"]}
    return row


def write_reports(rows: list[dict], args: argparse.Namespace) -> None:
    report = {
        "command": "python benchmarks/recipe_search.py " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(("torch", "diffusers", "numpy")),
        "count_per_domain": args.count,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Tiny-recipe variants on the unseen domains ({args.count} test scenes each)", "",
             *report_header(report), "",
             "AbsRel / δ1 in %, least-squares aligned as in `eval_tiny.py`; train = wall minutes of all three stages "
             f"({args.jobs} variants at a time, so times are comparable only within this run).", "",
             "| variant | overrides | train min | setting | " + " | ".join(f"{d} AbsRel | {d} δ1"
                                                                      for d in EVAL_DOMAINS) + " |",
             "|" + "---|" * (4 + 2 * len(EVAL_DOMAINS))]
    for r in rows:
        sets = " ".join(r["overrides"]) or "(the recipe)"
        if "error" in r:
            lines.append(f"| {r['label']} | `{sets}` | - | {r['error']} |" + " |" * (2 * len(EVAL_DOMAINS)))
            continue
        for setting, m in r["results"].items():
            cells = [f"{100 * m[d][k]:.1f}" for d in EVAL_DOMAINS for k in ("abs_rel", "delta1")]
            lines.append(f"| {r['label']} | `{sets}` | {r['train_seconds'] / 60:.1f} | {setting} | "
                         + " | ".join(cells) + " |")
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True,
                    help="LABEL=OVERRIDES, e.g. 'crop=--set stages.unet.random_crop=0.5' (repeatable)")
    ap.add_argument("--common", default="", help="overrides given to every variant before its own")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--out", type=Path, required=True, help="parent of the variants' run directories")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per variant")
    ap.add_argument("--settings", default="1x1:trailing@64,1x1:trailing@96")
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    variants = []
    for item in args.variant:
        label, sep, rest = item.partition("=")
        if not sep or not label.replace("_", "").replace("-", "").isalnum():
            ap.error(f"--variant needs LABEL=OVERRIDES with a plain label, got {item!r}")
        variants.append((label, shlex.split(rest)))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_variant, label, sets, args): label for label, sets in variants}
        for fut in as_completed(futures):
            rows.append(fut.result())
            print(json.dumps(rows[-1]), flush=True)
            rows.sort(key=lambda r: [v[0] for v in variants].index(r["label"]))
            write_reports(rows, args)


if __name__ == "__main__":
    main()
