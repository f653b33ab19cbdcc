"""Latency per stage and backend: every backend runs the same pipeline on the same images, in one process.

Per repeat the pipeline's own stage clock (:data:`agdepth.runtime.pipeline.STAGES`) gives preprocess, VAE encode,
U-Net (all steps), VAE decode, ensembling and postprocess; writing the 16-bit PNGs is timed here as ``write``. A
proxy around the backend adds up the time spent inside network calls, so the runtime's own overhead (everything but
the networks: preprocessing, noise, DDIM arithmetic, ensembling, resizing, writing) is measured rather than inferred.
Peak memory: host RSS high-water mark (Linux ``VmHWM``, reset before each backend) and, on CUDA, torch's peak
allocation.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth.runtime.pipeline import STAGES, DepthPipeline

TORCH_BACKENDS = ("torch", "torch-fp16")
ONNX_BACKENDS = {"onnx-fp32": "fp32", "onnx-fp16": "fp16"}
BACKENDS = ("torch", "onnx-fp32", "onnx-fp16", "tensorrt", "torch-fp16")
TIMED = (*STAGES, "write", "networks", "overhead", "total")


@dataclass(frozen=True)
class LatencySettings:
    resolution: int  # processing resolution (longer side, px); the test images are rendered at this size
    steps: int
    ensemble: int
    spacing: str
    vae: str | None = None  # the VAE choice (None: the model's default)
    seed: int = 0  # noise seed of the first run (warm-up included); run i uses seed + i
    images: int = 1  # images per pipeline call
    batch_size: int = 0  # the pipeline's batch_size: at most this many rows per network call (0 = all at once)
    warmup: int = 1
    repeats: int = 5


class TimedBackend:
    """Forwards everything to ``backend`` and adds up the wall time of its network calls (CUDA-synchronised), and
    counts the calls per network (``calls_by_network``: encode, denoise = U-Net, decode)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.network_seconds = 0.0
        self.calls = 0
        self.calls_by_network = {"encode": 0, "denoise": 0, "decode": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def _sync(self) -> None:
        if self._backend.device.type == "cuda":
            torch.cuda.synchronize(self._backend.device)

    def _timed(self, network: str, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        self._sync()
        t0 = time.perf_counter()
        out = fn(*args)
        self._sync()
        self.network_seconds += time.perf_counter() - t0
        self.calls += 1
        self.calls_by_network[network] += 1
        return out

    def encode(self, rgb: torch.Tensor, network: str = "vae_encoder") -> torch.Tensor:
        return self._timed("encode", lambda x: self._backend.encode(x, network), rgb)

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self._timed("denoise", self._backend.denoise, sample, timestep, text)

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        return self._timed("decode", lambda z: self._backend.decode(z, network), latent)


def _read_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def peak_host_rss() -> Iterator[dict[str, float | None]]:
    """Yields a dict that holds ``peak_rss_mib`` after the block: the process's RSS high-water mark during it
    (reset on entry through ``/proc/self/clear_refs``; None where that is not available)."""
    result: dict[str, float | None] = {"peak_rss_mib": None}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        ok = True
    except OSError:
        ok = False
    yield result
    hwm = _read_hwm_kib() if ok else None
    result["peak_rss_mib"] = None if hwm is None else hwm / 1024


def bench_images(count: int, resolution: int) -> list[np.ndarray]:
    """Procedural unseen-domain test images (uint8 RGB) at resolution², so preprocessing does no resampling."""
    from agdepth.data.procedural import EVAL_DOMAINS, render_scene

    return [render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i // len(EVAL_DOMAINS), size=(resolution, resolution),
                         split="test").rgb for i in range(count)]


def _pcts(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90))}


