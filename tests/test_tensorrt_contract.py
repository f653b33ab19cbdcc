"""The TensorRT path against TensorRT's contract, without a GPU: engine build, backend, CUDA graphs and parity run on
a fake TensorRT that enforces the API's preconditions (``tests/fake_tensorrt.py``). Engines of the fake run the
exported ONNX graphs in ONNX Runtime, so the backend's output can be compared with ONNX Runtime on the same graphs:
what is tested is everything around the engine (shapes, addresses, buffers, padding, graphs, fallbacks), never
TensorRT's kernels.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import fake_tensorrt as fake
import numpy as np
import pytest
import torch

from agdepth import default_checkpoint
from agdepth.export import TENSORRT_PRECISION, ExportOptions, Manifest, build_engines_only, export_checkpoint
from agdepth.export.tensorrt_build import FALLBACK_DECODER, engine_file, profiles, tensorrt_status
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends import NonFiniteOutputError
from agdepth.runtime.backends.onnx_backend import OnnxBackend

RTX = "NVIDIA GeForce RTX 3090"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp16 exports of the bundled model made without TensorRT: dynamic (up to 64 px, 4 rows) and static (2 rows of
    64x64)."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind, opts in (("dynamic", ExportOptions(fp16=True, max_resolution=64, max_batch=4)),
                       ("static", ExportOptions(fp16=True, max_resolution=64, opt_resolution=64, opt_batch=2,
                                                static=True))):
        export_checkpoint(default_checkpoint(), root / kind, opts, progress=lambda _: None)
        out[kind] = root / kind
    return out


def _built(exports: dict[str, Path], kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           version: str = "10.13.0.35", log: list[str] | None = None) -> Manifest:
    """A copy of an export with engines built by the fake TensorRT ``version`` (installed for the test)."""
    fake.install(monkeypatch, version=version, gpu=RTX)
    d = tmp_path / kind
    if not d.exists():
        shutil.copytree(exports[kind], d)
    return build_engines_only(d, progress=(log.append if log is not None else lambda _: None))


def _images() -> list[np.ndarray]:
    from agdepth.data.procedural import render_scene

    return [render_scene(d, 0, size=(48, 64), split="test").rgb for d in ("indoor", "tabletop")]


# ------------------------------------------------------------------------------------------------ build


@pytest.mark.slow
def test_build_follows_the_contract(exports: dict[str, Path], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    m = _built(exports, "dynamic", tmp_path, monkeypatch, log=log)
    builds = {b["onnx"]: b for b in fake.STATE.builds}
    # the five networks (the light VAE's two too) from the graphs made for TensorRT, the fallback decoder from the
    # fp32 graph
    nets = ("unet", "vae_encoder", "vae_decoder", "vae_encoder_light", "vae_decoder_light")
    assert set(builds) == {f"{n}.{TENSORRT_PRECISION}.onnx" for n in nets} | {"vae_decoder.onnx"}
    want = profiles(int(m.data["vae_scale_factor"]), tuple(m.data["empty_text_embedding"]["shape"]), m.shapes)
    for name, onnx_name in (("unet", "unet.fp16-trt.onnx"), ("vae_encoder", "vae_encoder.fp16-trt.onnx"),
                            ("vae_decoder", "vae_decoder.fp16-trt.onnx"), (FALLBACK_DECODER, "vae_decoder.onnx")):
        b = builds[onnx_name]
        assert b["strongly_typed"] and int(fake.OnnxParserFlag.NATIVE_INSTANCENORM) in b["flags"]
        assert not b["config"].get("fp16"), "strongly typed networks take their precision from the graph"
        assert b["profile"] == want["vae_decoder" if name == FALLBACK_DECODER else name]
        assert m.data["tensorrt"]["files"][name] == engine_file(name, "10.13.0.35", RTX)
        assert (m.root / m.data["tensorrt"]["files"][name]).is_file()
        est = m.data["tensorrt"]["memory_estimate"][name]
        assert est["weights_bytes"] > 0 and est["attention_scores_bytes"] > 0
    for name in ("vae_encoder_light", "vae_decoder_light"):  # profiles of the networks they stand in for
        assert builds[f"{name}.{TENSORRT_PRECISION}.onnx"]["profile"] == want[name.removesuffix("_light")]
        assert m.data["tensorrt"]["files"][name] == engine_file(name, "10.13.0.35", RTX)
    # engines are written as the builder's bytes: nothing deserialised (and kept on the GPU) during the build
    assert fake.STATE.deserialised == []
    assert m.data["tensorrt"]["timing_cache"] == "timing.trt10.13.0.35.nvidia-geforce-rtx-3090.cache"
    assert all(b["timing_cache"].endswith(m.data["tensorrt"]["timing_cache"]) for b in builds.values())
    assert sum("memory estimate at the largest shape" in line for line in log) == 6


@pytest.mark.slow
def test_unet_estimate_counts_the_unfused_attention_scores(exports: dict[str, Path]) -> None:
    from agdepth.export.memory import estimate_engine_memory

    m = Manifest.load(exports["dynamic"])
    r = m.shapes
    emb = m.embedding().shape
    lat = r.max_resolution // int(m.data["vae_scale_factor"])
    est = estimate_engine_memory(m.path("unet", TENSORRT_PRECISION), {
        "sample": (r.max_batch, 8, lat, lat), "timestep": (r.max_batch,), "encoder_hidden_states": (r.max_batch,
                                                                                                 *emb[1:])})
    batch, heads, q, k = est.attention_scores_shape
    assert (batch, q, k) == (r.max_batch, lat * lat, lat * lat)  # self-attention at full latent resolution
    assert est.attention_scores_bytes == batch * heads * q * k * 2 and est.attention_dtype == "float16"


@pytest.mark.slow
def test_tensorrt_graphs_keep_attention_in_one_precision(exports: dict[str, Path]) -> None:
    import onnx

    m = Manifest.load(exports["dynamic"])

    def softmax_neighbours(path: Path) -> set[str]:
        g = onnx.load(str(path), load_external_data=False).graph
        producer = {o: n for n in g.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        found = set()
        for n in g.node:
            if n.op_type == "Softmax":
                found.add(producer[n.input[0]].op_type)
                found.update(c.op_type for c in consumers.get(n.output[0], []))
        return found

    for name in ("unet", "vae_encoder", "vae_decoder"):
        assert "Cast" not in softmax_neighbours(m.path(name, TENSORRT_PRECISION)), name
        assert "Cast" in softmax_neighbours(m.path(name, "fp16")), name  # ONNX Runtime's fp16 keeps fp32 Softmax
    assert "Softmax" not in m.network("unet", TENSORRT_PRECISION)["fp32_ops"]


@pytest.mark.slow
def test_tensorrt_11_build_without_the_deprecated_flag(exports: dict[str, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        m = _built(exports, "dynamic", tmp_path, monkeypatch, version="11.4.0.106")
    assert fake.STATE.builds and not any(b["strongly_typed"] for b in fake.STATE.builds)
    assert m.data["tensorrt"]["files"]["unet"] == "unet.trt11.4.0.106.nvidia-geforce-rtx-3090.plan"


@pytest.mark.slow
def test_a_foreign_timing_cache_is_never_loaded(exports: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _built(exports, "dynamic", tmp_path, monkeypatch, version="10.13.0.35")
    _built(exports, "dynamic", tmp_path, monkeypatch, version="10.14.1.48")  # a TensorRT upgrade, same directory
    # the fake refuses a cache of another version; the upgrade starts a cache of its own and reuses only that
    assert fake.STATE.builds[0]["config"]["load_timing_cache"] is None
    assert fake.STATE.loaded_caches and all("trt10.14.1.48" in c for c in fake.STATE.loaded_caches)
    assert len(list((tmp_path / "dynamic").glob("timing.trt*.cache"))) == 2


# ------------------------------------------------------------------------------------------------ availability


def test_availability_needs_a_runtime_that_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    st = fake.install(monkeypatch)
    assert tensorrt_status().available and tensorrt_status().gpu == RTX
    st.runtime_fails = True  # e.g. a CUDA 13 wheel on a driver that only knows CUDA 12
    status = tensorrt_status()
    assert not status.available and "cannot start a runtime" in status.reason and status.version == "10.13.0.35"


def test_availability_needs_tensorrt_10_1(monkeypatch: pytest.MonkeyPatch) -> None:
    fake.install(monkeypatch, version="10.0.1.6")
    status = tensorrt_status()
    assert not status.available and "10.0.1.6 is too old" in status.reason and ">= 10.1" in status.reason


@pytest.mark.slow
def test_engines_of_another_tensorrt_say_rebuild(exports: dict[str, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "dynamic", tmp_path, monkeypatch, version="10.13.0.35")
    fake.install(monkeypatch, version="11.4.0.106", gpu=RTX)
    with pytest.raises(ValueError, match=r"built for TensorRT 10\.13\.0\.35 \(this machine: 11\.4\.0\.106\).*rebuild"):
        DepthPipeline.from_engine(m.root / m.data["tensorrt"]["files"]["unet"], device="cpu")
    # a manifest that claims this version over a plan that is not: TensorRT returns None, the error says rebuild
    m.data["tensorrt"]["version"] = "11.4.0.106"
    (m.root / "manifest.json").write_text(json.dumps(m.data))
    with pytest.raises(RuntimeError, match="could not deserialise this engine.*--engines-only"):
        DepthPipeline.from_engine(m.root / m.data["tensorrt"]["files"]["unet"], device="cpu")


# ------------------------------------------------------------------------------------------------ backend


def _pipelines(m: Manifest) -> tuple[DepthPipeline, DepthPipeline]:
    trt = DepthPipeline.from_engine(m.root / m.data["tensorrt"]["files"]["unet"], device="cpu")
    ort = DepthPipeline(OnnxBackend(m, TENSORRT_PRECISION))  # the same graphs in ONNX Runtime
    return trt, ort


def _unet_args(backend: Any, rows: int = 2, size: int = 64) -> list[torch.Tensor]:
    """U-Net inputs of ``rows`` rows at size x size px, in the order ``denoise`` takes them."""
    spec = backend.specs["unet"]
    inputs = spec.sample_inputs(rows, size, size)
    return [inputs[n] for n in spec.input_names]


@pytest.mark.slow
def test_backend_returns_what_the_engines_compute(exports: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "dynamic", tmp_path, monkeypatch)
    trt, ort = _pipelines(m)
    images = _images()
    assert trt.backend.vae_variants == ort.backend.vae_variants == ("full", "light", "light-encoder",
                                                                    "light-decoder")
    for ens, vae in ((1, "full"), (3, "full"), (1, "light"), (2, "light-decoder")):
        # both backends on host memory here: the same seed draws the same noise
        a = trt(images, ensemble=ens, steps=2, seed=1, vae=vae).depth
        b = ort(images, ensemble=ens, steps=2, seed=1, vae=vae).depth
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert trt.backend.fallbacks == 0


@pytest.mark.slow
def test_an_lcm_manifest_runs_lcm_on_tensorrt(exports: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler kind travels in the manifest: engines exported from an LCM checkpoint run LCM's timesteps and
    between-step noise on TensorRT exactly as on ONNX Runtime."""
    from agdepth.schedule import NoiseSchedule

    m = _built(exports, "dynamic", tmp_path, monkeypatch)
    lcm = NoiseSchedule(kind="lcm", set_alpha_to_one=True, steps_offset=1)
    m.data["scheduler"] = lcm.to_diffusers_config()
    (m.root / "manifest.json").write_text(json.dumps(m.data))
    trt, ort = _pipelines(Manifest.load(m.root))
    assert trt.backend.schedule.kind == ort.backend.schedule.kind == "lcm"
    images = _images()
    a = trt(images, num_inference_steps=2, generator=torch.Generator().manual_seed(4)).depth
    b = ort(images, num_inference_steps=2, generator=torch.Generator().manual_seed(4)).depth
    np.testing.assert_allclose(a, b, atol=1e-6)
    again = ort(images, num_inference_steps=2, generator=torch.Generator().manual_seed(5)).depth
    assert np.abs(again - b).max() > 1e-4  # another seed: other initial and between-step noise


