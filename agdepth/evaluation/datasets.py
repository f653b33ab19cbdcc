"""Evaluation datasets: one interface for the paper's benchmarks (read from local folders) and the procedural domains.

A dataset yields :class:`EvalSample` s (image, metric ground truth, and the mask of scored pixels: valid depth inside
the dataset's range, and the dataset's crop masks) and carries the protocol defaults of its benchmark: depth range,
processing resolution, alignment, and the official split size. The readers of the real datasets live in
:mod:`agdepth.evaluation.readers`; every dataset is reached by name through :mod:`agdepth.evaluation.registry`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from agdepth.data.procedural import DEPTH_RANGES, EVAL_DOMAINS, render_scene
from agdepth.metrics import Alignment


@dataclass
class EvalSample:
    name: str  # unique within the dataset (a relative path); names the per-sample rows and saved predictions
    rgb: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W] metres; 0 where there is no measurement
    mask: np.ndarray  # bool [H, W]: the pixels that are scored


class EvalDataset(abc.ABC):
    """A benchmark split. Subclasses set the class attributes and implement ``names`` and ``load``."""

    name: str = ""
    depth_range: tuple[float, float] = (1e-3, 10.0)
    # the benchmark's default processing resolution: 0 = the image's own size, None = the model's default
    processing_res: int | None = 768
    alignment: Alignment = "least_squares"
    alignment_max_res: int | None = None  # fit the alignment on a copy at most this large (Marigold: ETH3D 1024)
    expected_count: int | None = None  # the official split size; a different count is reported, not accepted
    dense: bool = False  # dense ground truth: the boundary metric is computed

    @abc.abstractmethod
    def names(self) -> list[str]:
        """Sample names in evaluation order."""

    @abc.abstractmethod
    def load(self, index: int) -> EvalSample:
        """Sample ``index``; raises :class:`agdepth.data.base.SampleReadError` naming the file that failed."""

    def __len__(self) -> int:
        return len(self.names())

    def count_note(self) -> str | None:
        """A line for the summary when the split does not have its official size."""
        n = len(self)
        if self.expected_count is not None and n != self.expected_count:
            return f"{self.name}: {n} samples, the official split has {self.expected_count}"
        return None


class ProceduralEvalDataset(EvalDataset):
    """A procedural unseen domain as a benchmark: test-split scenes 0..count-1, rendered at ``size`` (H, W).

    Ground truth is dense, so the boundary metric applies; sky and out-of-range hits are not scored.
    """

    processing_res = None  # the model's own default (its checkpoint config) unless overridden
    dense = True

    def __init__(self, domain: str, count: int = 50, size: tuple[int, int] = (128, 128)) -> None:
        if domain not in EVAL_DOMAINS:
            raise ValueError(f"unknown procedural benchmark domain {domain!r}; choose from {', '.join(EVAL_DOMAINS)}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.domain, self.count, self.size = domain, int(count), (int(size[0]), int(size[1]))
        self.name = f"procedural-{domain}"
        self.depth_range = DEPTH_RANGES[domain]
        self.expected_count = self.count

    def names(self) -> list[str]:
        return [f"{self.domain}/test/{i:06d}" for i in range(self.count)]

    def load(self, index: int) -> EvalSample:
        s = render_scene(self.domain, index, size=self.size, split="test")
        return EvalSample(self.names()[index], s.rgb, np.where(s.valid, s.depth, 0).astype(np.float32), s.valid)
