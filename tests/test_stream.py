"""Video streams: the warm start (diffusers' add_noise at the start timestep, then the usual loop), the robust online
alignment, and DepthStream's guarantees (fixed noise, one frame size, the same on every backend)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, export_checkpoint
from agdepth.robust_fit import fit_scale_shift_robust
from agdepth.runtime import DepthPipeline
from agdepth.runtime.stream import ALIGN_MAX_SIDE, DepthStream
from agdepth.schedule import NoiseSchedule

SIZE = (48, 64)


@pytest.fixture(scope="module")
def pipe() -> DepthPipeline:
    return DepthPipeline.from_checkpoint(default_checkpoint())


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [render_scene("forest", i, size=SIZE, split="test").rgb for i in range(3)]


def test_a_warm_start_begins_at_the_strengths_timestep() -> None:
    s = NoiseSchedule()
    assert s.start_timestep(1.0) == 999 and s.start_timestep(0.5) == 499 and s.start_timestep(0.001) == 0
    assert s.step_pairs(1, "trailing", 0.5) == [(499, -1)]
    assert s.step_pairs(4, "trailing", 0.5) == [(499, 374), (374, 249), (249, 124), (124, -1)]
    assert s.step_pairs(4, "trailing", 1.0) == s.step_pairs(4, "trailing")
    for bad in (0.0, 1.5, 0.0004):
        with pytest.raises(ValueError, match="strength"):
            s.step_pairs(1, "trailing", bad)
    lcm = NoiseSchedule(kind="lcm")
    with pytest.raises(ValueError, match="DDIM"):
        lcm.step_pairs(1, None, 0.5)


def test_the_warm_start_noises_the_init_latent_as_diffusers_add_noise(pipe: DepthPipeline,
                                                                      frames: list[np.ndarray],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The first U-Net call sees cat(rgb latent, DDPMScheduler.add_noise(init, noise, t_s)) at timestep t_s."""
    first = pipe(frames[0], seed=0, output_latent=True)
    noise = pipe.initial_latents([frames[1]], 1, None, seed=5)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = pipe.backend.denoise

    def record(sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        seen.append((sample.clone(), t.clone()))
        return real(sample, t, text)

    monkeypatch.setattr(pipe.backend, "denoise", record)
    pipe(frames[1], latents=noise, init_latents=first.latent, strength=0.4)
    ddpm = DDPMScheduler.from_config(pipe.backend.schedule.to_diffusers_config())
    want = ddpm.add_noise(first.latent.float(), noise[0], torch.tensor([399]))
    (sample, t), = seen
    assert t.tolist() == [399]
    torch.testing.assert_close(sample[:, 4:], want, rtol=1e-6, atol=1e-6)


def test_a_warm_start_is_checked_before_any_work(pipe: DepthPipeline, frames: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="init_latents"):
        pipe(frames[0], strength=0.5)
    with pytest.raises(ValueError, match="init_latents"):
        pipe(frames[0], strength=0.5, init_latents=torch.zeros(1, 4, 3, 3))


def test_the_robust_fit_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    x = rng.random(4000)
    y = 2.5 * x - 0.3 + rng.normal(0, 1e-3, x.size)
    y[:1200] = rng.random(1200) * 5  # 30 % of the pixels moved across a depth edge
    s, t = fit_scale_shift_robust(x, y)
    assert abs(s - 2.5) < 0.02 and abs(t + 0.3) < 0.01
    ls = np.polyfit(x, y, 1)
    assert abs(ls[0] - 2.5) > 0.2  # plain least squares is pulled away
    with pytest.raises(ValueError, match="distinct"):
        fit_scale_shift_robust(np.ones(10), np.arange(10.0))


def test_without_warm_start_or_alignment_a_stream_is_the_image_pipeline_with_fixed_noise(
        pipe: DepthPipeline, frames: list[np.ndarray]) -> None:
    stream = DepthStream(pipe, seed=7, strength=1.0, align="none")
    noise = pipe.initial_latents([frames[0]], 1, None, seed=7)
    for f in frames:
        got = stream.push(f)
        want = pipe(f, latents=noise).depth[0]
        assert np.array_equal(got.raw, want) and np.array_equal(got.depth, want) and (got.scale, got.shift) == (1, 0)


def test_a_stream_aligns_each_frame_to_the_previous_output(pipe: DepthPipeline, frames: list[np.ndarray]) -> None:
    stream = DepthStream(pipe, strength=0.6)
    out = [stream.push(f) for f in [frames[0], frames[0], frames[1]]]
    assert (out[0].scale, out[0].shift) == (1.0, 0.0) and np.array_equal(out[0].depth, out[0].raw)
    for prev, cur in zip(out, out[1:], strict=False):
        np.testing.assert_allclose(cur.depth, cur.scale * cur.raw + cur.shift, rtol=1e-5, atol=1e-6)
        step = -(-max(cur.raw.shape) // ALIGN_MAX_SIDE)  # the fit's grid
        s, t = fit_scale_shift_robust(cur.raw[::step, ::step], prev.depth[::step, ::step])
        assert abs(s - cur.scale) < 1e-6 and abs(t - cur.shift) < 1e-6
    assert out[1].timings["total"] >= out[1].timings["unet"] and "align" in out[1].timings


def test_a_stream_keeps_one_frame_size(pipe: DepthPipeline, frames: list[np.ndarray]) -> None:
    stream = DepthStream(pipe)
    stream.push(frames[0])
    with pytest.raises(ValueError, match=r"frame 1 is 32x24 px, the stream's frames are 64x48"):
        stream.push(frames[0][:24, :32])
    stream.reset()
    assert stream.push(frames[0][:24, :32]).depth.shape == (24, 32)


def test_a_stream_runs_the_same_on_onnx_runtime(pipe: DepthPipeline, frames: list[np.ndarray],
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("stream") / "engines"
    export_checkpoint(default_checkpoint(), out, ExportOptions(max_resolution=64, max_batch=1), progress=lambda _: None)
    ort = DepthPipeline.from_engine(out / "unet.onnx")
    torch_stream, ort_stream = DepthStream(pipe, strength=0.5), DepthStream(ort, strength=0.5)
    for f in frames:
        np.testing.assert_allclose(ort_stream.push(f).depth, torch_stream.push(f).depth, atol=2e-4)
