"""Diagnose a checkpoint on the procedural domains: AbsRel at 1/4/20 trailing steps, and the VAE oracle (ground-truth
depth through the checkpoint's VAE: the ceiling any U-Net can reach). Writes a PNG strip per domain (rgb / gt / 1-step).

    python benchmarks/diagnose_checkpoint.py runs/tiny/checkpoint [OUT_DIR]
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from agdepth.data.procedural import render_scene
from agdepth.depth_norm import mean_of_channels, normalize_depth, stack_to_rgb
from agdepth.metrics import evaluate
from agdepth.runtime import DepthPipeline

out_dir = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(".")
pipe = DepthPipeline.from_checkpoint(sys.argv[1])
vae = pipe.backend.vae
for dom in ["indoor", "street", "forest", "tabletop"]:
    sc = [render_scene(dom, i, size=(128, 128), split="test") for i in range(8)]
    res = {}
    for steps, spacing in [(1, "trailing"), (4, "trailing"), (20, "trailing")]:
        out = pipe([s.rgb for s in sc], steps=steps, ensemble=1, timestep_spacing=spacing, seed=0).depth
        res[steps] = np.mean([evaluate(p, s.depth, s.valid)["abs_rel"] for p, s in zip(out, sc, strict=True)])
    # VAE oracle: GT normalised depth through the VAE
    d = torch.from_numpy(np.stack([s.depth for s in sc]))[:, None]
    v = torch.from_numpy(np.stack([s.valid for s in sc]))[:, None]
    with torch.no_grad():
        n = normalize_depth(d, v)
        rec = mean_of_channels(vae.decode(vae.encode(stack_to_rgb(n)).latent_dist.mean).sample)
    orc = np.mean(
        [evaluate(((r[0] + 1) / 2).numpy(), s.depth, s.valid)["abs_rel"] for r, s in zip(rec, sc, strict=True)]
    )
    print(dom, {k: round(float(v), 3) for k, v in res.items()}, "vae-oracle", round(float(orc), 3), flush=True)
    if dom in ("indoor", "forest"):
        out = pipe([s.rgb for s in sc[:4]], steps=1, ensemble=1, timestep_spacing="trailing", seed=0).depth
        row = np.concatenate(
            [
                np.concatenate([s.rgb.mean(-1) / 255 for s in sc[:4]], 1),
                np.concatenate([s.depth / s.depth.max() for s in sc[:4]], 1),
                np.concatenate(list(out), 1),
            ],
            0,
        )
        Image.fromarray((row * 255).astype(np.uint8)).resize((1024, 768)).save(out_dir / f"diag_{dom}.png")
