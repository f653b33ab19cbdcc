"""Virtual KITTI 2 in its official layout (jpg rgb + 16-bit depth PNG in centimetres)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np

from agdepth.data.base import (
    DepthDataset,
    PathLike,
    SampleReadError,
    parse_filename_list,
    read_png_uint16,
    read_rgb_uint8,
)

KB_CROP_HW = (352, 1216)  # KITTI benchmark crop
RGB_GLOB = "*/*/frames/rgb/Camera_*/rgb_*.jpg"


def vkitti_depth_path(rgb_rel: str) -> str:
    """``Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg`` -> ``.../frames/depth/Camera_0/depth_00000.png``."""
    parts = Path(rgb_rel).parts
    if len(parts) < 3 or parts[-3] != "rgb" or not parts[-1].startswith("rgb_"):
        raise ValueError(f"not a Virtual KITTI 2 rgb path: {rgb_rel}")
    name = "depth_" + Path(parts[-1][len("rgb_") :]).with_suffix(".png").name
    return Path(*parts[:-3], "depth", parts[-2], name).as_posix()


def kb_crop_offsets(height: int, width: int) -> tuple[int, int]:
    """(top, left) of KITTI's benchmark crop: keep the bottom 352 rows, centre 1216 columns."""
    return height - KB_CROP_HW[0], (width - KB_CROP_HW[1]) // 2


class VirtualKITTIDataset(DepthDataset):
    """Virtual KITTI 2 samples. Without ``filename_list`` the frames are discovered by globbing ``RGB_GLOB``
    (all scenes, variations and cameras; slow on network filesystems, prefer a list for large runs).

    Valid where ``1e-5 < depth <= max_depth``; sky/far (65535 cm = 655.35 m) and anything deeper are invalid
    but keep their value, so the training target sees sky as far (Marigold's behaviour).
    ``crop=True`` applies the KITTI benchmark crop to 352x1216.
    """

    domain = "vkitti"

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        hflip: bool = False,
        seed: int = 0,
        crop: bool = True,
        max_depth: float = 80.0,
        min_depth: float = 1e-5,
    ) -> None:
        pairs = None
        if filename_list is None:
            root_p = Path(root)
            if not root_p.is_dir():
                raise FileNotFoundError(errno.ENOENT, "VirtualKITTIDataset root directory not found", str(root_p))
            rgbs = sorted(p.relative_to(root_p).as_posix() for p in root_p.glob(RGB_GLOB))
            if not rgbs:
                raise FileNotFoundError(
                    errno.ENOENT, f"no Virtual KITTI 2 frames matching {RGB_GLOB!r} under", str(root_p)
                )
            pairs = [(r, vkitti_depth_path(r)) for r in rgbs]
        super().__init__(root, filename_list, pairs=pairs, hflip=hflip, seed=seed)
        self.crop = crop
        self.max_depth = max_depth
        self.min_depth = min_depth

    def _parse_list(self, path: Path) -> list[tuple[str, str]]:
        # Lists may give only the rgb column; the depth path follows from the official layout.
        return parse_filename_list(path, depth_from_rgb=vkitti_depth_path)

    def _read_rgb(self, path: Path) -> np.ndarray:
        return read_rgb_uint8(path)

    def _read_depth(self, path: Path) -> np.ndarray:
        return read_png_uint16(path).astype(np.float32) / np.float32(100.0)

    def _valid_mask(self, depth: np.ndarray) -> np.ndarray:
        return (depth > self.min_depth) & (depth <= self.max_depth)

    def _check_size(self, rgb_path: Path, hw: tuple[int, int]) -> None:
        if self.crop and (hw[0] < KB_CROP_HW[0] or hw[1] < KB_CROP_HW[1]):
            raise SampleReadError(rgb_path, f"frame {hw[0]}x{hw[1]} is smaller than the 352x1216 benchmark crop")

    def _crop(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.crop:
            return rgb, depth
        top, left = kb_crop_offsets(*depth.shape)
        ch, cw = KB_CROP_HW
        return rgb[top : top + ch, left : left + cw], depth[top : top + ch, left : left + cw]
