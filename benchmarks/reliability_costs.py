"""What the safety checks cost: hashing engines against the manifest, and refusing a bad option before any work.

    python benchmarks/reliability_costs.py --json benchmarks/results/reliability_costs.json \
        --md benchmarks/results/reliability_costs.md

1. ``Manifest.verify`` over a ~1 GiB engines set (random bytes in three files, a manifest listing their sha256): the
   first load hashes every byte (page cache dropped first, so the files come from disk), the second and third only
   stat the files against ``.verified.json``.
2. ``depth-run IMG --engine unet.onnx --processing-res 100000`` as a user runs it (a fresh process): wall time until
   the refusal, next to the time of ``python -c "import agdepth.runtime.cli"`` alone, which the refusal cannot beat.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.export import MANIFEST_FORMAT, ExportOptions, Manifest, export_checkpoint, sha256

SIZES_MIB = {"unet.onnx": 700, "vae_encoder.onnx": 150, "vae_decoder.onnx": 174}


def verify_costs(root: Path) -> dict[str, float]:
    nets = {}
    for name, mib in SIZES_MIB.items():
        with open(root / name, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1 << 20))
        nets[name.split(".")[0]] = {"file": name, "sha256": sha256(root / name)}
    (root / "manifest.json").write_text(json.dumps({"format": MANIFEST_FORMAT, "networks": {"fp32": nets}}))
    for name in SIZES_MIB:  # drop the page cache: the first load reads from disk, as after a reboot
        fd = os.open(root / name, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    m = Manifest.load(root)
    out = {}
    for run in ("first", "second", "third"):
        t0 = time.perf_counter()
        for e in nets.values():
            m.verify(e["file"], e["sha256"])
        out[f"{run}_load_s"] = time.perf_counter() - t0
    return out


def wall(cmd: list[str], repeats: int) -> tuple[float, int, str]:
    times, code, text = [], 0, ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        code, text = res.returncode, ((res.stdout + res.stderr).strip().splitlines() or [""])[-1]
    return statistics.median(times), code, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    report = report_meta("python benchmarks/reliability_costs.py " + shlex.join(sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        (t / "set").mkdir()
        report["verify"] = {"gib": sum(SIZES_MIB.values()) / 1024, **verify_costs(t / "set")}
        export_checkpoint(default_checkpoint(), t / "eng", ExportOptions(max_resolution=64), progress=lambda s: None)
        from PIL import Image

        from agdepth.data.procedural import render_scene

        Image.fromarray(render_scene("indoor", 0, size=(480, 640), split="test").rgb).save(t / "a.png")
        cli = [sys.executable, "-m", "agdepth.runtime.cli", str(t / "a.png"), "--engine", str(t / "eng" / "unet.onnx"),
               "--processing-res", "100000", "--out", str(t / "o")]
        refusal, code, line = wall(cli, args.repeats)
        imports, _, _ = wall([sys.executable, "-c", "import agdepth.runtime.cli"], args.repeats)
        report["refusal"] = {"seconds": refusal, "exit_code": code, "message": line, "import_seconds": imports,
                             "output_written": (t / "o").exists()}
    v, r = report["verify"], report["refusal"]
    body = "\n".join([
        "| check | first | second | third |", "|---|---|---|---|",
        f"| sha256 of a {v['gib']:.2f} GiB engines set against the manifest | {v['first_load_s']:.2f} s | "
        f"{1e3 * v['second_load_s']:.2f} ms | {1e3 * v['third_load_s']:.2f} ms |", "",
        f"`depth-run --processing-res 100000` on an engine exported up to 64 px: refused in {r['seconds']:.2f} s "
        f"(median of {args.repeats}; exit {r['exit_code']}, nothing written: {not r['output_written']}), of which "
        f"{r['import_seconds']:.2f} s is importing the CLI (torch) alone.", "", f"Message: `{r['message']}`"])
    publish_report("Costs of the safety checks", report, body, args.json, args.md)
    print(body)


if __name__ == "__main__":
    main()
