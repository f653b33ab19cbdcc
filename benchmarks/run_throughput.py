"""depth-run's throughput: the code of an earlier commit (reading, predicting and writing in turn) against this tree's.

    python benchmarks/run_throughput.py --before 450c54d --json benchmarks/results/run_throughput.json \
        --md benchmarks/results/run_throughput.md

Writes ``--count`` procedural images (``agdepth.data.procedural.render_scene``) of ``--size`` (H W) as ``--format``
files, exports the bundled model for ONNX Runtime (``depth-export --out DIR``, unless ``--engines`` names an export),
then runs ``depth-run FOLDER --engine DIR/unet.onnx --out OUT`` with its default settings as two programs, alternating,
``--repeats`` times each after one warm-up run each:

* before: ``agdepth/runtime/cli.py`` and ``agdepth/runtime/writer.py`` as they are at ``--before`` (read from git),
  on this tree's package otherwise (the old writer module is installed under its own name before the old CLI loads);
* after: this tree's ``depth-run``;

and, unless ``--no-passive``, both again with ``OMP_WAIT_POLICY=PASSIVE`` in their environment (PyTorch's OpenMP
threads then sleep at once when idle instead of spinning; the setting must be in the environment before PyTorch
loads, so depth-run cannot make it itself).

Every output file of every run must be byte-identical to the first run's (the .npy depth maps, the PNGs, the
ledger); the script fails otherwise. Reported per program: images/s as depth-run's ``done:`` line gives it (its wall
time runs from the start of ``main``, model loading included, interpreter start-up not), the seconds per stage
from that line, and the overhead: wall time less the networks' time (encode + unet + decode).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from agdepth.bench.report import markdown_document, report_meta, stamp_end, write_report
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.runtime.pipeline import STAGES
from agdepth.runtime.writer import default_readers, default_writers

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("encode", "unet", "decode")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}

# The earlier CLI on this tree's package: its own writer module replaces agdepth.runtime.writer in that process.
_BEFORE = """
import importlib.util, sys
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
load("agdepth.runtime.writer", sys.argv[1])
cli = load("agdepth_before_cli", sys.argv[2])
sys.argv = ["depth-run", *sys.argv[3:]]
cli.main()
"""

_DONE = re.compile(r"done: (\d+) image\(s\) in [\d.]+ s \(([\d.]+) img/s\); seconds per stage: (.*)")


def git_show(rev: str, path: str) -> str:
    return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def write_inputs(folder: Path, count: int, size: tuple[int, int], fmt: str) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        rgb = render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, size, "test").rgb
        options: dict[str, Any] = {"quality": 95} if fmt == "jpg" else {}
        Image.fromarray(rgb).save(folder / f"img{i:03d}.{fmt}", **options)


def run_once(cmd: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    """One depth-run; its ``done:`` figures, and the seconds from its header line (printed once the model is
    loaded and the outputs planned) to its ``done:`` line, timed here as the lines arrive."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    text, t_header, t_done = [], None, None
    for line in proc.stdout:
        now = time.perf_counter()
        text.append(line)
        if t_header is None and " image(s) -> " in line:
            t_header = now
        if line.startswith("done: "):
            t_done = now
    proc.wait()
    process_s = time.perf_counter() - t0
    m = _DONE.search("".join(text))
    if proc.returncode != 0 or m is None or t_header is None or t_done is None:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{''.join(text)[-3000:]}")
    n, rate = int(m.group(1)), float(m.group(2))
    stages = {k: float(v) for k, v in (s.rsplit(" ", 1) for s in m.group(3).split(", "))}
    wall, loop = n / rate, t_done - t_header
    net = sum(stages.get(s, 0.0) for s in NETWORKS)
    return {"images": n, "images_per_s": rate, "wall_s": wall, "process_s": process_s, "stages_s": stages,
            "network_s": net, "overhead_s": wall - net, "overhead_share": (wall - net) / wall,
            "loop_s": loop, "loop_images_per_s": n / loop, "loop_overhead_share": (loop - net) / loop}


def digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="HEAD", help="git revision whose cli.py and writer.py are 'before'")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg")
    ap.add_argument("--engines", type=Path, help="an existing export (default: depth-export into a temporary folder)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-passive", action="store_true", help="leave out the OMP_WAIT_POLICY=PASSIVE runs")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/run_throughput.py " + shlex.join(sys.argv[1:]),
                       ("torch", "onnxruntime", "pillow", "numpy"))
    before = subprocess.run(["git", "rev-parse", args.before], cwd=REPO, check=True, capture_output=True,
                            text=True).stdout.strip()
    size = (args.size[0], args.size[1])
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for name in ("cli.py", "writer.py"):
            (tmp / name).write_text(git_show(before, f"agdepth/runtime/{name}"))
        photos = tmp / "in"
        write_inputs(photos, args.count, size, args.format)
        engines = args.engines
        if engines is None:
            engines = tmp / "engines"
            subprocess.run([sys.executable, "-m", "agdepth.export.cli", "--out", str(engines)], check=True,
                           capture_output=True, cwd=REPO)
        run_args = [str(photos), "--engine", str(engines / "unet.onnx")]
        code = {"before": [sys.executable, "-c", _BEFORE, str(tmp / "writer.py"), str(tmp / "cli.py"), *run_args],
                "after": [sys.executable, "-m", "agdepth.runtime.cli", *run_args]}
        programs: dict[str, tuple[list[str], dict[str, str]]] = {name: (cmd, {}) for name, cmd in code.items()}
        if not args.no_passive:
            programs |= {f"{name}, OMP passive": (cmd, PASSIVE) for name, cmd in code.items()}
        names = list(programs)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in names}
        reference: dict[str, bytes] | None = None
        for r in range(-1, args.repeats):  # r = -1: warm-up (file caches, imports), not reported
            for n, prog in enumerate(names if r % 2 else names[::-1]):  # alternate the order
                out = tmp / f"out_{r}_{n}"
                result = run_once(*programs[prog], out)
                files = digest(out)
                reference = files if reference is None else reference
                if files != reference:
                    differ = sorted(k for k in set(files) | set(reference) if files.get(k) != reference.get(k))
                    raise SystemExit(f"{prog} run {r} wrote other bytes than the first run: {differ[:5]}")
                if r >= 0:
                    runs[prog].append(result)
                print(f"{prog:22s} run {r}: {result['images_per_s']:.2f} img/s, stages {result['stages_s']}",
                      file=sys.stderr)
        assert reference is not None
        n_npy = sum(k.endswith(".npy") for k in reference)

    def med(prog: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in runs[prog])

    def med_stage(prog: str, stage: str) -> float:
        return statistics.median(float(x["stages_s"].get(stage, 0.0)) for x in runs[prog])

    summary: dict[str, dict[str, Any]] = {p: {"images_per_s": med(p, "images_per_s"), "wall_s": med(p, "wall_s"),
                   "loop_images_per_s": med(p, "loop_images_per_s"), "loop_s": med(p, "loop_s"),
                   "loop_overhead_share": med(p, "loop_overhead_share"),
                   "network_s": med(p, "network_s"), "overhead_s": med(p, "overhead_s"),
                   "overhead_share": med(p, "overhead_share"),
                   "stages_s": {s: med_stage(p, s) for s in (*STAGES, "io")}} for p in names}
    speedup = {p: summary[p]["images_per_s"] / summary["before"]["images_per_s"] for p in names}
    report = {
        **meta,
        "before": before, "count": args.count, "size": list(size), "format": args.format,
        "engine": "ONNX Runtime fp32 (depth-export of the bundled model)", "settings": "depth-run defaults",
        "cpus": os.cpu_count(), "readers": default_readers(), "writers": default_writers(),
        "identical_outputs": True, "files_compared": len(reference), "npy_compared": n_npy,
        "environments": {p: env for p, (_, env) in programs.items()}, "runs": runs, "summary": summary,
        "speedup_over_before": speedup,
    }
    stamp_end(report)
    stages = [s for s in (*STAGES, "io") if any(summary[p]["stages_s"][s] > 0 for p in names)]
    lines = [
        f"{args.count} procedural images of {size[0]}×{size[1]} ({args.format.upper()}), `depth-run --engine "
        f"unet.onnx` (ONNX Runtime fp32, the bundled model's export) at its default settings and outputs; before = "
        f"`agdepth/runtime/cli.py` + `writer.py` of {before[:10]}, after = this tree ({default_readers()} reader and "
        f"{default_writers()} writer threads on this machine's {os.cpu_count()} CPUs). One warm-up run each, then "
        f"{args.repeats} alternating runs each; medians. Every run wrote the same bytes (all {len(reference)} "
        f"files, {n_npy} .npy depth maps among them).", "",
        "| program | images/s (runs) | × before | wall s | networks s | overhead s (share) | loop images/s | "
        "loop overhead | " + " | ".join(stages) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(stages),
    ]
    for p in names:
        s = summary[p]
        rates = ", ".join(f"{float(x['images_per_s']):.1f}" for x in runs[p])
        lines.append(f"| {p} | {s['images_per_s']:.1f} ({rates}) | {speedup[p]:.2f} | {s['wall_s']:.2f} | "
                     f"{s['network_s']:.2f} | {s['overhead_s']:.2f} ({100 * s['overhead_share']:.0f}%) | "
                     f"{s['loop_images_per_s']:.1f} | {100 * s['loop_overhead_share']:.0f}% | "
                     + " | ".join(f"{s['stages_s'][st]:.2f}" for st in stages) + " |")
    lines += ["", "Wall time runs from the start of depth-run's `main` (model loading included); the stage columns are "
              "depth-run's own `done:` figures: seconds of the main thread inside each pipeline stage, and `io`, its "
              "waits for inputs and for the writers. Overhead = wall − (encode + unet + decode). *Loop*: from "
              "depth-run's header line (model loaded, outputs planned) to its `done:` line, as this script sees the "
              "lines arrive; loop overhead = 1 − networks / loop. *OMP passive*: the same program with "
              "`OMP_WAIT_POLICY=PASSIVE` in its environment."]
    title = f"depth-run throughput: reading, predicting and writing in turn against a pipeline ({os.cpu_count()} CPUs)"
    text = markdown_document(title, report, "\n".join(lines))
    write_report(report, text, args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
