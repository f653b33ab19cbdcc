"""The procedural unseen domains as a benchmark, and the trivial predictor every model must beat.

Protocol (as for real datasets): per image, least-squares scale and shift in depth space on valid pixels, clip to the
domain's depth range, metrics from :mod:`agdepth.metrics` (plus the boundary F1), averaged over images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from tqdm.auto import tqdm

from agdepth.data.procedural import DEPTH_RANGES, TRAIN_DOMAINS, render_scene
from agdepth.metrics import aligned_depth, boundary_f1, compute_metrics, mean_metrics

Predictor = Callable[[list[np.ndarray]], np.ndarray]  # uint8 [H,W,3] images -> affine-invariant depth [N,H,W]


@lru_cache(maxsize=8)
def mean_train_depth(size: tuple[int, int] = (128, 128), count: int = 256) -> np.ndarray:
    """Per-pixel mean of valid metric depth over training scenes (both training domains): the trivial predictor."""
    total = np.zeros(size)
    n = np.zeros(size)
    for i in range(count):
        s = render_scene(TRAIN_DOMAINS[i % len(TRAIN_DOMAINS)], i // len(TRAIN_DOMAINS), size=size, split="train")
        total += np.where(s.valid, s.depth, 0.0)
        n += s.valid
    mean = total / np.maximum(n, 1)
    return np.where(n > 0, mean, total.sum() / max(n.sum(), 1)).astype(np.float32)


def mean_depth_predictor(size: tuple[int, int] = (128, 128)) -> Predictor:
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return np.stack([mean_train_depth(size)] * len(images))

    return predict


def evaluate_on_domains(
    predict: Predictor,
    domains: Sequence[str],
    count: int,
    size: tuple[int, int] = (128, 128),
    batch: int = 8,
    split: str = "test",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Mean metrics per domain over ``count`` held-out scenes (scene indices 0..count-1 of the test split)."""
    results: dict[str, dict[str, float]] = {}
    for dom in domains:
        per_image = []
        lo, hi = DEPTH_RANGES[dom]
        bar = tqdm(total=count, desc=f"eval {dom}", disable=not progress, leave=False)
        for start in range(0, count, batch):
            scenes = [render_scene(dom, i, size=size, split=split) for i in range(start, min(start + batch, count))]
            preds = predict([s.rgb for s in scenes])
            for s, p in zip(scenes, preds, strict=True):
                aligned = aligned_depth(p, s.depth, s.valid, depth_range=(lo, hi))
                m = compute_metrics(aligned, s.depth, s.valid)
                m.update(boundary_f1(aligned, s.depth, s.valid))
                per_image.append(m)
            bar.update(len(scenes))
        bar.close()
        # the edge scores are undefined (NaN) on an image without depth discontinuities: average where defined
        edge_keys = [k for k in per_image[0] if k.startswith("edge_")]
        results[dom] = mean_metrics([{k: v for k, v in m.items() if k not in edge_keys} for m in per_image])
        for k in edge_keys:
            vals = np.array([m[k] for m in per_image])
            results[dom][k] = float(vals[~np.isnan(vals)].mean()) if (~np.isnan(vals)).any() else float("nan")
    return results
