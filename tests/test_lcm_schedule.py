"""LCM schedules (prs-eth/marigold-lcm-v1-0's LCMScheduler) checked against diffusers' own LCMScheduler, the
kind-independent loop API against diffusers' DDIMScheduler too, and the refusal of every other scheduler class: in
NoiseSchedule.from_config and when a checkpoint loads (one line naming the config file)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler
from diffusers.utils.torch_utils import randn_tensor

from agdepth import default_checkpoint
from agdepth.artifacts.checkpoint import checkpoint_schedule, load_checkpoint, read_model_index, save_checkpoint
from agdepth.schedule import NoiseSchedule

UNSUPPORTED = "scheduler EulerDiscreteScheduler is not supported (agdepth runs DDIMScheduler and LCMScheduler)"


def _marigold_lcm_cfg(**changes) -> dict:
    """A saved scheduler_config.json like marigold-lcm-v1-0's (every key LCMScheduler has)."""
    cfg = dict(
        _class_name="LCMScheduler",
        _diffusers_version="0.25.0",
        beta_end=0.012,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        clip_sample=False,
        clip_sample_range=1.0,
        dynamic_thresholding_ratio=0.995,
        num_train_timesteps=1000,
        original_inference_steps=50,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=False,
        sample_max_value=1.0,
        set_alpha_to_one=False,
        steps_offset=1,
        thresholding=False,
        timestep_scaling=10.0,
        timestep_spacing="leading",
        trained_betas=None,
    )
    cfg.update(changes)
    return cfg


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ config


def test_from_config_maps_the_class_name_to_the_kind():
    lcm = NoiseSchedule.from_config(_marigold_lcm_cfg())
    assert lcm.kind == "lcm" and lcm.original_inference_steps == 50 and lcm.timestep_scaling == 10.0
    assert lcm.prediction_type == "v_prediction" and not lcm.set_alpha_to_one and lcm.steps_offset == 1
    ddim_cfg = {k: v for k, v in _marigold_lcm_cfg(_class_name="DDIMScheduler").items()
                if k not in ("original_inference_steps", "timestep_scaling")}
    assert NoiseSchedule.from_config(ddim_cfg).kind == "ddim"
    no_class = {k: v for k, v in ddim_cfg.items() if k != "_class_name"}  # old manifests and configs
    assert NoiseSchedule.from_config(no_class) == NoiseSchedule.from_config(ddim_cfg)
    assert NoiseSchedule.from_config({**no_class, "_class_name": None}).kind == "ddim"
    # LCM-only keys in a DDIM config change nothing (DDIMScheduler ignores them too)
    assert NoiseSchedule.from_config({**ddim_cfg, "original_inference_steps": 8}) == NoiseSchedule.from_config(ddim_cfg)
    # a manifest's "scheduler" entry: the diffusers config without its private keys but the class name
    manifest_entry = {k: v for k, v in lcm.to_diffusers_config().items() if k == "_class_name" or k[0] != "_"}
    assert NoiseSchedule.from_config(manifest_entry) == lcm


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DDPMScheduler", "PNDMScheduler", "TCDScheduler"])
def test_from_config_refuses_other_schedulers_naming_them(name):
    with pytest.raises(ValueError) as e:
        NoiseSchedule.from_config(_marigold_lcm_cfg(_class_name=name))
    assert str(e.value) == UNSUPPORTED.replace("EulerDiscreteScheduler", name)
    with pytest.raises(ValueError, match="not supported"):
        NoiseSchedule.from_config({"_class_name": ["my_module", "MyScheduler"]})


def test_invalid_lcm_settings_rejected():
    with pytest.raises(ValueError, match="thresholding"):
        NoiseSchedule.from_config(_marigold_lcm_cfg(thresholding=True))
    with pytest.raises(ValueError, match="trained_betas"):
        NoiseSchedule.from_config(_marigold_lcm_cfg(trained_betas=[0.1] * 1000))
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule(kind="euler")
    with pytest.raises(ValueError, match="original_inference_steps"):
        NoiseSchedule(kind="lcm", original_inference_steps=1001)
    with pytest.raises(ValueError, match="original_inference_steps"):
        NoiseSchedule(kind="lcm", original_inference_steps=0)


