"""DepthPipeline as a drop-in for diffusers' MarigoldDepthPipeline: the same call, on the same directory, gives the
same outputs, for DDIM (leading, trailing) and LCM (1, 2, 4 steps) schedulers, on PyTorch and ONNX Runtime.

The directories are tiny random-weight checkpoints written by the project's save_checkpoint (diffusers layout); the
reference pipeline is diffusers' own, loading the same files, as diffusers' fast tests build theirs from configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agdepth.artifacts.checkpoint import save_checkpoint
from agdepth.models import TinyModelConfig, build_tiny_unet, build_tiny_vae, tiny_empty_text_embedding
from agdepth.runtime import DepthPipeline, RuntimeDefaults

CFG = TinyModelConfig(unet_block_out_channels=(16, 32, 32), cross_attention_dim=32,
                      vae_block_out_channels=(8, 16, 16, 16), sample_size=64)
RES = 64
H, W = 50, 70  # -> 45×64 at 64 px, padded to 48×64: resizing and padding both happen
TOL = 1e-5
# Marigold-LCM's scheduler_config.json (prs-eth/marigold-lcm-v1-0), keys that change the math
LCM_CONFIG = {"_class_name": "LCMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "clip_sample": False, "num_train_timesteps": 1000, "original_inference_steps": 50,
              "prediction_type": "v_prediction", "rescale_betas_zero_snr": False, "set_alpha_to_one": True,
              "steps_offset": 1, "thresholding": False, "timestep_scaling": 10.0, "timestep_spacing": "leading"}


def _image(seed: int = 0, h: int = H, w: int = W) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=-1) * 200
    return Image.fromarray(np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


def _write_scheduler(ckpt: Path, config: dict) -> None:
    (ckpt / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint per scheduler kind: DDIM (Marigold's settings) and LCM (Marigold-LCM's), same weights."""
    torch.manual_seed(0)
    unet, vae, emb = build_tiny_unet(CFG), build_tiny_vae(CFG), tiny_empty_text_embedding(CFG)
    root = tmp_path_factory.mktemp("dropin")
    inference = RuntimeDefaults(steps=1, processing_resolution=RES, ensemble_size=1, timestep_spacing="trailing")
    out = {"ddim": save_checkpoint(root / "ddim", unet, vae, emb, inference=inference)}
    out["lcm"] = save_checkpoint(root / "lcm", unet, vae, emb, inference=inference)
    _write_scheduler(out["lcm"], LCM_CONFIG)
    return out


def _reference(ckpt: Path, spacing: str | None = None):
    from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, MarigoldDepthPipeline, UNet2DConditionModel

    config = json.loads((ckpt / "scheduler" / "scheduler_config.json").read_text())
    cls = LCMScheduler if config["_class_name"] == "LCMScheduler" else DDIMScheduler
    scheduler = cls.from_pretrained(ckpt / "scheduler")
    if spacing is not None:
        scheduler = cls.from_config(scheduler.config, timestep_spacing=spacing)
    ref = MarigoldDepthPipeline(
        unet=UNet2DConditionModel.from_pretrained(ckpt / "unet"), vae=AutoencoderKL.from_pretrained(ckpt / "vae"),
        scheduler=scheduler, text_encoder=None, tokenizer=None, prediction_type="depth",
        default_denoising_steps=1, default_processing_resolution=RES)
    from agdepth.artifacts.checkpoint import load_checkpoint

    ref.empty_text_embedding = load_checkpoint(ckpt).empty_text_embedding.clone()
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.fixture(scope="module")
def refs(dirs: dict[str, Path]) -> dict[str, object]:
    return {"leading": _reference(dirs["ddim"], "leading"), "trailing": _reference(dirs["ddim"], "trailing"),
            "lcm": _reference(dirs["lcm"])}


@pytest.fixture(scope="module")
def pipes(dirs: dict[str, Path]) -> dict[str, DepthPipeline]:
    return {"ddim": DepthPipeline.from_pretrained(dirs["ddim"]), "lcm": DepthPipeline.from_pretrained(dirs["lcm"])}


def _max_diff(a: object, b: object) -> float:
    def to_np(x: object) -> np.ndarray:
        return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

    a_, b_ = to_np(a), to_np(b)
    assert a_.shape == b_.shape, (a_.shape, b_.shape)
    return float(np.abs(a_ - b_).max())


def _both(pipe: DepthPipeline, ref: object, image: object, spacing: str | None, **kw: object) -> tuple:
    """The same call on both pipelines; generators are rebuilt per side so both draw the same numbers."""
    def args() -> dict:
        a = dict(kw)
        if "seed" in a:
            a["generator"] = torch.Generator().manual_seed(int(a.pop("seed")))
        if "seeds" in a:
            a["generator"] = [torch.Generator().manual_seed(s) for s in a.pop("seeds")]
        return a

    # explicit latents exclude a generator: LCM then draws its between-step noise from the global RNG, on both sides
    torch.manual_seed(123)
    ours = pipe(image, timestep_spacing=spacing, **args()) if spacing else pipe(image, **args())
    torch.manual_seed(123)
    return ours, ref(image, **args())


