"""What every ``depth-bench`` suite records beside its numbers, and how a suite's report is written.

A report is a JSON-able dict: :func:`report_meta`'s keys (command, date, machine, versions, load average) plus the
suite's own entries. The same report is written as JSON and as markdown (headed by
:func:`agdepth.machine.report_header`), and a suite with a plot writes a PNG beside them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from agdepth.machine import machine_info, package_versions, report_header

BENCH_PACKAGES = ("torch", "diffusers", "onnxruntime", "numpy")


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: a shared machine inflates every time, so each report says how busy it was."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def report_meta(command: str | None = None, packages: tuple[str, ...] = BENCH_PACKAGES) -> dict[str, Any]:
    """The common head of a report. ``command`` defaults to this process's ``depth-bench ...`` command line."""
    if command is None:
        command = "depth-bench " + shlex.join(sys.argv[1:])
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(packages),
        "load_average_before": load_average(),
    }


def _jsonable(value: Any) -> Any:
    """NaN/inf are not JSON: written as null so any JSON reader takes the report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def markdown_document(title: str, report: dict[str, Any], body: str) -> str:
    """``# title``, the command/date/machine/versions header, the load average, then ``body``."""
    lines = [f"# {title}", "", *report_header(report)]
    before, after = report.get("load_average_before"), report.get("load_average_after")
    if before is not None:
        lines[-1] += "  "
        lines.append(f"Load average (1/5/15 min) before: {before}" + (f", after: {after}" if after else ""))
    return "\n".join([*lines, "", body.rstrip(), ""])


def stamp_end(report: dict[str, Any]) -> dict[str, Any]:
    """Record the load average once the suite's measurements are done (call before :func:`markdown_document`)."""
    report["load_average_after"] = load_average()
    return report


def write_report(report: dict[str, Any], markdown: str, json_path: Path | None, md_path: Path | None) -> None:
    """Write the report as JSON (NaN as null) and/or markdown, creating parent folders."""
    for path in (json_path, md_path):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    if json_path is not None:
        json_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
    if md_path is not None:
        md_path.write_text(markdown)


def publish_report(title: str, report: dict[str, Any], body: str, json_path: Path | None,
                   md_path: Path | None) -> str:
    """The end of every suite: :func:`stamp_end`, the markdown document, both files written; returns the markdown."""
    stamp_end(report)
    text = markdown_document(title, report, body)
    write_report(report, text, json_path, md_path)
    return text


__all__ = ["BENCH_PACKAGES", "load_average", "markdown_document", "publish_report", "report_meta", "stamp_end",
           "write_report"]
