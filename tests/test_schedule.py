"""agdepth.schedule checked against diffusers' own schedulers as the reference."""

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from agdepth.schedule import NoiseSchedule

SD2 = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# A saved DDIM scheduler_config.json with the settings Marigold uses (set_alpha_to_one=False, steps_offset=1,
# clip_sample=False), including keys NoiseSchedule does not model (_class_name, skip_prk_steps, ...).
MARIGOLD_CFG = dict(
    _class_name="DDIMScheduler",
    _diffusers_version="0.25.0",
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=False,
    sample_max_value=1.0,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    thresholding=False,
    timestep_spacing="leading",
    trained_betas=None,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
def test_tables_equal_diffusers_exactly(schedule):
    ours = NoiseSchedule(beta_schedule=schedule)
    ref = DDPMScheduler(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    assert ours.betas.dtype == torch.float32 and ours.alphas_cumprod.dtype == torch.float32
    assert torch.equal(ours.betas, ref.betas)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_zero_snr_rescale_equals_diffusers():
    ours = NoiseSchedule(rescale_betas_zero_snr=True)
    ref = DDIMScheduler(rescale_betas_zero_snr=True, **SD2)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    assert ours.alphas_cumprod[-1] == 0


def test_public_tables_are_copies():
    s = NoiseSchedule()
    s.alphas_cumprod.zero_()
    assert s.alphas_cumprod[0] > 0.99


def test_invalid_settings_rejected():
    with pytest.raises(ValueError):
        NoiseSchedule(beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError):
        NoiseSchedule(prediction_type="flow")
    with pytest.raises(ValueError):
        NoiseSchedule.from_config({**MARIGOLD_CFG, "thresholding": True})
    with pytest.raises(ValueError):
        NoiseSchedule.from_config({**MARIGOLD_CFG, "trained_betas": [0.1] * 1000})


def test_from_config_marigold_and_round_trip():
    s = NoiseSchedule.from_config(MARIGOLD_CFG)  # unknown keys (_class_name, skip_prk_steps...) ignored
    assert s == NoiseSchedule(set_alpha_to_one=False, steps_offset=1)
    ref = DDIMScheduler.from_config(s.to_diffusers_config())
    assert torch.equal(ref.alphas_cumprod, s.alphas_cumprod)
    for name in ("set_alpha_to_one", "steps_offset", "prediction_type", "clip_sample", "timestep_spacing"):
        assert ref.config[name] == getattr(s, name)
    assert NoiseSchedule.from_config(s.to_diffusers_config()) == s
    cfg = s.to_diffusers_config()
    assert cfg["_class_name"] == "DDIMScheduler"  # the kind; a DDIM config has no LCM-only keys
    lcm_only = {"kind", "original_inference_steps", "timestep_scaling"}
    assert set(cfg) >= {f.name for f in dataclasses.fields(NoiseSchedule)} - lcm_only


def test_add_noise_and_velocity_equal_diffusers():
    ours, ref = NoiseSchedule(), DDPMScheduler(**SD2)
    z0, eps = _rand(4, 4, 8, 8, seed=1), _rand(4, 4, 8, 8, seed=2)
    t = torch.tensor([0, 1, 500, 999])
    torch.testing.assert_close(ours.add_noise(z0, eps, t), ref.add_noise(z0, eps, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.velocity(z0, eps, t), ref.get_velocity(z0, eps, t), atol=1e-6, rtol=0)
    # A python int / 0-dim tensor timestep broadcasts over the whole batch.
    t_all = torch.full((4,), 321)
    torch.testing.assert_close(ours.add_noise(z0, eps, 321), ref.add_noise(z0, eps, t_all), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.velocity(z0, eps, torch.tensor(321)), ref.get_velocity(z0, eps, t_all))


def test_conversions_invert_each_other():
    s = NoiseSchedule()
    z0, eps = _rand(3, 4, 6, 6, seed=3).double(), _rand(3, 4, 6, 6, seed=4).double()
    t = torch.tensor([1, 400, 999])
    zt, v = s.add_noise(z0, eps, t), s.velocity(z0, eps, t)
    assert zt.dtype == torch.float64  # computed in the inputs' dtype
    torch.testing.assert_close(s.x0_from_v(zt, v, t), z0, atol=1e-6, rtol=0)
    torch.testing.assert_close(s.eps_from_v(zt, v, t), eps, atol=1e-6, rtol=0)
    torch.testing.assert_close(s.x0_from_eps(zt, eps, t), z0, atol=1e-5, rtol=0)
    torch.testing.assert_close(s.eps_from_x0(zt, z0, t), eps, atol=1e-5, rtol=0)
    x0, e = s.pred_x0_eps(v, zt, t)
    torch.testing.assert_close(x0, z0, atol=1e-6, rtol=0)
    torch.testing.assert_close(e, eps, atol=1e-6, rtol=0)
    torch.testing.assert_close(s.training_target(z0, eps, t), v)
    # float32 round trip too (the dtype training runs in)
    zt32, v32 = s.add_noise(z0.float(), eps.float(), t), s.velocity(z0.float(), eps.float(), t)
    torch.testing.assert_close(s.x0_from_v(zt32, v32, t), z0.float(), atol=1e-5, rtol=0)


def test_timestep_out_of_range():
    s, x = NoiseSchedule(), torch.zeros(2, 1, 2, 2)
    with pytest.raises(IndexError):
        s.add_noise(x, x, torch.tensor([0, 1000]))
    with pytest.raises(IndexError):
        s.velocity(x, x, -1)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10, 50, 1000])
def test_ddim_timesteps_equal_diffusers(spacing, offset, n):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset, **SD2)
    ref.set_timesteps(n)
    ours = NoiseSchedule().ddim_timesteps(n, spacing, offset)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref.timesteps.numpy())
    # defaults come from the schedule's own fields
    np.testing.assert_array_equal(NoiseSchedule(timestep_spacing=spacing, steps_offset=offset).ddim_timesteps(n), ours)


