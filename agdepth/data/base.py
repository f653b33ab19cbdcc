"""Common machinery for depth training datasets.

Every dataset returns the same sample dict::

    {"rgb": float32 [3,H,W] in [-1, 1], "depth": float32 [1,H,W] metres,
     "valid": bool [1,H,W], "name": str (rgb path relative to root), "domain": str}

Invalid pixels keep their depth where the source has a positive finite value (Virtual KITTI's sky at 655.35 m, a
reading beyond ``max_depth``) and are 0 where it has none. As in Marigold, the training target normaliser then clips
sky to *far*; zeroing it would teach the model that sky is the nearest thing in the image. Losses and metrics use
``valid`` only.
"""

from __future__ import annotations

import abc
import errno
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

log = logging.getLogger(__name__)

PathLike = str | Path


class SampleReadError(RuntimeError):
    """A sample file is missing, corrupt, unreadable or has the wrong size/format."""

    def __init__(self, path: PathLike, reason: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read sample file {self.path}: {reason}" if reason else f"cannot read {self.path}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep (path, reason) intact when the error crosses a DataLoader worker boundary.
        return (type(self), (self.path, self.reason))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def read_rgb_uint8(path: PathLike) -> np.ndarray:
    """Read an 8-bit image as a HxWx3 uint8 array; raises SampleReadError on any failure."""
    try:
        with Image.open(path) as img:
            img.load()  # PIL opens lazily; force decoding so truncated files fail here
            if img.mode not in ("RGB", "RGBA", "L", "P"):
                raise SampleReadError(path, f"unexpected image mode {img.mode!r} for an 8-bit RGB image")
            arr = np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    except SampleReadError:
        raise
    except Exception as exc:  # any decoding/IO failure is a bad sample, not a bug in the caller
        raise SampleReadError(path, _describe(exc)) from exc
    return np.ascontiguousarray(arr)


def read_png_uint16(path: PathLike) -> np.ndarray:
    """Read a single-channel 16-bit PNG exactly (0..65535) as HxW uint16; raises SampleReadError on failure."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            # An 8-bit depth map would silently decode to wrong metric values, so reject it.
            if mode not in ("I;16", "I;16L", "I;16B", "I"):
                raise SampleReadError(path, f"expected a 16-bit single-channel PNG, got mode {mode!r}")
            arr = np.asarray(img)
    except SampleReadError:
        raise
    except Exception as exc:
        raise SampleReadError(path, _describe(exc)) from exc
    if arr.ndim != 2:
        raise SampleReadError(path, f"expected a single-channel depth image, got shape {arr.shape}")
    if mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
        raise SampleReadError(path, "depth values outside the 16-bit range")
    # astype normalises both the int32 ("I") and big-endian ("I;16B") variants to native uint16.
    return arr.astype(np.uint16)


def parse_filename_list(path: PathLike, depth_from_rgb: Callable[[str], str] | None = None) -> list[tuple[str, str]]:
    """Parse ``rgb_rel depth_rel [extra columns ignored]`` lines; blank lines and ``#`` comments are skipped.

    If ``depth_from_rgb`` is given, single-column lines are allowed and the depth path is derived from it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "filename list not found", str(path))
    pairs: list[tuple[str, str]] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            cols = line.split()
            if not cols or cols[0].startswith("#"):
                continue
            if len(cols) >= 2:
                pairs.append((cols[0], cols[1]))
            elif depth_from_rgb is not None:
                pairs.append((cols[0], depth_from_rgb(cols[0])))
            else:
                raise ValueError(f"{path}:{lineno}: expected 'rgb_path depth_path', got {line.strip()!r}")
    if not pairs:
        raise ValueError(f"filename list {path} contains no samples")
    return pairs


