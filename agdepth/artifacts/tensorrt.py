"""Whether TensorRT can run here, and the names engines and their timing caches get (not portable across TensorRT
versions and GPUs, so both are in the file names)."""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_VERSION = (10, 1)  # device_memory_size_v2 and set_device_memory(ptr, size) appeared in TensorRT 10.1


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> (10, 13, 0, 35); non-numeric suffixes (``"11.0.0rc1"``) are dropped."""
    return tuple(int(m.group()) for m in (re.match(r"\d+", p) for p in str(version).split(".")) if m)


@dataclass(frozen=True)
class TensorRTStatus:
    available: bool
    reason: str  # why not, when not available
    version: str | None = None
    gpu: str | None = None

    @property
    def major(self) -> int | None:
        return parse_version(self.version)[0] if self.version else None


def tensorrt_status() -> TensorRTStatus:
    """Whether TensorRT engines can be built and run here, and if not, why (one clause).

    Detected by behaviour, not by import success: ``tensorrt-stubs`` creates a ``tensorrt`` namespace package with no
    API, and a TensorRT wheel built for a newer CUDA than the driver supports imports fine but cannot start a runtime.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return TensorRTStatus(False, "TensorRT is not installed")
    except Exception as e:  # e.g. OSError: a libnvinfer the wheel needs is missing
        return TensorRTStatus(False, f"`import tensorrt` failed: {e}")
    version = getattr(trt, "__version__", None)
    if not version or not hasattr(trt, "Builder"):
        return TensorRTStatus(False, "the installed `tensorrt` package has no API (type stubs or a download stub, "
                                     "not TensorRT itself)")
    version = str(version)
    if parse_version(version)[:2] < MIN_VERSION:
        return TensorRTStatus(False, f"TensorRT {version} is too old: agdepth needs TensorRT >= "
                                     f"{'.'.join(map(str, MIN_VERSION))}", version=version)
    import torch

    if not torch.cuda.is_available():
        return TensorRTStatus(False, "no CUDA device", version=version)
    try:
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    except Exception as e:  # pybind raises when createInferRuntime returns null
        runtime, detail = None, f": {e}"
    else:
        detail = ""
    if runtime is None:
        return TensorRTStatus(False, f"TensorRT {version} cannot start a runtime on this machine (typically a wheel "
                                     f"built for a newer CUDA than the driver supports){detail}", version=version)
    return TensorRTStatus(True, "", version=version, gpu=torch.cuda.get_device_name(0))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def engine_file(network: str, trt_version: str, gpu: str) -> str:
    """e.g. ``unet.trt10.13.0.nvidia-geforce-rtx-3090.plan``."""
    return f"{network}.trt{_slug(trt_version)}.{_slug(gpu)}.plan"


FALLBACK_DECODER = "vae_decoder_fp32"  # the fp32 decoder engine, used when the fp16 one overflows


def timing_cache_file(trt_version: str, gpu: str) -> str:
    """e.g. ``timing.trt10.13.0.nvidia-geforce-rtx-3090.cache``: a cache of another TensorRT or GPU is never
    loaded (TensorRT would accept a foreign one without a word)."""
    return f"timing.trt{_slug(trt_version)}.{_slug(gpu)}.cache"


__all__ = ["FALLBACK_DECODER", "MIN_VERSION", "TensorRTStatus", "engine_file", "parse_version", "tensorrt_status",
           "timing_cache_file"]
