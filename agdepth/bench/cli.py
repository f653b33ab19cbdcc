"""``depth-bench``: backend parity (network level through Polygraphy's comparator, and end to end).

    depth-bench parity --engine engines --md parity.md
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks of the deployment backends."""


@main.command()
@click.option("--engine", "engines", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A depth-export directory (with --fp16 to include the fp16 graphs).")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="The checkpoint the engines came from. Default: the bundled model.")
@click.option("--count", type=int, default=5, show_default=True, help="Test scenes per procedural domain.")
@click.option("--settings", default="1x1,4x1", show_default=True, help="STEPSxENSEMBLE,... (trailing spacing).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def parity(engines: Path, checkpoint: Path | None, count: int, settings: str, json_path: Path | None,
           md_path: Path | None) -> None:
    """Compare PyTorch fp32 with ONNX Runtime fp32 / fp16, and TensorRT when the manifest has engines for this
    machine's TensorRT and GPU."""
    from agdepth import default_checkpoint
    from agdepth.bench.parity import ParityReport, compare_end_to_end, compare_networks
    from agdepth.export import Manifest
    from agdepth.machine import machine_info, package_versions, report_header

    ckpt = checkpoint or default_checkpoint()
    try:
        pairs = [tuple(int(v) for v in s.split("x")) for s in settings.split(",")]
    except ValueError:
        raise click.UsageError(f"--settings must look like 1x1,4x5; got {settings!r}") from None
    manifest = Manifest.load(engines)
    report = ParityReport(compare_networks(manifest, ckpt, click.echo),
                          compare_end_to_end(engines, ckpt, count, pairs, click.echo))  # type: ignore[arg-type]
    meta = {"command": "depth-bench parity " + shlex.join(sys.argv[2:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(), "versions": package_versions(("torch", "onnxruntime", "polygraphy"))}
    text = "\n".join(["# Backend parity", "", *report_header(meta), "", report.markdown(), ""])
    click.echo(text)
    if json_path:
        json_path.write_text(json.dumps({**meta, "networks": report.networks, "end_to_end": report.end_to_end},
                                        indent=2) + "\n")
    if md_path:
        md_path.write_text(text)
    if not all(r["passed"] for r in report.networks):
        sys.exit(1)


if __name__ == "__main__":
    main()
