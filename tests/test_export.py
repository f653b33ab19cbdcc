"""depth-export and the ONNX Runtime backend: equal to PyTorch, fp16 within tolerance, manifest, external data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, Manifest, export_checkpoint, sha256
from agdepth.export import onnx_export as ox
from agdepth.export.cli import main as export_main
from agdepth.metrics import backend_agreement
from agdepth.networks import ShapeRange, describe_networks, torch_modules
from agdepth.runtime import DepthPipeline


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eng") / "engines"
    export_checkpoint(default_checkpoint(), out, ExportOptions(fp16=True, max_resolution=160), progress=lambda s: None)
    return out


def _images() -> list[np.ndarray]:
    return [render_scene(d, 1, size=(72, 100), split="test").rgb for d in ("indoor", "forest", "tabletop")]


@pytest.mark.slow
def test_manifest_describes_the_files(engines: Path) -> None:
    m = Manifest.load(engines)
    assert m.precisions == ["fp32", "fp16", "fp16-trt"]  # ONNX Runtime fp32, fp16, and the graphs for TensorRT
    for prec in m.precisions:
        for name in ("unet", "vae_encoder", "vae_decoder"):
            entry = m.network(name, prec)
            assert sha256(engines / entry["file"]) == entry["sha256"]
            onnx.checker.check_model(str(engines / entry["file"]))
    d = m.data
    assert d["shapes"]["resolution"][2] == 160 and d["shapes"]["batch"] == [1, 1, 10]
    assert d["scheduler"]["prediction_type"] == "v_prediction"
    assert d["defaults"]["steps"] == json.loads((default_checkpoint() / "model_index.json").read_text())[
        "default_denoising_steps"]
    assert {"torch", "onnx", "onnxruntime"} <= set(d["versions"])
    assert m.embedding().shape == tuple(d["empty_text_embedding"]["shape"])
    # graph inputs carry the shared descriptions' names and dynamic axes
    g = onnx.load(str(engines / "unet.onnx")).graph
    assert [i.name for i in g.input] == ["sample", "timestep", "encoder_hidden_states"]
    assert [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim][1] == 8
    assert all(d.dim_param for k, d in enumerate(g.input[0].type.tensor_type.shape.dim) if k != 1)


@pytest.mark.slow
def test_onnx_fp32_pipeline_equals_pytorch(engines: Path) -> None:
    images = _images()
    kw = dict(steps=2, ensemble=2, processing_res=0, seed=3)  # native size: 72x100 pads to a non-square latent
    ref = DepthPipeline.from_checkpoint(default_checkpoint())(images, **kw).depth
    out = DepthPipeline.from_engine(engines / "unet.onnx")(images, **kw).depth
    assert np.abs(out - ref).max() <= 1e-4


@pytest.mark.slow
def test_onnx_fp16_depth_within_half_a_percent(engines: Path) -> None:
    images = _images()
    fp32 = DepthPipeline.from_engine(engines / "unet.onnx")(images, seed=0).depth
    pipe16 = DepthPipeline.from_engine(engines / "unet.fp16.onnx")
    assert pipe16.backend.precision == "fp16"
    fp16 = pipe16(images, seed=0).depth
    assert np.isfinite(fp16).all()
    assert np.mean([backend_agreement(a, b)["abs_rel"] for a, b in zip(fp16, fp32, strict=True)]) <= 0.005


@pytest.mark.slow
def test_fp16_graph_keeps_timestep_embedding_and_norms_in_fp32(engines: Path) -> None:
    g = onnx.load(str(engines / "unet.fp16.onnx")).graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in (*g.value_info, *g.output)}
    sin = [n for n in g.node if n.op_type in ("Sin", "Cos")]
    assert sin and all(types.get(n.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in sin)
    norms = [n for n in g.node if n.op_type in ("InstanceNormalization", "Softmax", "LayerNormalization")]
    assert norms and all(types.get(n.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in norms)
    # the bulk of the weights is fp16
    w16 = sum(1 for t in g.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert w16 > 0.8 * len(g.initializer)


def test_external_data_path(tmp_path: Path) -> None:
    # the SD2 U-Net (~3.5 GB) goes past protobuf's 2 GB: force the same path with a threshold of 0 bytes
    ckpt = default_checkpoint()
    from diffusers import AutoencoderKL, UNet2DConditionModel

    modules = torch_modules(UNet2DConditionModel.from_pretrained(ckpt / "unet"),
                            AutoencoderKL.from_pretrained(ckpt / "vae"))
    spec = describe_networks(4, 2, 64)["vae_decoder"]
    model = ox.torch_to_onnx(modules["vae_decoder"], spec, tmp_path / "raw.onnx", spec.sample_inputs(1, 32, 32))
    path = tmp_path / "out" / "vae_decoder.onnx"
    path.parent.mkdir()
    ox.save_onnx(model, path, external_data_threshold=0)
    data = path.with_name("vae_decoder.onnx.data")
    assert data.stat().st_size > 0.9 * ox.initializer_bytes(model)
    assert path.stat().st_size < 0.1 * data.stat().st_size  # the graph file holds no weights
    errors = ox.validate_against_torch(path, modules["vae_decoder"], spec, [(2, 32, 48)], 1e-4)
    assert errors["depth"] < 1e-4


@pytest.mark.slow
def test_validation_fails_loudly_on_a_mismatch(engines: Path) -> None:
    ckpt = default_checkpoint()
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(ckpt / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.bias += 0.01  # a different model than the one exported
    spec = describe_networks(4, 2, 64)["vae_decoder"]
    with pytest.raises(ox.ExportValidationError, match=r"vae_decoder\.onnx.*'depth' differs from PyTorch"):
        ox.validate_against_torch(engines / "vae_decoder.onnx", torch_modules(torch.nn.Identity(), vae)[
            "vae_decoder"], spec, [(1, 32, 32)], 1e-4)


@pytest.mark.slow
def test_shape_range_checks_before_work(engines: Path) -> None:
    pipe = DepthPipeline.from_engine(engines)
    assert pipe.backend.precision == "fp32"
    with pytest.raises(ValueError, match=r"width 256 px outside \[8, 160\]"):
        pipe(_images()[:1], processing_res=256)
    r = ShapeRange.for_model(8, max_resolution=770, opt_resolution=768, max_batch=10)
    assert r.resolution == (16, 768, 776) and r.batch == (1, 1, 10)
    static = ShapeRange.for_model(8, 770, 768, 10, opt_batch=10, static=True)
    assert static.batch == (10, 10, 10) and static.resolution == (768, 768, 768)
    prof = describe_networks(8, 2, 1024)["unet"].profile(r)
    assert prof["sample"] == ((1, 8, 2, 2), (1, 8, 96, 96), (10, 8, 97, 97))
    assert prof["encoder_hidden_states"][2] == (10, 2, 1024)


@pytest.mark.slow
def test_manifest_mismatch_is_a_clear_error(engines: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(engines, bad)
    m = json.loads((bad / "manifest.json").read_text())
    m["networks"]["fp32"]["unet"]["inputs"][0]["dims"][1] = 9
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="unet I/O .* does not match"):
        DepthPipeline.from_engine(bad / "unet.onnx")
    (bad / "vae_decoder.onnx").unlink()
    m["networks"]["fp32"]["unet"]["inputs"][0]["dims"][1] = 8
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FileNotFoundError, match="vae_decoder.onnx is missing"):
        DepthPipeline.from_engine(bad / "unet.onnx")
    (bad / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        DepthPipeline.from_engine(bad / "unet.onnx")


@pytest.mark.slow
def test_depth_export_cli_refuses_to_overwrite(engines: Path) -> None:
    res = CliRunner().invoke(export_main, ["--out", str(engines)])
    assert res.exit_code == 2 and "--overwrite" in res.output


@pytest.mark.slow
def test_default_batching_follows_the_exported_max_batch(engines: Path) -> None:
    # 12 images × 1 member exceed the engines' max batch of 10: batch_size=0 ("all at once") splits to fit, and the
    # result equals a run in explicit chunks
    images = [render_scene("street", i, size=(40, 56), split="test").rgb for i in range(12)]
    pipe = DepthPipeline.from_engine(engines / "unet.onnx")
    lat = torch.randn(12, 4, 17, 24, generator=torch.Generator().manual_seed(0))
    out = pipe(images, ensemble=1, latents=lat, processing_res=96).depth  # 40×56 -> 68×96 px -> 17×24 latents
    chunked = pipe(images, ensemble=1, latents=lat, batch_size=4, processing_res=96).depth
    assert out.shape == (12, 40, 56) and np.abs(out - chunked).max() <= 1e-6
    with pytest.raises(ValueError, match=r"batch 12 outside \[1, 10\]"):
        pipe(images, ensemble=1, latents=lat, batch_size=12, processing_res=96)


@pytest.mark.slow
def test_fp16_overflow_is_detected_and_the_decoder_falls_back_to_fp32(engines: Path) -> None:
    from agdepth.runtime.backends import NonFiniteOutputError
    from agdepth.runtime.backends.onnx_backend import OnnxBackend

    z = torch.full((1, 4, 8, 8), 3e4)  # fp16 activations overflow on this latent; fp32 stays finite
    fp32 = OnnxBackend(engines, "fp32").decode(z)
    assert torch.isfinite(fp32).all()
    assert not torch.isfinite(OnnxBackend(engines, "fp16").decode(z)).all()  # unchecked: the overflow shows
    checked = OnnxBackend(engines, "fp16", check_finite=True)
    torch.testing.assert_close(checked.decode(z), fp32)
    assert checked.fallbacks == 1
    strict = OnnxBackend(engines, "fp16", check_finite=True, fp32_decoder_fallback=False)
    with pytest.raises(NonFiniteOutputError, match=r"vae_decoder \(fp16\) returned NaN/Inf"):
        strict.decode(z)
