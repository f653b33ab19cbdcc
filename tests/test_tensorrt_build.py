"""The TensorRT path's surroundings (TensorRT itself cannot be installed here): detection, names, profiles, messages.

Nothing here builds or runs an engine; these tests never present anything as TensorRT output.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agdepth.export.cli import main as export_main
from agdepth.export.tensorrt_build import engine_file, profiles, tensorrt_status
from agdepth.networks import ShapeRange


def test_detection_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    st = tensorrt_status()
    assert not st.available and "not installed" in st.reason


def _stubs_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install --no-deps tensorrt-stubs` leaves: a `tensorrt/` folder of .pyi files, i.e. an importable
    namespace package with no API."""
    (tmp_path / "site" / "tensorrt").mkdir(parents=True)
    (tmp_path / "site" / "tensorrt" / "__init__.pyi").write_text("class Builder: ...\n__version__: str\n")
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_detection_sees_through_the_stubs_namespace_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stubs_on_path(tmp_path, monkeypatch)
    import tensorrt  # the trap: this succeeds

    assert not hasattr(tensorrt, "Builder")
    st = tensorrt_status()
    assert not st.available and "has no API" in st.reason


def test_detection_needs_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.13.0"  # type: ignore[attr-defined]
    fake.Builder = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    st = tensorrt_status()
    assert not st.available and st.reason == "no CUDA device" and st.version == "10.13.0"


def test_engine_names_carry_version_and_gpu() -> None:
    assert engine_file("unet", "10.13.0", "NVIDIA GeForce RTX 3090") == "unet.trt10.13.0.nvidia-geforce-rtx-3090.plan"
    assert engine_file("vae_decoder", "11.4.0.106", "NVIDIA H100 80GB HBM3") == \
        "vae_decoder.trt11.4.0.106.nvidia-h100-80gb-hbm3.plan"


def test_profiles_from_the_shared_descriptions() -> None:
    r = ShapeRange.for_model(8, max_resolution=1024, opt_resolution=768, max_batch=10, opt_batch=10)
    p = profiles(8, (1, 2, 1024), r)
    assert p["unet"]["sample"] == ((1, 8, 2, 2), (10, 8, 96, 96), (10, 8, 128, 128))
    assert p["unet"]["timestep"] == ((1,), (10,), (10,))
    assert p["vae_encoder"]["image"] == ((1, 3, 16, 16), (10, 3, 768, 768), (10, 3, 1024, 1024))
    assert p["vae_decoder"]["latent"][2] == (10, 4, 128, 128)


@pytest.mark.slow
def test_export_says_in_one_line_why_no_engines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _stubs_on_path(tmp_path, monkeypatch)
    res = CliRunner().invoke(export_main, ["--out", str(tmp_path / "e"), "--fp16", "--max-resolution", "64"])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("TensorRT engines:")]
    assert len(line) == 1 and "has no API" in line[0] and f"depth-export --engines-only {tmp_path / 'e'}" in line[0]
    assert not list((tmp_path / "e").glob("*.plan")) and (tmp_path / "e" / "unet.fp16.onnx").is_file()
    res = CliRunner().invoke(export_main, ["--engines-only", str(tmp_path / "e")])
    assert res.exit_code == 1 and "cannot build TensorRT engines here: the installed `tensorrt`" in res.output


def test_engine_version_and_gpu_mismatch_errors() -> None:
    from agdepth.export.tensorrt_build import TensorRTStatus
    from agdepth.runtime.backends.tensorrt_backend import check_engines

    here = TensorRTStatus(True, "", version="10.13.0", gpu="NVIDIA GeForce RTX 3090")
    info = {"version": "10.13.0", "gpu": "NVIDIA GeForce RTX 3090", "files": {}}
    check_engines(info, here, "engines/manifest.json")  # a match passes
    with pytest.raises(ValueError, match=r"built for TensorRT 10\.8\.0 \(this machine: 10\.13\.0\)"):
        check_engines({**info, "version": "10.8.0"}, here, "engines/manifest.json")
    gpu_msg = r"GPU 'NVIDIA A100' \(this machine: 'NVIDIA GeForce RTX 3090'\).*--engines-only"
    with pytest.raises(ValueError, match=gpu_msg):
        check_engines({**info, "gpu": "NVIDIA A100"}, here, "engines/manifest.json")
    with pytest.raises(FileNotFoundError, match="lists no TensorRT engines"):
        check_engines(None, here, "engines/manifest.json")
    with pytest.raises(RuntimeError, match="cannot run TensorRT engines here: no CUDA device"):
        check_engines(info, TensorRTStatus(False, "no CUDA device"), "engines/manifest.json")


def test_plan_engine_without_tensorrt_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.runtime import DepthPipeline

    _stubs_on_path(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="cannot run TensorRT engines here: the installed `tensorrt` package"):
        DepthPipeline.from_engine(tmp_path / "unet.trt10.13.0.gpu.plan")


@pytest.mark.parametrize("backend_module,cls", [("agdepth.runtime.backends.tensorrt_backend", "TensorRTBackend"),
                                                ("agdepth.runtime.backends.onnx_backend", "OnnxBackend"),
                                                ("agdepth.runtime.backends.torch_backend", "TorchBackend")])
def test_backends_implement_the_interface(backend_module: str, cls: str) -> None:
    # the interface contract, checked on the classes (nothing is run): every member the pipeline uses exists, and the
    # three network calls take the protocol's parameters in its order
    import importlib
    import inspect

    from agdepth.runtime.backends import DepthBackend

    impl = getattr(importlib.import_module(backend_module), cls)
    members = [m for m in dir(DepthBackend) if not m.startswith("_")]
    assert members and all(hasattr(impl, m) for m in members), [m for m in members if not hasattr(impl, m)]
    for call in ("encode", "denoise", "decode", "check_shapes"):
        want = list(inspect.signature(getattr(DepthBackend, call)).parameters)
        assert list(inspect.signature(getattr(impl, call)).parameters) == want, (cls, call)


def test_manifest_round_trip(tmp_path: Path) -> None:
    import json

    from agdepth.export import Manifest

    r = ShapeRange.for_model(4, max_resolution=256, opt_resolution=96, max_batch=10)
    assert ShapeRange.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    data = {"format": "agdepth-engines/1", "shapes": r.to_dict(), "networks": {"fp32": {}},
            "tensorrt": {"version": "10.13.0", "gpu": "NVIDIA GeForce RTX 3090",
                         "files": {"unet": engine_file("unet", "10.13.0", "NVIDIA GeForce RTX 3090")}}}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    m = Manifest.load(tmp_path)
    assert m.data == data and m.shapes == r
    (tmp_path / "manifest.json").write_text(json.dumps({**data, "format": "other/9"}))
    with pytest.raises(ValueError, match="unsupported manifest format 'other/9'"):
        Manifest.load(tmp_path)
