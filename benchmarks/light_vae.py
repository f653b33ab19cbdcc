"""Light VAE (a distilled AutoencoderTiny) against the full VAE: accuracy, fp16 ONNX, latency, cost against the paper.

    python benchmarks/light_vae.py --checkpoint runs/distill/checkpoint \
        --json benchmarks/results/light_vae.json --md benchmarks/results/light_vae.md

The checkpoint must have a ``vae_light/`` (``depth-train distill-vae``). Every prediction runs the checkpoint's default
settings (steps, spacing, processing resolution, one member, seed ``--seed``) with the VAE forced by the pipeline's
``vae=`` argument ("full", "light", "light-encoder", "light-decoder"). Accuracy is scored by the project's protocol
for the unseen procedural domains (:func:`agdepth.evaluation.procedural.evaluate_on_domains`, as ``depth-bench
frontier``) on ``--count`` test scenes per domain. One run measures:

1. Accuracy on PyTorch with each VAE choice. Acceptance: the light AbsRel no more than ``--tolerance`` (relative)
   above the full one on every domain.
2. ONNX Runtime: the checkpoint exported once (fp32 + fp16 graphs, light VAE included) into ``--work-dir`` (reused
   when its manifest names the same source checkpoint), each VAE scored on ORT fp32 and fp16 on the same scenes.
   Acceptance: the light VAE's fp16 AbsRel within ``--fp16-tolerance`` (relative) of its fp32 AbsRel on every domain
   (the full VAE's is reported beside it).
3. Prediction latency of one default prediction of one ``--size``² image: the pipeline's own per-stage clock, median
   of ``--repeats`` interleaved rounds (every backend × VAE once per round) after one warm-up each, on PyTorch, ORT
   fp32 and ORT fp16. Acceptance: the light VAE's total at least ``--min-speedup`` times faster on PyTorch and on ORT
   fp32.
4. Cost against the paper's setting (50 DDIM steps, leading spacing, 10 ensemble members, full VAE; PyTorch, the 10
   members in one U-Net batch): its one-image latency (median of ``--paper-repeats`` after one warm-up) over the
   default-setting latencies of (3), and its AbsRel on ``--paper-count`` scenes per domain against the default
   settings' on the same scenes. Acceptance: the default with the light VAE at least ``--min-paper-ratio`` times
   cheaper at a mean AbsRel (over domains) no worse than the paper setting's.
5. FLOPs (torch's FlopCounterMode via ``agdepth.bench.roofline.count_flops``: matmul/conv/attention, 2 per
   multiply-add; elementwise ops and norms not counted) of one encode, one decode and one U-Net call (1 row) at the
   checkpoint's processing resolution and at SD2's size (``agdepth.models.build_sd2_random`` against the sd2 config's
   light VAE, on the meta device: no weights, no arithmetic) at ``--sd2-resolution``². A 1-step prediction is one
   encode + one U-Net call + one decode. Acceptance: the SD2-size 1-step prediction at least ``--min-flops-ratio``
   times fewer FLOPs with the light VAE.
6. SD2-size CPU latency (``--sd2-latency``, on by default): one 1-step ``--sd2-resolution``² prediction of SD2's
   architecture with random weights and a random light VAE of the sd2 config's size
   (``agdepth.bench.latency.torch_pipeline(None, "sd2", ...)``), full vs light, per stage: median of
   ``--sd2-repeats`` after ``--sd2-warmup`` warm-ups (tens of seconds per prediction on a small CPU).
7. CPU latency of single VAE calls (one encode, one decode, 1 row at the checkpoint's processing resolution), median
   of ``--repeats`` interleaved calls.

Everything runs on the CPU with ``--threads`` intra-op threads (torch and ONNX Runtime).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agdepth.artifacts.checkpoint import read_model_index
from agdepth.artifacts.manifest import Manifest
from agdepth.bench.latency import torch_pipeline
from agdepth.bench.report import publish_report, report_meta
from agdepth.bench.roofline import count_flops, measure_call_seconds
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.evaluation.procedural import evaluate_on_domains
from agdepth.export import ExportOptions, export_checkpoint
from agdepth.light_vae import build_light_vae, light_vae_config
from agdepth.models import build_sd2_random
from agdepth.networks import (
    LIGHT_NETWORKS,
    VAE_CHOICES,
    UNetWrapper,
    VAEDecoderWrapper,
    VAEEncoderWrapper,
    describe_networks,
    light_modules,
    vae_scale_factor,
)
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends.onnx_backend import OnnxBackend
from agdepth.runtime.backends.torch_backend import TorchBackend
from agdepth.training.config import load_config

METRICS = ("abs_rel", "delta1", "edge_f1")
VAES = tuple(VAE_CHOICES)  # full, light, light-encoder, light-decoder
PAIR = ("full", "light")
PRECISIONS = ("fp32", "fp16")
TIMED_STAGES = ("encode", "unet", "decode", "total")
# the paper's setting (Marigold: 50 DDIM steps, leading spacing, 10-member ensemble); the members share a U-Net batch
PAPER = {"steps": 50, "ensemble": 10, "timestep_spacing": "leading", "vae": "full", "batch_size": 10}

Accuracy = dict[str, dict[str, float]]  # domain -> metric -> mean


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def rel(a: float, b: float) -> float:
    """a relative to b: a / b - 1."""
    return a / b - 1


def mean_abs_rel(acc: Accuracy) -> float:
    return float(np.mean([v["abs_rel"] for v in acc.values()]))


# ------------------------------------------------------------------------------------------------ pipelines


def torch_checkpoint_pipeline(ckpt: Path) -> DepthPipeline:
    pipe = DepthPipeline(TorchBackend.from_checkpoint(ckpt))
    if "light" not in pipe.backend.vae_variants:
        raise SystemExit(f"{ckpt} has no vae_light/: distil one first (depth-train distill-vae --checkpoint ...)")
    return pipe


def onnx_engines(ckpt: Path, work_dir: Path, resolution: int) -> tuple[Path, bool]:
    """fp32 + fp16 ONNX graphs (light VAE included) of ``ckpt`` in ``work_dir``; True when an earlier export of the
    same checkpoint (path and model index) was reused."""
    if (work_dir / "manifest.json").is_file():
        m = Manifest.load(work_dir)
        src = m.data.get("source_checkpoint", {})
        same = (src.get("path") == str(ckpt) and src.get("model_index") == read_model_index(ckpt).get("agdepth", {})
                and "fp16" in m.precisions and m.shapes.max_resolution >= resolution
                and all(n in m.data["networks"][p] for n in LIGHT_NETWORKS for p in PRECISIONS))
        if same:
            return work_dir, True
    log(f"exporting {ckpt} to ONNX (fp32 + fp16) in {work_dir} ...")
    export_checkpoint(ckpt, work_dir, ExportOptions(fp16=True, max_resolution=max(resolution, 64),
                                                    opt_resolution=resolution, max_batch=1, engines=False),
                      progress=lambda _: None)
    return work_dir, False


def onnx_pipelines(engines: Path, threads: int) -> dict[str, DepthPipeline]:
    pipes = {p: DepthPipeline(OnnxBackend(engines, p, threads=threads)) for p in PRECISIONS}
    for p, pipe in pipes.items():
        if "light" not in pipe.backend.vae_variants:
            raise SystemExit(f"{engines}: no {p} light VAE graphs (re-export a checkpoint with vae_light/)")
    return pipes


# ------------------------------------------------------------------------------------------------ accuracy


def accuracy(pipe: DepthPipeline, count: int, size: int, seed: int, **settings: Any) -> Accuracy:
    """Mean metrics per unseen domain of ``pipe``'s predictions (the checkpoint's defaults unless ``settings``)."""
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return np.asarray(pipe(list(images), seed=seed, **settings).depth)

    res = evaluate_on_domains(predict, EVAL_DOMAINS, count, (size, size), progress=False)
    return {dom: {k: float(res[dom].get(k, float("nan"))) for k in METRICS} for dom in EVAL_DOMAINS}


def torch_accuracy(pipe: DepthPipeline, count: int, size: int, seed: int, tolerance: float) -> dict[str, Any]:
    """Each VAE choice on PyTorch; acceptance: light AbsRel at most ``tolerance`` relative above full, every domain."""
    acc = {}
    for v in VAES:
        log(f"accuracy: PyTorch, vae={v} ...")
        acc[v] = accuracy(pipe, count, size, seed, vae=v)
    domains = {dom: {"variants": {v: acc[v][dom] for v in VAES},
                     "abs_rel_rel_diff": {v: rel(acc[v][dom]["abs_rel"], acc["full"][dom]["abs_rel"]) for v in VAES}}
               for dom in EVAL_DOMAINS}
    worst = max(d["abs_rel_rel_diff"]["light"] for d in domains.values())
    return {"domains": domains, "tolerance": tolerance, "worst_light_rel_diff": worst, "accepted": worst <= tolerance,
            "mean_abs_rel": {v: mean_abs_rel(acc[v]) for v in VAES}}


def onnx_accuracy(pipes: dict[str, DepthPipeline], torch_acc: dict[str, Any], count: int, size: int, seed: int,
                  tolerance: float) -> dict[str, Any]:
    """Full and light on ORT fp32 and fp16; fp16 vs fp32 AbsRel per domain (acceptance: light within ``tolerance``)."""
    acc = {}
    for p, pipe in pipes.items():
        for v in PAIR:
            log(f"accuracy: ONNX Runtime {p}, vae={v} ...")
            acc[p, v] = accuracy(pipe, count, size, seed, vae=v)
    domains = {}
    for dom in EVAL_DOMAINS:
        row: dict[str, Any] = {}
        for v in PAIR:
            a32, a16 = acc["fp32", v][dom]["abs_rel"], acc["fp16", v][dom]["abs_rel"]
            row[v] = {"fp32": acc["fp32", v][dom], "fp16": acc["fp16", v][dom], "fp16_vs_fp32": rel(a16, a32),
                      "fp32_vs_torch": rel(a32, torch_acc["domains"][dom]["variants"][v]["abs_rel"])}
        domains[dom] = row
    worst = {v: max(abs(d[v]["fp16_vs_fp32"]) for d in domains.values()) for v in PAIR}
    return {"domains": domains, "tolerance": tolerance, "worst_abs_fp16_vs_fp32": worst,
            "accepted": worst["light"] <= tolerance, "full_within": worst["full"] <= tolerance}


# ------------------------------------------------------------------------------------------------ latency


def test_image(size: int) -> np.ndarray:
    return render_scene(EVAL_DOMAINS[0], 0, size=(size, size), split="test").rgb


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    return {s: statistics.median(t[s] for t in runs) for s in TIMED_STAGES}


def speedups(full: dict[str, float], light: dict[str, float]) -> dict[str, float]:
    return {s: full[s] / light[s] for s in ("encode", "decode", "total")}


def prediction_latency(pipes: dict[str, DepthPipeline], image: np.ndarray, repeats: int, seed: int,
                       warmup: int = 1) -> dict[str, Any]:
    """Median per-stage timings (the pipeline's own clock) of one default prediction of ``image``, full vs light on
    each backend, in interleaved rounds (a change in the machine's load reaches every variant alike)."""
    runs: dict[tuple[str, str], list[dict[str, float]]] = {(b, v): [] for b in pipes for v in PAIR}
    for i in range(warmup + repeats):
        for (b, v), timings in runs.items():
            t = pipes[b]([image], seed=seed, vae=v).timings
            if i >= warmup:
                timings.append(t)
    out: dict[str, Any] = {"repeats": repeats, "warmup": warmup, "backends": {}}
    for b in pipes:
        row = {v: median_stages(runs[b, v]) for v in PAIR}
        out["backends"][b] = {**row, "speedup": speedups(row["full"], row["light"])}
    return out


def paper_latency(pipe: DepthPipeline, image: np.ndarray, repeats: int, seed: int) -> dict[str, float]:
    """Median per-stage timings of one prediction at the paper's setting (:data:`PAPER`), after one warm-up."""
    runs = [pipe([image], seed=seed, **PAPER).timings for _ in range(1 + repeats)][1:]
    return median_stages(runs)


def paper_comparison(pipe: DepthPipeline, image: np.ndarray, default_latency: dict[str, Any],
                     torch_acc: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The paper setting's latency and accuracy against the default settings' with the light and the full VAE."""
    log(f"paper setting: latency (median of {args.paper_repeats}) ...")
    lat = paper_latency(pipe, image, args.paper_repeats, args.seed)
    log(f"paper setting: accuracy on {args.paper_count} scene(s) per domain ...")
    paper_acc = accuracy(pipe, args.paper_count, args.size, args.seed, **PAPER)
    default_acc = {}
    for v in PAIR:
        if args.paper_count == args.count:
            default_acc[v] = {d: r["variants"][v] for d, r in torch_acc["domains"].items()}
        else:
            default_acc[v] = accuracy(pipe, args.paper_count, args.size, args.seed, vae=v)
    base = default_latency["backends"]["torch"]
    ratio = {v: lat["total"] / base[v]["total"] for v in PAIR}
    mean = {"paper": mean_abs_rel(paper_acc), **{v: mean_abs_rel(default_acc[v]) for v in PAIR}}
    accepted = ratio["light"] >= args.min_paper_ratio and mean["light"] <= mean["paper"]
    return {"setting": PAPER, "count": args.paper_count, "repeats": args.paper_repeats, "latency": lat,
            "cost_ratio": ratio, "min_ratio": args.min_paper_ratio, "mean_abs_rel": mean,
            "domains": {d: {"paper": paper_acc[d], **{v: default_acc[v][d] for v in PAIR}} for d in EVAL_DOMAINS},
            "accepted": accepted}


def sd2_latency(resolution: int, repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    """One 1-step prediction of SD2's architecture (random weights) at resolution², full vs light VAE, per stage."""
    log(f"SD2-size latency at {resolution}² (building random weights) ...")
    pipe = torch_pipeline(None, "sd2", "cpu", torch.float32)
    image = test_image(resolution)
    for v in PAIR:  # a small untimed call of each: first-call costs (allocator, thread pool) go to neither variant
        pipe([test_image(64)], seed=seed, vae=v, steps=1, ensemble=1, processing_res=64, timestep_spacing="trailing")
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in PAIR}
    for i in range(warmup + repeats):
        for v, timings in runs.items():
            t = pipe([image], seed=seed, vae=v, steps=1, ensemble=1, processing_res=resolution,
                     timestep_spacing="trailing").timings
            log(f"  SD2 {v}: {t['total']:.2f} s")
            if i >= warmup:
                timings.append(t)
    row = {v: median_stages(runs[v]) for v in PAIR}
    return {"resolution": resolution, "repeats": repeats, "warmup": warmup, **row,
            "speedup": speedups(row["full"], row["light"])}


def vae_call_latency(vae: Any, light: Any, res: int, repeats: int) -> dict[str, Any]:
    """Median wall time of one encode / decode call (1 row, res²) of each VAE, in interleaved rounds."""
    f = vae_scale_factor(vae)
    x = torch.rand(1, 3, res, res) * 2 - 1
    z = torch.randn(1, 4, res // f, res // f)
    lm = light_modules(light)
    mods = {"full": {"encode": (VAEEncoderWrapper(vae), x), "decode": (VAEDecoderWrapper(vae), z)},
            "light": {"encode": (lm["vae_encoder_light"], x), "decode": (lm["vae_decoder_light"], z)}}
    out: dict[str, Any] = {"resolution": res, "repeats": repeats, "threads": torch.get_num_threads()}
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


# ------------------------------------------------------------------------------------------------ FLOPs


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def unet_flops(unet: Any, f: int, emb_shape: tuple[int, ...], res: int, device: torch.device) -> int:
    """FLOPs of one U-Net call (1 row, the latent of a res² image), on zeros of the described input shapes."""
    spec = describe_networks(f, emb_shape[1], emb_shape[2])["unet"]
    shapes = spec.input_shapes(1, res, res)
    dtypes = {t.name: torch.int64 if t.dtype == "int64" else torch.float32 for t in spec.inputs}
    return count_flops(UNetWrapper(unet).eval(), [torch.zeros(shapes[n], dtype=dtypes[n], device=device)
                                                  for n in spec.input_names])


def flops_pair(unet: Any, vae: Any, light: Any, emb_shape: tuple[int, ...], res: int) -> dict[str, Any]:
    """FLOPs of one encode / decode / U-Net call (1 row, res² pixels) and of a 1-step prediction (their sum), full vs
    light VAE, on the modules' own device (the meta device counts without arithmetic)."""
    dev = next(vae.parameters()).device
    f = vae_scale_factor(vae)
    x = torch.zeros(1, 3, res, res, device=dev)
    z = torch.zeros(1, 4, res // f, res // f, device=dev)
    lm = light_modules(light)
    u = unet_flops(unet, f, emb_shape, res, dev)
    out: dict[str, Any] = {"resolution": res, "vae_scale_factor": f, "unet": u,
                           "full": {"encode": count_flops(VAEEncoderWrapper(vae).eval(), [x]),
                                    "decode": count_flops(VAEDecoderWrapper(vae).eval(), [z])},
                           "light": {"encode": count_flops(lm["vae_encoder_light"], [x]),
                                     "decode": count_flops(lm["vae_decoder_light"], [z])},
                           "params": {"unet": n_params(unet), "full": n_params(vae), "light": n_params(light)}}
    for k in PAIR:
        out[k]["total"] = out[k]["encode"] + out[k]["decode"]
        out[k]["prediction"] = out[k]["total"] + u
    out["ratio"] = {k: out["full"][k] / out["light"][k] for k in ("encode", "decode", "total", "prediction")}
    return out


def sd2_flops(res: int) -> dict[str, Any]:
    with torch.device("meta"):
        m = build_sd2_random()
        light = build_light_vae(**load_config("sd2").light_vae.kwargs())
    out = flops_pair(m.unet, m.vae, light, tuple(m.empty_text_embedding.shape), res)
    out["light_config"] = light_vae_config(light)
    return out


# ------------------------------------------------------------------------------------------------ report


def acceptance_rows(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(criterion, measured values, met) of every acceptance of the report."""
    acc, ox, pl, pp = r["accuracy"], r["onnx_accuracy"], r["prediction_latency"]["backends"], r["paper"]
    sd2 = r["flops"]["sd2"]
    sp = {b: pl[b]["speedup"]["total"] for b in ("torch", "onnx-fp32")}
    return [
        (f"light AbsRel within {acc['tolerance']:.0%} relative of full on every domain (PyTorch)",
         "worst " + f"{acc['worst_light_rel_diff']:+.2%}; " + ", ".join(
             f"{d} {a['abs_rel_rel_diff']['light']:+.2%}" for d, a in acc["domains"].items()), acc["accepted"]),
        (f"light AbsRel on ORT fp16 within {ox['tolerance']:.1%} relative of ORT fp32 on every domain",
         f"largest absolute fp16 vs fp32 difference: light {ox['worst_abs_fp16_vs_fp32']['light']:.3%} (full VAE: "
         f"{ox['worst_abs_fp16_vs_fp32']['full']:.3%}, {verdict(ox['full_within'])})", ox["accepted"]),
        (f"light VAE speed-up of a default prediction ≥ {r['settings']['min_speedup']:g}× on PyTorch and ORT fp32",
         f"PyTorch {sp['torch']:.2f}×, ORT fp32 {sp['onnx-fp32']:.2f}× (ORT fp16 "
         f"{pl['onnx-fp16']['speedup']['total']:.2f}×)", min(sp.values()) >= r["settings"]["min_speedup"]),
        (f"default with light ≥ {pp['min_ratio']:g}× cheaper than 50 steps × 10 members (full VAE) at no worse mean "
         "AbsRel", f"{pp['cost_ratio']['light']:.0f}× cheaper (full VAE default: {pp['cost_ratio']['full']:.0f}×); "
         f"mean AbsRel {pp['mean_abs_rel']['light']:.4f} vs {pp['mean_abs_rel']['paper']:.4f} "
         f"({pp['count']} scene(s) per domain)", pp["accepted"]),
        (f"1-step prediction FLOPs at SD2 {sd2['resolution']}² ≥ {r['settings']['min_flops_ratio']:g}× fewer "
         "with light", f"{sd2['full']['prediction'] / 1e9:.0f} G vs {sd2['light']['prediction'] / 1e9:.0f} G: "
         f"{sd2['ratio']['prediction']:.2f}×", sd2["ratio"]["prediction"] >= r["settings"]["min_flops_ratio"]),
    ]


def md_acceptance(r: dict[str, Any]) -> list[str]:
    lines = ["## Acceptance", "", "| criterion | measured | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {m} | **{verdict(ok)}** |" for c, m, ok in acceptance_rows(r)]
    return lines


def md_accuracy(r: dict[str, Any]) -> list[str]:
    acc = r["accuracy"]
    lines = ["", "## Accuracy on PyTorch, each VAE choice (same U-Net, default settings)", "",
             "| domain | AbsRel full | AbsRel light | relative | δ1 full | δ1 light | edge F1 full | edge F1 light |",
             "|---|---|---|---|---|---|---|---|"]
    for dom, a in acc["domains"].items():
        f, li = a["variants"]["full"], a["variants"]["light"]
        lines.append(f"| {dom} | {f['abs_rel']:.4f} | {li['abs_rel']:.4f} | {a['abs_rel_rel_diff']['light']:+.2%} | "
                     f"{f['delta1']:.3f} | {li['delta1']:.3f} | {f['edge_f1']:.3f} | {li['edge_f1']:.3f} |")
    halves = [v for v in VAES if v != "full"]
    lines += ["", "AbsRel of every VAE choice, relative to the full VAE's (which half costs accuracy):", "",
              "| domain | AbsRel full | " + " | ".join(halves) + " |", "|---|---|" + "---|" * len(halves)]
    for dom, a in acc["domains"].items():
        lines.append(f"| {dom} | {a['variants']['full']['abs_rel']:.4f} | "
                     + " | ".join(f"{a['variants'][v]['abs_rel']:.4f} ({a['abs_rel_rel_diff'][v]:+.2%})"
                                  for v in halves) + " |")
    return lines


def md_onnx(r: dict[str, Any]) -> list[str]:
    ox, e = r["onnx_accuracy"], r["onnx_export"]
    lines = ["", "## ONNX Runtime fp32 and fp16 (same scenes)", "",
             f"Export `{e['dir']}` ({'reused' if e['reused'] else 'exported by this run'}).", "",
             "| domain | VAE | AbsRel ORT fp32 | AbsRel ORT fp16 | fp16 vs fp32 | ORT fp32 vs PyTorch |",
             "|---|---|---|---|---|---|"]
    for dom, row in ox["domains"].items():
        for v in PAIR:
            a = row[v]
            lines.append(f"| {dom} | {v} | {a['fp32']['abs_rel']:.4f} | {a['fp16']['abs_rel']:.4f} | "
                         f"{a['fp16_vs_fp32']:+.3%} | {a['fp32_vs_torch']:+.3%} |")
    return lines


def md_prediction_latency(r: dict[str, Any]) -> list[str]:
    pl, s = r["prediction_latency"], r["settings"]
    lines = ["", f"## Latency of one default prediction of one {s['size']}² image (median of {pl['repeats']} "
             f"interleaved rounds after {pl['warmup']} warm-up, {s['threads']} thread(s))", "",
             "| backend | VAE | encode | U-Net | decode | total | speed-up (total) |", "|---|---|---|---|---|---|---|"]
    for b, row in pl["backends"].items():
        for v in PAIR:
            t = row[v]
            sp = f"{row['speedup']['total']:.2f}×" if v == "light" else ""
            lines.append(f"| {b} | {v} | " + " | ".join(f"{t[k] * 1e3:.2f} ms" for k in TIMED_STAGES) + f" | {sp} |")
    return lines


def md_paper(r: dict[str, Any]) -> list[str]:
    pp = r["paper"]
    base = r["prediction_latency"]["backends"]["torch"]
    lines = ["", "## Against the paper's setting (PyTorch)", "",
             f"Paper: {pp['setting']['steps']} steps, {pp['setting']['timestep_spacing']} spacing, "
             f"{pp['setting']['ensemble']} members (one U-Net batch), full VAE; latency median of {pp['repeats']} "
             f"after 1 warm-up; accuracy on {pp['count']} scene(s) per domain.", "",
             "| setting | latency | paper / this | mean AbsRel | " + " | ".join(f"AbsRel {d}" for d in pp["domains"])
             + " |", "|---|---|---|---|" + "---|" * len(pp["domains"])]
    rows = [("50 × 10, full VAE", pp["latency"]["total"], 1.0, "paper"),
            ("default, full VAE", base["full"]["total"], pp["cost_ratio"]["full"], "full"),
            ("default, light VAE", base["light"]["total"], pp["cost_ratio"]["light"], "light")]
    for name, t, ratio, key in rows:
        lines.append(f"| {name} | {t * 1e3:.1f} ms | {ratio:.1f}× | {pp['mean_abs_rel'][key]:.4f} | "
                     + " | ".join(f"{a[key]['abs_rel']:.4f}" for a in pp["domains"].values()) + " |")
    return lines


def md_flops(r: dict[str, Any]) -> list[str]:
    lines = ["", "## FLOPs (1 row; a 1-step prediction = encode + U-Net + decode)", "",
             "| model | resolution | full encode | full decode | light encode | light decode | VAE full / light "
             "| params full | params light |", "|---|---|---|---|---|---|---|---|---|"]
    for name, fl in r["flops"].items():
        lines.append(f"| {name} | {fl['resolution']}² | {fl['full']['encode'] / 1e9:.3f} G | "
                     f"{fl['full']['decode'] / 1e9:.3f} G | {fl['light']['encode'] / 1e9:.3f} G | "
                     f"{fl['light']['decode'] / 1e9:.3f} G | {fl['ratio']['total']:.2f}× | "
                     f"{fl['params']['full'] / 1e6:.2f} M | {fl['params']['light'] / 1e6:.2f} M |")
    lines += ["", "| model | resolution | U-Net | 1-step prediction full | 1-step prediction light | full / light |",
              "|---|---|---|---|---|---|"]
    for name, fl in r["flops"].items():
        lines.append(f"| {name} | {fl['resolution']}² | {fl['unet'] / 1e9:.3f} G | "
                     f"{fl['full']['prediction'] / 1e9:.3f} G | {fl['light']['prediction'] / 1e9:.3f} G | "
                     f"{fl['ratio']['prediction']:.2f}× |")
    return lines


def md_sd2_latency(r: dict[str, Any]) -> list[str]:
    sd = r.get("sd2_latency")
    if sd is None:
        return ["", "## SD2-size CPU latency", "", "Not measured (`--no-sd2-latency`)."]
    lines = ["", f"## SD2-size CPU latency (random weights; one 1-step {sd['resolution']}² prediction, median of "
             f"{sd['repeats']} after {sd['warmup']} warm-up(s), {r['settings']['threads']} thread(s))", "",
             "| stage | full | light | full / light |", "|---|---|---|---|"]
    for k in TIMED_STAGES:
        lines.append(f"| {k} | {sd['full'][k]:.2f} s | {sd['light'][k]:.2f} s | "
                     f"{sd['full'][k] / sd['light'][k]:.2f}× |")
    return lines


def md_vae_calls(r: dict[str, Any]) -> list[str]:
    lt = r["latency"]
    lines = ["", f"## CPU latency of single VAE calls (median of {lt['repeats']} calls, 1 row, {lt['resolution']}², "
             f"{lt['threads']} thread(s))", "", "| call | full | light | speed-up |", "|---|---|---|---|"]
    for c in ("encode", "decode", "total"):
        lines.append(f"| {c} | {lt['full'][c] * 1e3:.2f} ms | {lt['light'][c] * 1e3:.2f} ms | "
                     f"{lt['speedup'][c]:.2f}× |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    head = [f"Checkpoint `{s['checkpoint']}`; {s['count']} test scenes per domain at {s['size']}×{s['size']}, the "
            f"checkpoint's defaults ({s['steps']} step(s), {s['spacing']}, {s['processing_resolution']} px, 1 "
            f"member, seed {s['seed']}) with the VAE forced by `vae=`; CPU, {s['threads']} thread(s) (torch and "
            "ONNX Runtime).", ""]
    parts = [head, md_acceptance(r), md_accuracy(r), md_onnx(r), md_prediction_latency(r), md_paper(r), md_flops(r),
             md_sd2_latency(r), md_vae_calls(r),
             ["", f"Light VAE size: `{r['light_config']}`; `vae_light/` on disk: {r['light_bytes'] / 1e6:.2f} MB."]]
    return "\n".join(line for part in parts for line in part)


# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="a checkpoint with vae_light/")
    ap.add_argument("--count", type=int, default=20, help="test scenes per domain")
    ap.add_argument("--paper-count", type=int, default=10, help="test scenes per domain for the 50x10 setting")
    ap.add_argument("--size", type=int, default=128, help="scene side (px)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.03, help="acceptance: light vs full relative AbsRel")
    ap.add_argument("--fp16-tolerance", type=float, default=0.005, help="acceptance: fp16 vs fp32 relative AbsRel")
    ap.add_argument("--min-speedup", type=float, default=2.0, help="acceptance: light speed-up of a prediction")
    ap.add_argument("--min-paper-ratio", type=float, default=100.0, help="acceptance: 50x10 full / default light")
    ap.add_argument("--min-flops-ratio", type=float, default=3.5, help="acceptance: SD2 1-step FLOPs full / light")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds of the prediction and VAE call latencies")
    ap.add_argument("--paper-repeats", type=int, default=3, help="timed predictions at the 50x10 setting")
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--work-dir", type=Path, default=Path(".bench/light_vae_engines"),
                    help="the ONNX export (reused when made from the same checkpoint)")
    ap.add_argument("--sd2-resolution", type=int, default=768, help="SD2-size FLOPs and latency resolution")
    ap.add_argument("--sd2-latency", action=argparse.BooleanOptionalAction, default=True,
                    help="measure the SD2-size CPU latency (tens of seconds per prediction)")
    ap.add_argument("--sd2-repeats", type=int, default=1)
    ap.add_argument("--sd2-warmup", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    return ap.parse_args()


def settings(args: argparse.Namespace, pipe: DepthPipeline) -> dict[str, Any]:
    d = pipe.backend.defaults
    return {"checkpoint": str(args.checkpoint), "count": args.count, "size": args.size, "seed": args.seed,
            "steps": d.steps, "spacing": d.timestep_spacing, "processing_resolution": d.processing_resolution,
            "checkpoint_vae": d.vae, "threads": torch.get_num_threads(), "min_speedup": args.min_speedup,
            "min_flops_ratio": args.min_flops_ratio}


def run(args: argparse.Namespace, step: Callable[[str], None] = log) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    pipe = torch_checkpoint_pipeline(args.checkpoint)
    be = pipe.backend
    res = be.defaults.processing_resolution or args.size
    report: dict[str, Any] = {"settings": settings(args, pipe)}
    report["accuracy"] = torch_accuracy(pipe, args.count, args.size, args.seed, args.tolerance)
    engines, reused = onnx_engines(args.checkpoint, args.work_dir, res)
    report["onnx_export"] = {"dir": str(args.work_dir), "reused": reused}
    ort = onnx_pipelines(engines, args.threads)
    report["onnx_accuracy"] = onnx_accuracy(ort, report["accuracy"], args.count, args.size, args.seed,
                                            args.fp16_tolerance)
    step(f"prediction latency (median of {args.repeats}) ...")
    image = test_image(args.size)
    report["prediction_latency"] = prediction_latency({"torch": pipe, **{f"onnx-{p}": q for p, q in ort.items()}},
                                                      image, args.repeats, args.seed)
    report["paper"] = paper_comparison(pipe, image, report["prediction_latency"], report["accuracy"], args)
    step("FLOPs ...")
    emb_shape = tuple(be.empty_text_embedding.shape)
    report["flops"] = {"checkpoint": flops_pair(be.unet, be.vae, be.light_vae, emb_shape, res),
                       "sd2": sd2_flops(args.sd2_resolution)}
    step("VAE call latency ...")
    report["latency"] = vae_call_latency(be.vae, be.light_vae, res, args.repeats)
    if args.sd2_latency:
        report["sd2_latency"] = sd2_latency(args.sd2_resolution, args.sd2_repeats, args.sd2_warmup, args.seed)
    report["light_config"] = light_vae_config(be.light_vae)
    report["light_bytes"] = sum(p.stat().st_size for p in (args.checkpoint / "vae_light").iterdir())
    report["acceptance"] = [{"criterion": c, "measured": m, "met": ok} for c, m, ok in acceptance_rows(report)]
    return report


def main() -> None:
    args = parse_args()
    meta = report_meta("python benchmarks/light_vae.py " + shlex.join(sys.argv[1:]))
    report = {**meta, **run(args)}
    text = publish_report("Light VAE (distilled AutoencoderTiny) against the full VAE", report, markdown(report),
                          args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
