"""Load on the depth service (``depth-serve``): latency and throughput of concurrent HTTP clients against a local
Ray Serve deployment, and the batches its dynamic batching formed.

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json --md benchmarks/results/serve_load.md

The service is started as ``depth-serve`` starts it (a loopback-only local Ray, the HTTP proxy on 127.0.0.1), with
the bundled model on PyTorch (or ``--engine``) at its default settings. Requests are PNG files of ``--size`` procedural
test scenes of the unseen domains, encoded before timing; each answer is the depth as ``--format``. Phases, each after
a warm-up of two requests per client: one client alone (``--requests`` in a row: the latency without queueing), then
``--clients`` concurrent clients × ``--requests``, with ``--max-batch-size`` and, unless ``--no-baseline``, again with
batching off (max batch size 1). Latency: per request at the client (send to last byte); req/s: the phase's requests
over its wall time; batch sizes: the replica's ``/health`` histogram over the phase (one replica's counts: with
``--replicas`` > 1, whichever replica answered).
"""

from __future__ import annotations

import argparse
import io
import shlex
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agdepth.bench.report import BENCH_PACKAGES, publish_report, report_meta
from agdepth.cluster.client import DepthClient, DepthServiceError
from agdepth.cluster.predictor import ModelSpec
from agdepth.cluster.ray_env import init_ray
from agdepth.cluster.serve import serve_depth
from agdepth.data.procedural import EVAL_DOMAINS, render_scene

SCENES = 16
WARMUP_PER_CLIENT = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def run_clients(url: str, bodies: list[bytes], clients: int, requests: int, fmt: str) -> tuple[list[float], float,
                                                                                                  list[str]]:
    """``clients`` threads × ``requests`` requests: (latencies in s, wall time in s, error lines)."""

    def one_client(c: int) -> tuple[list[float], list[str]]:
        client = DepthClient(url, timeout=600)
        fetch: Callable[[bytes], Any] = client.depth if fmt == "npy" else client.depth_png16
        latencies, errors = [], []
        for r in range(requests):
            body = bodies[(c * requests + r) % len(bodies)]
            t0 = time.perf_counter()
            try:
                fetch(body)
                latencies.append(time.perf_counter() - t0)
            except DepthServiceError as e:
                errors.append(str(e))
        return latencies, errors

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - t0
    return [x for lat, _ in results for x in lat], wall, [e for _, errs in results for e in errs]


def histogram_delta(before: dict[str, int], after: dict[str, int]) -> dict[int, int]:
    out = {int(n): after.get(n, 0) - before.get(n, 0) for n in after}
    return {n: k for n, k in sorted(out.items()) if k}


