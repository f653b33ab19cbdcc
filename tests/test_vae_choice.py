"""The VAE choice (full, light, light-encoder, light-decoder): one switch per prediction on every backend, in the
Python API (``DepthPipeline(vae=)``, ``from_pretrained(dir, vae=)``, ``pipe(..., vae=)``) and the CLIs (``--vae``);
the light networks in the export (ONNX fp32/fp16, validated) and the manifest's list of variants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from agdepth import default_checkpoint
from agdepth.artifacts.checkpoint import load_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, Manifest, export_checkpoint
from agdepth.metrics import backend_agreement
from agdepth.networks import VAE_CHOICES, describe_light_networks, light_modules
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends.onnx_backend import OnnxBackend
from agdepth.runtime.cli import main as run_main

BUNDLED = default_checkpoint()
RES = 64  # the bundled model's processing resolution: 64x64 inputs are neither resized nor padded


@pytest.fixture(scope="module")
def pipe() -> DepthPipeline:
    return DepthPipeline.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return render_scene("forest", 0, size=(RES, RES), split="test").rgb


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    out = tmp_path_factory.mktemp("vae_choice") / "engines"
    return export_checkpoint(BUNDLED, out, ExportOptions(fp16=True, max_resolution=RES, max_batch=2),
                             progress=lambda _: None)


@pytest.fixture(scope="module")
def no_light(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled checkpoint without its light VAE (and without the model_index entries that name it)."""
    ckpt = tmp_path_factory.mktemp("no_light") / "ckpt"
    shutil.copytree(BUNDLED, ckpt, ignore=shutil.ignore_patterns("vae_light"))
    index = json.loads((ckpt / "model_index.json").read_text())
    index.pop("vae_light")
    index["agdepth"].pop("vae", None)
    (ckpt / "model_index.json").write_text(json.dumps(index))
    return ckpt


def _latents(pipe: DepthPipeline, image: np.ndarray) -> list[torch.Tensor]:
    return pipe.initial_latents([image], ensemble=1, processing_res=RES, seed=3)


def test_the_bundled_model_offers_every_choice(pipe: DepthPipeline) -> None:
    assert pipe.backend.vae_variants == tuple(VAE_CHOICES)
    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index["vae_light"] == ["diffusers", "AutoencoderTiny"]
    assert pipe.backend.defaults.vae == index["agdepth"].get("vae", "full")


def test_each_choice_runs_its_own_encoder_and_decoder(pipe: DepthPipeline, image: np.ndarray) -> None:
    """The final latents depend on the encoder only, the depth map on both: light-decoder shares full's latents,
    light-encoder shares light's; the light decoder's output is the prediction (clipped to [-1, 1], mapped to
    [0, 1]) of the latents it was given."""
    lat = _latents(pipe, image)
    out = {v: pipe([image], latents=lat, vae=v, output_latent=True) for v in VAE_CHOICES}
    assert torch.equal(out["full"].latent, out["light-decoder"].latent)
    assert torch.equal(out["light"].latent, out["light-encoder"].latent)
    assert not torch.equal(out["full"].latent, out["light"].latent)
    light = light_modules(load_checkpoint(BUNDLED).extra["vae_light"])["vae_decoder_light"]
    with torch.no_grad():
        want = ((light(out["light"].latent).clamp(-1, 1) + 1) / 2)[0, 0].numpy()
    np.testing.assert_allclose(out["light"].depth[0], want, atol=1e-6)
    for v in ("light", "light-encoder", "light-decoder"):  # a different map, of the same scene
        assert not np.array_equal(out[v].depth, out["full"].depth)
        assert backend_agreement(out[v].depth[0], out["full"].depth[0])["abs_rel"] < 0.5


def test_the_pipelines_choice_is_the_default_and_a_call_overrides_it(pipe: DepthPipeline,
                                                                      image: np.ndarray) -> None:
    light = DepthPipeline.from_pretrained(BUNDLED, vae="light")
    lat = _latents(pipe, image)
    np.testing.assert_array_equal(light([image], latents=lat).prediction,
                                  pipe([image], latents=lat, vae="light").prediction)
    np.testing.assert_array_equal(light([image], latents=lat, vae="full").prediction,
                                  pipe([image], latents=lat, vae="full").prediction)


