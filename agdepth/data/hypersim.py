"""Hypersim in Marigold's preprocessed layout (rgb PNG + 16-bit planar depth PNG in millimetres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from agdepth.data.base import DepthDataset, PathLike, read_png_uint16, read_rgb_uint8


class HypersimDataset(DepthDataset):
    """Hypersim samples listed as ``rgb_rel depth_rel [ignored columns]`` relative to ``root``.

    Depth PNGs hold planar (z) depth in mm (Marigold converts Hypersim's ray distance to planar depth during
    preprocessing); valid where depth > ``min_depth`` (and ``<= max_depth`` if given).
    ``resize=(H, W)`` optionally resizes: antialiased bilinear for rgb, nearest for depth (so no depth values
    are invented across object boundaries).
    """

    domain = "hypersim"

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike,
        hflip: bool = False,
        seed: int = 0,
        resize: tuple[int, int] | None = None,
        min_depth: float = 1e-5,
        max_depth: float | None = None,
    ) -> None:
        super().__init__(root, filename_list, hflip=hflip, seed=seed)
        self.resize = resize
        self.min_depth = min_depth
        self.max_depth = max_depth

    def _read_rgb(self, path: Path) -> np.ndarray:
        return read_rgb_uint8(path)

    def _read_depth(self, path: Path) -> np.ndarray:
        return read_png_uint16(path).astype(np.float32) / np.float32(1000.0)

    def _valid_mask(self, depth: np.ndarray) -> np.ndarray:
        valid = depth > self.min_depth
        if self.max_depth is not None:
            valid &= depth <= self.max_depth
        return valid

    def _crop(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.resize is None or tuple(depth.shape) == tuple(self.resize):
            return rgb, depth
        h, w = self.resize
        # Pillow's BILINEAR resize widens its filter support when downscaling, i.e. it is antialiased.
        rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR))
        depth = np.asarray(Image.fromarray(depth, mode="F").resize((w, h), Image.Resampling.NEAREST))
        return rgb, depth.astype(np.float32)
