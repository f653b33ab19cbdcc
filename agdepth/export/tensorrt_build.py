"""TensorRT engines from the exported fp16 ONNX graphs, through Polygraphy's Python API. Kept thin on purpose.

TensorRT 11 builds strongly typed networks only (precision comes from the ONNX tensor types, no fp16 builder flag), so
the engines are built from ``*.fp16.onnx`` with ``strongly_typed=True`` — which TensorRT 10 accepts too. Profiles come
from the same network descriptions as the export (:meth:`agdepth.networks.NetworkSpec.profile`). Engines are not
portable across GPU models or TensorRT versions: file names carry both, and the manifest records them.

Checked without a GPU by contract tests against recording fakes of TensorRT and of these Polygraphy loaders
(``tests/fake_tensorrt.py``), and by mypy against ``tensorrt-stubs`` and Polygraphy (``make typecheck``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agdepth.artifacts.tensorrt import (  # noqa: F401  (re-exported: the build's names)
    FALLBACK_DECODER,
    MIN_VERSION,
    TensorRTStatus,
    engine_file,
    parse_version,
    tensorrt_status,
    timing_cache_file,
)
from agdepth.networks import ShapeRange, describe_light_networks, describe_networks


def profiles(vae_scale_factor: int, embedding_shape: tuple[int, ...], shapes: ShapeRange
             ) -> dict[str, dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]]:
    """network -> input -> (min, opt, max): the optimisation profile of each engine (the light VAE's too)."""
    specs = {**describe_networks(vae_scale_factor, embedding_shape[1], embedding_shape[2]),
             **describe_light_networks(vae_scale_factor)}
    return {name: spec.profile(shapes) for name, spec in specs.items()}


def build_engines(engines_dir: Path, onnx_files: dict[str, Path], vae_scale_factor: int,
                  embedding_shape: tuple[int, ...], shapes: ShapeRange, optimization_level: int = 3,
                  progress: Any = print) -> dict[str, Any]:
    """Build and save one engine per entry of ``onnx_files`` (network -> the graph built for TensorRT, and
    optionally :data:`FALLBACK_DECODER` -> the fp32 decoder graph); returns the manifest's ``tensorrt`` entry.

    Each engine is serialised by the builder and written as bytes (never deserialised here, so nothing stays on the
    GPU between builds). Before each build the memory it needs at the profile's largest shape is estimated and
    printed. Needs TensorRT and a CUDA device.
    """
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile

    status = tensorrt_status()
    if not status.available:
        raise RuntimeError(f"cannot build TensorRT engines: {status.reason}")
    assert status.version is not None and status.gpu is not None
    import tensorrt as trt

    from agdepth.export.memory import estimate_engine_memory
    from agdepth.imageio import write_bytes_atomic

    cache = engines_dir / timing_cache_file(status.version, status.gpu)
    files, estimates = {}, {}
    profs = profiles(vae_scale_factor, embedding_shape, shapes)
    profs[FALLBACK_DECODER] = profs["vae_decoder"]
    # TensorRT 11 networks are always strongly typed (the flag is deprecated there and ignored); TensorRT 10 needs it,
    # or it may run the fp16 graph's layers in fp32
    typed = {"strongly_typed": True} if (status.major or 0) < 11 else {}
    for name, onnx_path in onnx_files.items():
        prof = profs[name]
        profile = Profile()
        for tensor, (mn, opt, mx) in prof.items():
            profile.add(tensor, min=mn, opt=opt, max=mx)
        est = estimate_engine_memory(onnx_path, {t: mx for t, (_, _, mx) in prof.items()})
        estimates[name] = est.to_dict()
        progress(f"[{name}] {est.describe()}")
        # GroupNorm arrives as InstanceNormalization: the native implementation, not the legacy plugin
        network = NetworkFromOnnxPath(str(onnx_path), flags=[trt.OnnxParserFlag.NATIVE_INSTANCENORM], **typed)
        config = CreateConfig(profiles=[profile], builder_optimization_level=optimization_level,
                              load_timing_cache=str(cache) if cache.is_file() else None)
        progress(f"[{name}] building TensorRT {status.version} engine for {status.gpu} ...")
        plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache))()
        path = engines_dir / engine_file(name, status.version, status.gpu)
        write_bytes_atomic(path, bytes(plan))
        del plan, network, config
        progress(f"[{name}] {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
        files[name] = path.name
    return {"version": status.version, "gpu": status.gpu, "files": files, "shapes": shapes.to_dict(),
            "optimization_level": optimization_level, "timing_cache": cache.name, "memory_estimate": estimates}
