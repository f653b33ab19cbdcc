"""Backend parity of each ensembling method: PyTorch fp32 against ONNX Runtime fp32 / fp16, end to end.

    python benchmarks/parity_ensembling.py --engine engines \
        --json benchmarks/results/parity_ensembling.json --md benchmarks/results/parity_ensembling.md

``--engine`` is a ``depth-export --fp16`` directory of the checkpoint (default: the bundled model). As ``depth-bench
parity``'s end-to-end comparison (:func:`agdepth.bench.parity.compare_end_to_end`): ``--count`` procedural test
scenes per domain at 240×320 (``render_scene(domain, i, size=(240, 320), split="test")``), one set of initial
latents drawn on the CPU for every backend (``pipe.initial_latents(images, ensemble=E, seed=0)``), trailing
spacing, ``batch_size=0``; here each setting is run once per ensembling method of
:data:`agdepth.ensemble.ENSEMBLE_METHODS` (``ensembling_kwargs={"method": m}``, each method with its defaults), and
each backend's map is scored against PyTorch fp32's map of the same method by
:func:`agdepth.metrics.backend_agreement` (AbsRel, δ1 on pixels where the reference is > 0.01, max abs difference
over all pixels; depth in [0, 1]). The members going into the ensembling differ between backends only by the
networks' rounding (about 1e-6 for fp32, 1e-2 for fp16), so the rows show how each method passes that on.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import DOMAINS, render_scene
from agdepth.ensemble import DEFAULT_METHOD, ENSEMBLE_METHODS, METHOD_DEFAULTS
from agdepth.export import Manifest
from agdepth.metrics import backend_agreement
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends.onnx_backend import OnnxBackend

REFERENCE = "pytorch-fp32"


def measure(engine: Path, checkpoint: Path, count: int, settings: list[tuple[int, int]], methods: list[str],
            precisions: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows: one per setting, method and backend; the scenes' description)."""
    manifest = Manifest.load(engine)
    missing = [p for p in precisions if p not in manifest.precisions]
    if missing:
        raise SystemExit(f"{engine} has no {', '.join(missing)} graphs (it has {', '.join(manifest.precisions)})")
    pipes = {REFERENCE: DepthPipeline.from_checkpoint(checkpoint)}
    for prec in precisions:
        pipes[f"onnxruntime-{prec}"] = DepthPipeline(OnnxBackend(manifest, prec, check_finite=True))
    r = manifest.shapes
    # as compare_end_to_end: a static export is one square canvas, so square scenes at its side
    size, res = ((r.max_resolution, r.max_resolution), r.max_resolution) if r.is_static else ((240, 320), None)
    images = [render_scene(d, i, size=size, split="test").rgb for d in DOMAINS for i in range(count)]
    rows = []
    for steps, ens in settings:
        latents = pipes[REFERENCE].initial_latents(images, ensemble=ens, processing_res=res, seed=0)
        for method in methods:
            depth, secs = {}, {}
            for name, p in pipes.items():
                t0 = time.perf_counter()
                depth[name] = p(images, steps=steps, ensemble=ens, processing_res=res, timestep_spacing="trailing",
                                latents=latents, batch_size=0, ensembling_kwargs={"method": method}).depth
                secs[name] = time.perf_counter() - t0
            for name in pipes:
                if name == REFERENCE:
                    continue
                per = [backend_agreement(a, b) for a, b in zip(depth[name], depth[REFERENCE], strict=True)]
                rows.append({"setting": f"{steps}x{ens} trailing", "steps": steps, "ensemble": ens,
                             "method": method, "backend": name,
                             "abs_rel": float(np.mean([m["abs_rel"] for m in per])),
                             "abs_rel_max": float(max(m["abs_rel"] for m in per)),
                             "delta1": float(np.mean([m["delta1"] for m in per])),
                             "max_abs": float(max(m["max_abs"] for m in per)),
                             "max_abs_per_image": [m["max_abs"] for m in per],
                             "finite": bool(np.isfinite(depth[name]).all()),
                             "fp32_decoder_fallbacks": getattr(pipes[name].backend, "fallbacks", 0),
                             "seconds": secs[name], "reference_seconds": secs[REFERENCE]})
                print(f"[{steps}x{ens}, {method}] {name}: AbsRel {100 * rows[-1]['abs_rel']:.4f} %, "
                      f"max abs {rows[-1]['max_abs']:.1e} ({secs[name]:.1f} s; PyTorch {secs[REFERENCE]:.1f} s)",
                      flush=True)
    scenes = {"domains": list(DOMAINS), "per_domain": count, "images": len(images), "size": list(size),
              "processing_res": res}
    return rows, scenes


