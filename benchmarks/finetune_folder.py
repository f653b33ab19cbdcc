"""Fine-tuning the bundled model on a folder of RGB-D pairs: the worked example of docs/training.md, run end to end.

    python benchmarks/finetune_folder.py --work /tmp/ft --json benchmarks/results/finetune_folder.json \\
        --md benchmarks/results/finetune_folder.md

Every step is the documented command line, run as a subprocess and timed:

1. ``depth-data procedural tabletop --count N`` writes the "new domain" (train-split scenes; the bundled model never
   saw tabletop) as ``rgb/`` + ``depth/`` (16-bit PNG, mm); ``depth-data procedural forest --split test`` writes the
   other unseen domain.
2. ``depth-train finetune --data .../tabletop --depth-scale 0.001`` fine-tunes the bundled model (10 % of the pairs
   held out by name hash; the depth autoencoder pretrained first, since the bundled model ships none).
3. ``depth-eval run --dataset folder`` scores the bundled model and the fine-tuned one on the held-out tabletop pairs
   (``--filename-list`` = the split the run wrote) and on forest, both with the full VAE (the fine-tuned checkpoint
   has no light VAE), the model's default settings, seed 0.

Acceptance: tabletop held-out AbsRel at least 20 % lower, forest AbsRel at most 10 % higher, the fine-tune (both
stages) within 15 minutes on ≤ 1000 pairs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agdepth.bench.report import publish_report, report_meta


def run(cmd: list[str]) -> float:
    """Run one documented command line; its wall time in seconds."""
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def scores(folder: Path) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    return {"abs_rel": summary["metrics"]["abs_rel"], "delta1": summary["metrics"]["delta1"],
            "scored": summary["count"]["scored"], "total": summary["count"]["total"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="Scratch folder for the data, the run and the scores.")
    ap.add_argument("--pairs", type=int, default=1000, help="Tabletop pairs written (train + held out).")
    ap.add_argument("--other", type=int, default=100, help="Forest test scenes.")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--finetune-args", default="", help="Extra depth-train finetune arguments (e.g. --set ...).")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/finetune_folder.py " + shlex.join(sys.argv[1:]), ("torch", "numpy"))
    bindir = Path(sys.executable).parent
    data, run_dir, evals = args.work / "data", args.work / "run", args.work / "eval"
    seconds: dict[str, float] = {}
    seconds["write data"] = run([str(bindir / "depth-data"), "procedural", "tabletop", "--count", str(args.pairs),
                                 "--size", str(args.size), "--out", str(data / "tabletop"), "--no-progress"])
    seconds["write data"] += run([str(bindir / "depth-data"), "procedural", "forest", "--split", "test", "--count",
                                  str(args.other), "--size", str(args.size), "--out", str(data / "forest"),
                                  "--no-progress"])
    seconds["fine-tune"] = run([str(bindir / "depth-train"), "finetune", "--data", str(data / "tabletop"),
                                "--depth-scale", "0.001", "--out", str(run_dir), "--no-progress",
                                *shlex.split(args.finetune_args)])
    heldout = run_dir / "data_split" / "tabletop" / "heldout.txt"
    trained = sum(1 for _ in (run_dir / "data_split" / "tabletop" / "train.txt").open())
    rows: dict[str, dict[str, Any]] = {}
    for dom in ("tabletop", "forest"):
        for label, model in (("bundled", []), ("fine-tuned", ["--checkpoint", str(run_dir / "checkpoint")])):
            out = evals / dom / label
            split = ["--filename-list", str(heldout)] if dom == "tabletop" else []
            seconds[f"eval {dom} {label}"] = run(
                [str(bindir / "depth-eval"), "run", "--dataset", "folder", "--data-root", str(data / dom), *split,
                 "--depth-scale", "0.001", "--vae", "full", *model, "--label", label, "--out", str(out),
                 "--overwrite", "--no-progress"])
            rows.setdefault(dom, {})[label] = scores(out)
    change = {dom: r["fine-tuned"]["abs_rel"] / r["bundled"]["abs_rel"] - 1 for dom, r in rows.items()}
    met = {"tabletop held-out AbsRel >= 20 % lower": change["tabletop"] <= -0.20,
           "forest AbsRel <= 10 % higher": change["forest"] <= 0.10,
           "fine-tune <= 15 min on <= 1000 pairs": seconds["fine-tune"] <= 900 and args.pairs <= 1000}
    log = [json.loads(line) for line in (run_dir / "logs" / "unet.jsonl").read_text().splitlines()]
    start = next(r for r in log if r["event"] == "start")
    report = {**meta, "settings": {k: v for k, v in vars(args).items() if k not in ("json", "md", "work")},
              "pairs_trained": trained, "pairs_held_out": sum(1 for _ in heldout.open()),
              "unet_stage": {k: start["config"]["stages"]["unet"][k] for k in ("iterations", "batch_size", "lr")},
              "seconds": seconds, "scores": rows, "abs_rel_change": change, "met": met}
    lines = [f"{args.pairs} tabletop pairs at {args.size}×{args.size} ({trained} trained on, "
             f"{report['pairs_held_out']} held out by name hash), {args.other} forest test scenes. Scores: "
             "`depth-eval --dataset folder` (least-squares scale and shift per image, the model's default processing "
             "resolution, 1 step, seed 0, full VAE for both models).", "",
             "| domain | model | AbsRel | δ1 | scored |", "|---|---|---|---|---|"]
    for dom, r in rows.items():
        for label, s in r.items():
            lines.append(f"| {dom} | {label} | {s['abs_rel']:.4f} | {s['delta1']:.3f} | {s['scored']}/{s['total']} |")
    lines += ["", "AbsRel change, fine-tuned over bundled: " + ", ".join(f"{d} {c:+.1%}" for d, c in change.items())
              + ".", "",
              f"Wall time: fine-tune {seconds['fine-tune'] / 60:.1f} min (depth autoencoder and U-Net stages; U-Net "
              f"{report['unet_stage']['iterations']} updates of {report['unet_stage']['batch_size']} at lr "
              f"{report['unet_stage']['lr']:g}), data {seconds['write data']:.0f} s.", "",
              "Commands, in order: see the `$` lines this script prints; they are those of docs/training.md.", "",
              "Acceptance: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()) + "."]
    print(publish_report("Fine-tuning the bundled model on a folder of RGB-D pairs", report, "\n".join(lines),
                         args.json, args.md))


if __name__ == "__main__":
    main()