@pytest.mark.parametrize("kind", ["ddim", "lcm"])
def test_to_diffusers_config_round_trips(kind):
    cls = {"ddim": DDIMScheduler, "lcm": LCMScheduler}[kind]
    s = NoiseSchedule(kind=kind, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")
    if kind == "lcm":
        s = dataclasses.replace(s, original_inference_steps=40, timestep_scaling=8.0)
    cfg = s.to_diffusers_config()
    assert cfg["_class_name"] == cls.__name__ and "kind" not in cfg
    # only keys the class takes (diffusers warns about any other)
    assert set(cfg) - {"_class_name"} <= set(inspect.signature(cls.__init__).parameters)
    ref = cls.from_config(cfg)
    assert torch.equal(ref.alphas_cumprod, s.alphas_cumprod)
    names = ["set_alpha_to_one", "steps_offset", "prediction_type", "clip_sample", "timestep_spacing"]
    for name in names + (["original_inference_steps", "timestep_scaling"] if kind == "lcm" else []):
        assert ref.config[name] == getattr(s, name)
    assert NoiseSchedule.from_config(cfg) == s
    assert NoiseSchedule.from_config(dict(ref.config)) == s  # as diffusers saves it
    ref.set_timesteps(4)
    np.testing.assert_array_equal(s.inference_timesteps(4), ref.timesteps.numpy())
    if kind == "ddim":  # DDPMScheduler still loads a DDIM config
        assert torch.equal(DDPMScheduler.from_config(cfg).alphas_cumprod, s.alphas_cumprod)


# ------------------------------------------------------------------------------------------------ timesteps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("original", [50, 20, 7])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_lcm_timesteps_equal_diffusers(spacing, original, n):
    cfg = _marigold_lcm_cfg(timestep_spacing=spacing, original_inference_steps=original)
    ours = NoiseSchedule.from_config(cfg)
    if n > original:
        with pytest.raises(ValueError, match="original_inference_steps"):
            ours.inference_timesteps(n)
        return
    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(n)
    ts = ours.inference_timesteps(n)
    assert ts.dtype == np.int64
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    # LCM ignores the spacing, whatever the caller asks for
    for other in ("leading", "trailing", "linspace"):
        np.testing.assert_array_equal(ours.inference_timesteps(n, other), ts)
    pairs = ours.step_pairs(n, spacing)
    assert [t for t, _ in pairs] == ts.tolist()
    assert [p for _, p in pairs] == [*ts.tolist()[1:], ts.tolist()[-1]]


def test_lcm_timesteps_of_marigold_lcm():
    s = NoiseSchedule.from_config(_marigold_lcm_cfg())
    assert s.inference_timesteps(1).tolist() == [999]
    assert s.inference_timesteps(4).tolist() == [999, 759, 499, 259]
    assert s.step_pairs(1) == [(999, 999)]
    with pytest.raises(ValueError):
        s.inference_timesteps(0)
    with pytest.raises(ValueError):
        s.inference_timesteps(51)
    with pytest.raises(ValueError, match="spacing"):
        s.step_pairs(4, "sideways")


def test_ddim_loop_api_is_the_ddim_methods():
    s = NoiseSchedule.from_config(_marigold_lcm_cfg(_class_name="DDIMScheduler"))
    for n, spacing in ((1, None), (4, "trailing"), (10, "leading"), (7, "linspace")):
        np.testing.assert_array_equal(s.inference_timesteps(n, spacing), s.ddim_timesteps(n, spacing))
        assert s.step_pairs(n, spacing) == s.ddim_step_pairs(n, spacing)
        assert not any(s.step_needs_noise(i, n) for i in range(n))
    z, v = _rand(2, 4, 4, 4, seed=1), _rand(2, 4, 4, 4, seed=2)
    for last in (False, True):
        got = s.step(v, 999, 749, z, last=last)
        want = s.ddim_step(v, 999, 749, z)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ------------------------------------------------------------------------------------------------ steps


def _ref_scheduler(kind: str, cfg: dict):
    return (LCMScheduler if kind == "lcm" else DDIMScheduler).from_config(cfg)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_lcm_steps_equal_diffusers(prediction_type, set_alpha_to_one, n):
    """Every step of an n-step run, driven as diffusers' MarigoldDepthPipeline drives LCMScheduler (tensor timesteps
    from scheduler.timesteps, one generator); ours gets the same noise from an identically seeded generator."""
    cfg = _marigold_lcm_cfg(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one)
    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(n)
    ours = NoiseSchedule.from_config(cfg)
    pairs = ours.step_pairs(n)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    g_ref, g_ours = torch.Generator().manual_seed(123), torch.Generator().manual_seed(123)
    z_ref = _rand(2, 4, 6, 8, seed=5)
    for k, ((t, prev_t), t_ref) in enumerate(zip(pairs, ref.timesteps, strict=True)):
        model_output = _rand(2, 4, 6, 8, seed=10 + k)
        out = ref.step(model_output, t_ref, z_ref, generator=g_ref)
        last = k == n - 1
        assert ours.step_needs_noise(k, n) == (not last)
        noise = None
        if ours.step_needs_noise(k, n):
            noise = randn_tensor(model_output.shape, generator=g_ours, device=model_output.device,
                                 dtype=model_output.dtype)
        z, denoised = ours.step(model_output, t, prev_t, z_ref, last=last, noise=noise)
        torch.testing.assert_close(denoised, out.denoised, atol=1e-6, rtol=0)
        torch.testing.assert_close(z, out.prev_sample, atol=1e-6, rtol=0)
        if last:
            assert torch.equal(z, denoised)  # no noise on the last step, as diffusers
        z_ref = out.prev_sample


def test_lcm_step_clip_sample_and_scalings_equal_diffusers():
    cfg = _marigold_lcm_cfg(clip_sample=True, clip_sample_range=0.5, timestep_scaling=3.0)
    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(2)
    ours = NoiseSchedule.from_config(cfg)
    for t in (0, 1, 259, 999):
        want = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        got = ours.lcm_boundary_scalings(t)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    z, v = _rand(1, 4, 4, 4, seed=1) * 3, _rand(1, 4, 4, 4, seed=2) * 3
    (t0, p0), (t1, p1) = ours.step_pairs(2)
    g = torch.Generator().manual_seed(0)
    out = ref.step(v, ref.timesteps[0], z, generator=g)
    noise = randn_tensor(v.shape, generator=torch.Generator().manual_seed(0), dtype=v.dtype)
    got = ours.step(v, t0, p0, z, last=False, noise=noise)
    torch.testing.assert_close(got[0], out.prev_sample, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[1], out.denoised, atol=1e-6, rtol=0)
    out = ref.step(v, ref.timesteps[1], z, generator=g)
    got = ours.step(v, t1, p1, z, last=True)
    torch.testing.assert_close(got[0], out.prev_sample, atol=1e-6, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_steps_equal_diffusers_through_the_loop_api(spacing):
    cfg = _marigold_lcm_cfg(_class_name="DDIMScheduler", timestep_spacing=spacing)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(4)
    ours = NoiseSchedule.from_config(cfg)
    pairs = ours.step_pairs(4)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()
    z_ref = _rand(2, 4, 6, 8, seed=5)
    for k, ((t, prev_t), t_ref) in enumerate(zip(pairs, ref.timesteps, strict=True)):
        model_output = _rand(2, 4, 6, 8, seed=10 + k)
        out = ref.step(model_output, t_ref, z_ref)
        z, x0 = ours.step(model_output, t, prev_t, z_ref, last=k == 3)
        torch.testing.assert_close(x0, out.pred_original_sample, atol=1e-6, rtol=0)
        torch.testing.assert_close(z, out.prev_sample, atol=1e-6, rtol=0)
        z_ref = out.prev_sample


def test_lcm_step_needs_noise_unless_last():
    s = NoiseSchedule.from_config(_marigold_lcm_cfg())
    z, v = _rand(1, 4, 4, 4, seed=1), _rand(1, 4, 4, 4, seed=2)
    with pytest.raises(ValueError, match="noise"):
        s.step(v, 999, 759, z, last=False)
    prev, denoised = s.step(v, 259, 259, z, last=True)
    assert torch.equal(prev, denoised)
    assert [s.step_needs_noise(i, 4) for i in range(4)] == [True, True, True, False]
    assert s.step_needs_noise(0, 1) is False
    with pytest.raises(IndexError):
        s.step_needs_noise(4, 4)
    with pytest.raises(ValueError, match="one timestep"):
        s.step(v, torch.tensor([999, 759]), 499, z, last=True)
    with pytest.raises(IndexError):
        s.step(v, 1000, 999, z, last=True)


def test_lcm_step_in_half_precision_matches_diffusers():
    """fp16 inputs: float32 ᾱ/c scalars times fp16 tensors, as LCMScheduler.step computes them."""
    cfg = _marigold_lcm_cfg()
    ref = LCMScheduler.from_config(cfg)
    ref.set_timesteps(2)
    ours = NoiseSchedule.from_config(cfg)
    z, v = _rand(1, 4, 4, 4, seed=1).half(), _rand(1, 4, 4, 4, seed=2).half()
    t, prev_t = ours.step_pairs(2)[0]
    out = ref.step(v, ref.timesteps[0], z, generator=torch.Generator().manual_seed(3))
    noise = randn_tensor(v.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float16)
    got = ours.step(v, t, prev_t, z, last=False, noise=noise)
    assert got[0].dtype == out.prev_sample.dtype == torch.float16
    assert torch.equal(got[0], out.prev_sample) and torch.equal(got[1], out.denoised)


# ------------------------------------------------------------------------------------------------ checkpoints


def _bundled_with_scheduler(tmp_path: Path, cfg: dict | None) -> Path:
    ckpt = Path(shutil.copytree(default_checkpoint(), tmp_path / "ckpt"))
    if cfg is not None:
        (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2))
    return ckpt


def test_checkpoint_with_an_unsupported_scheduler_fails_in_one_line(tmp_path: Path):
    ckpt = _bundled_with_scheduler(tmp_path, _marigold_lcm_cfg(_class_name="EulerDiscreteScheduler"))
    path = ckpt / "scheduler" / "scheduler_config.json"
    with pytest.raises(ValueError) as e:
        load_checkpoint(ckpt)
    assert str(e.value) == f"{path}: {UNSUPPORTED}" and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
        checkpoint_schedule({"_class_name": "EulerDiscreteScheduler"}, source=path)
    assert str(e.value) == f"{path}: {UNSUPPORTED}"
    with pytest.raises(ValueError, match=f"^{UNSUPPORTED[:9]}"):  # without a source: the bare message
        checkpoint_schedule({"_class_name": "EulerDiscreteScheduler"})
    # an unsupported setting is refused at load time too, naming the file
    (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps(_marigold_lcm_cfg(thresholding=True)))
    with pytest.raises(ValueError, match=f"^{path}: unsupported scheduler setting thresholding=True$"):
        load_checkpoint(ckpt)


def test_checkpoint_with_an_lcm_scheduler_loads_as_lcm(tmp_path: Path):
    ckpt = _bundled_with_scheduler(tmp_path, _marigold_lcm_cfg())
    models = load_checkpoint(ckpt)
    cfg = models.extra["scheduler_config"]
    assert cfg["_class_name"] == "LCMScheduler" and cfg["original_inference_steps"] == 50
    s = checkpoint_schedule(cfg)
    assert s == NoiseSchedule.from_config(_marigold_lcm_cfg()) and s.kind == "lcm"
    # the PyTorch backend runs it as LCM (the call site passes the config's path for its errors)
    from agdepth.runtime.backends.torch_backend import TorchBackend

    assert TorchBackend.from_checkpoint(ckpt).schedule == s
    # DDIM and config-less checkpoints keep their schedules
    ddim = load_checkpoint(default_checkpoint()).extra["scheduler_config"]
    assert ddim["_class_name"] == "DDIMScheduler" and checkpoint_schedule(ddim).kind == "ddim"
    assert checkpoint_schedule(None) == NoiseSchedule(set_alpha_to_one=False, steps_offset=1)


def test_save_checkpoint_writes_an_lcm_schedule_as_lcm_scheduler(tmp_path: Path):
    models = load_checkpoint(default_checkpoint())
    lcm = NoiseSchedule.from_config(_marigold_lcm_cfg(original_inference_steps=40))
    out = save_checkpoint(tmp_path / "lcm", models.unet, models.vae, models.empty_text_embedding, schedule=lcm)
    saved = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "LCMScheduler" and saved["original_inference_steps"] == 40
    assert read_model_index(out)["scheduler"] == ["diffusers", "LCMScheduler"]  # what diffusers' pipeline loads
    ref = LCMScheduler.from_pretrained(out / "scheduler")
    assert ref.config.original_inference_steps == 40 and ref.config.prediction_type == "v_prediction"
    # the spacing written is the inference settings' (LCM ignores it); everything else is the schedule
    loaded = checkpoint_schedule(load_checkpoint(out).extra["scheduler_config"])
    assert loaded == dataclasses.replace(lcm, timestep_spacing=saved["timestep_spacing"])
    # a DDIM schedule (and none) still writes DDIMScheduler
    out = save_checkpoint(tmp_path / "ddim", models.unet, models.vae, models.empty_text_embedding)
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"
    assert read_model_index(out)["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert checkpoint_schedule(load_checkpoint(out).extra["scheduler_config"]).kind == "ddim"


def test_export_records_the_scheduler_class(tmp_path: Path):
    """The manifest's scheduler entry keeps _class_name, so the ONNX/TensorRT backends (NoiseSchedule.from_config of
    that entry) run the LCM schedule the PyTorch backend runs; an entry without one (old manifests) reads as DDIM."""
    from agdepth.export import ExportOptions, Manifest, export_checkpoint

    ckpt = _bundled_with_scheduler(tmp_path, _marigold_lcm_cfg())
    export_checkpoint(ckpt, tmp_path / "e", ExportOptions(max_resolution=64), progress=lambda s: None)
    entry = Manifest.load(tmp_path / "e").data["scheduler"]
    assert entry["_class_name"] == "LCMScheduler" and not any(k.startswith("_") for k in entry if k != "_class_name")
    assert NoiseSchedule.from_config(entry) == checkpoint_schedule(load_checkpoint(ckpt).extra["scheduler_config"])
    old = {k: v for k, v in entry.items() if k not in ("_class_name", "original_inference_steps", "timestep_scaling")}
    assert NoiseSchedule.from_config(old) == dataclasses.replace(NoiseSchedule.from_config(entry), kind="ddim")