def markdown(report: dict[str, Any]) -> str:
    st, sc = report["settings"], report["scenes"]
    stop = ", ".join(f"`{m}` max_iter {it}, tol {tol:g}" for m, (it, tol) in st["method_defaults"].items()
                     if m in st["methods"])
    lines = [
        f"{sc['images']} procedural test scenes ({sc['per_domain']} per domain: {', '.join(sc['domains'])}), "
        f"{sc['size'][0]}×{sc['size'][1]}, the checkpoint's processing resolution; one set of initial latents "
        "(drawn on the CPU, seed 0) for every backend; trailing spacing, `batch_size=0`. Each ensembling method "
        f"(`ensembling_kwargs={{\"method\": m}}`; `{st['default_method']}` is the default; stopping: {stop}) is run "
        "on every backend, and each ONNX Runtime map is compared with PyTorch fp32's map of the same method: AbsRel "
        "and δ1 (%) on pixels where the reference is > 0.01 (no alignment; mean over the images, and AbsRel's "
        "largest image), max abs difference over all pixels and images (depth in [0, 1]).", "",
        "| setting | method | backend | AbsRel % (mean) | AbsRel % (max image) | δ1 % | max abs diff | finite |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['setting']} | {r['method']} | {r['backend']} | {100 * r['abs_rel']:.4f} | "
                     f"{100 * r['abs_rel_max']:.4f} | {100 * r['delta1']:.2f} | {r['max_abs']:.1e} | "
                     f"{'yes' if r['finite'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, required=True, help="a depth-export --fp16 directory of the checkpoint")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    ap.add_argument("--count", type=int, default=5, help="test scenes per procedural domain")
    ap.add_argument("--settings", default="1x5,4x10", help="STEPSxENSEMBLE,... (trailing spacing)")
    ap.add_argument("--methods", default=",".join(ENSEMBLE_METHODS), help="ensembling methods")
    ap.add_argument("--precisions", default="fp32,fp16", help="ONNX Runtime graphs of the export to compare")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()

    meta = report_meta("python benchmarks/parity_ensembling.py " + shlex.join(sys.argv[1:]),
                       packages=("torch", "diffusers", "onnxruntime", "numpy", "scipy"))
    ckpt = args.checkpoint or default_checkpoint()
    settings = [(int(s), int(e)) for s, e in (v.split("x") for v in args.settings.split(","))]
    methods = args.methods.split(",")
    bad = [m for m in methods if m not in ENSEMBLE_METHODS]
    if bad:
        raise SystemExit(f"unknown ensembling method(s) {', '.join(bad)}; choose from {', '.join(ENSEMBLE_METHODS)}")
    precisions = args.precisions.split(",")
    rows, scenes = measure(args.engine, ckpt, args.count, settings, methods, precisions)
    report = {**meta,
              "settings": {"checkpoint": str(ckpt.name if args.checkpoint is None else ckpt),
                           "engine": str(args.engine), "settings": [f"{s}x{e}" for s, e in settings],
                           "methods": methods, "default_method": DEFAULT_METHOD,
                           "method_defaults": {m: list(v) for m, v in METHOD_DEFAULTS.items()},
                           "precisions": precisions, "reference": REFERENCE},
              "scenes": scenes, "rows": rows}
    text = publish_report("Backend parity of each ensembling method", report, markdown(report), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
