"""The bundled tiny model: small, loadable by diffusers itself, and predicting depth that follows the ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel

import agdepth
from agdepth.data.procedural import render_scene
from agdepth.runtime import DepthPipeline


def test_bundled_checkpoint_is_small_and_loads_with_diffusers() -> None:
    root = agdepth.default_checkpoint()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size <= 25 * 2**20, f"bundled model is {size / 2**20:.1f} MiB"
    assert not any(root.rglob("*.bin")) and not any(root.rglob("*.pt")), "safetensors only"
    unet = UNet2DConditionModel.from_pretrained(root / "unet", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(root / "vae", use_safetensors=True)
    assert unet.config.in_channels == 8 and unet.config.out_channels == vae.config.latent_channels == 4
    index = json.loads((root / "model_index.json").read_text())
    # default inference settings live in the checkpoint, as in Marigold v1.1
    assert index["default_denoising_steps"] >= 1 and index["default_processing_resolution"] > 0


# two training and both unseen domains; the bundled model's median correlation with the ground truth on these 8
# scenes: indoor 0.62, street 0.93, forest 0.76, tabletop 0.77 (a flat or layout-only prediction falls well below 0.5)
@pytest.mark.parametrize("domain", ["indoor", "street", "forest", "tabletop"])
def test_bundled_model_predicts_depth_correlated_with_ground_truth(domain: str) -> None:
    pipe = DepthPipeline.from_checkpoint(agdepth.default_checkpoint())
    scenes = [render_scene(domain, i, size=(128, 128), split="test") for i in range(8)]
    out = pipe([s.rgb for s in scenes], seed=0, show_progress=False)
    assert out.depth.shape == (8, 128, 128) and out.depth.dtype == np.float32
    assert np.isfinite(out.depth).all() and out.depth.min() >= 0 and out.depth.max() <= 1
    corr = [np.corrcoef(p[s.valid], s.depth[s.valid])[0, 1] for p, s in zip(out.depth, scenes, strict=True)]
    assert np.median(corr) > 0.5, corr