@pytest.mark.slow
def test_fp16_decoder_overflow_falls_back_by_default(exports: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "dynamic", tmp_path, monkeypatch)
    fake.STATE.nan_engines = {f"vae_decoder.{TENSORRT_PRECISION}.onnx"}
    trt = DepthPipeline.from_engine(m.root / m.data["tensorrt"]["files"]["unet"], device="cpu")  # the CLI's path
    ref = DepthPipeline(OnnxBackend(m, "fp32"))
    images = _images()
    depth = trt(images, seed=0, batch_size=2, vae="full").depth  # both images in one decoder call
    assert np.isfinite(depth).all() and trt.backend.fallbacks == 1
    # the U-Net and encoder still ran in fp16; only the decoder was redone in fp32
    assert np.abs(depth - ref(images, seed=0, batch_size=2, vae="full").depth).max() < 0.05
    fake.STATE.nan_engines = {f"vae_decoder_light.{TENSORRT_PRECISION}.onnx"}  # the light decoder has no fp32 engine
    with pytest.raises(NonFiniteOutputError, match="vae_decoder_light"):
        trt(images, seed=0, vae="light")
    fake.STATE.nan_engines = {f"vae_decoder.{TENSORRT_PRECISION}.onnx"}
    del m.data["tensorrt"]["files"][FALLBACK_DECODER]  # without the fp32 engine: an error naming the network
    (m.root / "manifest.json").write_text(json.dumps(m.data))
    trt = DepthPipeline.from_engine(m.root / m.data["tensorrt"]["files"]["unet"], device="cpu")
    with pytest.raises(NonFiniteOutputError, match="vae_decoder"):
        trt(images, seed=0, vae="full")


