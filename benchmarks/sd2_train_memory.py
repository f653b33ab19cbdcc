"""GPU memory and step time of the sd2 preset's U-Net stage, per mixed-precision / gradient-checkpointing setting.

SD2's architecture with random weights (same cost as the real checkpoint), the project's own UNetStage loss (eq. 8:
L_v + L_BerHu + L_GM + L_feature through the frozen VAE decoder and the depth autoencoder), Adam with fp32 master
weights. One micro-batch per step; the paper's batch of 32 is reached by gradient accumulation, which does not add
memory. Needs a CUDA device.

    python benchmarks/sd2_train_memory.py --height 480 --width 640 --batch-size 2 --steps 5 \
        --json benchmarks/results/sd2_train_memory.json --md benchmarks/results/sd2_train_memory.md
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agdepth.data.procedural import render_scene
from agdepth.depth_autoencoder import DepthAutoencoder
from agdepth.training.config import load_config
from agdepth.training.stages import LossModule, UNetStage
from agdepth.training.trainer import _autocast, step_generator

SETTINGS = [
    # name, mixed_precision, gradient_checkpointing, loss weights
    ("fp32", "fp32", False, "full"),
    ("bf16", "bf16", False, "full"),
    ("bf16 + checkpointing", "bf16", True, "full"),
    ("fp16 + checkpointing", "fp16", True, "full"),
    ("bf16 + checkpointing, L_v only (Marigold)", "bf16", True, "baseline"),
]


def make_batch(h: int, w: int, n: int, device: torch.device) -> dict:
    scenes = [render_scene("indoor", i, size=(h, w)) for i in range(n)]
    rgb = torch.from_numpy(np.stack([s.rgb for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    depth = torch.from_numpy(np.stack([s.depth for s in scenes]))[:, None]
    valid = torch.from_numpy(np.stack([s.valid for s in scenes]))[:, None]
    return {"rgb": rgb.to(device), "depth": depth.to(device), "valid": valid.to(device)}


def run_setting(name: str, mp: str, ckpt: bool, losses: str, args: argparse.Namespace, out_dir: Path) -> dict:
    from agdepth.training.losses import LossWeights

    lw = LossWeights.preset(losses)
    cfg = load_config("sd2", ["pretrained=random", f"stages.unet.mixed_precision={mp}",
                              f"stages.unet.gradient_checkpointing={str(ckpt).lower()}",
                              f"stages.unet.batch_size={args.batch_size}",
                              f"stages.unet.losses={{v: {lw.v}, berhu: {lw.berhu}, gm: {lw.gm}, "
                              f"feature: {lw.feature}}}"])
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    stage = UNetStage(cfg, out_dir, device)
    module = LossModule(stage)
    opt = torch.optim.Adam(stage.trainable.parameters(), lr=3e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=mp == "fp16")
    batch = make_batch(args.height, args.width, args.batch_size, device)
    times, losses_seen = [], []
    result = {"setting": name, "mixed_precision": mp, "gradient_checkpointing": ckpt, "losses": losses}
    try:
        for i in range(args.steps):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with _autocast(device, mp):
                total, _ = module(batch, step_generator(0, i, 0))
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses_seen.append(float(total.detach()))
        result.update(
            peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30,
            peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
            step_s_median=float(np.median(times[1:] if len(times) > 1 else times)),
            losses_finite=bool(np.isfinite(losses_seen).all()),
        )
    except torch.cuda.OutOfMemoryError:
        result.update(oom=True, peak_allocated_gib=torch.cuda.max_memory_allocated() / 2**30)
    del stage, module, opt, batch
    torch.cuda.empty_cache()
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated setting indices to run (default all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sd2_train_memory needs a CUDA device")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        # a randomly initialised depth autoencoder of the sd2 config's size: memory does not depend on its training
        ae_cfg = load_config("sd2").autoencoder
        DepthAutoencoder(**ae_cfg).save_pretrained(out_dir / "depth_autoencoder")
        picks = [int(i) for i in args.only.split(",")] if args.only else range(len(SETTINGS))
        results = [run_setting(*SETTINGS[i], args, out_dir) for i in picks]
    report = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(),
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "image_size": [args.height, args.width],
        "batch_size": args.batch_size,
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# sd2 preset, U-Net stage: GPU memory per training setting ({report['gpu']})",
        "",
        f"Measured {report['date']} with `{report['command']}`; torch {report['torch']}. SD2 architecture with random "
        f"weights, image {args.height}×{args.width}, micro-batch {args.batch_size}, Adam (fp32 master weights), "
        "full eq. 8 loss unless noted. Batch 32 comes from gradient accumulation at no extra memory.",
        "",
        "| setting | peak allocated (GiB) | peak reserved (GiB) | step (s, median) | finite |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("oom"):
            lines.append(f"| {r['setting']} | OOM | | | |")
        else:
            lines.append(f"| {r['setting']} | {r['peak_allocated_gib']:.1f} | {r['peak_reserved_gib']:.1f} | "
                         f"{r['step_s_median']:.3f} | {r['losses_finite']} |")
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
