"""The runtime's PyTorch path against diffusers' MarigoldDepthPipeline, plus its own contracts.

A tiny random-weight checkpoint is written with the project's own save_checkpoint; the reference pipeline loads the
same directory through diffusers. Inputs are 50×70 at processing resolution 64, so resizing (→ 45×64) and padding
(→ 48×64, latents 6×8) both happen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agdepth.artifacts.checkpoint import save_checkpoint
from agdepth.ensemble import ensemble_depth
from agdepth.models import TinyModelConfig, build_tiny_unet, build_tiny_vae, tiny_empty_text_embedding
from agdepth.runtime import STAGES, DepthBackend, DepthPipeline, RuntimeDefaults

# Smaller than the preset so the file stays fast next to other CPU work; same architecture family.
CFG = TinyModelConfig(unet_block_out_channels=(16, 32, 32), cross_attention_dim=32,
                      vae_block_out_channels=(8, 16, 16, 16), sample_size=64)
INFERENCE = RuntimeDefaults(steps=2, processing_resolution=64, ensemble_size=1, timestep_spacing="trailing")
RES = 64
LATENT = (6, 8)  # 50×70 -> 45×64 -> padded 48×64 -> /8


def _image(h: int = 50, w: int = 70, seed: int = 0) -> Image.Image:
    # smooth structure + noise so the random nets see something image-like
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=-1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def _latents(n: int, seed: int = 1, hw: tuple[int, int] = LATENT) -> torch.Tensor:
    return torch.randn(n, 4, *hw, generator=torch.Generator().manual_seed(seed))


class _Recorder:
    """A backend wrapper that keeps what the U-Net got and what the decoder returned (members before ensembling)."""

    def __init__(self, inner: DepthBackend) -> None:
        self.inner, self.denoised, self.decoded = inner, [], []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        self.denoised.append(sample)
        return self.inner.denoise(sample, timestep, hidden)

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        self.decoded.append(self.inner.decode(latent, network))
        return self.decoded[-1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny nets gain nothing from intra-op threads, and spinning OpenMP workers next to other CPU jobs on a small
    # machine slows calls by 100×; restore the setting for other test files
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    unet, vae = build_tiny_unet(CFG), build_tiny_vae(CFG)
    return save_checkpoint(tmp_path_factory.mktemp("rt") / "ckpt", unet, vae, tiny_empty_text_embedding(CFG),
                           inference=INFERENCE)


@pytest.fixture(scope="module")
def pipe(ckpt: Path) -> DepthPipeline:
    return DepthPipeline.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def ref(ckpt: Path, pipe: DepthPipeline):
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    p = MarigoldDepthPipeline(
        unet=UNet2DConditionModel.from_pretrained(ckpt / "unet"), vae=AutoencoderKL.from_pretrained(ckpt / "vae"),
        scheduler=DDIMScheduler.from_pretrained(ckpt / "scheduler"), text_encoder=None, tokenizer=None,
        prediction_type="depth", default_denoising_steps=2, default_processing_resolution=RES,
    )
    p.empty_text_embedding = pipe.backend.empty_text_embedding.clone()
    p.set_progress_bar_config(disable=True)
    return p


def _ref_run(ref, image, steps: int, spacing: str, res: int = RES, **kw) -> np.ndarray:
    from diffusers import DDIMScheduler

    ref.scheduler = DDIMScheduler.from_config(ref.scheduler.config, timestep_spacing=spacing)
    out = ref(image, num_inference_steps=steps, processing_resolution=res, output_type="np", **kw)
    return out.prediction[..., 0]  # diffusers returns [N,H,W,1]


# ---------------------------------------------------------------------------------------------- backend / defaults


def test_backend_interface_and_defaults(pipe: DepthPipeline) -> None:
    be = pipe.backend
    assert isinstance(be, DepthBackend)
    assert be.defaults == INFERENCE
    assert be.schedule.prediction_type == "v_prediction" and be.schedule.steps_offset == 1
    assert tuple(be.empty_text_embedding.shape) == (1, CFG.text_tokens, CFG.cross_attention_dim)
    rgb = torch.zeros(2, 3, 48, 64)
    lat = be.encode(rgb)
    assert tuple(lat.shape) == (2, 4, 6, 8)
    v = be.denoise(torch.cat([lat, lat], 1), torch.tensor([999, 500]), be.empty_text_embedding.expand(2, -1, -1))
    assert tuple(v.shape) == (2, 4, 6, 8)
    assert tuple(be.decode(lat).shape) == (2, 1, 48, 64)
    # official Marigold dirs: no agdepth section -> Marigold's fallbacks, spacing from the scheduler config
    assert RuntimeDefaults.from_model_index({}) == RuntimeDefaults(50, 768, 1, "leading")
    idx = {"default_denoising_steps": 4, "default_processing_resolution": 0}
    got = RuntimeDefaults.from_model_index(idx, {"timestep_spacing": "trailing"})
    assert got == RuntimeDefaults(4, 0, 1, "trailing")


# ---------------------------------------------------------------------------------------------- diffusers parity


def test_matches_diffusers_with_a_4x_vae(tmp_path: Path) -> None:
    """A 3-block VAE downsamples 4×: padding and latent sizes follow the VAE, as diffusers' vae_scale_factor does."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    cfg = TinyModelConfig(unet_block_out_channels=(16, 32, 32), cross_attention_dim=32,
                          vae_block_out_channels=(8, 16, 16), sample_size=64)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "ckpt4", build_tiny_unet(cfg), build_tiny_vae(cfg),
                           tiny_empty_text_embedding(cfg), inference=INFERENCE)
    pipe = DepthPipeline.from_checkpoint(path)
    assert pipe.backend.vae_scale_factor == 4
    ref = MarigoldDepthPipeline(
        unet=UNet2DConditionModel.from_pretrained(path / "unet"), vae=AutoencoderKL.from_pretrained(path / "vae"),
        scheduler=DDIMScheduler.from_pretrained(path / "scheduler", timestep_spacing="trailing"), text_encoder=None,
        tokenizer=None, prediction_type="depth", default_denoising_steps=2, default_processing_resolution=RES,
    )
    ref.empty_text_embedding = pipe.backend.empty_text_embedding.clone()
    ref.set_progress_bar_config(disable=True)
    lat = _latents(1, hw=(12, 16))  # 50×70 -> 45×64 -> padded to 48×64 (a multiple of 4) -> latents /4
    img = _image()
    expected = ref(img, num_inference_steps=2, processing_resolution=RES, output_type="np", latents=lat)
    out = pipe(img, steps=2, timestep_spacing="trailing", processing_res=RES, ensemble=1, latents=lat)
    assert np.abs(out.depth - expected.prediction[..., 0]).max() <= 1e-4 and out.depth.std() > 1e-3


