"""Video depth: the stream mode against per-frame prediction, on rendered camera paths of the unseen domains.

    python benchmarks/video_stream.py --json benchmarks/results/video_stream.json \
        --md benchmarks/results/video_stream.md

1. Accuracy and flicker: ``--count`` test camera paths per unseen domain (``agdepth.data.procedural_video``,
   ``--frames`` frames of ``--size`` at ``--fps``), the bundled model (or ``--checkpoint``) on PyTorch at its default
   settings, scored per sequence by ``agdepth.metrics.evaluate_sequence`` (one scale and shift per sequence; the
   temporal error between consecutive frames) and averaged over sequences. Modes: ``frames`` (the image pipeline on
   each frame, seed + i: what depth-run gives a folder of images), the default stream (``DepthStream``: fixed noise,
   online alignment, the default warm start), and variants: no alignment, and warm starts of ``--strengths``.
   Acceptance: the default stream's temporal error at most 0.5x the frames mode's and its sequence-aligned AbsRel at
   most 1.0x, on every domain.
2. Latency at ``--latency-size`` (H W, 240 320 by default), PyTorch and ONNX Runtime fp32 (the model exported into a
   temporary folder): per frame, the image pipeline's call and the stream's push, interleaved frame by frame over one
   rendered camera path after ``--warmup`` frames each; medians. Acceptance: the stream at most 1.1x the image
   pipeline per frame. Frames/s = 1 / the stream's median.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import EVAL_DOMAINS
from agdepth.data.procedural_video import render_sequence
from agdepth.evaluation.video import evaluate_clips, procedural_sequences
from agdepth.export import ExportOptions, export_checkpoint
from agdepth.runtime import DepthPipeline
from agdepth.runtime.stream import DEFAULT_STRENGTH, DepthStream

KEYS = ("abs_rel", "delta1", "temporal_error", "temporal_change")


def _frames_mode(pipe: DepthPipeline, seed: int):  # noqa: ANN202
    def predict(frames: list[Any]) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        out = [pipe(f, ensemble=1, seed=seed + i).depth[0] for i, f in enumerate(frames)]
        return out, (time.perf_counter() - t0) / len(frames)
    return predict


def _stream_mode(pipe: DepthPipeline, seed: int, **kwargs: Any):  # noqa: ANN202
    def predict(frames: list[Any]) -> tuple[list[Any], float]:
        stream = DepthStream(pipe, seed=seed, **kwargs)
        t0 = time.perf_counter()
        out = [stream.push(f).depth for f in frames]
        return out, (time.perf_counter() - t0) / len(frames)
    return predict


def accuracy(pipe: DepthPipeline, args: argparse.Namespace) -> dict[str, Any]:
    modes: dict[str, Any] = {
        "frames": _frames_mode(pipe, args.seed),
        "stream": _stream_mode(pipe, args.seed),
        "stream, no alignment": _stream_mode(pipe, args.seed, align="none"),
    }
    for s in args.strengths:
        modes[f"stream, warm start {s:g}"] = _stream_mode(pipe, args.seed, strength=s)
    out: dict[str, Any] = {}
    for dom in EVAL_DOMAINS:
        seqs = list(procedural_sequences(dom, args.count, args.frames, tuple(args.size), args.fps))
        out[dom] = {name: evaluate_clips(seqs, fn)["mean"] for name, fn in modes.items()}
        print(dom, {k: round(v["temporal_error"], 4) for k, v in out[dom].items()}, flush=True)
    return out


def latency(pipe: DepthPipeline, frames: list[Any], warmup: int, seed: int) -> dict[str, float]:
    stream = DepthStream(pipe, seed=seed)
    image_s, stream_s = [], []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        pipe(f, ensemble=1, seed=seed + i)
        t1 = time.perf_counter()
        stream.push(f)
        t2 = time.perf_counter()
        if i >= warmup:
            image_s.append(t1 - t0)
            stream_s.append(t2 - t1)
    img, st = statistics.median(image_s), statistics.median(stream_s)
    return {"image_ms": 1e3 * img, "stream_ms": 1e3 * st, "ratio": st / img, "stream_fps": 1 / st,
            "frames": len(image_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=(96, 128))
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--strengths", type=float, nargs="*", default=(0.8, 0.5))
    ap.add_argument("--latency-size", type=int, nargs=2, default=(240, 320))
    ap.add_argument("--latency-frames", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/video_stream.py " + shlex.join(sys.argv[1:]), ("torch", "onnxruntime", "av"))
    ckpt = args.checkpoint or default_checkpoint()
    pipe = DepthPipeline.from_checkpoint(ckpt)
    acc = accuracy(pipe, args)
    seq = render_sequence(EVAL_DOMAINS[0], 0, frames=args.latency_frames, size=tuple(args.latency_size), split="test",
                          fps=args.fps)
    frames = list(seq.rgb)
    lat = {"PyTorch": latency(pipe, frames, args.warmup, args.seed)}
    with tempfile.TemporaryDirectory() as tmp:
        export_checkpoint(ckpt, Path(tmp) / "engines", ExportOptions(), progress=lambda _: None)
        ort = DepthPipeline.from_engine(Path(tmp) / "engines" / "unet.onnx")
        lat["ONNX Runtime fp32"] = latency(ort, frames, args.warmup, args.seed)
    checks = {dom: {"temporal_error_ratio": r["stream"]["temporal_error"] / r["frames"]["temporal_error"],
                    "abs_rel_ratio": r["stream"]["abs_rel"] / r["frames"]["abs_rel"]} for dom, r in acc.items()}
    met = {
        "temporal_error <= 0.5x frames": all(c["temporal_error_ratio"] <= 0.5 for c in checks.values()),
        "abs_rel <= 1.0x frames": all(c["abs_rel_ratio"] <= 1.0 for c in checks.values()),
        "stream latency <= 1.1x image pipeline": all(v["ratio"] <= 1.1 for v in lat.values()),
    }
    report = {**meta, "checkpoint": str(args.checkpoint) if args.checkpoint else "bundled",
              "settings": {"count": args.count, "frames": args.frames, "size": list(args.size), "fps": args.fps,
                           "default_strength": DEFAULT_STRENGTH, "latency_size": list(args.latency_size),
                           "threads": torch.get_num_threads()},
              "accuracy": acc, "checks": checks, "latency": lat, "met": met}
    lines = [f"{args.count} test camera paths per unseen domain, {args.frames} frames of {args.size[0]}×{args.size[1]} "
             f"at {args.fps:g} fps; {'the bundled model' if args.checkpoint is None else args.checkpoint}, PyTorch, "
             "default settings (one member). Scores: one scale and shift per sequence, means over sequences; temporal "
             "error = mean over consecutive frames of |Δprediction − Δground truth| / ground truth "
             "(`agdepth.metrics.temporal_error`); temporal change = the ground truth's own change.", "",
             "| domain | mode | AbsRel | δ1 | temporal error | temporal change | TE × frames | AbsRel × frames |",
             "|---|---|---|---|---|---|---|---|"]
    for dom, rows in acc.items():
        ref = rows["frames"]
        for name, m in rows.items():
            lines.append(f"| {dom} | {name} | {m['abs_rel']:.4f} | {m['delta1']:.4f} | {m['temporal_error']:.4f} | "
                         f"{m['temporal_change']:.4f} | {m['temporal_error'] / ref['temporal_error']:.2f} | "
                         f"{m['abs_rel'] / ref['abs_rel']:.2f} |")
    lines += ["", f"Latency per frame at {args.latency_size[1]}×{args.latency_size[0]}, one camera path of "
              f"{args.latency_frames} frames, interleaved, medians after {args.warmup} warm-up frames:", "",
              "| backend | image pipeline | stream | stream × image | stream frames/s |", "|---|---|---|---|---|"]
    for name, v in lat.items():
        lines.append(f"| {name} | {v['image_ms']:.1f} ms | {v['stream_ms']:.1f} ms | {v['ratio']:.2f} | "
                     f"{v['stream_fps']:.1f} |")
    lines += ["", "Acceptance: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()) + "."]
    print(publish_report("Video depth: stream mode against per-frame prediction", report, "\n".join(lines),
                         args.json, args.md))


if __name__ == "__main__":
    main()
