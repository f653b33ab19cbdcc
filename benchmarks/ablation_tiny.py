"""The paper's Table 3 in miniature: the U-Net stage with L_v only, + depth loss, + depth loss + depth autoencoder.

    python benchmarks/ablation_tiny.py --base runs/tiny --out runs/ablation \
        --json benchmarks/results/ablation_tiny.json --md benchmarks/results/ablation_tiny.md

Every variant trains the tiny preset's U-Net stage with the same budget (updates, batch, learning rate, data, seed)
on the same frozen VAE and depth autoencoder, copied from the recipe run ``--base``. ``--reuse-full`` takes the
recipe's own U-Net (``BASE/checkpoint``) as the full row instead of training it again (same config, same budget).
The variants are then scored on the procedural unseen domains by ``benchmarks/eval_tiny.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# eq. 8 weights per Table 3 row (agdepth.training.losses.LossWeights.preset)
VARIANTS = {
    "baseline": ("L_v", "{v: 1, berhu: 0, gm: 0, feature: 0}"),
    "depth_loss": ("L_v + L_depth", "{v: 1, berhu: 1, gm: 1, feature: 0}"),
    "full": ("L_v + L_depth + L_feature", "{v: 1, berhu: 1, gm: 1, feature: 1}"),
}


def train_variant(name: str, base: Path, out: Path, extra: list[str]) -> dict:
    run = out / name
    for sub in ("vae", "depth_autoencoder"):
        if not (run / sub).is_dir():
            shutil.copytree(base / sub, run / sub)
    cmd = [sys.executable, "-m", "agdepth.training.cli", "unet", "--config", "tiny", "--out", str(run), "--overwrite",
           "--no-progress", "--set", f"stages.unet.losses={VARIANTS[name][1]}",
           *[x for s in extra for x in ("--set", s)]]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    # recorded as the console script it is equivalent to (no interpreter path of this machine in the report)
    return {"command": " ".join(["depth-train", *cmd[3:]]), "seconds": time.perf_counter() - t0,
            "checkpoint": str(run / "checkpoint")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=Path("runs/tiny"), help="recipe run with vae/ and depth_autoencoder/")
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra depth-train --set, all variants")
    ap.add_argument("--reuse-full", action="store_true", help="the recipe's BASE/checkpoint is the full row")
    ap.add_argument("--settings", default="1x1:trailing,50x10:trailing")
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    a = ap.parse_args()
    runs = {}
    for name in VARIANTS:
        if name == "full" and a.reuse_full:
            runs[name] = {"command": "the recipe's U-Net stage (benchmarks/tiny_recipe.py train)",
                          "checkpoint": str(a.base / "checkpoint")}
            continue
        runs[name] = train_variant(name, a.base, a.out, a.extra)
        print(f"{name}: trained in {runs[name]['seconds'] / 60:.1f} min", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ablation_runs.json").write_text(json.dumps(runs, indent=2) + "\n")
    cmd = [sys.executable, str(HERE / "eval_tiny.py"), "--settings", a.settings, "--count", str(a.count),
           "--title", "Miniature Table 3 (tiny preset, equal U-Net budgets)"]
    for name, r in runs.items():
        cmd += ["--checkpoint", f"{VARIANTS[name][0]}={r['checkpoint']}"]
    if a.json:
        cmd += ["--json", str(a.json)]
    if a.md:
        cmd += ["--md", str(a.md)]
    subprocess.run(cmd, check=True)
    if a.json:  # keep how each row was trained next to its scores
        report = json.loads(a.json.read_text())
        report["command"] = "python benchmarks/ablation_tiny.py " + shlex.join(sys.argv[1:])
        report["training"] = runs
        a.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