def measure(pipe: DepthPipeline, s: LatencySettings, images: list[np.ndarray] | None = None,
            out_dir: Path | None = None, pipeline_batch_size: int | None = None) -> dict[str, Any]:
    """Time ``s.repeats`` runs (after ``s.warmup``) of ``pipe`` on ``images`` (default: ``s.images`` test images):
    seconds per stage as p50/p90, U-Net seconds per denoising step, images/s, the overhead share, peak memory.

    ``pipeline_batch_size`` overrides ``s.batch_size`` as the pipeline's ``batch_size`` (rows per network call;
    0 = all at once); None uses ``s.batch_size``.
    """
    from agdepth.imageio import write_depth_png16

    images = images if images is not None else bench_images(s.images, s.resolution)
    batch_size = s.batch_size if pipeline_batch_size is None else pipeline_batch_size
    timed = TimedBackend(pipe.backend)
    run = DepthPipeline(timed)  # type: ignore[arg-type]  # a structural stand-in for the backend
    device = pipe.backend.device
    samples: dict[str, list[float]] = {k: [] for k in TIMED}
    with tempfile.TemporaryDirectory() as tmp, peak_host_rss() as mem:
        target = out_dir or Path(tmp)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(s.warmup + s.repeats):
            timed.network_seconds = 0.0
            out = run(images, steps=s.steps, ensemble=s.ensemble, processing_res=s.resolution,
                      timestep_spacing=s.spacing, vae=s.vae, seed=s.seed + i, batch_size=batch_size)
            t0 = time.perf_counter()
            for j, depth in enumerate(out.depth):  # new files each run, as depth-run writes (no overwrite)
                write_depth_png16(target / f"{i}_{j}.png", depth)
            write = time.perf_counter() - t0
            if i < s.warmup:
                continue
            for k in STAGES:
                samples[k].append(out.timings[k])
            total = out.timings["total"] + write
            samples["write"].append(write)
            samples["networks"].append(timed.network_seconds)
            samples["overhead"].append(total - timed.network_seconds)
            samples["total"].append(total)
    stages = {k: _pcts(v) for k, v in samples.items()}
    overhead_share = [o / t for o, t in zip(samples["overhead"], samples["total"], strict=True)]
    result: dict[str, Any] = {
        "stages": stages,
        "unet_per_step_p50": stages["unet"]["p50"] / s.steps,
        "images_per_s": len(images) / stages["total"]["p50"],
        "overhead_fraction_p50": statistics.median(overhead_share),
        "peak_rss_mib": mem["peak_rss_mib"],
        "device_peak_mib": (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "network_calls_per_run": timed.calls // (s.warmup + s.repeats),
        "unet_calls_per_run": timed.calls_by_network["denoise"] // (s.warmup + s.repeats),
    }
    return result


# ------------------------------------------------------------------------------------------------ backends


@dataclass
class BackendChoice:
    name: str
    pipeline: DepthPipeline | None
    skipped: str | None = None  # why a requested backend did not run


def sd2_random_defaults() -> Any:
    """Inference settings of ``--random-weights sd2``: Marigold's 768 px at 1 step trailing (no checkpoint to ask)."""
    from agdepth.runtime.backends import RuntimeDefaults

    return RuntimeDefaults(steps=1, processing_resolution=768, ensemble_size=1, timestep_spacing="trailing")


def checkpoint_defaults(checkpoint: Path | None, random_weights: str | None) -> Any:
    """A checkpoint's inference defaults read from its JSON files, without loading any weights."""
    import json

    from agdepth import default_checkpoint
    from agdepth.artifacts.checkpoint import read_model_index
    from agdepth.runtime.backends import RuntimeDefaults

    if random_weights is not None:
        return sd2_random_defaults()
    ckpt = Path(checkpoint or default_checkpoint())
    sched = ckpt / "scheduler" / "scheduler_config.json"
    return RuntimeDefaults.from_model_index(read_model_index(ckpt),
                                            json.loads(sched.read_text()) if sched.is_file() else None)


def torch_pipeline(checkpoint: Path | None, random_weights: str | None, device: str, dtype: torch.dtype,
                   compile_mode: str | None = None) -> DepthPipeline:
    """PyTorch eager (``compile_mode`` None), or ``torch.compile`` of the U-Net ("default", or "reduce-overhead":
    CUDA graphs). ``random_weights="sd2"`` builds SD2's architecture with random weights (same cost as the real one),
    and a light VAE of the sd2 config's size (``depth-train distill-vae --config sd2``), random too."""
    from agdepth import default_checkpoint
    from agdepth.artifacts.checkpoint import marigold_schedule
    from agdepth.runtime.backends.torch_backend import TorchBackend

    if random_weights == "sd2":
        from agdepth.light_vae import build_light_vae
        from agdepth.models import build_sd2_random
        from agdepth.training.config import load_config

        m = build_sd2_random(torch_dtype=dtype)
        light = build_light_vae(**load_config("sd2").light_vae.kwargs())
        backend = TorchBackend(m.unet, m.vae, m.empty_text_embedding, marigold_schedule("trailing"),
                               sd2_random_defaults(), device, dtype, light_vae=light)
    elif random_weights is not None:
        raise ValueError(f"--random-weights: only 'sd2' is known, got {random_weights!r}")
    else:
        backend = TorchBackend.from_checkpoint(checkpoint or default_checkpoint(), device=device, dtype=dtype)
    if compile_mode is not None:
        backend.networks["unet"] = torch.compile(backend.networks["unet"], mode=compile_mode)
    return DepthPipeline(backend)


def export_for_bench(checkpoint: Path, work_dir: Path, resolution: int, max_batch: int,
                     progress: Callable[[str], None]) -> Path:
    """fp32 + fp16 ONNX graphs of ``checkpoint`` in ``work_dir`` (reused when already exported from it)."""
    from agdepth.export import ExportOptions, Manifest, export_checkpoint

    out = work_dir / "engines"
    if (out / "manifest.json").is_file():
        m = Manifest.load(out)
        same = m.data["source_checkpoint"]["path"] == str(checkpoint) and "fp16" in m.precisions
        if same and m.shapes.max_batch >= max_batch and m.shapes.max_resolution >= resolution:
            return out
        import shutil

        shutil.rmtree(out)
    progress(f"exporting {checkpoint} to ONNX (fp32 + fp16) in {out} ...")
    export_checkpoint(checkpoint, out, ExportOptions(fp16=True, max_resolution=max(resolution, 64),
                                                     opt_resolution=resolution, max_batch=max_batch),
                      progress=lambda _: None)
    return out


def choose_backends(names: Sequence[str], checkpoint: Path | None, engines: Path | None,
                    random_weights: str | None, device: str, compile_mode: str | None,
                    resolution: int, max_rows: int, work_dir: Path, progress: Callable[[str], None]
                    ) -> list[BackendChoice]:
    """The requested backends, each built or skipped with the reason (no GPU, no TensorRT, no fp16 graphs...)."""
    from agdepth import default_checkpoint
    from agdepth.export import Manifest
    from agdepth.export.tensorrt_build import tensorrt_status

    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    cuda = device.startswith("cuda")
    out: list[BackendChoice] = []
    manifest: Manifest | None = None

    def need_manifest() -> Manifest:
        nonlocal manifest
        if manifest is None:
            if engines is not None:
                manifest = Manifest.load(engines)
            elif random_weights is not None:
                raise ValueError("ONNX/TensorRT backends with --random-weights need an export: run depth-export on a "
                                 "saved checkpoint and pass --engine, or use --backends torch")
            else:
                manifest = Manifest.load(export_for_bench(checkpoint or default_checkpoint(), work_dir, resolution,
                                                          max_rows, progress))
        return manifest

    for name in names:
        if name == "torch":
            out.append(BackendChoice(name, torch_pipeline(checkpoint, random_weights, device, torch.float32)))
        elif name == "torch-fp16":
            if not cuda:
                out.append(BackendChoice(name, None, "needs a CUDA device (fp16 convolutions are not a CPU path)"))
                continue
            out.append(BackendChoice(name, torch_pipeline(checkpoint, random_weights, device, torch.float16,
                                                          compile_mode)))
        elif name in ONNX_BACKENDS:
            from agdepth.runtime.backends.onnx_backend import OnnxBackend

            m = need_manifest()
            precision = ONNX_BACKENDS[name]
            if precision not in m.precisions:
                out.append(BackendChoice(name, None, f"{m.root} has no {precision} graphs (export with --fp16)"))
                continue
            out.append(BackendChoice(name, DepthPipeline(OnnxBackend(m, precision))))
        else:  # tensorrt
            status = tensorrt_status()
            if not status.available:
                out.append(BackendChoice(name, None, status.reason))
                continue
            m = need_manifest()
            if "tensorrt" not in m.data:
                out.append(BackendChoice(name, None, f"{m.root} has no TensorRT engines (depth-export --engines-only)"))
                continue
            plan = m.root / next(iter(m.data["tensorrt"]["files"].values()))
            out.append(BackendChoice(name, DepthPipeline.from_engine(plan)))
    return out


def run_latency(choices: Sequence[BackendChoice], s: LatencySettings, progress: Callable[[str], None] = print
                ) -> dict[str, Any]:
    """Measure every built backend on the same images and settings; ratios are against "torch". ``summary``: the
    ONNX Runtime fp32 speed-up over PyTorch eager (when both ran) and the overhead share on the fastest backend."""
    images = bench_images(s.images, s.resolution)
    rows = []
    for c in choices:
        if c.pipeline is None:
            rows.append({"backend": c.name, "skipped": c.skipped})
            progress(f"{c.name}: skipped ({c.skipped})")
            continue
        r = measure(c.pipeline, s, images)
        rows.append({"backend": c.name, **r})
        progress(f"{c.name}: p50 {1000 * r['stages']['total']['p50']:.1f} ms per call, "
                 f"{r['images_per_s']:.1f} images/s, overhead {100 * r['overhead_fraction_p50']:.1f}%")
    ran = [r for r in rows if "stages" in r]
    base = next((r for r in ran if r["backend"] == "torch"), None)
    if base is not None:
        for r in ran:
            r["speedup_vs_torch"] = base["stages"]["total"]["p50"] / r["stages"]["total"]["p50"]
    summary: dict[str, Any] = {}
    ort = next((r for r in ran if r["backend"] == "onnx-fp32"), None)
    if base is not None and ort is not None:
        summary["onnx_speedup_vs_torch"] = ort["speedup_vs_torch"]
    fastest = min(ran, key=lambda r: r["stages"]["total"]["p50"]) if ran else None
    if fastest is not None:
        summary["overhead_backend"] = fastest["backend"]
        summary["overhead_fraction"] = fastest["overhead_fraction_p50"]
    return {"settings": asdict(s), "backends": rows, "summary": summary}


WALL_TIME = "wall time"  # the one relation basis that is reported, never a gate
COUNTED = "counted calls"


def relation(name: str, holds: bool, basis: str, values: Sequence[float] = (), unit: str = "") -> dict[str, Any]:
    """One quick-mode relation as the reports carry it. ``gate``: whether it decides ``depth-bench``'s exit status:
    every basis but ``"wall time"`` does (counted calls, FLOPs, objectives and the report's own shape hold whatever the
    machine's load; a wall-time order is a benchmark result that a busy machine can invert)."""
    return {"relation": name, "basis": basis, "gate": basis != WALL_TIME, "holds": bool(holds),
            "values": [float(v) for v in values], "unit": unit}


def relations(pipe: DepthPipeline, resolution: int, repeats: int = 3) -> list[dict[str, Any]]:
    """The quick mode's relations between settings, each measured once and reported two ways.

    Counted (gates): network calls counted by :class:`TimedBackend`, the same on any machine. A 1-step run makes one
    U-Net call and a 10-step run ten; the members of an image share one U-Net call per step when the batch allows
    it (E calls per step when the pipeline's batch size is 1).
    Wall time (reported only, never a failure): a 1-step run's total p50 below a 10-step run's; U-Net p50 per member
    below when the members share a call. Both usually hold, but a busy machine can invert them.
    """
    one = measure(pipe, LatencySettings(resolution, 1, 1, "trailing", repeats=repeats))
    ten = measure(pipe, LatencySettings(resolution, 10, 1, "trailing", repeats=repeats))
    t1, t10 = one["stages"]["total"]["p50"], ten["stages"]["total"]["p50"]
    c1, c10 = one["unet_calls_per_run"], ten["unet_calls_per_run"]
    out = [
        relation("U-Net calls: 1 in a 1-step run, 10 in a 10-step run", (c1, c10) == (1, 10), COUNTED, [c1, c10],
                 "calls"),
        relation("1-step run < 10-step run (total p50)", t1 < t10, WALL_TIME, [t1, t10], "s"),
    ]
    steps, members = 2, min(5, pipe.backend.max_batch or 5)  # an export's max_batch caps the rows per call
    if members < 2:
        return out
    ens = LatencySettings(resolution, steps, members, "trailing", repeats=repeats)
    batched = measure(pipe, ens, pipeline_batch_size=0)
    single = measure(pipe, ens, pipeline_batch_size=1)
    cb, cs = batched["unet_calls_per_run"], single["unet_calls_per_run"]
    u_batched, u_single = batched["stages"]["unet"]["p50"] / members, single["stages"]["unet"]["p50"] / members
    return [
        *out,
        relation(f"U-Net calls, {steps} steps x {members} members: {steps} in one call per step, "
                 f"{steps * members} one call each", (cb, cs) == (steps, steps * members), COUNTED, [cb, cs], "calls"),
        relation(f"U-Net per member: {members} members in one call < one call each", u_batched < u_single,
                 WALL_TIME, [u_batched, u_single], "s"),
    ]


def relations_markdown(relations: Sequence[dict[str, Any]]) -> str:
    """One line per relation: holds or not, its values, and whether it decides the exit status."""
    lines = []
    for r in relations:
        if r.get("unit") == "s":
            values = ", ".join(f"{1000 * v:.2f} ms" for v in r["values"])
        else:
            values = ", ".join(f"{v:g}" for v in r["values"]) + (f" {r['unit']}" if r.get("unit") else "")
        kind = (f"{r['basis']}, checked" if r["gate"] else f"{r['basis']}, reported only: a busy machine can "
                "invert it")
        lines.append(f"- {r['relation']}: {'holds' if r['holds'] else 'DOES NOT HOLD'}"
                     + (f" ({values})" if r["values"] else "") + f" [{kind}]")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The suite's body: settings, one row per backend (stage p50s in ms), p90 of the total, the summary."""
    s = report["settings"]
    ms = 1000.0
    rows_per_call = ("all rows in one network call (up to the backend's max batch)" if s["batch_size"] == 0
                     else f"at most {s['batch_size']} row(s) per network call")
    vae = f"{s['vae']} VAE" if s.get("vae") else "the model's VAE"
    lines = [f"Setting: {s['steps']} step(s) × {s['ensemble']} member(s), {s['spacing']} spacing, {vae}, "
             f"{s['resolution']} px, {s['images']} image(s) per call, {rows_per_call}; "
             f"{s['warmup']} warm-up + {s['repeats']} measured runs per backend "
             "(p50 unless noted). *networks* is the time inside network calls; *overhead* is everything else "
             "(preprocess, noise, DDIM arithmetic, ensembling, resize, PNG write).", "",
             "| backend | preprocess | VAE encode | U-Net (per step) | VAE decode | ensemble | postprocess | write | "
             "total p50 | total p90 | images/s | networks | overhead | × torch | peak RSS MiB | device MiB |",
             "|---|" + "---|" * 15]
    for r in report["backends"]:
        if "stages" not in r:
            lines.append(f"| {r['backend']} | skipped: {r['skipped']} |" + " |" * 14)
            continue
        st = r["stages"]
        dev = "-" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.0f}"
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['backend']} | {ms * st['preprocess']['p50']:.2f} | {ms * st['encode']['p50']:.2f} | "
            f"{ms * st['unet']['p50']:.2f} ({ms * r['unet_per_step_p50']:.2f}) | {ms * st['decode']['p50']:.2f} | "
            f"{ms * st['ensemble']['p50']:.2f} | {ms * st['postprocess']['p50']:.2f} | {ms * st['write']['p50']:.2f} | "
            f"{ms * st['total']['p50']:.2f} | {ms * st['total']['p90']:.2f} | {r['images_per_s']:.3g} | "
            f"{ms * st['networks']['p50']:.2f} | {100 * r['overhead_fraction_p50']:.1f}% | "
            f"{r.get('speedup_vs_torch', float('nan')):.2f} | {rss} | {dev} |")
    sm = report["summary"]
    lines += ["", "All times in ms."]
    if "onnx_speedup_vs_torch" in sm:
        lines.append(f"- ONNX Runtime fp32 vs PyTorch eager, whole pipeline: {sm['onnx_speedup_vs_torch']:.2f}x")
    if "overhead_fraction" in sm:
        lines.append(f"- Runtime overhead (all but network calls) on the fastest backend ({sm['overhead_backend']}): "
                     f"{100 * sm['overhead_fraction']:.1f}% of pipeline time")
    return "\n".join(lines)


__all__ = ["BACKENDS", "BackendChoice", "LatencySettings", "TimedBackend", "choose_backends", "markdown", "measure",
           "peak_host_rss", "relation", "relations", "relations_markdown", "run_latency", "bench_images",
           "torch_pipeline"]
