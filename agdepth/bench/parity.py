"""Accuracy parity between backends: network by network through Polygraphy's comparator, and end to end.

Network level: every backend's runner gets the same feeds (:meth:`NetworkSpec.sample_inputs` at the profile's
optimum and, unless the export is static, at a small non-square shape); ``Comparator.compare_accuracy`` checks each
against PyTorch fp32 with metrics suited to dense depth/latent maps rather than only element-wise tolerances: SNR (dB)
and cosine similarity, plus the max absolute difference for reference. TensorRT is compared through the runtime's own
backend. End to end: the depth maps of procedural scenes through each backend's full pipeline (the same initial
latents, drawn on the CPU), AbsRel and δ1 against PyTorch's map (:func:`agdepth.metrics.backend_agreement`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth.export import Manifest
from agdepth.export.tensorrt_build import tensorrt_status
from agdepth.networks import NETWORK_NAMES, NetworkSpec, describe_networks, torch_modules

# pass/fail thresholds of the network comparison (the bundled model's fp16 graphs reach 58-69 dB, fp32 126-135 dB)
SNR_DB = {"fp32": 80.0, "fp16": 40.0, "fp16-trt": 40.0, "tensorrt": 40.0}
COSINE = {"fp32": 0.999999, "fp16": 0.999, "fp16-trt": 0.999, "tensorrt": 0.999}


@dataclass
class ParityReport:
    networks: list[dict[str, Any]] = field(default_factory=list)  # one row per (network, backend)
    end_to_end: list[dict[str, Any]] = field(default_factory=list)  # one row per (setting, backend)

    def markdown(self) -> str:
        lines = ["| network | backend | SNR dB | cosine | max abs diff | passed |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['network']} | {r['backend']} | {r['snr_db']:.1f} | {r['cosine']:.7f} | {r['max_abs']:.1e} | "
                  f"{'yes' if r['passed'] else 'NO'} |" for r in self.networks]
        lines += ["", "| setting | backend | AbsRel % | δ1 % | max abs diff | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['backend']} | {100 * r['abs_rel']:.4f} | {100 * r['delta1']:.2f} | "
                  f"{r['max_abs']:.1e} | {r['seconds']:.2f} |" for r in self.end_to_end]
        return "\n".join(lines)


def _runner(name: str, spec: NetworkSpec, call: Callable[..., torch.Tensor], device: Any = "cpu") -> Any:
    """A Polygraphy runner over ``call`` (the network's inputs as torch tensors on ``device`` -> its output)."""
    from polygraphy.backend.base import BaseRunner

    class TorchCallRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=name, prefix="torch-call-runner")

        def activate_impl(self) -> None:
            pass

        def deactivate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            return _input_metadata(spec)

        def infer_impl(self, feed_dict: dict[str, np.ndarray]) -> OrderedDict:
            t0 = time.perf_counter()
            with torch.no_grad():
                out = call(*(torch.from_numpy(np.ascontiguousarray(feed_dict[n])).to(device)
                             for n in spec.input_names))
            self.inference_time = time.perf_counter() - t0
            return OrderedDict([(spec.output_names[0], np.ascontiguousarray(out.float().cpu().numpy()))])

    return TorchCallRunner()


def _torch_runner(module: torch.nn.Module, spec: NetworkSpec, name: str) -> Any:
    """A CPU PyTorch module (Polygraphy's PytRunner would move the inputs to CUDA)."""
    return _runner(name, spec, module)


def _backend_runner(backend: Any, spec: NetworkSpec, name: str) -> Any:
    """One network call of a :class:`agdepth.runtime.backends.DepthBackend` (for TensorRT: what ``depth-run``
    executes, buffers, padding and all, rather than a second way of running the engine)."""
    call = {"unet": backend.denoise, "vae_encoder": backend.encode, "vae_decoder": backend.decode}[spec.name]
    return _runner(name, spec, call, backend.device)


def _input_metadata(spec: NetworkSpec) -> Any:
    from polygraphy.common import TensorMetadata

    meta = TensorMetadata()
    for t in spec.inputs:
        meta.add(t.name, np.int64 if t.dtype == "int64" else np.float32,
                 tuple(d if isinstance(d, int) else -1 for d in t.dims))
    return meta


def _snr_db(out: np.ndarray, ref: np.ndarray) -> float:
    noise = float(np.mean((out.astype(np.float64) - ref) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.mean(ref.astype(np.float64) ** 2)) / noise)


