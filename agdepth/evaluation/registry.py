"""The benchmarks by name: the procedural unseen domains and the readers of the real datasets, listed here once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agdepth.data.procedural import EVAL_DOMAINS
from agdepth.evaluation.datasets import EvalDataset, ProceduralEvalDataset
from agdepth.evaluation.readers import READERS, MarigoldEvalDataset

PROCEDURAL_PREFIX = "procedural-"
REAL: dict[str, type[MarigoldEvalDataset]] = {cls.name: cls for cls in READERS}
PROCEDURAL: dict[str, str] = {f"{PROCEDURAL_PREFIX}{d}": d for d in EVAL_DOMAINS}  # benchmark name -> domain
DATASETS: tuple[str, ...] = tuple(sorted((*PROCEDURAL, *REAL)))


def build_dataset(name: str, root: str | Path | None = None, **options: Any) -> EvalDataset:
    """The dataset ``name`` (one of :data:`DATASETS`) read from ``root``; options go to its reader."""
    if name in PROCEDURAL:
        return ProceduralEvalDataset(PROCEDURAL[name], **options)
    if name not in REAL:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (the folder holding its files)")
    return REAL[name](root, **options)


def protocol_defaults(name: str) -> EvalDataset | type[MarigoldEvalDataset]:
    """What carries ``name``'s protocol defaults (depth_range, processing_res, expected_count, ...) without reading
    any file: a real reader's class, or the (cheap) procedural dataset."""
    return build_dataset(name) if name in PROCEDURAL else REAL[name]
