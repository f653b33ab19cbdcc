"""Training stages on the tiny preset, on CPU: they learn, resume bit-exactly, stop cleanly, export loadable dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, TINY_OVERRIDES
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file

from agdepth.depth_norm import normalize_depth, stack_to_rgb
from agdepth.training.config import load_config
from agdepth.training.stages import LossModule, make_stage
from agdepth.training.trainer import (
    BatchStream,
    DistInfo,
    TrainingDivergedError,
    learning_rate,
    step_generator,
    train_stage,
)


def tiny_cfg(*extra: str):
    return load_config("tiny", [*TINY_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a (briefly) trained tiny VAE and depth autoencoder, as the unet stage expects."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg("stages.vae.iterations=2", "stages.autoencoder.iterations=2")
    train_stage("vae", cfg, out, progress=False)
    train_stage("autoencoder", cfg, out, progress=False)
    return out


def _losses_on_fixed_batch(stage_name: str, out: Path, steps: int, lr: float) -> list[float]:
    cfg = tiny_cfg()
    stage = make_stage(stage_name, cfg, out, torch.device("cpu"))
    batch = next(BatchStream(cfg, cfg.stage(stage_name), DistInfo()).iterate(0))
    module = LossModule(stage)
    opt = torch.optim.Adam(stage.trainable.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        # the same noise/timesteps every step, so the curve measures fitting, not sampling luck
        total, _ = module(batch, step_generator(0, 0, 0))
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    return losses


@pytest.mark.parametrize("stage_name,lr", [("vae", 2e-3), ("autoencoder", 2e-3), ("unet", 1e-3)])
def test_stage_loss_decreases_on_fixed_batch(pretrained_run: Path, stage_name: str, lr: float) -> None:
    losses = _losses_on_fixed_batch(stage_name, pretrained_run, steps=15, lr=lr)
    assert all(map(lambda v: v == v, losses)), losses
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_unet_stage_exports_diffusers_checkpoint(pretrained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    for sub in ("vae", "depth_autoencoder"):
        (out / sub).mkdir(parents=True)
        for f in (pretrained_run / sub).iterdir():
            (out / sub / f.name).write_bytes(f.read_bytes())
    cfg = tiny_cfg("stages.unet.iterations=2")
    ckpt = train_stage("unet", cfg, out, progress=False)
    assert ckpt == out / "checkpoint"
    names = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file()}
    assert {"model_index.json", "empty_text_embedding.safetensors", "scheduler/scheduler_config.json",
            "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "depth_autoencoder/diffusion_pytorch_model.safetensors"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))], names
    unet = UNet2DConditionModel.from_pretrained(ckpt, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(ckpt, subfolder="vae")
    assert unet.config.in_channels == 8 and unet.config.out_channels == 4
    assert vae.config.latent_channels == 4
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["default_denoising_steps"] == cfg.inference.steps
    assert index["agdepth"]["trained_steps"] == 2
    emb = load_file(ckpt / "empty_text_embedding.safetensors")["empty_text_embedding"]
    assert emb.shape == (1, 2, unet.config.cross_attention_dim)
    # the JSON-lines log has the train and validation records, with every loss term of eq. 8
    records = [json.loads(line) for line in (out / "logs" / "unet.jsonl").read_text().splitlines()]
    train = [r for r in records if r["event"] == "train"]
    assert {"v", "berhu", "gm", "feature", "it_s"} <= set(train[-1])
    val = [r for r in records if r["event"] == "val"]
    assert val and "forest/abs_rel" in val[-1]


def _state(out: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(out / "train_state" / stage / "model.safetensors")


# a fixed pool of 8 scenes read for several epochs, with memoised latents and pixel losses on half of each batch
POOL = ["data.cache=true", "data.sources.0.length=4", "data.sources.1.length=4", "data.sources.2.length=4",
        "stages.unet.random_crop=null", "stages.unet.cache_latents=true",
        "stages.unet.pixel_batch=1", "stages.unet.lr_schedule=cosine", "stages.unet.warmup=1"]


@pytest.mark.parametrize("extra", [[], POOL], ids=["fresh-scenes", "cached-pool"])
@pytest.mark.slow
def test_resume_is_bit_exact(pretrained_run: Path, tmp_path: Path, extra: list[str]) -> None:
    runs = {}
    for name in ("straight", "resumed"):
        out = tmp_path / name
        for sub in ("vae", "depth_autoencoder"):
            (out / sub).mkdir(parents=True)
            for f in (pretrained_run / sub).iterdir():
                (out / sub / f.name).write_bytes(f.read_bytes())
        runs[name] = out
    common = ["stages.unet.ckpt_every=2", "stages.unet.grad_accum=2", "data.val_domains=[]", *extra]
    train_stage("unet", tiny_cfg("stages.unet.iterations=4", *common), runs["straight"], progress=False)
    train_stage("unet", tiny_cfg("stages.unet.iterations=2", *common), runs["resumed"], progress=False)
    half = _state(runs["resumed"], "unet")
    train_stage("unet", tiny_cfg("stages.unet.iterations=4", *common), runs["resumed"], resume=True, progress=False)
    a, b = _state(runs["straight"], "unet"), _state(runs["resumed"], "unet")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(half[k], b[k]) for k in a), "the resumed half must have trained"


def test_existing_state_needs_resume_or_overwrite(pretrained_run: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg("stages.autoencoder.iterations=1", "data.val_domains=[]")
    train_stage("autoencoder", cfg, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_stage("autoencoder", cfg, tmp_path, progress=False)
    train_stage("autoencoder", cfg, tmp_path, overwrite=True, progress=False)


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.training import stages

    cfg = tiny_cfg("stages.autoencoder.iterations=5", "stages.autoencoder.ckpt_every=100", "data.val_domains=[]")
    original = stages.AutoencoderStage.forward_loss
    calls = {"n": 0}

    def poisoned(self, net, batch, gen):  # type: ignore[no-untyped-def]
        total, terms = original(self, net, batch, gen)
        calls["n"] += 1
        if calls["n"] == 3:
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(stages.AutoencoderStage, "forward_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match="step 2"):
        train_stage("autoencoder", cfg, tmp_path, progress=False)
    meta = json.loads((tmp_path / "train_state" / "autoencoder" / "trainer.json").read_text())
    assert meta["step"] == 2
    weights = _state(tmp_path, "autoencoder")
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert (tmp_path / "depth_autoencoder" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_ddp_reads_disjoint_samples_and_ends_identical(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes on gloo: each rank reads its own samples, gradients are averaged."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    sets = [*TINY_OVERRIDES, "stages.autoencoder.iterations=3", "data.log_samples=true", "data.val_domains=[]"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
           "-m", "agdepth.training.cli", "autoencoder", "--config", "tiny", "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {}
    for r in (0, 1):
        lines = (out / "logs" / f"autoencoder.samples.rank{r}.jsonl").read_text().splitlines()
        names[r] = [json.loads(line)["names"] for line in lines]
        assert len(names[r]) == 3 and all(len(n) == 2 for n in names[r])
    for a, b in zip(names[0], names[1], strict=True):
        assert not set(a) & set(b), (a, b)
    digests = [json.loads((out / "logs" / f"autoencoder.final.rank{r}.jsonl").read_text())["digest"] for r in (0, 1)]
    assert digests[0] == digests[1]
    start = [json.loads(line) for line in (out / "logs" / "autoencoder.jsonl").read_text().splitlines()][0]
    assert start["world_size"] == 2


@pytest.mark.parametrize("prob,expect_all_final", [(0.0, False), (1.0, True)])
def test_final_timestep_share(pretrained_run: Path, prob: float, expect_all_final: bool,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.schedule import NoiseSchedule

    cfg = tiny_cfg(f"stages.unet.final_timestep_prob={prob}", "stages.unet.batch_size=8")
    stage = make_stage("unet", cfg, pretrained_run, torch.device("cpu"))
    seen: list[torch.Tensor] = []
    original = NoiseSchedule.add_noise

    def spy(self, z0, noise, t):  # type: ignore[no-untyped-def]
        seen.append(t.clone())
        return original(self, z0, noise, t)

    monkeypatch.setattr(NoiseSchedule, "add_noise", spy)
    batch = next(BatchStream(cfg, cfg.stage("unet"), DistInfo()).iterate(0))
    LossModule(stage)(batch, step_generator(0, 0, 0))
    t = seen[0]
    assert bool((t == 999).all()) == expect_all_final
    assert t.min() >= 0 and t.max() <= 999


def test_latent_memo_equals_recomputation(pretrained_run: Path) -> None:
    cfg_memo = tiny_cfg(*POOL[:5], "stages.unet.cache_latents=true")
    plain = make_stage("unet", tiny_cfg("stages.unet.random_crop=null"), pretrained_run, torch.device("cpu"))
    memo = make_stage("unet", cfg_memo, pretrained_run, torch.device("cpu"))
    memo.trainable.load_state_dict(plain.trainable.state_dict())
    batch = next(BatchStream(cfg_memo, cfg_memo.stage("unet"), DistInfo()).iterate(0))
    with torch.no_grad():
        ref, ref_terms = LossModule(plain)(batch, step_generator(0, 0, 0))
        first, _ = LossModule(memo)(batch, step_generator(0, 0, 0))
        again, terms = LossModule(memo)(batch, step_generator(0, 0, 0))
    assert memo.rgb_memo.misses == 2 and memo.rgb_memo.hits == 2  # batch of 2, second call served from the memo
    assert torch.equal(first, again)
    # per-sample vs batched encoding: equal up to convolution rounding
    torch.testing.assert_close(again, ref, rtol=1e-4, atol=1e-6)
    assert ref_terms.keys() == terms.keys()


def test_pixel_batch_limits_pixel_losses_to_the_first_samples(pretrained_run: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import agdepth.training.stages as stages_mod

    cfg = tiny_cfg("stages.unet.batch_size=4", "stages.unet.pixel_batch=1")
    stage = make_stage("unet", cfg, pretrained_run, torch.device("cpu"))
    seen: list[int] = []
    original = stages_mod.berhu_loss

    def spy(pred, target, valid):  # type: ignore[no-untyped-def]
        seen.append(pred.shape[0])
        return original(pred, target, valid)

    monkeypatch.setattr(stages_mod, "berhu_loss", spy)
    batch = next(BatchStream(cfg, cfg.stage("unet"), DistInfo()).iterate(0))
    with torch.no_grad():
        _, terms = LossModule(stage)(batch, step_generator(0, 0, 0))
    assert seen == [1] and {"v", "berhu", "gm", "feature"} <= terms.keys()


def test_learning_rate_warmup_then_cosine_to_zero() -> None:
    scfg = tiny_cfg("stages.unet.lr=1e-3", "stages.unet.iterations=11", "stages.unet.warmup=1",
                    "stages.unet.lr_schedule=cosine").stage("unet")
    lrs = [learning_rate(scfg, s) for s in range(11)]
    assert lrs[0] == pytest.approx(1e-3)  # warm-up of one update ends at the base rate
    assert lrs[1] == pytest.approx(1e-3) and lrs[6] == pytest.approx(5e-4) and lrs[-1] > 0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert learning_rate(tiny_cfg("stages.unet.warmup=4").stage("unet"), 1) == pytest.approx(
        tiny_cfg().stage("unet").lr / 2)
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(tiny_cfg("stages.unet.lr_schedule=step").stage("unet"), 0)


def test_vae_stage_calibrates_scaling_factor_to_unit_latents(tmp_path: Path) -> None:
    # SD's rule, measured on the training batches: the exported factor scales the latents (RGB and depth) of the
    # batches the stage saw to unit std, and replaces diffusers' default 0.18215
    cfg = tiny_cfg("stages.vae.calibrate_scaling_factor=true")
    stage = make_stage("vae", cfg, tmp_path, torch.device("cpu"))
    stream = BatchStream(cfg, cfg.stage("vae"), DistInfo()).iterate(0)
    batches = [next(stream) for _ in range(3)]
    lat = []
    with torch.no_grad():
        for b in batches:
            stage.forward_loss(stage.trainable, b, step_generator(0, 0, 0))
            x = torch.cat([b["rgb"], stack_to_rgb(normalize_depth(b["depth"], b["valid"]))])
            lat.append(stage.trainable.encode(x).latent_dist.mean.flatten())
    stage.export(0)
    vae = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert vae.config.scaling_factor != 0.18215
    assert float(torch.cat(lat).std() * vae.config.scaling_factor) == pytest.approx(1.0, abs=1e-3)