@pytest.mark.parametrize(("steps", "spacing"), [(1, "trailing"), (4, "leading"), (4, "trailing")])
def test_matches_diffusers(pipe: DepthPipeline, ref, steps: int, spacing: str) -> None:
    img, lat = _image(), _latents(1)
    expected = _ref_run(ref, img, steps, spacing, latents=lat)
    out = pipe(img, steps=steps, timestep_spacing=spacing, processing_res=RES, ensemble=1, latents=lat)
    assert out.depth.shape == (1, 50, 70) and out.depth.dtype == np.float32
    assert expected.shape == out.depth.shape
    assert out.depth.std() > 1e-3  # the comparison is not between two constant maps
    assert np.abs(out.depth - expected).max() <= 1e-4


def test_seed_draws_diffusers_noise(pipe: DepthPipeline, ref) -> None:
    # 70×70 at 40 -> 5×5 latents: 100 values per image, not a multiple of torch's 16-value normal blocks, so one
    # [N·E,...] draw differs from per-image draws and the test tells them apart
    imgs = [_image(70, 70), _image(70, 70, seed=3)]
    expected = _ref_run(ref, imgs, 1, "trailing", res=40, generator=torch.Generator().manual_seed(7), batch_size=2)
    out = pipe(imgs, steps=1, timestep_spacing="trailing", processing_res=40, seed=7)
    assert np.abs(out.depth - expected).max() <= 1e-4


