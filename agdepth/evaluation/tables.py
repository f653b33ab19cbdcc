"""The paper's Tables 1–3 assembled from ``depth-eval`` result folders, with the paper's published rows alongside.

Published rows are quoted from Kim & Kim, "Monocular Depth Estimation via Autoencoder-guided Latent Diffusion
Model" (JBE 2025), Tables 1–3, and marked as the paper's: they are not measured by this project.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PAPER_DATASETS: tuple[str, ...] = ("nyu", "kitti", "eth3d", "scannet", "diode")
DATASET_TITLES = {"nyu": "NYUv2", "kitti": "KITTI", "eth3d": "ETH3D", "scannet": "ScanNet", "diode": "DIODE"}

# Table 1: AbsRel %, δ1 % per dataset (NYUv2, KITTI, ETH3D, ScanNet, DIODE)
PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "DiverseDepth": (11.7, 87.5, 19.0, 70.4, 22.8, 69.4, 10.9, 88.2, 37.6, 63.1),
    "MiDaS": (11.1, 88.5, 23.6, 63.0, 18.4, 75.2, 12.1, 84.6, 33.2, 71.5),
    "LeReS": (9.0, 91.6, 14.9, 78.4, 17.1, 77.7, 9.1, 91.7, 27.1, 76.6),
    "Omnidata": (7.4, 94.5, 14.9, 83.5, 16.6, 77.8, 7.5, 93.6, 33.9, 74.2),
    "HDN": (6.9, 94.8, 11.5, 86.7, 12.1, 83.3, 8.0, 93.9, 24.6, 78.0),
    "DPT": (9.8, 90.3, 10.0, 90.1, 7.8, 94.6, 8.2, 93.4, 18.2, 75.8),
    "Marigold": (5.7, 96.0, 10.1, 90.7, 6.4, 95.7, 6.9, 94.4, 30.0, 77.9),
    "Proposed Method": (5.6, 96.2, 10.1, 91.1, 6.3, 95.9, 6.3, 95.5, 29.9, 78.1),
}
# Table 2: δ1, δ2, δ3 % per dataset
PAPER_TABLE2: dict[str, tuple[float, ...]] = {
    "Baseline (Marigold)": (96.0, 99.0, 99.7, 90.7, 98.5, 99.5, 95.7, 98.9, 99.5, 94.4, 98.5, 99.6, 77.9, 89.4, 93.9),
    "Proposed Method": (96.2, 99.0, 99.7, 91.1, 98.5, 99.6, 95.9, 98.9, 99.5, 95.5, 98.7, 99.6, 78.1, 89.6, 94.0),
}
# Table 3: AbsRel %, δ1 % per dataset
PAPER_TABLE3: dict[str, tuple[float, ...]] = {
    "Baseline (Marigold)": (5.7, 96.0, 10.1, 90.7, 6.4, 95.7, 6.9, 94.4, 30.0, 77.9),
    "w/ depth loss, w/o depth autoencoder": (5.6, 96.1, 10.0, 91.2, 6.4, 96.0, 6.6, 94.9, 30.0, 78.1),
    "w/ depth loss, w/ depth autoencoder": (5.6, 96.2, 10.1, 91.1, 6.3, 95.9, 6.3, 95.5, 29.9, 78.1),
}
TABLES: dict[int, tuple[tuple[str, ...], dict[str, tuple[float, ...]], str]] = {
    1: (("abs_rel", "delta1"), PAPER_TABLE1, "Performance comparison on the benchmark datasets"),
    2: (("delta1", "delta2", "delta3"), PAPER_TABLE2, "Accuracy under threshold"),
    3: (("abs_rel", "delta1"), PAPER_TABLE3, "Ablation of the depth autoencoder and the depth loss"),
}
METRIC_TITLES = {"abs_rel": "AbsRel", "delta1": "δ1", "delta2": "δ2", "delta3": "δ3", "edge_f1": "edge F1"}


def load_results(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The ``summary.json`` of each folder (a folder may also hold result folders one level down)."""
    out = []
    for folder in folders:
        folder = Path(folder)
        files = [folder / "summary.json"] if (folder / "summary.json").is_file() else sorted(
            folder.glob("*/summary.json"))
        if not files:
            raise FileNotFoundError(f"{folder}: no summary.json in it or in its sub-folders (a depth-eval --out)")
        out += [json.loads(f.read_text()) for f in files]
    return out


def assemble(table: int, results: Sequence[dict[str, Any]], datasets: Sequence[str] | None = None,
             include_paper: bool = True) -> str:
    """Markdown of Table ``table`` (1, 2 or 3): measured rows (one per result label, in order of appearance) and,
    for the paper's five datasets, the paper's rows. ``datasets`` default: the paper's five if every result is
    on one of them, else the datasets the results cover (e.g. the procedural domains, which add edge F1)."""
    if table not in TABLES:
        raise ValueError(f"table must be one of {sorted(TABLES)}, got {table}")
    metrics, paper, title = TABLES[table]
    seen = list(dict.fromkeys(r["dataset"] for r in results))
    if datasets is None:
        datasets = PAPER_DATASETS if all(d in PAPER_DATASETS for d in seen) else tuple(seen)
    paper_layout = tuple(datasets) == PAPER_DATASETS
    if not paper_layout and any(_has_edges(r) for r in results):
        metrics = (*metrics, "edge_f1")
    by_label: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        by_label.setdefault(r["label"], {})[r["dataset"]] = r["metrics"]
    head = "| method | " + " | ".join(f"{DATASET_TITLES.get(d, d)} {METRIC_TITLES[m]}" for d in datasets
                                        for m in metrics) + " |"
    lines = [f"Table {table}. {title}", "", head, "|" + "---|" * (1 + len(datasets) * len(metrics))]
    if include_paper and paper_layout:
        for name, values in paper.items():
            lines.append(f"| {name} (paper, not measured) | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    for label, per_ds in by_label.items():
        cells = []
        for d in datasets:
            for m in metrics:
                v = per_ds.get(d, {}).get(m)
                cells.append("-" if v is None or math.isnan(v) else (f"{v:.3f}" if m == "edge_f1" else
                                                                      f"{100 * v:.1f}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _has_edges(result: dict[str, Any]) -> bool:
    return "edge_f1" in result["metrics"]
