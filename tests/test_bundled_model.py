"""The bundled tiny model: it is where default_checkpoint() says, loads with diffusers, and predicts real depth."""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import AutoencoderKL, UNet2DConditionModel

import agdepth
from agdepth.data.procedural import EVAL_DOMAINS, render_scene


def test_bundled_checkpoint_loads_with_diffusers_and_is_small() -> None:
    ckpt = agdepth.default_checkpoint()
    unet = UNet2DConditionModel.from_pretrained(ckpt, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(ckpt, subfolder="vae")
    assert unet.config.in_channels == 8 and vae.config.latent_channels == 4
    total = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
    assert total <= 25 * 2**20
    assert not [f for f in ckpt.rglob("*") if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]


@pytest.mark.parametrize("domain", EVAL_DOMAINS)
def test_bundled_model_depth_correlates_with_ground_truth(domain: str) -> None:
    from agdepth.runtime import DepthPipeline

    pipe = DepthPipeline.from_checkpoint(agdepth.default_checkpoint())
    scenes = [render_scene(domain, i, size=(128, 128), split="test") for i in range(4)]
    out = pipe([s.rgb for s in scenes], seed=0)  # the checkpoint's default settings
    assert out.depth.shape == (4, 128, 128)
    assert out.depth.min() >= 0 and out.depth.max() <= 1
    corr = [np.corrcoef(p[s.valid], s.depth[s.valid])[0, 1] for p, s in zip(out.depth, scenes, strict=True)]
    # affine-invariant depth: a good prediction is strongly, positively correlated with metric depth
    assert np.median(corr) > 0.7, corr