SCHEDULES = [("leading", 2), ("trailing", 1), ("trailing", 2), ("lcm", 1), ("lcm", 2), ("lcm", 4)]


@pytest.mark.parametrize(("schedule", "steps"), SCHEDULES)
@pytest.mark.parametrize("match", [True, False])
def test_same_call_same_outputs(pipes, refs, schedule: str, steps: int, match: bool) -> None:
    """One image, a seeded generator (LCM also draws its between-step noise from it), np and pt outputs, latents."""
    pipe = pipes["lcm" if schedule == "lcm" else "ddim"]
    spacing = None if schedule == "lcm" else schedule
    kw = {"num_inference_steps": steps, "processing_resolution": RES, "match_input_resolution": match,
          "output_latent": True, "seed": 3}
    ours, theirs = _both(pipe, refs[schedule], _image(), spacing, **kw)
    assert ours.prediction.shape == theirs.prediction.shape == ((1, H, W, 1) if match else (1, 45, 64, 1))
    assert _max_diff(ours.prediction, theirs.prediction) <= TOL
    assert _max_diff(ours.latent, theirs.latent) <= TOL
    pt, theirs_pt = _both(pipe, refs[schedule], _image(), spacing, **{**kw, "output_type": "pt"})
    assert isinstance(pt.prediction, torch.Tensor) and pt.prediction.shape == theirs_pt.prediction.shape
    assert _max_diff(pt.prediction, theirs_pt.prediction) <= TOL


@pytest.mark.parametrize("schedule", ["trailing", "lcm"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_two_images_explicit_latents_and_generator_lists(pipes, refs, schedule: str, batch_size: int) -> None:
    pipe = pipes["lcm" if schedule == "lcm" else "ddim"]
    spacing = None if schedule == "lcm" else schedule
    images = [_image(0), _image(1)]
    lat = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(5))
    ours, theirs = _both(pipe, refs[schedule], images, spacing, num_inference_steps=2, processing_resolution=RES,
                         batch_size=batch_size, latents=lat)
    assert _max_diff(ours.prediction, theirs.prediction) <= TOL
    # a list of generators: one per member of every image, as diffusers requires
    ours, theirs = _both(pipe, refs[schedule], images, spacing, num_inference_steps=2, processing_resolution=RES,
                         batch_size=batch_size, seeds=[11, 12])
    assert _max_diff(ours.prediction, theirs.prediction) <= TOL


class _Decoded:
    """A backend wrapper keeping what the VAE decoder returned: the ensemble members before ensembling."""

    def __init__(self, inner: object) -> None:
        self.inner, self.decoded = inner, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        self.decoded.append(self.inner.decode(latent, network))
        return self.decoded[-1]


@pytest.mark.parametrize("ensemble", [3, 4])
@pytest.mark.parametrize("reduction", ["median", "mean"])
def test_ensembles_with_diffusers_ensembling(pipes, refs, ensemble: int, reduction: str) -> None:
    """``ensembling_kwargs={"method": "diffusers"}`` is diffusers' own ensembling: on this runtime's members (equal
    to diffusers' to 1e-5) it gives exactly what diffusers' ``ensemble_depth`` gives on them.

    diffusers' objective is ill-conditioned and its finite-difference BFGS stops early, so the members' last 1e-6
    moves the objective value it reaches by up to ~1 % (measured 0.04-0.5 % here) and the map by 1e-2: that is the
    reason for the default ``"least_squares"`` method, compared with diffusers loosely here and for stability in
    tests/test_ensemble.py."""
    from unittest import mock

    import scipy.optimize
    from diffusers import MarigoldDepthPipeline

    lat = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(2)).repeat(ensemble, 1, 1, 1)
    lat = lat + 0.3 * torch.randn(ensemble, 4, 6, 8, generator=torch.Generator().manual_seed(8))
    kw = {"num_inference_steps": 1, "processing_resolution": RES, "ensemble_size": ensemble, "latents": lat,
          "output_uncertainty": True, "output_latent": True, "batch_size": 2}
    minimize, reached = scipy.optimize.minimize, []

    def spy(fun, x0, **options):
        res = minimize(fun, x0, **options)
        reached.append(float(res.fun))
        return res

    rec = _Decoded(pipes["ddim"].backend)
    with mock.patch.object(scipy.optimize, "minimize", spy):
        ours = DepthPipeline(rec)(_image(), timestep_spacing="trailing",
                                  ensembling_kwargs={"reduction": reduction, "method": "diffusers"}, **kw)
        theirs = refs["trailing"](_image(), ensembling_kwargs={"reduction": reduction}, **kw)
    assert _max_diff(ours.latent, theirs.latent) <= TOL  # the members
    members = (torch.cat(rec.decoded).clamp(-1, 1) + 1) / 2
    expected, expected_unc = MarigoldDepthPipeline.ensemble_depth(members[:, :, :45, :64], reduction=reduction,
                                                                  output_uncertainty=True)
    resize = refs["trailing"].image_processor.resize_antialias
    assert _max_diff(ours.prediction[0, ..., 0], resize(expected, (H, W), "bilinear", is_aa=False)[0, 0]) <= 1e-6
    assert _max_diff(ours.uncertainty[0, ..., 0], resize(expected_unc, (H, W), "bilinear", is_aa=False)[0, 0]) <= 1e-6
    assert len(reached) == 2 and abs(reached[0] - reached[1]) <= 1e-2 * abs(reached[1])
    assert np.corrcoef(np.ravel(ours.prediction), np.ravel(theirs.prediction))[0, 1] > 0.99


