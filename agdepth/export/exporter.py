"""Export a checkpoint's networks to ONNX (fp32, and fp16 on request), validate them against PyTorch, and write the
engines directory the runtime reads (its layout: :mod:`agdepth.artifacts.manifest`).

The networks: the U-Net, the VAE's encoder and decoder, and the light VAE's encoder and decoder when the checkpoint
has a ``vae_light/`` (:mod:`agdepth.light_vae`); the manifest's ``vae_variants`` lists the VAE choices they allow."""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth.artifacts.manifest import (
    EMBEDDING_NPY,
    MANIFEST_FORMAT,
    TENSORRT_PRECISION,
    Manifest,
    foreign_files,
    onnx_file,
    sha256,
    write_manifest,
)
from agdepth.artifacts.tensorrt import tensorrt_status
from agdepth.networks import (
    ShapeRange,
    describe_light_networks,
    describe_networks,
    light_modules,
    torch_modules,
    vae_scale_factor,
    vae_variants,
)

logger = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4  # per network, relative_error against PyTorch
FP16_NETWORK_TOLERANCE = 5e-2  # per network: fp16 rounding through a deep graph; the end-to-end check is the real bar
FP16_DEPTH_TOLERANCE = 0.005  # end to end: AbsRel between fp16 and fp32 depth maps (0.5 %)


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxslim

    from agdepth import __version__

    return {"agdepth": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxslim": onnxslim.__version__,
            "python": platform.python_version()}


