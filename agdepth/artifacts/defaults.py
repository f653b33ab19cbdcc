"""The inference settings a checkpoint or an export recommends, and the one table of fallbacks for what they omit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agdepth.networks import vae_networks
from agdepth.schedule import TIMESTEP_SPACINGS

# For directories whose model_index.json does not say. diffusers' MarigoldDepthPipeline raises in that case unless
# the call passes the value; agdepth assumes the settings Marigold v1-0 was published with (50 steps, 768 px) and says
# so once (RuntimeDefaults.assumed). Ensemble size and spacing are agdepth's own keys: 1 member, and the scheduler
# config's spacing, else DDIM's "leading".
FALLBACK_STEPS = 50
FALLBACK_PROCESSING_RESOLUTION = 768
FALLBACK_ENSEMBLE_SIZE = 1
FALLBACK_TIMESTEP_SPACING = "leading"
FALLBACK_VAE = "full"  # the checkpoint's own VAE; "light" needs a vae_light/ (depth-train distill-vae)

# Where each setting sits in model_index.json: diffusers' MarigoldDepthPipeline reads the two top-level keys (as
# Marigold v1.1 writes them); ensemble size and spacing are agdepth's own, in its "agdepth" section.
STEPS_KEY = "default_denoising_steps"
RESOLUTION_KEY = "default_processing_resolution"
SECTION_KEY = "agdepth"


@dataclass(frozen=True)
class RuntimeDefaults:
    """Inference settings a checkpoint recommends; the pipeline uses them for every argument left as None."""

    steps: int = FALLBACK_STEPS
    processing_resolution: int = FALLBACK_PROCESSING_RESOLUTION  # longer edge; 0 = native resolution
    ensemble_size: int = FALLBACK_ENSEMBLE_SIZE
    timestep_spacing: str = FALLBACK_TIMESTEP_SPACING
    vae: str = FALLBACK_VAE  # a key of agdepth.networks.VAE_CHOICES
    # settings no file gave, which diffusers would refuse to guess ("steps", "processing_resolution")
    assumed: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        vae_networks(self.vae)  # a known choice, or a ValueError listing them
        object.__setattr__(self, "assumed", tuple(self.assumed))  # a JSON list when read from a manifest

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "processing_resolution": self.processing_resolution,
                "ensemble_size": self.ensemble_size, "timestep_spacing": self.timestep_spacing, "vae": self.vae,
                "assumed": list(self.assumed)}

    def describe_assumed(self) -> str:
        """One line: what was assumed and where to set it ("" when nothing was)."""
        if not self.assumed:
            return ""
        keys = {"steps": (STEPS_KEY, f"{self.steps} steps", "steps"),
                "processing_resolution": (RESOLUTION_KEY, f"{self.processing_resolution} px",
                                          "processing resolution")}
        names, values, what = zip(*(keys[a] for a in self.assumed), strict=True)
        return (f"model_index.json sets no {' / '.join(names)}: assuming Marigold v1-0's {' at '.join(values)}; "
                f"set them in model_index.json or pass the {' and '.join(what)}")

    @classmethod
    def from_model_index(
        cls, model_index: dict[str, Any] | None, scheduler_config: dict[str, Any] | None = None
    ) -> RuntimeDefaults:
        """Read ``model_index.json`` (agdepth or official Marigold); missing or null values fall back.

        The spacing comes from ``model_index["agdepth"]``, else from the scheduler config (what diffusers'
        pipeline would use for an official Marigold directory), else "leading"; the VAE from ``model_index["agdepth"]``,
        else "full".
        """
        index = model_index or {}
        extra = index.get(SECTION_KEY) or {}
        sched = scheduler_config or {}

        def pick(*values: Any) -> Any:
            return next(v for v in values if v is not None)  # 0 is a valid resolution, so no `or`

        assumed = tuple(name for name, key in (("steps", STEPS_KEY), ("processing_resolution", RESOLUTION_KEY))
                        if index.get(key) is None)
        return cls(
            steps=int(pick(index.get(STEPS_KEY), FALLBACK_STEPS)),
            processing_resolution=int(pick(index.get(RESOLUTION_KEY), FALLBACK_PROCESSING_RESOLUTION)),
            ensemble_size=int(pick(extra.get("ensemble_size"), FALLBACK_ENSEMBLE_SIZE)),
            timestep_spacing=str(
                pick(extra.get("timestep_spacing"), sched.get("timestep_spacing"), FALLBACK_TIMESTEP_SPACING)
            ),
            vae=str(pick(extra.get("vae"), FALLBACK_VAE)),
            assumed=assumed,
        )

    def model_index_entries(self) -> dict[str, Any]:
        """The inverse of :meth:`from_model_index`: the top-level keys and the ``"agdepth"`` section's keys that
        write these settings into ``model_index.json`` (the writer merges them into its index)."""
        return _index_entries(self.steps, self.processing_resolution, self.ensemble_size, self.timestep_spacing,
                              self.vae)

    @staticmethod
    def unset_model_index_entries(timestep_spacing: str) -> dict[str, Any]:
        """The entries of a checkpoint that recommends nothing: nulls, so that :meth:`from_model_index` falls back
        and reports what it assumed. The spacing is still written, as the one the scheduler config was saved with."""
        return _index_entries(None, None, None, timestep_spacing)


def _index_entries(steps: int | None, resolution: int | None, ensemble: int | None, spacing: str,
                   vae: str = FALLBACK_VAE) -> dict[str, Any]:
    # key order is the order checkpoints have always been written in; "vae" only when it is not the full VAE (a
    # checkpoint without vae_light/ has no choice to record)
    section: dict[str, Any] = {"ensemble_size": ensemble, "timestep_spacing": spacing}
    if vae != FALLBACK_VAE:
        section["vae"] = vae
    return {STEPS_KEY: steps, RESOLUTION_KEY: resolution, SECTION_KEY: section}


__all__ = ["RuntimeDefaults"]