def compare_networks(manifest: Manifest, checkpoint: Path, log: Callable[[str], None] = print,
                     trt_device: str = "cuda") -> list[dict]:
    """Each network of each exported precision against the PyTorch module it came from (TensorRT's on
    ``trt_device``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator
    from polygraphy.comparator.compare import CosineSimilarityCompareFunc, SnrCompareFunc
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # our table says it; Polygraphy's per-output logs would bury it
    emb_shape = manifest.embedding().shape
    f = int(manifest.data["vae_scale_factor"])
    specs = describe_networks(f, emb_shape[1], emb_shape[2])
    modules = torch_modules(UNet2DConditionModel.from_pretrained(checkpoint / "unet", low_cpu_mem_usage=False),
                            AutoencoderKL.from_pretrained(checkpoint / "vae", low_cpu_mem_usage=False))
    # TensorRT joins when the manifest has engines and this machine can run them (the backend checks them)
    trt_backend = None
    if manifest.data.get("tensorrt") and tensorrt_status().available:
        from agdepth.runtime.backends.tensorrt_backend import TensorRTBackend

        trt_backend = TensorRTBackend(manifest, device=trt_device)
    r = manifest.shapes
    shapes = [(r.opt_batch, r.opt_resolution, r.opt_resolution)]
    if not r.is_static:  # a static export has one shape: its engines take no other
        shapes.append((r.min_batch, r.min_resolution, min(2 * r.min_resolution, r.max_resolution)))
    rows = []
    for name in NETWORK_NAMES:
        spec = specs[name]
        feeds = [OrderedDict((k, v.numpy()) for k, v in spec.sample_inputs(*s, seed=i).items())
                 for i, s in enumerate(shapes)]
        runners = [_torch_runner(modules[name], spec, "pytorch-fp32")]
        for prec in manifest.precisions:
            runners.append(OnnxrtRunner(SessionFromOnnx(str(manifest.path(name, prec))), name=f"onnxruntime-{prec}"))
        if trt_backend is not None:
            runners.append(_backend_runner(trt_backend, spec, "tensorrt-fp16"))
        results = Comparator.run(runners, data_loader=feeds)
        for i in range(1, len(runners)):
            runner_name, iterations = results[i]
            prec = "tensorrt" if runner_name.startswith("tensorrt") else runner_name.split("-", 1)[1]
            ok = all(bool(Comparator.compare_accuracy(results, comparisons=[(0, i)], compare_func=func))
                     for func in (SnrCompareFunc(snr_threshold=SNR_DB[prec]),
                                  CosineSimilarityCompareFunc(cosine_similarity_threshold=COSINE[prec])))
            out = np.concatenate([it[spec.output_names[0]].ravel() for it in iterations])
            ref = np.concatenate([it[spec.output_names[0]].ravel() for it in results[0][1]])
            cos = float(out @ ref / max(np.linalg.norm(out) * np.linalg.norm(ref), 1e-30))
            rows.append({"network": name, "backend": runner_name, "snr_db": _snr_db(out, ref), "cosine": cos,
                         "max_abs": float(np.abs(out - ref).max()), "passed": ok})
            log(f"[{name}] {runner_name}: SNR {rows[-1]['snr_db']:.1f} dB, cosine {cos:.7f}, "
                f"{'passed' if ok else 'FAILED'}")
    return rows


def compare_end_to_end(engines: Path, checkpoint: Path, count: int, settings: list[tuple[int, int]],
                       log: Callable[[str], None] = print, trt_device: str = "cuda") -> list[dict]:
    """Depth of ``count`` test scenes per procedural domain through every backend; PyTorch fp32 is the reference."""
    from agdepth.data.procedural import DOMAINS, render_scene
    from agdepth.metrics import backend_agreement
    from agdepth.runtime import DepthOutput, DepthPipeline

    manifest = Manifest.load(engines)
    from agdepth.runtime.backends.onnx_backend import OnnxBackend

    pipes = {"pytorch-fp32": DepthPipeline.from_checkpoint(checkpoint)}
    for prec in manifest.precisions:
        # NaN/Inf checks on (an fp16 decoder overflow is redone in fp32 and counted in the row)
        pipes[f"onnxruntime-{prec}"] = DepthPipeline(OnnxBackend(manifest, prec, check_finite=True))
    if manifest.data.get("tensorrt") and tensorrt_status().available:
        from agdepth.runtime.backends.tensorrt_backend import TensorRTBackend

        pipes["tensorrt-fp16"] = DepthPipeline(TensorRTBackend(manifest, device=trt_device, check_finite=True))
    r = manifest.shapes
    # a static export is one square canvas: square scenes at its side, so no backend pads and all see the same input
    size, res = ((r.max_resolution, r.max_resolution), r.max_resolution) if r.is_static else ((240, 320), None)
    images = [render_scene(d, i, size=size, split="test").rgb for d in DOMAINS for i in range(count)]
    rows = []
    for steps, ens in settings:
        depth, secs = {}, {}
        # one set of initial latents, drawn on the CPU, for every backend: a seed alone gives other numbers on CUDA
        latents = pipes["pytorch-fp32"].initial_latents(images, ensemble=ens, processing_res=res, seed=0)
        for name, p in pipes.items():
            t0 = time.perf_counter()
            out = p(images, steps=steps, ensemble=ens, processing_res=res, timestep_spacing="trailing",
                    latents=latents, batch_size=0)
            assert isinstance(out, DepthOutput)  # return_dict=True (the default) returns one
            depth[name] = out.depth
            secs[name] = time.perf_counter() - t0
        for name in pipes:
            per = [backend_agreement(a, b) for a, b in zip(depth[name], depth["pytorch-fp32"], strict=True)]
            rows.append({"setting": f"{steps}x{ens} trailing", "backend": name, "seconds": secs[name],
                         "abs_rel": float(np.mean([m["abs_rel"] for m in per])),
                         "delta1": float(np.mean([m["delta1"] for m in per])),
                         "max_abs": float(max(m["max_abs"] for m in per)),
                         "finite": bool(np.isfinite(depth[name]).all()),
                         "fp32_decoder_fallbacks": getattr(pipes[name].backend, "fallbacks", 0)})
            log(f"[{steps}x{ens}] {name}: AbsRel {100 * rows[-1]['abs_rel']:.4f} %, {secs[name]:.2f} s")
    return rows