@dataclass
class ExportOptions:
    fp16: bool = False
    max_resolution: int = 1024
    opt_resolution: int | None = None  # None: the checkpoint's default processing resolution
    min_resolution: int | None = None
    max_batch: int = 10  # the paper's ensemble size
    opt_batch: int | None = None  # None: the checkpoint's default ensemble size
    static: bool = False
    opset: int = 17
    external_data_threshold: int | None = None  # None: onnx_export.EXTERNAL_DATA_THRESHOLD
    fp16_tolerance: float = FP16_DEPTH_TOLERANCE
    engines: bool = True  # build TensorRT engines from the fp16 graphs when TensorRT and a CUDA device are present
    extra: dict[str, Any] = field(default_factory=dict)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, options: ExportOptions | None = None,
                      progress: Callable[[str], None] = print) -> Manifest:
    """Export, clean, (fp16-convert,) validate and describe the checkpoint's networks in ``out_dir``.

    The directory is written atomically: on any validation failure nothing is left behind.
    """
    from agdepth.artifacts.checkpoint import atomic_dir, checkpoint_schedule, load_checkpoint
    from agdepth.export import onnx_export as ox
    from agdepth.runtime.backends import RuntimeDefaults

    opts = options or ExportOptions()
    checkpoint = Path(checkpoint)
    models = load_checkpoint(checkpoint)
    index = models.extra.get("model_index") or {}
    sched_cfg = models.extra.get("scheduler_config") or {}
    defaults = RuntimeDefaults.from_model_index(index, sched_cfg)
    f = vae_scale_factor(models.vae)
    emb = models.empty_text_embedding.float()
    specs = describe_networks(f, emb.shape[1], emb.shape[2])
    modules = torch_modules(models.unet.eval(), models.vae.eval())
    if "vae_light" in models.extra:
        specs.update(describe_light_networks(f))
        modules.update(light_modules(models.extra["vae_light"]))
    max_res = max(opts.max_resolution, opts.opt_resolution or 0)
    opt_res = opts.opt_resolution or min(defaults.processing_resolution or max_res, max_res)  # 0 = native size
    shapes = ShapeRange.for_model(f, max_res, opt_res, opts.max_batch,
                                  opts.opt_batch or min(defaults.ensemble_size, opts.max_batch), opts.min_resolution,
                                  opts.static)
    # validation shapes: the profile's optimum, and a small non-square one (exercises both dynamic sides)
    checks = [(shapes.opt_batch, shapes.opt_resolution, shapes.opt_resolution),
              (shapes.min_batch, shapes.min_resolution, max(shapes.min_resolution, min(2 * shapes.min_resolution,
                                                                                       shapes.max_resolution)))]
    odd = (shapes.opt_resolution // f) | 1  # an odd latent size (see the trace below), non-square
    if not opts.static and (odd + 2) * f <= shapes.max_resolution:
        checks.append((shapes.opt_batch, odd * f, (odd + 2) * f))
    if opts.static:
        checks = checks[:1]
    threshold = ox.EXTERNAL_DATA_THRESHOLD if opts.external_data_threshold is None else opts.external_data_threshold
    precisions = ["fp32", "fp16", TENSORRT_PRECISION] if opts.fp16 else ["fp32"]
    networks: dict[str, dict[str, Any]] = {p: {} for p in precisions}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        for name in specs:
            spec, module = specs[name], modules[name]
            progress(f"[{name}] exporting to ONNX (opset {opts.opset}) ...")
            # trace at an odd latent size: diffusers' U-Net then sizes each upsampling from the skip tensor's shape
            # (a dynamic Resize in the graph) instead of a fixed 2x, so latents not divisible by 2^levels work too
            sample = spec.sample_inputs(shapes.opt_batch, odd * f, odd * f)
            model = ox.torch_to_onnx(module, spec, tmp / f".{name}.raw.onnx", sample, opts.opset)
            for leftover in tmp.glob(f".{name}.raw.onnx*"):
                leftover.unlink()
            for prec in precisions:
                m = model if prec == "fp32" else ox.to_fp16(model, softmax_fp32=prec != TENSORRT_PRECISION)
                path = tmp / onnx_file(name, prec)
                ox.save_onnx(m, path, threshold)
                tol = FP32_TOLERANCE if prec == "fp32" else FP16_NETWORK_TOLERANCE
                errors = ox.validate_against_torch(path, module, spec, checks, tol)
                data = path.with_name(path.name + ".data")
                networks[prec][name] = {
                    "file": path.name,
                    "sha256": sha256(path),
                    "external_data": {"file": data.name, "sha256": sha256(data)} if data.exists() else None,
                    "io_dtype": "float32",
                    "compute_dtype": "float32" if prec == "fp32" else "float16",
                    "fp32_ops": [] if prec == "fp32" else [*ox.fp32_ops(prec != TENSORRT_PRECISION),
                                                           "timestep embedding"],
                    "inputs": [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in spec.inputs],
                    "outputs": [{"name": t.name, "dtype": t.dtype, "dims": list(t.dims)} for t in spec.outputs],
                    "max_error_vs_torch": errors,
                }
                worst = max(errors.values())
                progress(f"[{name}] {prec}: {path.name} ({path.stat().st_size / 2**20:.1f} MiB"
                         f"{' + external data' if data.exists() else ''}), max error vs PyTorch {worst:.1e}")
        np.save(tmp / EMBEDDING_NPY, emb.numpy())
        emb_hash = sha256(tmp / EMBEDDING_NPY)
        manifest = {
            "format": MANIFEST_FORMAT,
            "source_checkpoint": {"path": str(checkpoint), "model_index": index.get("agdepth", {})},
            "vae_scale_factor": f,
            "shapes": shapes.to_dict(),
            "static": opts.static,
            "networks": networks,
            "vae_variants": list(vae_variants(specs)),
            # the schedule the PyTorch backend runs (a checkpoint without a scheduler config gets Marigold's), with
            # its _class_name (the kind: DDIM or LCM); a manifest without one is read as DDIM
            "scheduler": {k: v for k, v in checkpoint_schedule(sched_cfg).to_diffusers_config().items()
                          if k == "_class_name" or not k.startswith("_")},
            "defaults": defaults.to_dict(),
            "empty_text_embedding": {"file": EMBEDDING_NPY, "shape": list(emb.shape), "sha256": emb_hash},
            "opset": opts.opset,
            "versions": library_versions(),
            **opts.extra,
        }
        write_manifest(tmp, manifest)
        if opts.fp16 and opts.engines and tensorrt_status().available:
            manifest["tensorrt"] = _build_from_manifest(Manifest(tmp, manifest), progress)
            write_manifest(tmp, manifest)
        if opts.fp16:
            progress("[fp16] end-to-end check against fp32 ...")
            manifest["fp16_check"] = fp16_depth_check(Manifest(tmp, manifest), checkpoint, opts.fp16_tolerance)
            write_manifest(tmp, manifest)
            check = manifest["fp16_check"]
            light = f", light VAE {check['light']['abs_rel']:.2e}" if "light" in check else ""
            progress(f"[fp16] depth AbsRel vs fp32 {check['abs_rel']:.2e}{light} "
                     f"(tolerance {opts.fp16_tolerance:.0e}), outputs finite")
    return Manifest(out_dir, manifest)


def _build_from_manifest(manifest: Manifest, progress: Callable[[str], None]) -> dict[str, Any]:
    from agdepth.export.tensorrt_build import FALLBACK_DECODER, build_engines

    # exports made before the TensorRT graphs existed: their ONNX Runtime fp16 graphs
    prec = TENSORRT_PRECISION if TENSORRT_PRECISION in manifest.precisions else "fp16"
    onnx_files = {name: manifest.path(name, prec) for name in manifest.data["networks"][prec]}
    onnx_files[FALLBACK_DECODER] = manifest.path("vae_decoder", "fp32")  # for fp16 overflows at run time
    info = build_engines(manifest.root, onnx_files, int(manifest.data["vae_scale_factor"]),
                         tuple(manifest.data["empty_text_embedding"]["shape"]), manifest.shapes, progress=progress)
    # TensorRTBackend checks each plan against these before deserialising (TensorRT would run a modified one)
    info["sha256"] = {name: sha256(manifest.root / file) for name, file in info["files"].items()}
    return info


def build_engines_only(engines_dir: str | Path, progress: Callable[[str], None] = print) -> Manifest:
    """TensorRT engines for an existing ``depth-export --fp16`` directory (e.g. exported elsewhere, built on the
    target GPU); the manifest gains a ``tensorrt`` entry. Raises RuntimeError naming why when TensorRT is missing."""
    manifest = Manifest.load(engines_dir)
    if "fp16" not in manifest.precisions:
        raise ValueError(f"{manifest.root}: TensorRT engines are built from the fp16 graphs: re-export with --fp16")
    manifest.data["tensorrt"] = _build_from_manifest(manifest, progress)
    write_manifest(manifest.root, manifest.data)
    return manifest


def fp16_depth_check(manifest: Manifest, checkpoint: Path, tolerance: float) -> dict[str, Any]:
    """Depth of procedural scenes through the fp32 and the fp16 graphs (same noise, the checkpoint's defaults), with
    the full VAE and, when exported, the light one: NaN/Inf anywhere or an AbsRel between the two above ``tolerance``
    fails the export. Returns the full VAE's errors at the top level and the light VAE's under ``"light"``."""
    from agdepth.data.procedural import render_scene
    from agdepth.export.onnx_export import ExportValidationError
    from agdepth.metrics import backend_agreement
    from agdepth.runtime.backends.onnx_backend import OnnxBackend
    from agdepth.runtime.pipeline import DepthPipeline

    images = [render_scene(d, 0, size=(96, 128), split="test").rgb for d in ("indoor", "street", "tabletop")]
    res = min(manifest.shapes.opt_resolution, manifest.shapes.max_resolution)
    variants = [v for v in ("full", "light") if v in manifest.data.get("vae_variants", ["full"])]
    depth: dict[str, dict[str, Any]] = {v: {} for v in variants}
    latents = None
    for prec in [p for p in ("fp32", "fp16", TENSORRT_PRECISION) if p in manifest.precisions]:
        pipe = DepthPipeline(OnnxBackend(manifest, prec))
        latents = latents or pipe.initial_latents(images, processing_res=res, seed=0)
        for vae in variants:
            depth[vae][prec] = d = pipe(images, processing_res=res, latents=latents, vae=vae).depth
            if not np.isfinite(d).all():
                raise ExportValidationError(f"{prec} depth ({vae} VAE) has NaN/Inf")
    out: dict[str, Any] = {}
    for vae in variants:
        errors = {}
        for prec, d in depth[vae].items():
            if prec == "fp32":
                continue
            pairs = zip(d, depth[vae]["fp32"], strict=True)
            errors[prec] = err = float(np.mean([backend_agreement(a, b)["abs_rel"] for a, b in pairs]))
            if not err <= tolerance:
                raise ExportValidationError(
                    f"{prec} depth ({vae} VAE) differs from fp32 by AbsRel {err:.2e} > {tolerance:.0e}: keep fp32 "
                    "for this model, or add ops to the fp32 list (agdepth.export.onnx_export.FP16_BLOCKED_OPS)"
                )
        entry = {"abs_rel": errors["fp16"], "abs_rel_per_precision": errors}
        if vae == "full":
            out.update(entry)
        else:
            out[vae] = entry
    return {**out, "tolerance": tolerance, "images": len(images), "processing_resolution": res}


__all__ = ["ExportOptions", "Manifest", "build_engines_only", "export_checkpoint", "foreign_files", "onnx_file"]
