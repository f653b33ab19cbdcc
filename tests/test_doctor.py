"""depth-doctor: one line per finding, always exit 0, never a traceback. TensorRT and CUDA are faked where needed
(neither exists here); the lines checked are the ones a user pastes into a bug report."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import HANG_GUARD_S

from agdepth import doctor

GPU = "NVIDIA GeForce RTX 3090"


def run_doctor() -> list[str]:
    result = CliRunner().invoke(doctor.main, [])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output.splitlines()


def lines_starting(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix)]


def fake_tensorrt(runtime_fails: bool = False) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.13.0"  # type: ignore[attr-defined]

    class Logger:
        ERROR = 1
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    def runtime(logger: Logger) -> object:
        if runtime_fails:
            raise TypeError("pybind11::init(): factory function returned nullptr")
        return object()

    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.Builder = object  # type: ignore[attr-defined]
    trt.Runtime = runtime  # type: ignore[attr-defined]
    return trt


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    props = types.SimpleNamespace(name=GPU, total_memory=24 * 2**30, major=8, minor=6)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: GPU)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)


def test_every_line_is_a_named_finding() -> None:
    lines = run_doctor()
    for prefix in ("agdepth:", "python:", "torch:", "CUDA device:", "NVIDIA driver:", "TensorRT:", "engine file names:",
                   "ONNX Runtime:", "Polygraphy:"):
        assert len(lines_starting(lines, prefix)) == 1, (prefix, lines)
    assert all(": " in line for line in lines)


@pytest.mark.skipif(torch.cuda.is_available(), reason="describes a machine without CUDA")
def test_this_machine_without_cuda() -> None:
    lines = run_doctor()
    (cuda,) = lines_starting(lines, "CUDA device:")
    assert "none" in cuda
    (trt,) = lines_starting(lines, "TensorRT:")
    assert "not usable" in trt
    assert lines_starting(lines, "engine file names:")[0].startswith("engine file names: n/a (")
    assert lines_starting(lines, "torch:")[0].endswith(f"CUDA build {torch.version.cuda or 'none (CPU build)'}")


def test_cuda_hidden_means_no_device_and_no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines = run_doctor()
    assert lines_starting(lines, "CUDA device:") == ["CUDA device: none (torch.cuda.is_available() is False)"]
    (trt,) = lines_starting(lines, "TensorRT:")
    assert trt.startswith("TensorRT: not usable: ")


def test_fake_tensorrt_on_a_fake_gpu(monkeypatch: pytest.MonkeyPatch, fake_gpu: None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    lines = run_doctor()
    assert lines_starting(lines, "TensorRT:") == ["TensorRT: 10.13.0, runtime starts"]
    assert lines_starting(lines, "engine file names:") == [
        "engine file names: unet.trt10.13.0.nvidia-geforce-rtx-3090.plan"]
    assert lines_starting(lines, "CUDA device:") == [f"CUDA device: {GPU}, 24576 MiB, compute capability 8.6"]


def test_tensorrt_that_cannot_start_a_runtime(monkeypatch: pytest.MonkeyPatch, fake_gpu: None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(runtime_fails=True))
    lines = run_doctor()
    (trt,) = lines_starting(lines, "TensorRT:")
    assert trt.startswith("TensorRT: not usable: ") and "cannot start" in trt and "10.13.0" in trt
    assert lines_starting(lines, "engine file names:")[0].startswith("engine file names: n/a (")


def test_tensorrt_installed_without_a_gpu_names_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (trt,) = lines_starting(run_doctor(), "TensorRT:")
    assert trt.startswith("TensorRT: not usable: ") and "10.13.0" in trt


def test_onnxruntime_line_names_the_providers() -> None:
    ort = pytest.importorskip("onnxruntime")
    (line,) = lines_starting(run_doctor(), "ONNX Runtime:")
    assert line.startswith(f"ONNX Runtime: {ort.__version__} (")
    for provider in ort.get_available_providers():
        assert provider in line


def test_onnxruntime_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    (line,) = lines_starting(run_doctor(), "ONNX Runtime:")
    assert line == 'ONNX Runtime: not installed (pip install "agdepth[cpu]" or "agdepth[gpu]")'


def test_both_onnxruntime_distributions_are_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "_installed", lambda dist: "1.0.0")
    lines = run_doctor()
    (warning,) = lines_starting(lines, "ONNX Runtime warning:")
    assert "onnxruntime-gpu" in warning and "uninstall" in warning


def test_old_polygraphy_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    polygraphy = pytest.importorskip("polygraphy")
    monkeypatch.setattr(polygraphy, "__version__", "0.49.9")
    assert lines_starting(run_doctor(), "Polygraphy:") == ["Polygraphy: 0.49.9 (too old: agdepth needs >= 0.53)"]


def test_a_failing_probe_is_one_error_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> bool:
        raise RuntimeError("CUDA driver initialization failed\nsecond line")

    monkeypatch.setattr(torch.cuda, "is_available", broken)
    lines = run_doctor()
    assert lines_starting(lines, "CUDA device:") == [
        "CUDA device: error: RuntimeError: CUDA driver initialization failed second line"]
    assert len(lines_starting(lines, "Polygraphy:")) == 1  # the probes after it still ran


def _fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    script = tmp_path / "bin" / "nvidia-smi"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # a busy machine may be slow to start even a shell script: only the hanging test's own short timeout may expire
    monkeypatch.setattr(doctor, "NVIDIA_SMI_TIMEOUT_S", HANG_GUARD_S)


def test_driver_version_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, 'echo "550.54.14"; echo "550.54.14"')  # two GPUs, one driver
    assert lines_starting(run_doctor(), "NVIDIA driver:") == ["NVIDIA driver: 550.54.14"]


def test_nvidia_smi_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, "echo \"NVIDIA-SMI has failed because it couldn't communicate with the "
                                            "NVIDIA driver.\" >&2; exit 9")
    (line,) = lines_starting(run_doctor(), "NVIDIA driver:")
    assert line.startswith("NVIDIA driver: error: nvidia-smi exited with 9: NVIDIA-SMI has failed")


def test_nvidia_smi_hanging_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, monkeypatch, "exec sleep 60")
    monkeypatch.setattr(doctor, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    (line,) = lines_starting(run_doctor(), "NVIDIA driver:")
    assert line == "NVIDIA driver: error: nvidia-smi did not answer within 0.5 s"


def test_no_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: nothing to run
    assert lines_starting(run_doctor(), "NVIDIA driver:") == ["NVIDIA driver: none (nvidia-smi not found)"]
