"""The procedural unseen domains as a benchmark, and the trivial predictor every model must beat.

Protocol (as for real datasets): per image, least-squares scale and shift in depth space on valid pixels, clip to the
domain's depth range, metrics from :mod:`agdepth.metrics` (plus the boundary F1), averaged over images. A prediction
``depth-eval`` would fail (non-finite at a scored pixel, not one [H, W] map) makes every mean of its domain NaN, with a
warning: a failed measurement, never a mean over the other images or one shifted by a clipped inf.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from agdepth.evaluation.datasets import ProceduralEvalDataset
from agdepth.evaluation.protocol import BOUNDARY_NAMES, PredictionError, average, score_checked
from agdepth.metrics import METRIC_NAMES

Predictor = Callable[[list[np.ndarray]], np.ndarray]  # uint8 [H,W,3] images -> affine-invariant depth [N,H,W]


def evaluate_on_domains(
    predict: Predictor,
    domains: Sequence[str],
    count: int,
    size: tuple[int, int] = (128, 128),
    batch: int = 8,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean metrics per domain over ``count`` held-out scenes (scene indices 0..count-1 of the test split), scored
    per image by :func:`agdepth.evaluation.protocol.score_checked` as ``depth-eval`` scores them. A domain with an
    unusable prediction gets NaN for every metric (and a warning naming the scene)."""
    results: dict[str, dict[str, float]] = {}
    for dom in domains:
        ds = ProceduralEvalDataset(dom, count, size)
        per_image, failed = [], []
        bar = tqdm(total=count, desc=f"eval {dom}", disable=not progress, leave=False)
        for start in range(0, count, batch):
            samples = [ds.load(i) for i in range(start, min(start + batch, count))]
            preds = predict([s.rgb for s in samples])
            for s, p in zip(samples, preds, strict=True):
                try:
                    per_image.append(score_checked(p, s, ds.depth_range, ds.alignment, ds.dense,
                                                   origin=f"prediction of {s.name}"))
                except PredictionError as e:
                    failed.append(str(e))
            bar.update(len(samples))
        bar.close()
        if failed:
            warnings.warn(f"{dom}: {len(failed)} of {count} predictions unusable, every mean is NaN; first: "
                          f"{failed[0]}", RuntimeWarning, stacklevel=2)
            keys = (*METRIC_NAMES, *(BOUNDARY_NAMES if ds.dense else ()))
            results[dom] = {k: float("nan") for k in keys}
        else:
            results[dom] = average(per_image)
    return results
