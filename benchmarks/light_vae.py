"""Light VAE against the full one: accuracy of the predictions on the unseen procedural domains, FLOPs, CPU latency.

    python benchmarks/light_vae.py --checkpoint runs/distill/checkpoint \
        --json benchmarks/results/light_vae.json --md benchmarks/results/light_vae.md

The checkpoint must have a ``vae_light/`` (``depth-train distill-vae``). Both predictions run the same PyTorch
U-Net loop at the checkpoint's default settings (steps, spacing, processing resolution, one member, seed 0): "full"
is the checkpoint as it is, "light" swaps the light VAE's encoder and decoder in (a small backend below). Both are
scored by the project's protocol for the procedural domains (:func:`agdepth.evaluation.procedural.evaluate_on_domains`,
as ``depth-bench frontier``). The acceptance is the light AbsRel within ``--tolerance`` (relative) of the full one on
every domain.

FLOPs: torch's FlopCounterMode (``agdepth.bench.roofline.count_flops``: matmul/conv/attention, 2 per multiply-add) of
one encode and one decode of a 1-row batch, at the checkpoint's processing resolution and at SD2's 768² (SD2's
AutoencoderKL from ``agdepth.models.build_sd2_random`` against the sd2 config's light VAE size, both on the meta
device: no weights, no arithmetic). Latency: the median wall time of one encode / decode call on this CPU, and the
pipeline's own per-stage timings of one default prediction with either VAE.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth.artifacts.checkpoint import checkpoint_schedule, load_checkpoint
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.bench.report import markdown_document, report_meta, stamp_end, write_report
from agdepth.bench.roofline import count_flops, measure_call_seconds
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.evaluation.procedural import evaluate_on_domains
from agdepth.light_vae import build_light_vae, light_vae_config
from agdepth.models import build_sd2_random
from agdepth.networks import VAEDecoderWrapper, VAEEncoderWrapper, light_modules, vae_scale_factor
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends.torch_backend import TorchBackend
from agdepth.training.config import load_config

METRICS = ("abs_rel", "delta1", "edge_f1")


class LightVAEBackend(TorchBackend):
    """The PyTorch backend with the light VAE's encoder and/or decoder (``swap``) in place of the full VAE's."""

    def __init__(self, *args: Any, light_vae: torch.nn.Module, swap: tuple[str, ...] = ("encode", "decode"),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.light = light_modules(self._place(light_vae, self.device, self.dtype))
        self.swap = swap

    @torch.no_grad()
    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        if "encode" not in self.swap:
            return super().encode(rgb)
        return self.light["vae_encoder_light"](rgb.to(device=self.device, dtype=self.dtype))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if "decode" not in self.swap:
            return super().decode(latent)
        return self.light["vae_decoder_light"](latent)


# the predictions compared: the full VAE, the light one, and each light half alone (which half costs accuracy)
VARIANTS = {"full": (), "light": ("encode", "decode"), "light encoder only": ("encode",),
            "light decoder only": ("decode",)}


def pipelines(ckpt: Path) -> tuple[dict[str, DepthPipeline], Any]:
    models = load_checkpoint(ckpt)
    if "vae_light" not in models.extra:
        raise SystemExit(f"{ckpt} has no vae_light/: distil one first (depth-train distill-vae --checkpoint ...)")
    sched_cfg = models.extra.get("scheduler_config")
    schedule = checkpoint_schedule(sched_cfg)
    defaults = RuntimeDefaults.from_model_index(models.extra.get("model_index"), sched_cfg)
    args = (models.unet, models.vae, models.empty_text_embedding, schedule, defaults)
    pipes = {name: DepthPipeline(LightVAEBackend(*args, light_vae=models.extra["vae_light"], swap=swap) if swap
                                 else TorchBackend(*args)) for name, swap in VARIANTS.items()}
    return pipes, models


def accuracy(pipe: DepthPipeline, count: int, size: int, seed: int) -> dict[str, dict[str, float]]:
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return np.asarray(pipe(list(images), seed=seed).depth)  # the checkpoint's default settings

    res = evaluate_on_domains(predict, EVAL_DOMAINS, count, (size, size), progress=False)
    return {dom: {k: float(res[dom][k]) for k in METRICS} for dom in EVAL_DOMAINS}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def flops_pair(vae: Any, light: Any, res: int) -> dict[str, Any]:
    """FLOPs of one encode / decode (1 row, res² pixels) of the full and the light VAE, on their own device."""
    dev = next(vae.parameters()).device
    f = vae_scale_factor(vae)
    x = torch.zeros(1, 3, res, res, device=dev)
    z = torch.zeros(1, 4, res // f, res // f, device=dev)
    lm = light_modules(light)
    out: dict[str, Any] = {"resolution": res, "vae_scale_factor": f,
                           "full": {"encode": count_flops(VAEEncoderWrapper(vae), [x]),
                                    "decode": count_flops(VAEDecoderWrapper(vae), [z])},
                           "light": {"encode": count_flops(lm["vae_encoder_light"], [x]),
                                     "decode": count_flops(lm["vae_decoder_light"], [z])},
                           "params": {"full": n_params(vae), "light": n_params(light)}}
    for k in ("full", "light"):
        out[k]["total"] = out[k]["encode"] + out[k]["decode"]
    out["ratio"] = {k: out["full"][k] / out["light"][k] for k in ("encode", "decode", "total")}
    return out


def sd2_flops(res: int) -> dict[str, Any]:
    with torch.device("meta"):
        full = build_sd2_random().vae
        light = build_light_vae(**load_config("sd2").light_vae.kwargs())
    out = flops_pair(full, light, res)
    out["light_config"] = light_vae_config(light)
    return out


def latency(vae: Any, light: Any, res: int, repeats: int) -> dict[str, Any]:
    f = vae_scale_factor(vae)
    x = torch.rand(1, 3, res, res) * 2 - 1
    z = torch.randn(1, 4, res // f, res // f)
    lm = light_modules(light)
    mods = {"full": {"encode": (VAEEncoderWrapper(vae), x), "decode": (VAEDecoderWrapper(vae), z)},
            "light": {"encode": (lm["vae_encoder_light"], x), "decode": (lm["vae_decoder_light"], z)}}
    out: dict[str, Any] = {"resolution": res, "repeats": repeats, "threads": torch.get_num_threads()}
    # interleaved rounds, so a change in the machine's load reaches both VAEs alike
    times: dict[str, dict[str, list[float]]] = {k: {"encode": [], "decode": []} for k in mods}
    for _ in range(repeats):
        for k, calls in mods.items():
            for call, (m, inp) in calls.items():
                times[k][call] += measure_call_seconds(m, [inp], repeats=1, warmup=1)
    for k in mods:
        out[k] = {call: statistics.median(v) for call, v in times[k].items()}
        out[k]["total"] = out[k]["encode"] + out[k]["decode"]
    out["speedup"] = {c: out["full"][c] / out["light"][c] for c in ("encode", "decode", "total")}
    return out


def prediction_latency(pipes: dict[str, DepthPipeline], size: int, repeats: int, seed: int) -> dict[str, Any]:
    """Median per-stage timings of one default prediction of one image (the pipeline's own clock), full vs light."""
    image = render_scene(EVAL_DOMAINS[0], 0, size=(size, size), split="test").rgb
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("full", "light")}
    for k in runs:
        pipes[k]([image], seed=seed)  # warm-up
    for _ in range(repeats):  # interleaved, as in latency()
        for k in runs:
            runs[k].append(pipes[k]([image], seed=seed).timings)
    return {k: {stage: statistics.median(t[stage] for t in v) for stage in ("encode", "unet", "decode", "total")}
            for k, v in runs.items()}


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [f"Checkpoint `{s['checkpoint']}`; {s['count']} test scenes per domain at {s['size']}×{s['size']}, the "
             f"checkpoint's defaults ({s['steps']} step(s), {s['spacing']}, {s['processing_resolution']} px, 1 "
             f"member, seed {s['seed']}); torch threads {s['threads']}.", "",
             "## Accuracy (full VAE vs light VAE, same U-Net)", "",
             "| domain | AbsRel full | AbsRel light | relative | δ1 full | δ1 light | edge F1 full | edge F1 light |",
             "|---|---|---|---|---|---|---|---|"]
    for dom, a in r["accuracy"]["domains"].items():
        lines.append(f"| {dom} | {a['full']['abs_rel']:.4f} | {a['light']['abs_rel']:.4f} | "
                     f"{a['abs_rel_rel_diff']:+.2%} | {a['full']['delta1']:.3f} | {a['light']['delta1']:.3f} | "
                     f"{a['full']['edge_f1']:.3f} | {a['light']['edge_f1']:.3f} |")
    acc = r["accuracy"]
    lines += ["", "Each half alone (the other one full), AbsRel relative to the full VAE's:", "",
              "| domain | " + " | ".join(v for v in VARIANTS if v != "full") + " |",
              "|---|" + "---|" * (len(VARIANTS) - 1)]
    for dom, a in acc["domains"].items():
        lines.append(f"| {dom} | " + " | ".join(f"{a['variants'][v]['abs_rel'] / a['full']['abs_rel'] - 1:+.2%}"
                                                 for v in VARIANTS if v != "full") + " |")
    lines += ["", f"Acceptance (light AbsRel within {acc['tolerance']:.0%} relative of full on every domain): "
              f"**{'met' if acc['accepted'] else 'not met'}**.", "", "## FLOPs (one encode + one decode, 1 row)", "",
              "| model | resolution | full encode | full decode | light encode | light decode | full / light (total) "
              "| params full | params light |", "|---|---|---|---|---|---|---|---|---|"]
    for name, fl in r["flops"].items():
        lines.append(f"| {name} | {fl['resolution']}² | {fl['full']['encode'] / 1e9:.3f} G | "
                     f"{fl['full']['decode'] / 1e9:.3f} G | {fl['light']['encode'] / 1e9:.3f} G | "
                     f"{fl['light']['decode'] / 1e9:.3f} G | {fl['ratio']['total']:.2f}× | "
                     f"{fl['params']['full'] / 1e6:.2f} M | {fl['params']['light'] / 1e6:.2f} M |")
    lt = r["latency"]
    lines += ["", f"## CPU latency (median of {lt['repeats']} calls, 1 row, {lt['resolution']}², "
              f"{lt['threads']} thread(s))", "", "| call | full | light | speed-up |", "|---|---|---|---|"]
    for c in ("encode", "decode", "total"):
        lines.append(f"| {c} | {lt['full'][c] * 1e3:.2f} ms | {lt['light'][c] * 1e3:.2f} ms | "
                     f"{lt['speedup'][c]:.2f}× |")
    pl = r["prediction_latency"]
    lines += ["", f"One default prediction of one {s['size']}² image (the pipeline's own timings, median of "
              f"{lt['repeats']}):", "", "| stage | full | light |", "|---|---|---|"]
    for stage in ("encode", "unet", "decode", "total"):
        lines.append(f"| {stage} | {pl['full'][stage] * 1e3:.2f} ms | {pl['light'][stage] * 1e3:.2f} ms |")
    lines += ["", f"Light VAE size: `{r['light_config']}`; `vae_light/` on disk: {r['light_bytes'] / 1e6:.2f} MB."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with vae_light/")
    ap.add_argument("--count", type=int, default=20, help="test scenes per domain")
    ap.add_argument("--size", type=int, default=128, help="scene side (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.03, help="acceptance: relative AbsRel difference")
    ap.add_argument("--sd2-resolution", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per network for the latency")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everything")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()

    meta = report_meta("python benchmarks/light_vae.py " + shlex.join(sys.argv[1:]))
    torch.set_num_threads(args.threads)
    pipes, models = pipelines(args.checkpoint)
    d = pipes["full"].backend.defaults
    vae, lvae = models.vae, models.extra["vae_light"]
    acc = {name: accuracy(pipe, args.count, args.size, args.seed) for name, pipe in pipes.items()}
    domains = {}
    for dom in EVAL_DOMAINS:
        rel = acc["light"][dom]["abs_rel"] / acc["full"][dom]["abs_rel"] - 1
        domains[dom] = {"full": acc["full"][dom], "light": acc["light"][dom], "abs_rel_rel_diff": rel,
                        "variants": {name: acc[name][dom] for name in VARIANTS}}
    accepted = all(v["abs_rel_rel_diff"] <= args.tolerance for v in domains.values())
    res = d.processing_resolution or args.size
    report = {**meta,
              "settings": {"checkpoint": str(args.checkpoint), "count": args.count, "size": args.size,
                           "seed": args.seed, "steps": d.steps, "spacing": d.timestep_spacing,
                           "processing_resolution": d.processing_resolution, "threads": torch.get_num_threads()},
              "accuracy": {"domains": domains, "tolerance": args.tolerance, "accepted": accepted},
              "flops": {"checkpoint": flops_pair(vae, lvae, res), "sd2": sd2_flops(args.sd2_resolution)},
              "latency": latency(vae, lvae, res, args.repeats),
              "prediction_latency": prediction_latency(pipes, args.size, args.repeats, args.seed),
              "light_config": light_vae_config(lvae),
              "light_bytes": sum(p.stat().st_size for p in (args.checkpoint / "vae_light").iterdir())}
    stamp_end(report)
    text = markdown_document("Light VAE (distilled AutoencoderTiny) against the full VAE", report, markdown(report))
    write_report(report, text, args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
