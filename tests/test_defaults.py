"""One defaults path: the same checkpoint denoises the same way on PyTorch and after export, with or without a
scheduler config, and a setting no file gives is assumed out loud, not silently."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth import default_checkpoint
from agdepth.artifacts.checkpoint import read_model_index, save_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, Manifest, export_checkpoint
from agdepth.models import TinyModelConfig, build_tiny_unet, build_tiny_vae, tiny_empty_text_embedding
from agdepth.runtime import DepthPipeline
from agdepth.training.config import config_from_dict, load_config


@pytest.fixture(scope="module")
def bare_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model without scheduler/scheduler_config.json and without a default step count."""
    ckpt = tmp_path_factory.mktemp("bare") / "ckpt"
    shutil.copytree(default_checkpoint(), ckpt)
    shutil.rmtree(ckpt / "scheduler")
    index = json.loads((ckpt / "model_index.json").read_text())
    index.pop("default_denoising_steps", None)
    (ckpt / "model_index.json").write_text(json.dumps(index))
    return ckpt


def test_no_scheduler_config_denoises_the_same_before_and_after_export(bare_checkpoint: Path, tmp_path: Path) -> None:
    export_checkpoint(bare_checkpoint, tmp_path / "e", ExportOptions(max_resolution=64), progress=lambda s: None)
    torch_pipe = DepthPipeline.from_checkpoint(bare_checkpoint)
    onnx_pipe = DepthPipeline.from_engine(tmp_path / "e" / "unet.onnx")
    a, b = torch_pipe.backend.schedule, onnx_pipe.backend.schedule
    assert a == b and not a.set_alpha_to_one and a.steps_offset == 1  # Marigold's final-step rule on both
    images = [render_scene(d, 0, size=(48, 64), split="test").rgb for d in ("indoor", "street")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the assumed-defaults warning, tested below
        kw = dict(steps=4, processing_res=64, seed=0)
        np.testing.assert_allclose(torch_pipe(images, **kw).depth, onnx_pipe(images, **kw).depth, atol=1e-5)
    assert Manifest.load(tmp_path / "e").data["defaults"]["assumed"] == ["steps"]


def test_assumed_defaults_are_said_once(bare_checkpoint: Path, tmp_path: Path) -> None:
    d = RuntimeDefaults.from_model_index({})
    assert d == RuntimeDefaults(50, 768, 1, "leading") and d.assumed == ("steps", "processing_resolution")
    assert "default_denoising_steps" in d.describe_assumed() and "50 steps at 768 px" in d.describe_assumed()
    assert RuntimeDefaults.from_model_index({"default_denoising_steps": 1, "default_processing_resolution": 64}
                                            ).assumed == ()
    pipe = DepthPipeline.from_checkpoint(bare_checkpoint)
    img = render_scene("indoor", 0, size=(32, 32), split="test").rgb
    with pytest.warns(UserWarning, match="sets no default_denoising_steps: assuming Marigold v1-0's 50 steps"):
        pipe(img, processing_res=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per pipeline, and never when the call gives the values
        pipe(img, processing_res=32)
        DepthPipeline.from_checkpoint(bare_checkpoint)(img, steps=1, processing_res=32)
    Image.fromarray(img).save(tmp_path / "a.png")
    from agdepth.runtime.cli import main

    res = CliRunner().invoke(main, [str(tmp_path / "a.png"), "--engine", str(bare_checkpoint), "--steps", "1",
                                    "--processing-res", "32", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and "note:" not in res.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI says it in its own one line, not as a Python warning too
        res = CliRunner().invoke(main, [str(tmp_path / "a.png"), "--engine", str(bare_checkpoint),
                                        "--processing-res", "32", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 0 and res.output.count("note: model_index.json sets no default_denoising_steps") == 1


def _save_tiny(out: Path, inference: RuntimeDefaults | None) -> dict:
    cfg = TinyModelConfig(unet_block_out_channels=(8, 16, 16), cross_attention_dim=16,
                          vae_block_out_channels=(8, 8, 8, 8), sample_size=32)
    save_checkpoint(out, build_tiny_unet(cfg), build_tiny_vae(cfg), tiny_empty_text_embedding(cfg),
                    inference=inference, info={"preset": "tiny"})
    return read_model_index(out)


@pytest.mark.parametrize("config", ["tiny", "sd2"])
def test_config_inference_round_trips_through_model_index(config: str, tmp_path: Path) -> None:
    inference = load_config(config).inference
    index = _save_tiny(tmp_path / "ckpt", inference)
    sched = json.loads((tmp_path / "ckpt" / "scheduler" / "scheduler_config.json").read_text())
    got = RuntimeDefaults.from_model_index(index, sched)
    assert got == inference and got.assumed == ()
    assert sched["timestep_spacing"] == inference.timestep_spacing
    # the layout of the bundled checkpoint: same keys in the same order (its agdepth section adds recipe info; its
    # light VAE, from depth-train distill-vae, adds the vae_light entries, and recommending it the vae entry)
    bundled = json.loads((default_checkpoint() / "model_index.json").read_text())
    assert list(index) == [k for k in bundled if k != "vae_light"]
    section = [k for k in bundled["agdepth"] if k not in ("vae", "vae_light")]
    assert list(index["agdepth"]) == section[:len(index["agdepth"])]


def test_checkpoint_without_inference_settings_writes_nulls(tmp_path: Path) -> None:
    index = _save_tiny(tmp_path / "ckpt", None)
    assert index["default_denoising_steps"] is None and index["default_processing_resolution"] is None
    assert index["agdepth"]["ensemble_size"] is None and index["agdepth"]["timestep_spacing"] == "trailing"
    got = RuntimeDefaults.from_model_index(index)
    assert got == RuntimeDefaults(50, 768, 1, "trailing") and got.assumed == ("steps", "processing_resolution")


def test_config_inference_keys() -> None:
    with pytest.raises(ValueError, match="`steps`"):
        config_from_dict({"inference": {"denoising_steps": 2}})
    with pytest.raises(ValueError, match="unknown key.*'inference': assumed"):
        config_from_dict({"inference": {"assumed": ["steps"]}})
    cfg = config_from_dict({"inference": {"steps": 2}})  # omitted keys: the tiny preset's defaults
    assert cfg.inference == RuntimeDefaults(2, 128, 1, "trailing")
    assert config_from_dict(cfg.to_dict()).inference == cfg.inference  # the logged config loads back