def test_trailing_one_step_starts_at_999():
    assert NoiseSchedule().ddim_timesteps(1, "trailing").tolist() == [999]
    assert NoiseSchedule().ddim_timesteps(1, "leading", 1).tolist() == [1]
    with pytest.raises(ValueError):
        NoiseSchedule().ddim_timesteps(0)


def _fake_model(sample: torch.Tensor, t: int) -> torch.Tensor:
    # Deterministic stand-in for the U-Net that depends on both inputs.
    return 0.3 * torch.tanh(sample) + 0.01 * (t % 17) - 0.1


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 50])
def test_ddim_loop_equals_diffusers(spacing, set_alpha_to_one, n):
    cfg = dict(
        prediction_type="v_prediction",
        timestep_spacing=spacing,
        steps_offset=1,
        set_alpha_to_one=set_alpha_to_one,
        clip_sample=False,
        **SD2,
    )
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(n)
    ours = NoiseSchedule.from_config(cfg)
    pairs = ours.ddim_step_pairs(n)
    assert [t for t, _ in pairs] == ref.timesteps.tolist()

    z_ref = z = _rand(2, 4, 8, 8, seed=5)
    for t, prev_t in pairs:
        out_ref = ref.step(_fake_model(z_ref, t), t, z_ref)
        z, x0 = ours.ddim_step(_fake_model(z, t), t, prev_t, z)
        torch.testing.assert_close(x0, out_ref.pred_original_sample, atol=1e-6, rtol=0)
        z_ref = out_ref.prev_sample
        torch.testing.assert_close(z, z_ref, atol=1e-6, rtol=0)


def test_ddim_step_final_alpha():
    # On the last step (prev_t < 0), set_alpha_to_one=True returns x̂0 itself.
    s = NoiseSchedule(set_alpha_to_one=True)
    z, v = _rand(1, 4, 4, 4, seed=6), _rand(1, 4, 4, 4, seed=7)
    prev, x0 = s.ddim_step(v, 999, -1, z)
    torch.testing.assert_close(prev, x0)
    torch.testing.assert_close(x0, s.x0_from_v(z, v, 999))
    assert torch.equal(NoiseSchedule(set_alpha_to_one=False).final_alpha_cumprod, s.alphas_cumprod[0])


def test_ddim_step_per_sample_timesteps():
    s = NoiseSchedule(set_alpha_to_one=False)
    z, v = _rand(2, 4, 4, 4, seed=8), _rand(2, 4, 4, 4, seed=9)
    t, prev = torch.tensor([999, 500]), torch.tensor([499, -1])
    both, x0 = s.ddim_step(v, t, prev, z)
    for i in range(2):
        one, x0_one = s.ddim_step(v[i : i + 1], int(t[i]), int(prev[i]), z[i : i + 1])
        torch.testing.assert_close(both[i : i + 1], one)
        torch.testing.assert_close(x0[i : i + 1], x0_one)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_step_other_prediction_types_and_eta(prediction_type):
    cfg = dict(prediction_type=prediction_type, clip_sample=False, **SD2)
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(10)
    ours = NoiseSchedule.from_config(cfg)
    z, out, noise = _rand(1, 4, 4, 4, seed=10), _rand(1, 4, 4, 4, seed=11), _rand(1, 4, 4, 4, seed=12)
    t, prev_t = ours.ddim_step_pairs(10)[2]
    expect = ref.step(out, t, z, eta=0.5, variance_noise=noise).prev_sample
    got, _ = ours.ddim_step(out, t, prev_t, z, eta=0.5, noise=noise)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=0)