def test_the_checkpoint_default_comes_from_model_index() -> None:
    index = {"agdepth": {"vae": "light"}}
    d = RuntimeDefaults.from_model_index(index)
    assert d.vae == "light"
    assert RuntimeDefaults.from_model_index(d.model_index_entries()).vae == "light"
    assert "vae" not in RuntimeDefaults().model_index_entries()["agdepth"]  # the full VAE needs no entry
    with pytest.raises(ValueError, match="light-decoder"):
        RuntimeDefaults.from_model_index({"agdepth": {"vae": "tiny"}})


def test_an_unknown_or_missing_choice_is_refused_naming_the_choices(pipe: DepthPipeline, image: np.ndarray,
                                                                    no_light: Path) -> None:
    with pytest.raises(ValueError, match="full, light, light-encoder, light-decoder"):
        pipe([image], vae="taesd")
    with pytest.raises(ValueError, match="no light VAE.*distill-vae"):
        DepthPipeline.from_pretrained(no_light, vae="light")
    plain = DepthPipeline.from_pretrained(no_light)
    assert plain.backend.vae_variants == ("full",)
    with pytest.raises(ValueError, match="no light VAE"):
        plain([image], vae="light-decoder")


# ------------------------------------------------------------------------------------------------ export


def test_the_export_lists_the_light_networks_and_their_variants(engines: Manifest) -> None:
    assert engines.data["vae_variants"] == list(VAE_CHOICES)
    specs = describe_light_networks(int(engines.data["vae_scale_factor"]))
    for prec in ("fp32", "fp16", "fp16-trt"):
        for name, spec in specs.items():
            entry = engines.network(name, prec)
            assert (engines.root / entry["file"]).is_file()
            assert [t["name"] for t in entry["inputs"]] == spec.input_names
            assert [t["name"] for t in entry["outputs"]] == spec.output_names
            assert max(entry["max_error_vs_torch"].values()) <= (1e-4 if prec == "fp32" else 5e-2)
    check = engines.data["fp16_check"]
    assert 0 <= check["light"]["abs_rel"] <= 0.005  # fp16 light depth within 0.5 % AbsRel of fp32


def test_onnx_runtime_runs_every_choice_as_pytorch_does(engines: Manifest, pipe: DepthPipeline,
                                                        image: np.ndarray) -> None:
    ort = DepthPipeline(OnnxBackend(engines, "fp32"))
    assert ort.backend.vae_variants == tuple(VAE_CHOICES)
    lat = _latents(pipe, image)
    for v in VAE_CHOICES:
        np.testing.assert_allclose(ort([image], latents=lat, vae=v).depth, pipe([image], latents=lat, vae=v).depth,
                                   atol=1e-4)
    half = DepthPipeline.from_engine(engines.root / "unet.fp16.onnx", vae="light")
    err = backend_agreement(half([image], latents=lat).depth[0], ort([image], latents=lat, vae="light").depth[0])
    assert err["abs_rel"] <= 0.005


def test_onnx_runtime_opens_the_other_vae_on_first_use(engines: Manifest, image: np.ndarray) -> None:
    backend = OnnxBackend(engines, "fp32")
    default = backend.defaults.vae
    other = "full" if default != "full" else "light"
    enc, dec = VAE_CHOICES[other]
    assert enc not in backend.sessions and dec not in backend.sessions
    DepthPipeline(backend)([image], vae=other)
    assert enc in backend.sessions and dec in backend.sessions


# ------------------------------------------------------------------------------------------------ CLIs


def test_depth_run_vae_flag_writes_the_apis_depth(tmp_path: Path, pipe: DepthPipeline, image: np.ndarray,
                                                  no_light: Path) -> None:
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(image).save(src / "a.png")
    res = CliRunner().invoke(run_main, [str(src), "--out", str(tmp_path / "out"), "--vae", "light", "--formats",
                                        "npy", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "light VAE" in res.output
    lat = pipe.initial_latents([image], 1, RES, seed=0)  # image 0 of the run: seed + 0
    want = pipe([image], latents=lat, vae="light").depth[0]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a_depth.npy"), want, atol=1e-6)
    bad = CliRunner().invoke(run_main, [str(src), "--out", str(tmp_path / "out2"), "--vae", "light",
                                        "--checkpoint", str(no_light), "--device", "cpu"])
    assert bad.exit_code == 2 and "no light VAE" in bad.output
    assert not (tmp_path / "out2" / "a_depth.npy").exists()