class DepthDataset(Dataset, abc.ABC):
    """Base class: pairs of (rgb, depth) files under ``root`` -> common sample dict.

    Pipeline per sample: read rgb/depth -> size check -> ``_crop`` (spatial hook, identity by default) ->
    ``_valid_mask`` -> zero non-finite/non-positive depth -> optional deterministic horizontal flip -> tensors.

    Flips are a pure function of (seed, epoch, index), so they do not depend on worker scheduling or
    global RNG state; call ``set_epoch`` each epoch (before creating the DataLoader iterator; with
    ``persistent_workers=True`` the change would not reach the workers).
    """

    domain: str = "unknown"

    def __init__(
        self,
        root: PathLike,
        filename_list: PathLike | None = None,
        *,
        pairs: Sequence[tuple[str, str]] | None = None,
        hflip: bool = False,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, f"{type(self).__name__} root directory not found", str(self.root))
        if (filename_list is None) == (pairs is None):
            raise ValueError("pass exactly one of filename_list or pairs")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.filename_list = Path(filename_list) if filename_list is not None else None
        # File existence is deliberately not checked here: stat-ing ~50k files is slow; bad entries
        # surface as SampleReadError when read.
        self.pairs: list[tuple[str, str]] = (
            self._parse_list(self.filename_list) if self.filename_list is not None else [tuple(p) for p in pairs]
        )
        if not self.pairs:
            raise ValueError(f"{type(self).__name__} has no samples")
        self.hflip = hflip
        self.seed = seed
        self.epoch = 0

    # --- hooks -------------------------------------------------------------------------------
    def _parse_list(self, path: Path) -> list[tuple[str, str]]:
        return parse_filename_list(path)

    @abc.abstractmethod
    def _read_rgb(self, path: Path) -> np.ndarray:
        """Return HxWx3 uint8."""

    @abc.abstractmethod
    def _read_depth(self, path: Path) -> np.ndarray:
        """Return HxW float32 depth in metres."""

    @abc.abstractmethod
    def _valid_mask(self, depth: np.ndarray) -> np.ndarray:
        """Return HxW bool mask of usable depth pixels."""

    def _check_size(self, rgb_path: Path, hw: tuple[int, int]) -> None:
        """Raise SampleReadError(rgb_path, ...) if a frame of size ``hw`` cannot be used (default: any size)."""

    def _crop(self, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Spatial transform hook (crop/resize) applied before the valid mask is computed."""
        return rgb, depth

    # --- API ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (reproducible) flip pattern ``__getitem__`` uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def should_flip(self, index: int) -> bool:
        """Deterministic coin flip from (seed, epoch, index)."""
        if not self.hflip:
            return False
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return bool(state & 1)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self)
        rgb_rel, depth_rel = self.pairs[index]
        rgb_path, depth_path = self.root / rgb_rel, self.root / depth_rel
        rgb = self._read_rgb(rgb_path)
        depth = self._read_depth(depth_path)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise SampleReadError(rgb_path, f"expected HxWx3 rgb, got shape {rgb.shape}")
        if depth.shape != rgb.shape[:2]:
            raise SampleReadError(depth_path, f"depth size {depth.shape} does not match rgb size {rgb.shape[:2]}")
        self._check_size(rgb_path, depth.shape)
        rgb, depth = self._crop(rgb, depth)
        valid = self._valid_mask(depth) & np.isfinite(depth)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0)).astype(np.float32, copy=False)
        if self.should_flip(index):
            rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32)
        return {
            "rgb": rgb_t / 127.5 - 1.0,
            "depth": torch.from_numpy(np.ascontiguousarray(depth))[None],
            "valid": torch.from_numpy(np.ascontiguousarray(valid))[None],
            "name": rgb_rel,
            "domain": self.domain,
        }


class SkipCorrupt(Dataset):
    """Wrapper returning ``{"corrupt": path}`` instead of raising SampleReadError (see collate_skip_corrupt)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.dataset[index]
        except SampleReadError as exc:
            log.warning("skipping corrupt sample: %s", exc)
            return {"corrupt": exc.path}


def collate_skip_corrupt(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate good samples with ``default_collate``; list corrupt ones under ``"corrupt"`` (always present).

    If every sample in the batch is corrupt the result is ``{"corrupt": [...]}`` only (no ``"rgb"`` etc.);
    callers must skip such batches.
    """
    corrupt = [s["corrupt"] for s in batch if "corrupt" in s]
    good = [s for s in batch if "corrupt" not in s]
    out: dict[str, Any] = default_collate(good) if good else {}
    out["corrupt"] = corrupt
    return out
