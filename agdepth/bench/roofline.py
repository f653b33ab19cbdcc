"""Roofline: FLOPs per network, achieved FLOP/s against a measured matmul peak, and an RTX 3090 projection.

FLOPs come from torch's own counter (:class:`torch.utils.flop_counter.FlopCounterMode`): 2 FLOPs per multiply-add
of matmul, convolution and attention; elementwise ops, norms and activations are not counted, so the totals are a
lower bound on the arithmetic. The "peak" is what a square fp32 matmul reaches on the measuring device, not a
datasheet figure. The RTX 3090 numbers are projections from the counted FLOPs, never measurements.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from agdepth.networks import NETWORK_NAMES, describe_networks, torch_modules, vae_scale_factor

RTX3090_FP16_TENSOR_FLOPS = 71e12  # dense fp16 tensor-core FLOP/s with fp32 accumulate (GA102 datasheet)
FLOP_COUNTER_NOTE = ("torch.utils.flop_counter.FlopCounterMode: 2 FLOPs per multiply-add of matmul/conv/attention; "
                     "elementwise ops and norms not counted")


def count_flops(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> int:
    """FLOPs of one ``module(*inputs)`` call as torch's FlopCounterMode counts them.

    2 FLOPs per multiply-add of matmul, convolution and attention; elementwise ops, norms and activations are not
    counted. Attention is forced onto SDPA's math kernel while counting: CPU's fused flash kernel has no FLOP formula
    registered and would count as 0, whereas the math path's two batched matmuls give the same 4·B·H·Sq·Sk·D that
    the counter's formula for the CUDA kernels gives.
    """
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        module(*inputs)
    return int(counter.get_total_flops())


def _network_inputs(models: Any, batch: int, height: int, width: int) -> dict[str, list[torch.Tensor]]:
    """Each network's positional inputs at padded size height×width; the U-Net gets the model's own text embedding."""
    emb = models.empty_text_embedding
    specs = describe_networks(vae_scale_factor(models.vae), emb.shape[1], emb.shape[2])
    out = {}
    for name, spec in specs.items():
        feeds = spec.sample_inputs(batch, height, width)
        if "encoder_hidden_states" in feeds:
            feeds["encoder_hidden_states"] = emb.detach().float().cpu().expand(batch, -1, -1).contiguous()
        out[name] = [feeds[n] for n in spec.input_names]
    return out


def network_flops(models: Any, batch: int, height: int, width: int) -> dict[str, int]:
    """FLOPs of one call of each network (unet, vae_encoder, vae_decoder) at ``batch`` rows of H×W pixels."""
    modules = torch_modules(models.unet, models.vae)
    p = next(models.unet.parameters())
    feeds = _network_inputs(models, batch, height, width)
    # float inputs follow the weights' device and dtype (an fp16 checkpoint counts the same FLOPs)
    return {n: count_flops(modules[n], [t.to(p.device, p.dtype if t.is_floating_point() else t.dtype)
                                        for t in feeds[n]]) for n in NETWORK_NAMES}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048,
                repeats: int = 5) -> float:
    """Measured FLOP/s of an n×n @ n×n matmul (2·n³ FLOPs): median of ``repeats`` timings after one warm-up."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    seconds = []
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            torch.matmul(a, b)
            _sync(device)
            if i:  # the first call is the warm-up (allocator, kernel selection, thread pool start)
                seconds.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(seconds)


def measure_call_seconds(module: torch.nn.Module, inputs: Sequence[torch.Tensor], repeats: int, warmup: int = 1,
                         device: str | torch.device | None = None) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``module(*inputs)`` after ``warmup`` untimed ones (CUDA synchronised);
    ``device`` defaults to the first input's."""
    dev = torch.device(device) if device is not None else inputs[0].device
    seconds = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            _sync(dev)
            t0 = time.perf_counter()
            module(*inputs)
            _sync(dev)
            if i >= warmup:
                seconds.append(time.perf_counter() - t0)
    return seconds


def parameter_counts(models: Any) -> dict[str, int]:
    """Parameters per network; the VAE's 1×1 quant convs belong to the encoder/decoder that runs them."""
    vae = models.vae

    def count(*mods: torch.nn.Module | None) -> int:
        return sum(p.numel() for m in mods if m is not None for p in m.parameters())

    return {"unet": count(models.unet), "vae_encoder": count(vae.encoder, getattr(vae, "quant_conv", None)),
            "vae_decoder": count(vae.decoder, getattr(vae, "post_quant_conv", None))}


