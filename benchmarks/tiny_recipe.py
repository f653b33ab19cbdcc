"""The bundled tiny model's recipe: train with the project's own commands, time it, bundle it, summarise it.

    python benchmarks/tiny_recipe.py train  --out runs/tiny           # depth-train all --config tiny, timed
    python benchmarks/tiny_recipe.py bundle --out runs/tiny --steps 1 --ensemble 1 --spacing trailing --res 128
    python benchmarks/tiny_recipe.py summary --out runs/tiny \
        --json benchmarks/results/tiny_recipe.json --md benchmarks/results/tiny_recipe.md

`bundle` copies OUT/checkpoint into agdepth/weights/tiny without the depth autoencoder (training only) and writes the
chosen default inference settings into its model_index.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.machine import machine_info, package_versions, report_header

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "agdepth" / "weights" / "tiny"
STAGES = ("vae", "autoencoder", "unet")


def train(out: Path, extra: list[str]) -> None:
    cmd = [sys.executable, "-m", "agdepth.training.cli", "all", "--config", "tiny", "--out", str(out), *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    shown = " ".join(["depth-train", *cmd[3:]])  # the console script it is equivalent to (no interpreter path)
    (out / "recipe_wall.json").write_text(json.dumps({"command": shown, "wall_seconds": wall}) + "\n")
    print(f"recipe finished in {wall / 60:.1f} min")


def bundle(out: Path, steps: int, ensemble: int, spacing: str, res: int) -> None:
    src = out / "checkpoint"
    if not (src / "model_index.json").is_file():
        sys.exit(f"{src} is not a checkpoint: run the recipe first")
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    shutil.copytree(src, BUNDLE, ignore=shutil.ignore_patterns("depth_autoencoder"))
    index = json.loads((BUNDLE / "model_index.json").read_text())
    entries = RuntimeDefaults(steps=steps, processing_resolution=res, ensemble_size=ensemble,
                              timestep_spacing=spacing).model_index_entries()
    section = entries.pop("agdepth")
    index.update(entries)  # existing keys: the index keeps its key order
    index["agdepth"].update(**section, depth_autoencoder=None)
    (BUNDLE / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    sched = BUNDLE / "scheduler" / "scheduler_config.json"
    cfg = json.loads(sched.read_text())
    cfg["timestep_spacing"] = spacing
    sched.write_text(json.dumps(cfg, indent=2) + "\n")
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"bundled {src} -> {BUNDLE.relative_to(ROOT)} ({size / 2**20:.1f} MiB)")


def _records(out: Path, stage: str) -> list[dict]:
    path = out / "logs" / f"{stage}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def summary(out: Path, json_path: Path | None, md_path: Path | None) -> None:
    wall = json.loads((out / "recipe_wall.json").read_text()) if (out / "recipe_wall.json").is_file() else {}
    stages = {}
    for st in STAGES:
        recs = _records(out, st)
        train = [r for r in recs if r["event"] == "train"]
        val = [r for r in recs if r["event"] == "val"]
        times = [r["time"] for r in recs if "time" in r]
        stages[st] = {
            "iterations": train[-1]["step"] if train else 0,
            "seconds": (max(times) - min(times)) if len(times) > 1 else None,
            "final_train": {k: v for k, v in (train[-1] if train else {}).items()
                            if k not in ("event", "stage", "time", "lr", "corrupt")},
            "final_validation": {k: v for k, v in (val[-1] if val else {}).items()
                                 if k not in ("event", "stage")},
        }
    if not wall:  # stages run as separate commands, back to back: the recipe's time is the sum of theirs
        wall = {"command": " && ".join(f"depth-train {st} --config tiny --out {out}" for st in STAGES),
                "wall_seconds": sum(s["seconds"] or 0 for s in stages.values()),
                "note": "sum of the three stages' wall times from their logs; the stages ran back to back"}
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file()) if BUNDLE.exists() else 0
    report = {"command": wall.get("command", "depth-train all --config tiny --out runs/tiny"),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "versions": package_versions(("torch", "diffusers", "numpy")),
              "recipe": wall, "stages": stages, "bundle_mib": size / 2**20}
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = ["# The bundled tiny model: training recipe", "", *report_header(report), "",
             "Config: `agdepth/configs/tiny.yaml`.",
             f"Whole recipe wall time: **{wall.get('wall_seconds', float('nan')) / 60:.1f} min**"
             + (f" ({wall['note']})" if wall.get("note") else "") + "; "
             + (f"bundle `agdepth/weights/tiny`: {report['bundle_mib']:.1f} MiB." if size else "not bundled."), "",
             "| stage | updates | wall (min, from the log) | final training loss terms | final validation |",
             "|---|---|---|---|---|"]
    for st, s in stages.items():
        tr = ", ".join(f"{k}={v:.4f}" for k, v in s["final_train"].items()
                       if isinstance(v, float) and k not in ("it_s",))
        va = ", ".join(f"{k}={v:.4f}" for k, v in s["final_validation"].items() if isinstance(v, float))
        secs = f"{s['seconds'] / 60:.1f}" if s["seconds"] else "?"
        lines.append(f"| {st} | {s['iterations']} | {secs} | {tr} | {va} |")
    text = "\n".join(lines) + "\n"
    if md_path:
        md_path.write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=("train", "bundle", "summary"))
    ap.add_argument("--out", type=Path, default=Path("runs/tiny"))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="passed to depth-train as --set")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--spacing", default="trailing")
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    a = ap.parse_args()
    if a.action == "train":
        train(a.out, [x for s in a.extra for x in ("--set", s)] + ["--no-progress"])
    elif a.action == "bundle":
        bundle(a.out, a.steps, a.ensemble, a.spacing, a.res)
    else:
        summary(a.out, a.json, a.md)


if __name__ == "__main__":
    main()
