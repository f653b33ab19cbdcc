"""The light VAE (agdepth.light_vae): AutoencoderTiny layout and loading, the wrappers' tensor specs, the exact TAESD
initialisation, the checkpoint folder, and the distill_vae stage (export, bit-exact resume, label-free image folders,
the CLI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import HANG_GUARD_S, TINY_OVERRIDES
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image
from safetensors.torch import load_file

from agdepth.artifacts.checkpoint import WEIGHTS_FILE, load_checkpoint, save_light_checkpoint
from agdepth.light_vae import (
    LIGHT_VAE_FOLDER,
    build_light_vae,
    check_light_vae_config,
    init_from_taesd,
    light_vae_scale_factor,
    load_light_vae,
)
from agdepth.networks import (
    VAEDecoderWrapper,
    VAEEncoderWrapper,
    describe_light_networks,
    describe_networks,
    light_modules,
    vae_scale_factor,
)
from agdepth.training.config import config_from_dict, load_config
from agdepth.training.trainer import ImageFolderDataset, train_stage

BUNDLED = Path(__file__).resolve().parent.parent / "agdepth" / "weights" / "tiny"  # a 4x-down checkpoint
ROOT = Path(__file__).resolve().parent.parent

# light VAEs small enough for CPU tests: 3 stages (4x down, the tiny preset's) and 4 stages (8x, SD's)
SMALL = {4: {"encoder_block_out_channels": [8, 8, 8], "decoder_block_out_channels": [8, 8, 8],
             "num_encoder_blocks": [0, 1, 1], "num_decoder_blocks": [1, 1, 0]},
         8: {"encoder_block_out_channels": [8, 8, 8, 8], "decoder_block_out_channels": [8, 8, 8, 8],
             "num_encoder_blocks": [1, 1, 1, 1], "num_decoder_blocks": [1, 1, 1, 1]}}
# a distill run small enough for CPU tests (the bundled checkpoint teaches at 32x32, batch 2)
DISTILL = [*TINY_OVERRIDES, "stages.distill_vae.batch_size=2", "stages.distill_vae.log_every=1",
           f"stages.distill_vae.checkpoint={BUNDLED}", "light_vae.encoder_block_out_channels=[8,8,8]",
           "light_vae.decoder_block_out_channels=[8,8,8]", "light_vae.num_encoder_blocks=[0,1,1]",
           "light_vae.num_decoder_blocks=[1,1,0]"]


def distill_cfg(*extra: str):
    return load_config("tiny", [*DISTILL, *extra])


def full_vae(f: int) -> AutoencoderKL:
    n = f.bit_length()  # 4x: 3 blocks, 8x: 4 blocks
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,) * n, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4, norm_num_groups=4)


# ------------------------------------------------------------------------------------------ the model itself


def test_round_trip_from_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    light = build_light_vae(**SMALL[4]).eval()
    light.save_pretrained(tmp_path / LIGHT_VAE_FOLDER, safe_serialization=True)
    assert (tmp_path / LIGHT_VAE_FOLDER / WEIGHTS_FILE).is_file()
    loaded = AutoencoderTiny.from_pretrained(tmp_path / LIGHT_VAE_FOLDER).eval()  # diffusers' own door
    assert (loaded.config.in_channels, loaded.config.out_channels, loaded.config.latent_channels) == (3, 1, 4)
    assert loaded.config.scaling_factor == 1.0 and loaded.config.shift_factor == 0.0
    a, b = light.state_dict(), load_light_vae(tmp_path / LIGHT_VAE_FOLDER).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(light.decode(light.encode(x).latents).sample,
                           loaded.decode(loaded.encode(x).latents).sample)


@pytest.mark.parametrize("f", [4, 8])
def test_wrappers_match_the_full_networks_specs(f: int) -> None:
    light = build_light_vae(**SMALL[f])
    vae = full_vae(f)
    assert light_vae_scale_factor(light) == vae_scale_factor(vae) == f
    full_specs, light_specs = describe_networks(f, 2, 16), describe_light_networks(f)
    for name, of in (("vae_encoder_light", "vae_encoder"), ("vae_decoder_light", "vae_decoder")):
        assert light_specs[name].inputs == full_specs[of].inputs
        assert light_specs[name].outputs == full_specs[of].outputs
    modules = light_modules(light)
    full = {"vae_encoder": VAEEncoderWrapper(vae).eval(), "vae_decoder": VAEDecoderWrapper(vae).eval()}
    for name, of in (("vae_encoder_light", "vae_encoder"), ("vae_decoder_light", "vae_decoder")):
        spec = light_specs[name]
        for b, h, w in ((1, 32, 32), (2, 64, 96)):
            feeds = spec.sample_inputs(b, h, w)
            with torch.no_grad():
                out = modules[name](*feeds.values())
                ref = full[of](*feeds.values())
            assert tuple(out.shape) == spec.output_shapes(b, h, w)[spec.output_names[0]] == tuple(ref.shape)
            assert out.dtype == ref.dtype == torch.float32


def test_init_from_taesd_decodes_the_mean_of_the_rgb_channels(tmp_path: Path) -> None:
    torch.manual_seed(0)  # a TAESD-layout AutoencoderTiny (RGB out, 8x down), random weights
    taesd = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).eval()
    with torch.no_grad():  # the 3 output channels must differ, or averaging them proves nothing
        taesd.decoder.layers[-1].bias.copy_(torch.tensor([0.3, -0.2, 0.05]))
    taesd.save_pretrained(tmp_path / "taesd", safe_serialization=True)
    light = init_from_taesd(tmp_path / "taesd").eval()
    assert light.config.out_channels == 1 and light.config.in_channels == 3
    assert light_vae_scale_factor(light) == 8
    z = torch.randn(2, 4, 6, 5)
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        rgb = taesd.decode(z).sample
        assert rgb.shape[1] == 3 and (rgb[:, 0] - rgb[:, 1]).abs().max() > 1e-3
        torch.testing.assert_close(light.decode(z).sample, rgb.mean(dim=1, keepdim=True), rtol=0, atol=1e-5)
        assert torch.equal(light.encode(x).latents, taesd.encode(x).latents)
        # the wrapper reads an RGB TAESD the same way
        torch.testing.assert_close(light_modules(taesd)["vae_decoder_light"](z),
                                   light_modules(light)["vae_decoder_light"](z), rtol=0, atol=1e-5)


@pytest.mark.parametrize("change,match", [
    ({"encoder_block_out_channels": [8, 16, 16]}, "one positive width"),
    ({"num_decoder_blocks": [1, 1]}, "one entry per stage"),
    ({"out_channels": 3}, "out_channels must be 1"),
    ({"num_encoder_blocks": [1, 1, 1, 1], "encoder_block_out_channels": [8] * 4}, "same factor"),
    ({"latent_magnitude": 3}, "unknown key"),
])
def test_light_vae_config_is_checked(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_light_vae_config({**SMALL[4], **change})
    with pytest.raises(ValueError, match=match):
        config_from_dict({"light_vae": {**SMALL[4], **change}})


def test_shipped_configs_light_vae_sizes() -> None:
    tiny, sd2 = load_config("tiny"), load_config("sd2")
    # each light VAE downsamples as its preset's full VAE does
    assert light_vae_scale_factor(build_light_vae(**tiny.light_vae.kwargs())) == 2 ** (
        len(tiny.model["vae_block_out_channels"]) - 1) == 4
    assert light_vae_scale_factor(build_light_vae(**sd2.light_vae.kwargs())) == 8
    assert config_from_dict(tiny.to_dict()).light_vae == tiny.light_vae  # the logged config loads back


# ------------------------------------------------------------------------------------------ the checkpoint


def test_checkpoint_with_light_vae_loads_and_names_damage(tmp_path: Path) -> None:
    light = build_light_vae(**SMALL[4])
    ckpt = save_light_checkpoint(BUNDLED, tmp_path / "ckpt", light, info={"distilled_steps": 0})
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["vae_light"] == ["diffusers", "AutoencoderTiny"]
    assert index["agdepth"]["vae_light"] == {"distilled_steps": 0}
    models = load_checkpoint(ckpt)
    assert isinstance(models.extra["vae_light"], AutoencoderTiny)
    a, b = light.state_dict(), models.extra["vae_light"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # writing over itself keeps one light VAE, the new one
    again = build_light_vae(**SMALL[4])
    save_light_checkpoint(ckpt, ckpt, again)
    c = load_checkpoint(ckpt).extra["vae_light"].state_dict()
    assert all(torch.equal(again.state_dict()[k], c[k]) for k in c)
    weights = ckpt / LIGHT_VAE_FOLDER / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=str(weights)):
        load_checkpoint(ckpt)


# ------------------------------------------------------------------------------------------ the stage


def test_distill_stage_exports_a_checkpoint_with_a_light_vae(tmp_path: Path) -> None:
    ckpt = train_stage("distill_vae", distill_cfg("stages.distill_vae.iterations=2"), tmp_path, progress=False)
    assert ckpt == tmp_path / "checkpoint"
    models = load_checkpoint(ckpt)
    light = models.extra["vae_light"]
    assert light.config.out_channels == 1 and light_vae_scale_factor(light) == 4
    state = load_file(tmp_path / "train_state" / "distill_vae" / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in light.state_dict().items())
    # the rest is the teacher checkpoint, unchanged
    for sub in ("unet", "vae"):
        assert (ckpt / sub / WEIGHTS_FILE).read_bytes() == (BUNDLED / sub / WEIGHTS_FILE).read_bytes()
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["agdepth"]["vae_light"]["distilled_steps"] == 2
    assert index["agdepth"]["vae_light"]["teacher_steps"] == 1  # the bundled model's default
    records = [json.loads(line) for line in (tmp_path / "logs" / "distill_vae.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert len(train) == 2 and {"encoder", "decoder", "it_s"} <= set(train[-1])
    val = [r for r in records if r["event"] == "val"]
    assert val and {"forest/abs_rel_full", "forest/abs_rel_light", "tabletop/abs_rel_light", "encoder_mse",
                    "decoder_l1", "abs_rel_light_vs_full"} <= set(val[-1])


def test_distill_stage_refuses_a_light_vae_of_another_scale(tmp_path: Path) -> None:
    cfg = distill_cfg("light_vae.encoder_block_out_channels=[8,8,8,8]", "light_vae.num_encoder_blocks=[1,1,1,1]",
                      "light_vae.decoder_block_out_channels=[8,8,8,8]", "light_vae.num_decoder_blocks=[1,1,1,1]")
    with pytest.raises(ValueError, match="downsamples 8x"):
        train_stage("distill_vae", cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="--checkpoint"):
        train_stage("distill_vae", load_config("tiny", TINY_OVERRIDES), tmp_path, overwrite=True, progress=False)


def test_distill_loss_decreases_on_a_fixed_batch() -> None:
    from agdepth.training.stages import LossModule, make_stage
    from agdepth.training.trainer import BatchStream, DistInfo, step_generator

    cfg = distill_cfg()
    stage = make_stage("distill_vae", cfg, Path("unused"), torch.device("cpu"))
    batch = next(BatchStream(cfg, cfg.stage("distill_vae"), DistInfo()).iterate(0))
    module = LossModule(stage)
    opt = torch.optim.Adam(stage.trainable.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        total, _ = module(batch, step_generator(0, 0, 0))
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses


@pytest.mark.slow
def test_distill_resume_is_bit_exact(tmp_path: Path) -> None:
    common = ["stages.distill_vae.ckpt_every=2", "stages.distill_vae.grad_accum=2", "data.val_domains=[]",
              "stages.distill_vae.lr_schedule=cosine", "stages.distill_vae.warmup=1"]
    runs = {name: tmp_path / name for name in ("straight", "resumed")}
    train_stage("distill_vae", distill_cfg("stages.distill_vae.iterations=4", *common), runs["straight"],
                progress=False)
    train_stage("distill_vae", distill_cfg("stages.distill_vae.iterations=2", *common), runs["resumed"],
                progress=False)
    half = load_file(runs["resumed"] / "train_state" / "distill_vae" / "model.safetensors")
    train_stage("distill_vae", distill_cfg("stages.distill_vae.iterations=4", *common), runs["resumed"],
                resume=True, progress=False)
    a, b = (load_file(runs[n] / "train_state" / "distill_vae" / "model.safetensors") for n in ("straight", "resumed"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(half[k], b[k]) for k in a), "the resumed half must have trained"
    # the exported checkpoints hold the same light VAE
    la, lb = (load_checkpoint(runs[n] / "checkpoint").extra["vae_light"].state_dict() for n in runs)
    assert all(torch.equal(la[k], lb[k]) for k in la)


def test_distill_nan_loss_stops_with_the_last_good_light_vae(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.training import stages
    from agdepth.training.trainer import TrainingDivergedError

    original = stages.DistillVAEStage.forward_loss
    calls = {"n": 0}

    def poisoned(self, net, batch, gen):  # type: ignore[no-untyped-def]
        total, terms = original(self, net, batch, gen)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] == 3 else total), terms

    monkeypatch.setattr(stages.DistillVAEStage, "forward_loss", poisoned)
    cfg = distill_cfg("stages.distill_vae.iterations=5", "stages.distill_vae.ckpt_every=100", "data.val_domains=[]")
    with pytest.raises(TrainingDivergedError, match="step 2"):
        train_stage("distill_vae", cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "train_state" / "distill_vae" / "trainer.json").read_text())["step"] == 2
    light = load_checkpoint(tmp_path / "checkpoint").extra["vae_light"]
    assert all(torch.isfinite(v).all() for v in light.state_dict().values())


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(40, 56), (32, 32), (70, 30), (48, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(folder / "sub" / "grey.png")  # L mode
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # skipped and counted as corrupt


def test_image_folder_dataset_crops_to_the_training_size(tmp_path: Path) -> None:
    _write_images(tmp_path / "images")
    ds = ImageFolderDataset(tmp_path / "images", (32, 24), hflip=True, seed=0)
    assert len(ds) == 6
    good = [ds[i] for i in range(len(ds)) if not ds.files[i][1].startswith("broken")]
    for s in good:
        assert s["rgb"].shape == (3, 32, 24) and s["rgb"].dtype == torch.float32
        assert -1 <= s["rgb"].min() and s["rgb"].max() <= 1
        assert set(s) == {"rgb", "name", "domain"}
    assert {s["name"] for s in good} >= {"img0.png", "sub/grey.png"}


def test_distill_cli_on_a_label_free_image_folder(tmp_path: Path) -> None:
    from agdepth.training.cli import main

    _write_images(tmp_path / "images")
    out = tmp_path / "run"
    args = ["distill-vae", "--checkpoint", str(BUNDLED), "--images", str(tmp_path / "images"), "--out", str(out),
            "--config", "tiny", "--no-progress", "--set", "stages.distill_vae.iterations=3"]
    for item in DISTILL:
        if not item.startswith("stages.distill_vae.checkpoint"):
            args += ["--set", item]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "vae_light" in load_checkpoint(out / "checkpoint").extra
    records = [json.loads(line) for line in (out / "logs" / "distill_vae.jsonl").read_text().splitlines()]
    assert records[0]["config"]["data"]["sources"] == [
        {**records[0]["config"]["data"]["sources"][0], "type": "images", "root": str(tmp_path / "images")}]
    train = [r for r in records if r["event"] == "train"]
    assert len(train) == 3 and all(np.isfinite(r["decoder"]) and np.isfinite(r["encoder"]) for r in train)
    assert records[-1]["event"] == "end" and records[-1]["corrupt"] >= 1  # broken.png, skipped
    # resuming without --resume is refused, as for every stage
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "--resume" in again.output


def test_all_runs_the_recipe_stages_only() -> None:
    from agdepth.training.config import RECIPE_STAGES, STAGES

    assert "distill_vae" in STAGES and "distill_vae" not in RECIPE_STAGES
    assert "distill_vae" in load_config("tiny").stages  # the shipped config has a section for it nonetheless


def test_layering_contract_holds() -> None:
    """agdepth.light_vae sits in the core layer: it imports no training, runtime or export (nor anything above)."""
    text = (ROOT / ".importlinter").read_text()
    core = [line for line in text.splitlines() if "agdepth.schedule" in line and "agdepth.networks" in line]
    assert core and "agdepth.light_vae" in core[0]
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        pytest.skip("lint-imports is not installed beside this Python")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([str(exe)], cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
