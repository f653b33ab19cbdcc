"""The one predictor that Ray Data actors and Ray Serve replicas hold: a pipeline opened from any backend, with
``depth-run``'s settings resolution and its per-image seeds, so the batch job, the service and ``depth-run`` give the
same depth for the same image, model and seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agdepth.runtime.options import DEFAULT_BATCH_SIZE, model_label, open_run_pipeline


@dataclass(frozen=True)
class ModelSpec:
    """What to open and how to predict: ``depth-run``'s model and inference options (None: the model's default).
    Plain values only, so Ray can ship it to every actor and replica."""

    engine: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    steps: int | None = None
    ensemble: int | None = None
    timestep_spacing: str | None = None
    processing_res: int | None = None
    vae: str | None = None
    seed: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE


class DepthPredictor:
    """``spec``'s pipeline, opened once. :meth:`predict` runs images as ``depth-run`` runs one group of them: image
    ``k`` with the seed ``spec.seed + index_k`` (its position in the run), one pipeline call for the group."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        engine = None if spec.engine is None else Path(spec.engine)
        checkpoint = None if spec.checkpoint is None else Path(spec.checkpoint)
        self.pipe = open_run_pipeline(engine, checkpoint, spec.device)
        self.steps, self.ensemble, self.processing_res, self.timestep_spacing = self.pipe.check_settings(
            spec.steps, spec.ensemble, spec.processing_res, spec.timestep_spacing)
        self.vae = self.pipe.vae_choice(spec.vae)
        self.model = model_label(engine, checkpoint)

    @property
    def images_per_call(self) -> int:
        """Whole images per pipeline call, as depth-run groups them (``--batch-size`` rows over the members)."""
        return max(1, self.spec.batch_size // self.ensemble)

    def settings(self) -> dict[str, Any]:
        """The settings the depth was made with, as depth-run records them."""
        return {"model": self.model, "steps": self.steps, "ensemble": self.ensemble,
                "timestep_spacing": self.timestep_spacing, "processing_res": self.processing_res, "vae": self.vae,
                "seed": self.spec.seed}

    def predict(self, images: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
        """Affine-invariant depth [H,W] in [0, 1] for each image (``indices``: each image's seed offset)."""
        pipe = self.pipe
        lat = [pipe.initial_latents([img], self.ensemble, self.processing_res, seed=self.spec.seed + i)[0]
               for img, i in zip(images, indices, strict=True)]
        out = pipe(images, steps=self.steps, ensemble=self.ensemble, processing_res=self.processing_res,
                   timestep_spacing=self.timestep_spacing, vae=self.vae, batch_size=self.spec.batch_size,
                   latents=lat)
        return [np.asarray(d) for d in out.depth]


__all__ = ["DepthPredictor", "ModelSpec"]
