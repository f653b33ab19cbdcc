"""What machine a measurement ran on: recorded beside every benchmark result."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """The ``machine`` entry of a benchmark report (the keys :func:`report_header` reads)."""
    info: dict[str, object] = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():  # a GPU timing is meaningless without the card that gave it
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = f"{props.name}, {props.total_memory // 2**20} MiB, CUDA {torch.version.cuda}"
    except ImportError:
        pass
    return info


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in names:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def report_header(report: dict) -> list[str]:
    """Markdown lines naming the command, date, machine and versions of a benchmark report."""
    m = report["machine"]
    return [
        f"Command: `{report['command']}`  ",
        f"Date (UTC): {report['date']}  ",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} logical CPUs, {m['platform']}"
        + (f"; GPU: {m['gpu']}" if m.get("gpu") else "; no GPU") + "  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
    ]
