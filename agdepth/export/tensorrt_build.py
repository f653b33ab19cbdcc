"""TensorRT engines from the exported fp16 ONNX graphs, through Polygraphy's Python API. Kept thin on purpose.

TensorRT 11 builds strongly typed networks only (precision comes from the ONNX tensor types, no fp16 builder flag), so
the engines are built from ``*.fp16.onnx`` with ``strongly_typed=True`` — which TensorRT 10 accepts too. Profiles come
from the same network descriptions as the export (:meth:`agdepth.networks.NetworkSpec.profile`). Engines are not
portable across GPU models or TensorRT versions: file names carry both, and the manifest records them.

NOT RUN in this project's development environment (no TensorRT builder can be installed there); checked by mypy
against ``tensorrt-stubs`` and by the tests of everything around it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agdepth.networks import NETWORK_NAMES, ShapeRange, describe_networks

TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class TensorRTStatus:
    available: bool
    reason: str  # why not, when not available
    version: str | None = None
    gpu: str | None = None


def tensorrt_status() -> TensorRTStatus:
    """Whether engines can be built here. Detected by real attributes: ``tensorrt-stubs`` creates a ``tensorrt``
    namespace package, so ``import tensorrt`` succeeds with no API in it."""
    try:
        import tensorrt as trt
    except ImportError:
        return TensorRTStatus(False, "TensorRT is not installed")
    version = getattr(trt, "__version__", None)
    if not version or not hasattr(trt, "Builder"):
        return TensorRTStatus(False, "the installed `tensorrt` package has no API (type stubs or a download stub, "
                                     "not TensorRT itself)")
    import torch

    if not torch.cuda.is_available():
        return TensorRTStatus(False, "no CUDA device", version=str(version))
    return TensorRTStatus(True, "", version=str(version), gpu=torch.cuda.get_device_name(0))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def engine_file(network: str, trt_version: str, gpu: str) -> str:
    """e.g. ``unet.trt10.13.0.nvidia-geforce-rtx-3090.plan``."""
    return f"{network}.trt{_slug(trt_version)}.{_slug(gpu)}.plan"


def profiles(vae_scale_factor: int, embedding_shape: tuple[int, ...], shapes: ShapeRange
             ) -> dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]:
    """network -> input -> (min, opt, max): the optimisation profile of each engine."""
    specs = describe_networks(vae_scale_factor, embedding_shape[1], embedding_shape[2])
    return {name: specs[name].profile(shapes) for name in NETWORK_NAMES}


FALLBACK_DECODER = "vae_decoder_fp32"  # the fp32 decoder engine, used when the fp16 one overflows


def build_engines(engines_dir: Path, onnx_files: dict[str, Path], vae_scale_factor: int,
                  embedding_shape: tuple[int, ...], shapes: ShapeRange, optimization_level: int = 3,
                  progress: Any = print) -> dict[str, Any]:
    """Build and save one engine per entry of ``onnx_files`` (the three networks' fp16 graphs, and optionally
    :data:`FALLBACK_DECODER` -> the fp32 decoder graph); returns the manifest's ``tensorrt`` entry.
    Needs TensorRT and a CUDA device."""
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, Profile, engine_from_network, network_from_onnx_path, save_engine

    status = tensorrt_status()
    if not status.available:
        raise RuntimeError(f"cannot build TensorRT engines: {status.reason}")
    assert status.version is not None and status.gpu is not None
    cache = engines_dir / TIMING_CACHE
    files = {}
    profs = profiles(vae_scale_factor, embedding_shape, shapes)
    profs[FALLBACK_DECODER] = profs["vae_decoder"]
    for name, onnx_path in onnx_files.items():
        prof = profs[name]
        profile = Profile()
        for tensor, (mn, opt, mx) in prof.items():
            profile.add(tensor, min=mn, opt=opt, max=mx)
        # GroupNorm arrives as InstanceNormalization: the native implementation, not the legacy plugin
        network = network_from_onnx_path(str(onnx_path), flags=[trt.OnnxParserFlag.NATIVE_INSTANCENORM],
                                         strongly_typed=True)
        config = CreateConfig(profiles=[profile], builder_optimization_level=optimization_level,
                              load_timing_cache=str(cache) if cache.is_file() else None)
        progress(f"[{name}] building TensorRT {status.version} engine for {status.gpu} ...")
        engine = engine_from_network(network, config=config, save_timing_cache=str(cache))
        path = engines_dir / engine_file(name, status.version, status.gpu)
        save_engine(engine, path=str(path))
        files[name] = path.name
    return {"version": status.version, "gpu": status.gpu, "files": files, "shapes": shapes.to_dict(),
            "optimization_level": optimization_level, "timing_cache": TIMING_CACHE}
