"""Configs: the shipped presets load, overrides apply, mistakes are named, and the ablation is a config change."""

from __future__ import annotations

from pathlib import Path

import pytest

from agdepth.training.config import load_config


def test_shipped_presets_match_the_paper_recipe() -> None:
    sd2 = load_config("sd2")
    unet = sd2.stage("unet")
    assert (unet.lr, tuple(unet.betas), unet.iterations) == (3e-5, (0.9, 0.999), 18000)
    assert unet.batch_size * unet.grad_accum == 32
    assert [(s.type, s.probability) for s in sd2.data.sources] == [("hypersim", 0.9), ("vkitti", 0.1)]
    assert sd2.data.hflip
    assert vars(unet.losses) == {"v": 1.0, "berhu": 1.0, "gm": 1.0, "feature": 1.0}
    tiny = load_config("tiny")
    assert list(tiny.stages) == ["vae", "autoencoder", "unet", "distill_vae"]  # distill_vae runs on its own


def test_overrides_including_list_indices() -> None:
    cfg = load_config("sd2", ["stages.unet.iterations=5", "data.sources.1.root=/data/vkitti", "seed=7"])
    assert cfg.stage("unet").iterations == 5 and cfg.data.sources[1].root == "/data/vkitti" and cfg.seed == 7


@pytest.mark.parametrize(
    "row,weights",
    [
        ("baseline", ["stages.unet.losses={v: 1, berhu: 0, gm: 0, feature: 0}"]),
        ("depth_loss", ["stages.unet.losses.feature=0"]),
        ("full", []),
    ],
)
def test_table3_ablation_rows_are_config_changes(row: str, weights: list[str]) -> None:
    from agdepth.training.losses import LossWeights

    assert load_config("tiny", weights).stage("unet").losses == LossWeights.preset(row)


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stages.unet.*lrr"):
        load_config("tiny", ["stages.unet.lrr=1"])
    with pytest.raises(ValueError, match="unknown stage 'decoder'"):
        load_config("tiny", ["stages.decoder={}"])
    with pytest.raises(FileNotFoundError, match="nosuch"):
        load_config("nosuch")
    with pytest.raises(ValueError, match="sd2 preset uses SD2's pretrained VAE"):
        load_config("sd2", ["stages.vae={}"])
    with pytest.raises(ValueError, match="not an index"):
        load_config("sd2", ["data.sources.5.root=x"])


def test_numbers_without_a_dot_are_numbers() -> None:
    # YAML 1.1 reads 2e-3 as a string; an optimiser would fail much later with a confusing error
    cfg = load_config("tiny", ["stages.unet.lr=2e-3", "stages.unet.iterations=10"])
    assert cfg.stage("unet").lr == 0.002 and isinstance(cfg.stage("unet").lr, float)
    with pytest.raises(ValueError, match="stages.unet.lr must be a number"):
        load_config("tiny", ["stages.unet.lr=fast"])