def test_return_dict_false_and_aliases(pipes, refs) -> None:
    pipe = pipes["ddim"]
    pred, unc, lat = pipe(_image(), num_inference_steps=1, processing_resolution=RES, return_dict=False,
                          generator=torch.Generator().manual_seed(0))
    assert pred.shape == (1, H, W, 1) and unc is None and lat is None
    alias = pipe(_image(), steps=1, processing_res=RES, seed=0, timestep_spacing="trailing")
    assert _max_diff(alias.depth, pred[..., 0]) == 0.0
    with pytest.raises(ValueError, match="disagree"):
        pipe(_image(), num_inference_steps=1, steps=2)


@pytest.mark.parametrize("kind", ["numpy", "torch", "torch-uint8", "numpy-batch"])
def test_input_types_as_diffusers(pipes, refs, kind: str) -> None:
    arr = np.asarray(_image(), dtype=np.float32) / 255.0
    image = {"numpy": arr, "torch": torch.from_numpy(arr).permute(2, 0, 1),
             "torch-uint8": torch.from_numpy(np.array(_image())).permute(2, 0, 1)[None],
             "numpy-batch": np.stack([arr, arr[::-1].copy()])}[kind]
    ours, theirs = _both(pipes["ddim"], refs["trailing"], image, "trailing", num_inference_steps=1,
                         processing_resolution=RES, seed=4)
    assert _max_diff(ours.prediction, theirs.prediction) <= TOL


def test_lcm_refuses_a_timestep_spacing(pipes) -> None:
    with pytest.raises(ValueError, match="LCM"):
        pipes["lcm"](_image(), num_inference_steps=1, timestep_spacing="trailing")


# ------------------------------------------------------------------------------------- unsupported schedulers


@pytest.fixture()
def euler_dir(dirs: dict[str, Path], tmp_path: Path) -> Path:
    import shutil

    ckpt = tmp_path / "euler"
    shutil.copytree(dirs["ddim"], ckpt)
    _write_scheduler(ckpt, {**LCM_CONFIG, "_class_name": "EulerDiscreteScheduler"})
    return ckpt


def test_unsupported_scheduler_is_refused_by_the_api(euler_dir: Path) -> None:
    with pytest.raises(ValueError, match="EulerDiscreteScheduler") as err:
        DepthPipeline.from_pretrained(euler_dir)
    assert str(euler_dir / "scheduler" / "scheduler_config.json") in str(err.value)


def test_unsupported_scheduler_is_refused_by_the_clis(euler_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from agdepth.export.cli import main as export_main
    from agdepth.runtime.cli import main as run_main

    (tmp_path / "in").mkdir()
    _image().save(tmp_path / "in" / "a.png")
    r = CliRunner().invoke(run_main, [str(tmp_path / "in"), "--checkpoint", str(euler_dir), "--out",
                                      str(tmp_path / "o")])
    assert r.exit_code == 2 and "EulerDiscreteScheduler" in r.output and "Traceback" not in r.output
    e = CliRunner().invoke(export_main, ["--checkpoint", str(euler_dir), "--out", str(tmp_path / "eng")])
    assert e.exit_code == 1 and "EulerDiscreteScheduler" in e.output and not (tmp_path / "eng").exists()


# ------------------------------------------------------------------------------------------------ ONNX Runtime


@pytest.fixture(scope="module")
def onnx_pipes(dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, DepthPipeline]:
    pytest.importorskip("onnxruntime")
    from agdepth.export import ExportOptions, export_checkpoint

    out = {}
    for kind, ckpt in dirs.items():
        engines = tmp_path_factory.mktemp(f"onnx_{kind}")
        export_checkpoint(ckpt, engines / "e", ExportOptions(max_resolution=RES, max_batch=4), progress=lambda _: None)
        out[kind] = DepthPipeline.from_engine(engines / "e" / "unet.onnx")
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "steps"), SCHEDULES)
def test_onnx_runtime_same_call_same_outputs(onnx_pipes, refs, schedule: str, steps: int) -> None:
    pipe = onnx_pipes["lcm" if schedule == "lcm" else "ddim"]
    assert pipe.backend.schedule.kind == ("lcm" if schedule == "lcm" else "ddim")  # the manifest carries the kind
    spacing = None if schedule == "lcm" else schedule
    images = [_image(0), _image(1)]
    ours, theirs = _both(pipe, refs[schedule], images, spacing, num_inference_steps=steps,
                         processing_resolution=RES, batch_size=2, seeds=[1, 2], output_latent=True)
    assert _max_diff(ours.latent, theirs.latent) <= TOL
    assert _max_diff(ours.prediction, theirs.prediction) <= TOL