def roofline(models: Any, resolution: int, batch: int = 1, steps: int = 1, ensemble: int = 1, device: str = "cpu",
             repeats: int = 5, peak_n: int = 2048) -> dict[str, Any]:
    """The roofline report of ``models`` (``.unet``, ``.vae``, ``.empty_text_embedding``) at a square padded side
    ``resolution`` (rounded up to a multiple of the VAE scale factor), ``batch`` rows per call, eager fp32 on
    ``device`` (the networks are moved there in place).

    Pipeline FLOPs per image = 1 encoder row + steps × ensemble U-Net rows + ensemble decoder rows, a row costing
    flops_per_call / batch (the counts are linear in the batch). Projected RTX 3090 seconds are given (a) at 100 %
    of :data:`RTX3090_FP16_TENSOR_FLOPS`, a lower bound, and (b) at the fraction of peak this device achieved
    (capped at 1).
    """
    f = vae_scale_factor(models.vae)
    side = -(-resolution // f) * f
    dev = torch.device(device)
    for net in (models.unet, models.vae):
        net.to(dev)
        if next(net.parameters()).dtype != torch.float32:  # diffusers warns on every dtype cast, so only when needed
            net.float()
    modules = torch_modules(models.unet, models.vae)
    feeds = {n: [t.to(dev) for t in ts] for n, ts in _network_inputs(models, batch, side, side).items()}
    peak = matmul_peak(dev, torch.float32, peak_n, repeats)
    params = parameter_counts(models)
    networks: dict[str, dict[str, Any]] = {}
    for name in NETWORK_NAMES:
        flops = count_flops(modules[name], feeds[name])
        seconds = measure_call_seconds(modules[name], feeds[name], repeats, device=dev)
        median = statistics.median(seconds)
        achieved = flops / median
        # a small peak matmul can lose to a well-blocked conv (fraction > 1): never project faster than 100 %
        projected_fraction = min(achieved / peak, 1.0)
        networks[name] = {
            "params": params[name], "flops_per_call": flops, "seconds_per_call": median, "seconds_all": seconds,
            "achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak,
            "rtx3090_projection_seconds_at_peak": flops / RTX3090_FP16_TENSOR_FLOPS,
            "rtx3090_projection_seconds_at_measured_fraction": flops / (RTX3090_FP16_TENSOR_FLOPS * projected_fraction),
        }
    rows = {"vae_encoder": 1, "unet": steps * ensemble, "vae_decoder": ensemble}  # per image

    def per_image(key: str) -> float:
        return sum(r * networks[n][key] / batch for n, r in rows.items())

    pipeline = {
        "formula": "per image: 1 vae_encoder row + steps x ensemble unet rows + ensemble vae_decoder rows",
        "steps": steps, "ensemble": ensemble, "rows_per_image": rows,
        "flops_per_image": int(per_image("flops_per_call")),
        "seconds_per_image_from_calls": per_image("seconds_per_call"),
        "rtx3090_projection_seconds_at_peak": per_image("rtx3090_projection_seconds_at_peak"),
        "rtx3090_projection_seconds_at_measured_fraction": per_image("rtx3090_projection_seconds_at_measured_fraction"),
    }
    return {
        "suite": "roofline", "device": str(dev), "dtype": "float32", "resolution": side, "batch": batch,
        "vae_scale_factor": f, "repeats": repeats, "flop_counter": FLOP_COUNTER_NOTE,
        "measured_peak": {"flops_per_s": peak, "matmul_n": peak_n, "dtype": "float32", "device": str(dev)},
        "rtx3090_projection": {"peak_flops_per_s": RTX3090_FP16_TENSOR_FLOPS,
                               "note": "projection, not measured: counted FLOPs / (71 TFLOPS fp16 tensor-core, "
                                       "fp32 accumulate), at 100 % and at this device's fraction of its peak "
                                       "(capped at 100 %)"},
        "networks": networks, "pipeline": pipeline,
    }


def markdown(report: dict[str, Any]) -> str:
    """The roofline report as markdown: a row per network, the measured peak, the pipeline row (no title)."""
    peak = report["measured_peak"]
    lines = [
        f"Padded size {report['resolution']}×{report['resolution']} px, batch {report['batch']}, eager PyTorch "
        f"{report['dtype']} on {report['device']}, median of {report['repeats']} calls.  ",
        f"Measured matmul peak: {peak['flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['matmul_n']}×{peak['matmul_n']} "
        f"{peak['dtype']} matmul on {peak['device']}).  ",
        f"FLOPs: {report['flop_counter']}.  ",
        "RTX 3090 columns: projection, not measured (71 TFLOPS fp16 tensor-core with fp32 accumulate; at 100 % "
        "a lower bound, and at the fraction of peak measured here, capped at 100 %).",
        "",
        "| network | params | GFLOPs/call | ms/call | achieved GFLOP/s | % of measured peak | "
        "3090 projection ms @100 % | 3090 projection ms @measured % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["networks"].items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} M | {r['flops_per_call'] / 1e9:.3f} | "
            f"{1e3 * r['seconds_per_call']:.2f} | {r['achieved_flops_per_s'] / 1e9:.1f} | "
            f"{100 * r['fraction_of_peak']:.1f} | "
            f"{1e3 * r['rtx3090_projection_seconds_at_peak']:.4f} | "
            f"{1e3 * r['rtx3090_projection_seconds_at_measured_fraction']:.3f} |")
    p = report["pipeline"]
    lines += [
        "",
        f"Pipeline ({p['formula']}; steps {p['steps']}, ensemble {p['ensemble']}):",
        "",
        "| setting | GFLOPs/image | ms/image from calls here | 3090 projection ms @100 % | "
        "3090 projection ms @measured % |",
        "|---|---|---|---|---|",
        f"| {p['steps']} steps × {p['ensemble']} | {p['flops_per_image'] / 1e9:.3f} | "
        f"{1e3 * p['seconds_per_image_from_calls']:.2f} | {1e3 * p['rtx3090_projection_seconds_at_peak']:.4f} | "
        f"{1e3 * p['rtx3090_projection_seconds_at_measured_fraction']:.3f} |",
    ]
    return "\n".join(lines)


__all__ = ["RTX3090_FP16_TENSOR_FLOPS", "count_flops", "markdown", "matmul_peak", "measure_call_seconds",
           "network_flops", "parameter_counts", "roofline", "vae_scale_factor"]