@pytest.mark.slow
def test_static_engines_run_the_pipelines_real_calls(exports: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "static", tmp_path, monkeypatch)
    trt, ort = _pipelines(m)
    assert trt.backend.cuda_graphs
    one = _images()[:1]  # one non-square 48x64 image: 1 row to encode on a 2-row engine, padded to the canvas
    for ens in (1, 2, 3):
        a = trt(one, ensemble=ens, seed=2).depth
        assert a.shape == (1, 48, 64) and np.isfinite(a).all()
        np.testing.assert_allclose(a, ort(one, ensemble=ens, seed=2).depth, atol=1e-6)
    assert trt.backend.static_size == (64, 64)
    with pytest.raises(ValueError, match="static.*processing_res must be 64"):
        trt(one, processing_res=32)


@pytest.mark.slow
def test_graphed_unet_checks_every_call(exports: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "static", tmp_path, monkeypatch)
    trt, ort = _pipelines(m)
    be = trt.backend
    args = _unet_args(be)
    first = be.denoise(*args)  # warm-up + capture
    replay = be.denoise(*args)
    np.testing.assert_array_equal(first.numpy(), replay.numpy())
    n_graph_runs = len(fake.STATE.executions)
    one_row = [a[1:] for a in args]
    row = be.denoise(*one_row)  # a later 1-row call: padded, replayed, one row back
    assert len(fake.STATE.executions) == n_graph_runs + 1
    assert row.shape[0] == 1
    np.testing.assert_allclose(row.numpy(), ort.backend.denoise(*one_row).numpy(), atol=1e-6)


