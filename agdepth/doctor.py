"""``depth-doctor``: what this machine can run (PyTorch, CUDA, TensorRT, ONNX Runtime), one line per finding.

    depth-doctor            # paste its output into bug reports

Always exits 0: a missing piece is a finding, not an error. Heavy modules are imported inside each probe, and a probe
that fails unexpectedly prints ``<name>: error: <exception>`` instead of a traceback.
"""

from __future__ import annotations

import platform
import re
import subprocess
from collections.abc import Callable
from importlib import metadata

import click

NVIDIA_SMI_TIMEOUT_S = 10
POLYGRAPHY_MIN = (0, 53)
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


def _installed(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def probe_agdepth() -> list[str]:
    import agdepth

    return [f"agdepth: {agdepth.__version__}",
            f"python: {platform.python_version()} ({platform.platform()})"]


def probe_torch() -> list[str]:
    import torch

    return [f"torch: {torch.__version__}, CUDA build {torch.version.cuda or 'none (CPU build)'}"]


def probe_cuda_device() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["CUDA device: none (torch.cuda.is_available() is False)"]
    props = torch.cuda.get_device_properties(0)
    line = (f"CUDA device: {props.name}, {props.total_memory // 2**20} MiB, "
            f"compute capability {props.major}.{props.minor}")
    more = torch.cuda.device_count() - 1
    return [line + (f" (+{more} more)" if more > 0 else "")]


def probe_driver() -> list[str]:
    cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except FileNotFoundError:
        return ["NVIDIA driver: none (nvidia-smi not found)"]
    except subprocess.TimeoutExpired:
        return [f"NVIDIA driver: error: nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S} s"]
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return [f"NVIDIA driver: error: nvidia-smi exited with {done.returncode}"
                + (f": {detail[0]}" if detail else "")]
    versions = list(dict.fromkeys(v.strip() for v in done.stdout.splitlines() if v.strip()))
    return [f"NVIDIA driver: {', '.join(versions) or 'unknown (nvidia-smi printed nothing)'}"]


def probe_tensorrt() -> list[str]:
    from agdepth.artifacts.tensorrt import engine_file, tensorrt_status

    status = tensorrt_status()
    if status.available:
        assert status.version is not None and status.gpu is not None
        return [f"TensorRT: {status.version}, runtime starts",
                f"engine file names: {engine_file('unet', status.version, status.gpu)}"]
    line = f"TensorRT: not usable: {status.reason}"
    if status.version and status.version not in status.reason:
        line += f" (TensorRT {status.version} installed)"
    return [line, f"engine file names: n/a ({status.reason})"]


def probe_onnxruntime() -> list[str]:
    dists = [d for d in ORT_DISTRIBUTIONS if _installed(d) is not None]
    lines = []
    try:
        import onnxruntime as ort
    except ImportError:
        lines.append('ONNX Runtime: not installed (pip install "agdepth[cpu]" or "agdepth[gpu]")')
    else:
        from onnxruntime.capi import build_and_package_info as build

        cuda = getattr(build, "cuda_version", None)  # recorded by CUDA builds since 1.21
        origin = " + ".join(dists) or "distribution unknown"
        lines.append(f"ONNX Runtime: {ort.__version__} ({origin}{f', CUDA build {cuda}' if cuda else ''}), "
                     f"providers: {', '.join(ort.get_available_providers())}")
        torch_cuda = _torch_cuda()
        if cuda and torch_cuda and cuda.split(".")[0] != torch_cuda.split(".")[0]:
            lines.append(f"ONNX Runtime warning: built for CUDA {cuda} but torch for CUDA {torch_cuda}: its CUDA "
                         'provider may not load; reinstall with the matching extra ("agdepth[gpu]" for CUDA 12, '
                         '"agdepth[gpu-cu13]" for CUDA 13)')
    if len(dists) > 1:
        lines.append("ONNX Runtime warning: both onnxruntime and onnxruntime-gpu are installed and share one module "
                     "folder: pip uninstall -y onnxruntime onnxruntime-gpu, then reinstall one "
                     '(pip install "agdepth[cpu]" or "agdepth[gpu]")')
    return lines


def _torch_cuda() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.version.cuda


def probe_polygraphy() -> list[str]:
    try:
        import polygraphy
    except ImportError:
        return ["Polygraphy: not installed"]
    version = str(polygraphy.__version__)
    too_old = tuple(int(p) for p in re.findall(r"\d+", version)[:2]) < POLYGRAPHY_MIN
    return [f"Polygraphy: {version}"
            + (f" (too old: agdepth needs >= {'.'.join(map(str, POLYGRAPHY_MIN))})" if too_old else "")]


PROBES: list[tuple[str, Callable[[], list[str]]]] = [
    ("agdepth", probe_agdepth),
    ("torch", probe_torch),
    ("CUDA device", probe_cuda_device),
    ("NVIDIA driver", probe_driver),
    ("TensorRT", probe_tensorrt),
    ("ONNX Runtime", probe_onnxruntime),
    ("Polygraphy", probe_polygraphy),
]


def findings() -> list[str]:
    """Every probe's lines; a probe that raises gives ``<name>: error: <exception>``."""
    lines = []
    for name, probe in PROBES:
        try:
            found = probe()
        except Exception as e:  # a diagnosis tool reports what broke and carries on
            found = [f"{name}: error: {type(e).__name__}: {e}"]
        lines += [_one_line(line) for line in found]
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Print what this machine can run (PyTorch, CUDA, TensorRT, ONNX Runtime, Polygraphy), for bug reports."""
    for line in findings():
        click.echo(line)


if __name__ == "__main__":
    main()