def test_ensemble_members_plumbing_and_diffusers(pipe: DepthPipeline, ref) -> None:
    # correlated members (shared base noise): a well-posed alignment, as with a trained model
    img, lat = _image(), _latents(1).repeat(3, 1, 1, 1) + 0.3 * _latents(3, seed=9)
    rec = _Recorder(pipe.backend)
    out = DepthPipeline(rec)(img, steps=1, timestep_spacing="trailing", processing_res=RES, ensemble=3, latents=lat,
                             output_uncertainty=True, batch_size=3)
    assert [tuple(x.shape) for x in rec.denoised] == [(3, 8, *LATENT)]  # all members in one U-Net call
    members = ((torch.cat(rec.decoded).clamp(-1, 1) + 1) / 2)[:, 0, :45]  # unpadded: 45×64, [E,PH,PW]
    # the members are diffusers' members
    ref_members = np.concatenate([
        _ref_run(ref, img, 1, "trailing", latents=lat[i : i + 1], match_input_resolution=False) for i in range(3)
    ])
    assert np.abs(members.numpy() - ref_members).max() <= 1e-4
    # ensembled after unpadding, resized after ensembling (diffusers' order), with agdepth.ensemble
    exp_d, exp_u = ensemble_depth(members[None], output_uncertainty=True)
    exp_d, exp_u = (torch.nn.functional.interpolate(x, (50, 70), mode="bilinear")[:, 0] for x in (exp_d, exp_u))
    unc = out.depth_uncertainty
    assert unc is not None and out.depth.shape == unc.shape == (1, 50, 70)
    assert out.prediction.shape == out.uncertainty.shape == (1, 50, 70, 1)  # diffusers' np layout
    np.testing.assert_allclose(out.depth, exp_d.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(unc, exp_u.numpy(), rtol=0, atol=1e-6)
    assert out.depth.min() >= 0 and out.depth.max() <= 1 and out.depth.max() - out.depth.min() > 0.9
    assert (unc >= 0).all() and unc.max() > 0
    # diffusers' own ensembling: same objective, different optimiser (2 finite-difference BFGS steps) -> loosely
    expected = _ref_run(ref, img, 1, "trailing", latents=lat, ensemble_size=3)
    assert np.corrcoef(out.depth.ravel(), expected.ravel())[0, 1] > 0.99
    mean = pipe(img, steps=1, timestep_spacing="trailing", processing_res=RES, ensemble=3, latents=lat,
                reduction="mean", output_uncertainty=True)
    assert mean.uncertainty is not None and not np.array_equal(mean.depth, out.depth)


def test_reduced_precision_keeps_ddim_math_in_float32(ckpt: Path, pipe: DepthPipeline) -> None:
    # bf16 networks, float32 DDIM state: with ᾱ and the update in bf16 this 1-step run was off by 0.1 (mean 0.008)
    half = DepthPipeline.from_checkpoint(ckpt, dtype=torch.bfloat16)
    img, lat = _image(), _latents(1)
    a = pipe(img, steps=1, timestep_spacing="trailing", processing_res=RES, latents=lat).depth
    b = half(img, steps=1, timestep_spacing="trailing", processing_res=RES, latents=lat).depth
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.05 and np.abs(a - b).mean() < 0.004


def test_identical_members_ensemble_to_the_single_prediction(pipe: DepthPipeline) -> None:
    # native resolution, no padding: identical members must ensemble to the min-max normalised single prediction
    img, lat = _image(48, 64), _latents(1)
    single = pipe(img, steps=1, processing_res=0, latents=lat).depth
    ens = pipe(img, steps=1, processing_res=0, latents=lat.repeat(3, 1, 1, 1), ensemble=3).depth
    norm = (single - single.min()) / (single.max() - single.min())
    assert np.abs(ens - norm).max() <= 1e-4


# ---------------------------------------------------------------------------------------------- contracts


def test_latents_validation(pipe: DepthPipeline) -> None:
    img = _image()
    with pytest.raises(ValueError, match=r"unexpected shape=\(2, 4, 6, 8\) expected=\(3, 4, 6, 8\)"):
        pipe(img, steps=1, ensemble=3, latents=_latents(2))
    with pytest.raises(ValueError, match="unexpected shape"):
        pipe(img, steps=1, latents=_latents(1, hw=(8, 8)))
    with pytest.raises(ValueError, match="cannot be used together"):
        pipe(img, steps=1, latents=_latents(1), seed=0)
    with pytest.raises(ValueError, match="list of per-image"):
        pipe([img, _image(40, 40)], steps=1, latents=_latents(2))
    with pytest.raises(ValueError, match="ensemble_size > 1"):
        pipe(img, steps=1, ensemble=1, output_uncertainty=True)


def test_seed_determinism(pipe: DepthPipeline) -> None:
    img = _image()
    a = pipe(img, steps=1, seed=3).depth
    b = pipe(img, steps=1, seed=3).depth
    c = pipe(img, steps=1, seed=4).depth
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_batch_size_chunking(pipe: DepthPipeline) -> None:
    imgs = [_image(seed=s) for s in range(3)]
    lat = _latents(6)
    members, rows = {}, {}
    for bs in (0, 1, 3):  # 0: all 6 rows at once; else `bs` rows per call, sliced as diffusers does
        rec = _Recorder(pipe.backend)
        DepthPipeline(rec)(imgs, steps=2, ensemble=2, latents=lat, batch_size=bs)
        members[bs] = torch.cat(rec.decoded)
        rows[bs] = [x.shape[0] for x in rec.denoised]
    assert rows == {0: [6, 6], 1: [1] * 12, 3: [3] * 4}
    for bs in (1, 3):  # compared before ensembling, which amplifies float-rounding differences
        torch.testing.assert_close(members[bs], members[0], rtol=0, atol=1e-5)
    full = pipe(imgs, steps=2, latents=lat[:3]).depth
    np.testing.assert_allclose(pipe(imgs, steps=2, latents=lat[:3], batch_size=2).depth, full, rtol=0, atol=1e-5)


def test_images_of_different_sizes(pipe: DepthPipeline) -> None:
    imgs = [_image(), _image(40, 40, seed=1), _image(seed=2)]
    lats = [_latents(1, 5), _latents(1, 6, hw=(8, 8)), _latents(1, 7)]
    out = pipe(imgs, steps=1, latents=lats)
    assert isinstance(out.depth, list) and [d.shape for d in out.depth] == [(50, 70), (40, 40), (50, 70)]
    for img, lat, d in zip(imgs, lats, out.depth, strict=True):
        np.testing.assert_allclose(pipe(img, steps=1, latents=lat).depth[0], d, rtol=0, atol=1e-5)
    seeded = pipe(imgs, steps=1, seed=0)
    assert [d.shape for d in seeded.depth] == [(50, 70), (40, 40), (50, 70)]


def test_input_modes(pipe: DepthPipeline) -> None:
    rgb = _image()
    arr = np.asarray(rgb)
    rgba = Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 128, np.uint8)]), "RGBA")
    grey = rgb.convert("L")
    lat = _latents(1)

    def run(x: object) -> np.ndarray:
        return pipe(x, steps=1, latents=lat).depth

    base = run(rgb)
    np.testing.assert_array_equal(run(arr), base)  # uint8 HxWx3 numpy == PIL
    np.testing.assert_array_equal(run(rgba), base)  # alpha dropped
    np.testing.assert_array_equal(run(grey), run(grey.convert("RGB")))
    np.testing.assert_array_equal(run(np.asarray(grey)), run(grey))  # HxW numpy == L
    np.testing.assert_allclose(run(arr.astype(np.float32) / 255), base, rtol=0, atol=1e-6)  # float [0,1]