@pytest.mark.slow
def test_graphed_unet_checks_for_nan(exports: dict[str, Path], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    m = _built(exports, "static", tmp_path, monkeypatch)
    fake.STATE.nan_engines = {f"unet.{TENSORRT_PRECISION}.onnx"}
    trt, _ = _pipelines(m)
    args = _unet_args(trt.backend)
    for _ in range(2):  # the captured call and a replay
        with pytest.raises(NonFiniteOutputError, match="unet"):
            trt.backend.denoise(*args)


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.slow
def test_network_parity_on_static_engines(exports: dict[str, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.bench.parity import compare_networks

    m = _built(exports, "static", tmp_path, monkeypatch)
    rows = compare_networks(m, default_checkpoint(), log=lambda _: None, trt_device="cpu")
    trt = [r for r in rows if r["backend"] == "tensorrt-fp16"]
    assert [r["network"] for r in trt] == ["unet", "vae_encoder", "vae_decoder"]
    assert all(r["passed"] for r in rows), rows


@pytest.mark.slow
def test_end_to_end_parity_feeds_every_backend_the_same_cpu_latents(exports: dict[str, Path], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.bench.parity import compare_end_to_end

    m = _built(exports, "dynamic", tmp_path, monkeypatch)
    seen: dict[str, list] = {}
    original = DepthPipeline.__call__

    def recording(self: DepthPipeline, images, **kwargs):  # type: ignore[no-untyped-def]
        seen.setdefault(type(self.backend).__name__ + str(getattr(self.backend, "precision", "")), []).append(
            kwargs.get("latents"))
        return original(self, images, **kwargs)

    monkeypatch.setattr(DepthPipeline, "__call__", recording)
    rows = compare_end_to_end(m.root, default_checkpoint(), count=1, settings=[(1, 2)], log=lambda _: None,
                              trt_device="cpu")
    assert {r["backend"] for r in rows} >= {"pytorch-fp32", "onnxruntime-fp32", "tensorrt-fp16"}
    first = [calls[0] for calls in seen.values()]
    assert len(first) == len(rows) and all(lat is not None for lat in first)
    for lat in first[1:]:
        assert all(a.device.type == "cpu" and torch.equal(a, b) for a, b in zip(lat, first[0], strict=True))
    trt_row = next(r for r in rows if r["backend"] == "tensorrt-fp16")
    ort_row = next(r for r in rows if r["backend"] == f"onnxruntime-{TENSORRT_PRECISION}")
    assert trt_row["abs_rel"] == pytest.approx(ort_row["abs_rel"], abs=1e-6)  # same graphs, same noise


# ------------------------------------------------------------------------------------------------ the fake itself


@pytest.mark.slow
def test_the_fake_enforces_the_preconditions(exports: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # the contract tests above prove something only if the fake refuses what TensorRT refuses
    m = _built(exports, "dynamic", tmp_path, monkeypatch)
    trt = fake.tensorrt_module()
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine((m.root / m.data["tensorrt"]["files"]["vae_decoder"])
                                                               .read_bytes())
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    latent = torch.zeros(1, 4, 8, 8)
    out = torch.empty(1, 1, 32, 32)
    assert not ctx.set_input_shape("latent", (1, 4, 64, 64))  # beyond the profile's maximum
    assert tuple(ctx.get_tensor_shape("depth")) == (-1, -1, -1, -1)  # unknown until every input shape is set
    with pytest.raises(fake.ContractViolation, match="device_memory_size_v2"):
        ctx.set_device_memory(1, engine.device_memory_size_v2 - 1)
    scratch = torch.empty(engine.device_memory_size_v2, dtype=torch.uint8)
    ctx.set_device_memory(scratch.data_ptr(), scratch.numel())
    assert ctx.set_input_shape("latent", tuple(latent.shape))
    assert tuple(ctx.get_tensor_shape("depth")) == (1, 1, 32, 32)
    ctx.set_tensor_address("latent", latent.data_ptr())
    with pytest.raises(fake.ContractViolation, match="addresses not set"):
        ctx.execute_async_v3(fake.FakeStream().cuda_stream)
    ctx.set_tensor_address("depth", out.data_ptr())
    with pytest.raises(fake.ContractViolation, match="default stream"):
        ctx.execute_async_v3(0)
    stream, graph = fake.FakeStream(), fake.FakeCUDAGraph()
    with pytest.raises(fake.ContractViolation, match="warm-up"), fake._graph(graph, stream=stream):
        ctx.execute_async_v3(stream.cuda_stream)
    assert ctx.execute_async_v3(stream.cuda_stream) and torch.isfinite(out).all()  # warm-up: now capturable
    fake.STATE.version = "10.14.1.48"  # another TensorRT cannot load the plan
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine((m.root / m.data["tensorrt"]["files"]["unet"])
                                                             .read_bytes()) is None