def phase(name: str, url: str, bodies: list[bytes], clients: int, requests: int, fmt: str,
          max_batch_size: int) -> dict[str, Any]:
    client = DepthClient(url)
    run_clients(url, bodies, clients, WARMUP_PER_CLIENT, fmt)
    before = client.health()["batch_sizes"]
    latencies, wall, errors = run_clients(url, bodies, clients, requests, fmt)
    hist = histogram_delta(before, client.health()["batch_sizes"])
    ms = sorted(1000 * x for x in latencies)
    batches = sum(hist.values())
    row = {
        "phase": name, "clients": clients, "requests": clients * requests, "max_batch_size": max_batch_size,
        "answered": len(latencies), "errors": errors[:5], "error_count": len(errors),
        "p50_ms": statistics.median(ms) if ms else float("nan"),
        "p95_ms": float(np.percentile(ms, 95)) if ms else float("nan"),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
        "wall_s": wall, "req_per_s": len(latencies) / wall,
        "batch_sizes": hist, "batches": batches,
        "mean_batch": sum(n * k for n, k in hist.items()) / batches if batches else float("nan"),
    }
    print(f"{name}: {row['req_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, "
          f"batches {hist}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, default=None, help="An exported model (default: the bundled model).")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="Requests per client.")
    ap.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    ap.add_argument("--format", choices=("png16", "npy"), default="png16")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--num-cpus", type=float, default=0.5)
    ap.add_argument("--num-gpus", type=float, default=0.0)
    ap.add_argument("--no-baseline", action="store_true", help="Skip the concurrent phase without batching.")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/serve_load.py " + shlex.join(sys.argv[1:]), (*BENCH_PACKAGES, "ray"))

    h, w = args.size
    bodies = [png_bytes(render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, size=(h, w), split="test").rgb)
              for i in range(SCENES)]
    spec = ModelSpec(engine=None if args.engine is None else str(args.engine.resolve()), device=args.device)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        ray = init_ray(temp_dir=tmp)
        from ray import serve

        def deploy(max_batch_size: int) -> dict[str, Any]:
            t0 = time.perf_counter()
            serve_depth(spec, port=port, replicas=args.replicas, max_batch_size=max_batch_size,
                        batch_wait_timeout_s=args.batch_wait_ms / 1000, num_cpus=args.num_cpus,
                        num_gpus=args.num_gpus)
            health = DepthClient(url).health()
            print(f"service up in {time.perf_counter() - t0:.1f} s, max batch {max_batch_size}", flush=True)
            return health

        try:
            health = deploy(args.max_batch_size)
            rows.append(phase("1 client", url, bodies, 1, args.requests, args.format, args.max_batch_size))
            rows.append(phase(f"{args.clients} clients", url, bodies, args.clients, args.requests, args.format,
                              args.max_batch_size))
            if not args.no_baseline and args.max_batch_size > 1:
                deploy(1)
                rows.append(phase(f"{args.clients} clients, no batching", url, bodies, args.clients, args.requests,
                                  args.format, 1))
        finally:
            serve.shutdown()
            ray.shutdown()

    report = {
        **meta,
        "size": [h, w], "format": args.format, "replicas": args.replicas, "batch_wait_ms": args.batch_wait_ms,
        "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "torch_threads": health.get("torch_threads"),
        "settings": health["settings"], "rows": rows,
    }
    s = health["settings"]
    lines = [
        f"{h}×{w} procedural test scenes as PNG requests, answers as {args.format}; model {s['model']} "
        f"({s['steps']} step(s), ensemble {s['ensemble']}, processing_res {s['processing_res']}, vae {s['vae']}); "
        f"{args.replicas} replica(s) of {args.num_cpus:g} CPU / {args.num_gpus:g} GPU "
        f"({health.get('torch_threads')} torch thread(s) each); batch wait "
        f"{args.batch_wait_ms:g} ms. Latency at the client; each phase after a warm-up of {WARMUP_PER_CLIENT} "
        "requests per client.", "",
        "| phase | max batch | requests | answered | req/s | p50 | p95 | mean | max | batches (size: count) "
        "| mean batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hist = ", ".join(f"{n}: {k}" for n, k in r["batch_sizes"].items())
        lines.append(f"| {r['phase']} | {r['max_batch_size']} | {r['requests']} | {r['answered']} | "
                     f"{r['req_per_s']:.1f} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | {r['mean_ms']:.0f} ms | "
                     f"{r['max_ms']:.0f} ms | {hist} | {r['mean_batch']:.2f} |")
    if len(rows) == 3:
        batched, unbatched = rows[1], rows[2]
        lines += ["", f"Dynamic batching (max {args.max_batch_size}) against none, {args.clients} clients: "
                      f"{batched['req_per_s']:.1f} against {unbatched['req_per_s']:.1f} req/s "
                      f"({batched['req_per_s'] / unbatched['req_per_s']:.2f}×), p50 {batched['p50_ms']:.0f} against "
                      f"{unbatched['p50_ms']:.0f} ms."]
    errors = [e for r in rows for e in r["errors"]]
    if errors:
        lines += ["", "Errors (first few): " + "; ".join(errors)]
    title = f"Depth service under load: {args.clients} clients × {args.requests} requests, {h}×{w}"
    print(publish_report(title, report, "\n".join(lines), args.json, args.md))


if __name__ == "__main__":
    main()