def test_timings(pipe: DepthPipeline) -> None:
    out = pipe([_image(), _image(seed=1)], steps=1, ensemble=2, seed=0)
    assert set(out.timings) == {*STAGES, "total"}
    assert all(v >= 0 for v in out.timings.values())
    assert out.timings["unet"] > 0 and out.timings["ensemble"] > 0
    assert out.timings["total"] >= sum(out.timings[s] for s in STAGES) * 0.999


def test_official_marigold_layout_with_clip(tmp_path: Path, tiny_sd2_dir: Path) -> None:
    """A directory as diffusers' MarigoldDepthPipeline.save_pretrained writes it (text_encoder/ and tokenizer/, no
    stored embedding) loads, computes the empty-prompt embedding with its CLIP, and equals the diffusers pipeline."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from agdepth.models import load_sd2

    models = load_sd2(tiny_sd2_dir)  # 8-channel U-Net from SD2's 4-channel one
    ref = MarigoldDepthPipeline(
        unet=models.unet, vae=AutoencoderKL.from_pretrained(tiny_sd2_dir / "vae"),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                                timestep_spacing="trailing"),
        text_encoder=CLIPTextModel.from_pretrained(tiny_sd2_dir / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(tiny_sd2_dir / "tokenizer"),
        prediction_type="depth", default_denoising_steps=2, default_processing_resolution=32,
    )
    ref.save_pretrained(tmp_path / "marigold", safe_serialization=True)
    assert (tmp_path / "marigold" / "text_encoder").is_dir() and not (tmp_path / "marigold" / "tokenizer").is_file()
    ref.set_progress_bar_config(disable=True)
    pipe = DepthPipeline.from_checkpoint(tmp_path / "marigold")
    assert pipe.backend.defaults.steps == 2 and pipe.backend.defaults.timestep_spacing == "trailing"
    img, lat = _image(40, 40), _latents(1, hw=(4, 4))
    expected = ref(img, latents=lat, output_type="np").prediction[..., 0]
    out = pipe(img, ensemble=1, latents=lat).depth
    assert out.std() > 1e-4 and np.abs(out - expected).max() <= 1e-4
