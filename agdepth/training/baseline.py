"""The trivial predictor the models are measured against: the mean training depth, drawn like a recipe draws its
procedural training scenes."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np

from agdepth.data.procedural import DEFAULT_SOURCE_DOMAINS, camera_overrides, render_scene
from agdepth.training.config import load_config

Predictor = Callable[[list[np.ndarray]], np.ndarray]  # uint8 [H,W,3] images -> affine-invariant depth [N,H,W]


@lru_cache(maxsize=8)
def mean_train_depth(size: tuple[int, int] = (128, 128), count: int = 256, config: str = "tiny") -> np.ndarray:
    """The trivial predictor: per-pixel mean of valid metric depth over ``count`` training scenes drawn like the
    recipe ``config`` draws them (its procedural sources in proportion to their probabilities, with their camera
    settings), so it always reflects the data the model was trained on."""
    sources = [s for s in load_config(config).data.sources if s.type == "procedural"]
    if not sources:
        raise ValueError(f"config {config!r} has no procedural training source")
    p = np.array([s.probability for s in sources], np.float64)
    total, n = np.zeros(size), np.zeros(size)
    for src, k in zip(sources, np.round(count * p / p.sum()).astype(int), strict=True):
        domains, camera = src.domains or list(DEFAULT_SOURCE_DOMAINS), camera_overrides(src.camera)
        for i in range(k):
            s = render_scene(domains[i % len(domains)], i // len(domains), size=size, split="train", camera=camera)
            total += np.where(s.valid, s.depth, 0.0)
            n += s.valid
    mean = total / np.maximum(n, 1)
    return np.where(n > 0, mean, total.sum() / max(n.sum(), 1)).astype(np.float32)


def mean_depth_predictor(size: tuple[int, int] = (128, 128)) -> Predictor:
    def predict(images: list[np.ndarray]) -> np.ndarray:
        return np.stack([mean_train_depth(size)] * len(images))

    return predict


__all__ = ["mean_depth_predictor", "mean_train_depth"]
