"""depth-run's throughput on ONNX Runtime: the whole package as it is at an earlier commit against this tree's.

    python benchmarks/run_throughput.py --before 450c54d --json benchmarks/results/run_throughput.json \
        --md benchmarks/results/run_throughput.md

Writes ``--count`` procedural images (``agdepth.data.procedural.render_scene``) of ``--size`` (H W) as ``--format``
files, then compares two programs:

* before: the complete package at ``--before``, extracted from git (``git archive``) into a temporary folder: its own
  runtime, its own bundled model (``agdepth/weights/tiny``) and its own ``depth-export``. Each program runs what its
  tree's console scripts run (the entry points in its setup.py). Its processes run with this
  interpreter and this environment's libraries, ``import agdepth`` resolving to the extracted tree (``PYTHONPATH``
  and the first ``sys.path`` entry; the script checks that it does);
* after: this tree's ``depth-export`` and ``depth-run`` with this tree's bundled model, plus ``--after-args`` (extra
  depth-run arguments, e.g. ``--vae full``) and ``--extra-env KEY=VALUE`` (extra environment variables).

Each program exports its bundled model for ONNX Runtime fp32 with depth-export's defaults (``depth-export --out DIR``;
``--before-engines`` / ``--after-engines`` take existing exports instead) and runs ``depth-run FOLDER --engine
DIR/unet.onnx --out OUT`` at the export's recorded defaults, alternating, ``--repeats`` times each after one warm-up
run each; unless ``--no-passive``, both again with ``OMP_WAIT_POLICY=PASSIVE`` in their environment (PyTorch's OpenMP
threads then sleep at once when idle instead of spinning; read when PyTorch loads, so only a program whose entry
point sets it before importing PyTorch has it without the environment's help).

Every run writes into its own folder. Checks (the script fails otherwise): every run of a code base (with or without
OMP passive) writes the same files with the same bytes as that code base's first run (determinism), and before and
after write the same set of file names (the same outputs per image); their depth values may differ (other model,
other runtime). Reported per program: images/s as depth-run's ``done:`` line gives it (its wall time runs from the
start of ``main``, model loading included, interpreter start-up not), the ratio to the plain before, the seconds per
stage from that line, and the overhead: wall time less the networks' time (encode + unet + decode).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import EVAL_DOMAINS, render_scene
from agdepth.runtime.pipeline import STAGES
from agdepth.runtime.writer import default_readers, default_writers

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("encode", "unet", "decode")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
CODES = ("before", "after")

_DONE = re.compile(r"done: (\d+) image\(s\) in [\d.]+ s \(([\d.]+) img/s\); seconds per stage: (.*)")


def launcher(tree: Path, command: str) -> list[str]:
    """A command running what ``tree``'s console script ``command`` (e.g. ``depth-run``) runs, as its setup.py names
    it, with ``agdepth`` imported from ``tree``."""
    found = re.search(rf'"{re.escape(command)}=([\w.]+):(\w+)"', (tree / "setup.py").read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit(f"{tree / 'setup.py'} names no console script {command!r}")
    module, func = found.groups()
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); from {module} import {func}; {func}()"
    return [sys.executable, "-c", code]


def tree_env(tree: Path) -> dict[str, str]:
    return {"PYTHONPATH": str(tree)}


def git(*cmd: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *cmd], check=True, capture_output=True, text=True).stdout.strip()


def extract(commit: str, dest: Path) -> None:
    """The files of ``commit`` into ``dest`` (``git archive``: no worktree bookkeeping)."""
    dest.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def imported_from(tree: Path, cwd: Path, env: dict[str, str]) -> Path:
    """Where ``import agdepth`` resolves in a process started as the benchmark starts its programs."""
    code = f"import sys; sys.path.insert(0, {str(tree)!r}); import agdepth; print(agdepth.__file__)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **env}).stdout.strip()
    return Path(out).resolve()


def export(tree: Path, out: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([*launcher(tree, "depth-export"), "--out", str(out)], capture_output=True, text=True,
                          cwd=tree, env={**os.environ, **env})
    if proc.returncode != 0:
        raise SystemExit(f"depth-export of {tree} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")


def write_inputs(folder: Path, count: int, size: tuple[int, int], fmt: str) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        rgb = render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i, size, "test").rgb
        options: dict[str, Any] = {"quality": 95} if fmt == "jpg" else {}
        Image.fromarray(rgb).save(folder / f"img{i:03d}.{fmt}", **options)


def run_once(cmd: list[str], env: dict[str, str], cwd: Path, out: Path) -> dict[str, Any]:
    """One depth-run; its ``done:`` figures, and the seconds from its header line (printed once the model is
    loaded and the outputs planned) to its ``done:`` line, timed here as the lines arrive."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
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
    header = next(line.strip() for line in text if " image(s) -> " in line)
    return {"images": n, "images_per_s": rate, "wall_s": wall, "process_s": process_s, "stages_s": stages,
            "network_s": net, "overhead_s": wall - net, "overhead_share": (wall - net) / wall,
            "loop_s": loop, "loop_images_per_s": n / loop, "loop_overhead_share": (loop - net) / loop,
            "header": header}


def digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="450c54d", help="git revision whose whole package is 'before'")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    ap.add_argument("--format", choices=("jpg", "png"), default="jpg")
    ap.add_argument("--before-engines", type=Path,
                    help="an existing export for before (default: before's depth-export into a temporary folder)")
    ap.add_argument("--after-engines", type=Path,
                    help="an existing export for after (default: this tree's depth-export into a temporary folder)")
    ap.add_argument("--after-args", default="", help="extra depth-run arguments for the after runs (shlex-split), "
                    "e.g. '--vae full'")
    ap.add_argument("--extra-env", type=env_pair, action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the after runs only (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-passive", action="store_true", help="leave out the OMP_WAIT_POLICY=PASSIVE runs")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/run_throughput.py " + shlex.join(sys.argv[1:]),
                       ("torch", "onnxruntime", "pillow", "numpy"))
    before = git("rev-parse", "--verify", f"{args.before}^{{commit}}")
    head = git("rev-parse", "--short", "HEAD")
    changed = [line for line in git("status", "--porcelain").splitlines() if line.strip()]
    after_desc = f"{head}" + (f" with uncommitted changes ({len(changed)} path(s))" if changed else " (clean)")
    after_args = shlex.split(args.after_args)
    extra_env = dict(args.extra_env)
    size = (args.size[0], args.size[1])
    with tempfile.TemporaryDirectory(prefix="run_throughput_") as tmp_:
        tmp = Path(tmp_)
        trees = {"before": tmp / "before", "after": REPO}
        extract(before, trees["before"])
        envs = {"before": tree_env(trees["before"]), "after": {**tree_env(REPO), **extra_env}}
        checks: dict[str, Any] = {}
        for code in CODES:  # import agdepth must resolve to the program's own tree
            found = imported_from(trees[code], trees[code], envs[code])
            if not found.is_relative_to(trees[code].resolve() / "agdepth"):
                raise SystemExit(f"{code}: agdepth imports from {found}, not from {trees[code]}")
            checks[code] = {"agdepth_file": found.relative_to(trees[code].resolve()).as_posix()}
        photos = tmp / "in"
        write_inputs(photos, args.count, size, args.format)
        engines = {"before": args.before_engines, "after": args.after_engines}
        for code in CODES:
            if engines[code] is None:
                engines[code] = tmp / f"engines_{code}"
                print(f"{code}: depth-export of {trees[code]} ...", file=sys.stderr)
                export(trees[code], engines[code], envs[code])
        manifests = {c: json.loads((engines[c] / "manifest.json").read_text()) for c in CODES}
        for code in CODES:  # a fresh export must come from the program's own bundled model
            src = Path(manifests[code].get("source_checkpoint", {}).get("path", ""))
            own = src.resolve().is_relative_to(trees[code].resolve())
            if engines[code] == tmp / f"engines_{code}" and not own:
                raise SystemExit(f"{code}: its export came from {src}, not from {trees[code]}")
            checks[code]["export_source"] = (src.resolve().relative_to(trees[code].resolve()).as_posix() if own
                                             else str(src))
        defaults = {c: manifests[c].get("defaults") for c in CODES}
        code_cmds = {c: [*launcher(trees[c], "depth-run"), str(photos), "--engine",
                         str(engines[c] / "unet.onnx"), *(after_args if c == "after" else [])] for c in CODES}
        programs: dict[str, tuple[str, dict[str, str]]] = {c: (c, envs[c]) for c in CODES}
        if not args.no_passive:
            programs |= {f"{c}, OMP passive": (c, {**envs[c], **PASSIVE}) for c in CODES}
        names = list(programs)
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in names}
        headers: dict[str, str] = {}
        reference: dict[str, dict[str, bytes]] = {}
        for r in range(-1, args.repeats):  # r = -1: warm-up (file caches, imports), not reported
            for prog in names if r % 2 else names[::-1]:  # alternate the order
                code, env = programs[prog]
                out = tmp / "out" / f"{prog.replace(', ', '_').replace(' ', '_')}_{r}"
                result = run_once(code_cmds[code], env, trees[code], out)
                headers.setdefault(prog, result.pop("header").replace(str(out), "OUT"))
                files = digest(out)
                ref = reference.setdefault(code, files)
                if files != ref:
                    differ = sorted(k for k in set(files) | set(ref) if files.get(k) != ref.get(k))
                    raise SystemExit(f"{prog} run {r} wrote other files or bytes than {code}'s first run "
                                     f"({len(differ)}): {differ[:5]}")
                if len(reference) == len(CODES) and set(reference["before"]) != set(reference["after"]):
                    only = sorted(set(reference["before"]) ^ set(reference["after"]))
                    raise SystemExit(f"before and after wrote different file names ({len(only)}): {only[:5]}")
                if r >= 0:
                    runs[prog].append(result)
                print(f"{prog:22s} run {r}: {result['images_per_s']:.2f} img/s, stages {result['stages_s']}",
                      file=sys.stderr)
                shutil.rmtree(out)  # only needed for the comparison
        n_files = len(reference["after"])
        n_npy = sum(k.endswith(".npy") for k in reference["after"])
        differing = sorted(k for k in reference["after"] if reference["after"][k] != reference["before"][k])
        n_differ_npy = sum(k.endswith(".npy") for k in differing)

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
        "before": before, "before_desc": f"the package at {before[:10]}: its runtime, bundled model and export",
        "after": {"commit": head, "dirty": bool(changed), "changed_paths": changed, "desc": after_desc},
        "count": args.count, "size": list(size), "format": args.format,
        "engine": "ONNX Runtime fp32 (each program's depth-export of its own bundled model, export defaults)",
        "settings": "depth-run defaults (the export's recorded defaults)" + (
            f"; after adds {shlex.join(after_args)}" if after_args else ""),
        "export_defaults": defaults, "after_args": after_args, "extra_env_after": extra_env,
        "run_headers": headers, "import_checks": checks,
        "cpus": os.cpu_count(), "readers": default_readers(), "writers": default_writers(),
        "deterministic": True, "same_file_names": True, "files_per_run": n_files, "npy_per_run": n_npy,
        "files_differing_before_after": len(differing), "npy_differing_before_after": n_differ_npy,
        "environments": {p: {k: v for k, v in env.items() if k != "PYTHONPATH"} for p, (_, env) in programs.items()},
        "runs": runs, "summary": summary, "speedup_over_before": speedup,
    }
    stages = [s for s in (*STAGES, "io") if any(summary[p]["stages_s"][s] > 0 for p in names)]

    def fmt_defaults(d: dict[str, Any] | None) -> str:
        if not d:
            return "none recorded"
        return ", ".join(f"{k} {v}" for k, v in d.items() if k != "assumed" and v is not None)

    extra = (f"; after's runs add `{shlex.join(after_args)}`" if after_args else "") + (
        "; after's environment adds " + ", ".join(f"`{k}={v}`" for k, v in extra_env.items()) if extra_env else "")
    lines = [
        f"{args.count} procedural images of {size[0]}×{size[1]} ({args.format.upper()}), `depth-run --engine "
        f"unet.onnx` (ONNX Runtime fp32) at the export's default settings and outputs{extra}. "
        f"**Before** = the whole package at {before[:10]} (its own runtime, bundled model and `depth-export`; "
        f"export defaults: {fmt_defaults(defaults['before'])}). **After** = this tree at {after_desc} (its own "
        f"runtime, bundled model and `depth-export`; export defaults: {fmt_defaults(defaults['after'])}). "
        f"{default_readers()} reader and {default_writers()} writer threads on this machine's {os.cpu_count()} "
        f"CPUs. One warm-up run each, then {args.repeats} alternating runs each; medians.", "",
        f"Checks: before's processes imported `agdepth` from the extracted tree (`{checks['before']['agdepth_file']}`"
        f") and exported its `{checks['before']['export_source']}`; every run of before and every run of after"
        f"{'' if args.no_passive else ' (OMP passive included)'} wrote the same bytes as that code's first run (all "
        f"{n_files} files, {n_npy} .npy depth maps among them); before and after wrote the same {n_files} file names, "
        f"{len(differing)} of them with other bytes ({n_differ_npy} .npy depth maps). After's images/s over before's: "
        f"{speedup['after']:.2f}×.", "",
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
              "lines arrive; loop overhead = 1 − networks / loop. × before: images/s over the plain before's."
              + ("" if args.no_passive else " *OMP passive*: the same program with `OMP_WAIT_POLICY=PASSIVE` in its "
                 "environment."), "",
              "depth-run's header lines (first run of each program):", ""]
    lines += [f"- {p}: `{h}`" for p, h in headers.items()]
    title = f"depth-run throughput: {before[:10]} against this tree ({os.cpu_count()} CPUs)"
    text = publish_report(title, report, "\n".join(lines), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
