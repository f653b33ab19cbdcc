"""A user's own RGB-D pairs in a folder: one reader for training (:class:`FolderTrainDataset`) and for ``depth-eval
--dataset folder`` (:class:`agdepth.evaluation.readers.FolderDataset`).

Layout::

    ROOT/rgb/NAME.<png|jpg|...>      the images
    ROOT/depth/NAME.<png|npy|tif|tiff|exr>   the depth (or disparity) maps, matched by NAME
    ROOT/mask/NAME.png               optional: nonzero = usable pixel

or a two-column list file (``rgb_path depth_path`` per line, relative to ROOT) instead of the name matching.

Depth files: a 16-bit PNG (times ``depth_scale``: 0.001 for millimetres), or float ``.npy`` / TIFF / OpenEXR in
``depth_scale`` units (1.0: metres). EXR needs the ``exr`` extra (the OpenEXR bindings); its depth is the single
channel, or the first of Z, depth, Y, R. ``disparity=True``: the files hold disparity and depth = ``depth_scale`` /
value (e.g. stereo baseline × focal length). 0, NaN and inf are "no measurement". Sizes may differ between pairs; an
image and its depth map must have the same size. A missing partner, an unreadable file, a size mismatch and a map
without a single valid value raise :class:`~agdepth.data.base.SampleReadError` naming the file.

The held-out split (:func:`split_pairs`) is a pure function of each pair's image name: a pair stays on its side when
files are added, removed or listed in another order.
"""

from __future__ import annotations

import errno
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from agdepth.data.base import PathLike, SampleReadError, parse_filename_list, read_png_uint16, read_rgb_uint8
from agdepth.imageio import IMAGE_EXTENSIONS

DEPTH_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".exr")
EXR_CHANNELS = ("Z", "depth", "Y", "R")  # which channel of a multi-channel EXR holds depth, in order of preference

Pair = tuple[str, str]  # (rgb path, depth path), relative to the root


@dataclass(frozen=True)
class DepthEncoding:
    """How a folder's depth files encode metres: value × scale, or scale / value for disparity."""

    scale: float = 1.0
    disparity: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"depth scale must be a positive number, got {self.scale}")


def discover_pairs(root: PathLike, filename_list: PathLike | None = None) -> list[Pair]:
    """The (rgb, depth) pairs of a folder dataset, sorted by image name, or the list file's pairs in its order.

    An image without a depth partner is kept, paired with ``depth/NAME.png``, so that reading it fails naming the
    missing file. Raises FileNotFoundError naming the folder or list that is missing, ValueError for an empty one.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(errno.ENOENT, "folder dataset root not found", str(root))
    if filename_list is not None:
        return [(r, d) for r, d in parse_filename_list(filename_list)]
    rgb_dir, depth_dir = root / "rgb", root / "depth"
    if not rgb_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "folder dataset: no rgb/ folder (or pass a filename list)", str(rgb_dir))
    pairs: list[Pair] = []
    images = (p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    for rgb in sorted(images):
        depth = next((depth_dir / f"{rgb.stem}{s}" for s in DEPTH_SUFFIXES if (depth_dir / f"{rgb.stem}{s}").is_file()),
                     depth_dir / f"{rgb.stem}.png")
        pairs.append((rgb.relative_to(root).as_posix(), depth.relative_to(root).as_posix()))
    if not pairs:
        raise ValueError(f"folder dataset: no images in {rgb_dir}")
    return pairs


def missing_partners(root: PathLike, pairs: Sequence[Pair]) -> list[str]:
    """The depth files the pairs name that do not exist (a cheap check before reading anything)."""
    root = Path(root)
    return [d for _, d in pairs if not (root / d).is_file()]


def _read_exr(path: Path) -> np.ndarray:
    try:
        import OpenEXR
    except ImportError as e:
        raise SampleReadError(path, "reading EXR depth needs the OpenEXR bindings: pip install 'agdepth[exr]'") from e
    try:
        with OpenEXR.File(str(path)) as f:
            channels = {name: np.asarray(c.pixels) for name, c in f.channels().items()}
    except Exception as exc:
        raise SampleReadError(path, f"cannot read the EXR ({exc})") from exc
    if len(channels) == 1:
        arr = next(iter(channels.values()))
    else:
        name = next((c for c in EXR_CHANNELS if c in channels), None)
        if name is None:
            raise SampleReadError(path, f"no depth channel among {', '.join(sorted(channels))} (expected one of "
                                        f"{', '.join(EXR_CHANNELS)})")
        arr = channels[name]
    if arr.ndim == 3:  # an interleaved RGB(A) channel group: depth in the first component
        arr = arr[..., 0]
    return arr.astype(np.float64)


def _read_float_tiff(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("F", "I", "I;16", "I;16B"):
                raise SampleReadError(path, f"expected a single-channel float TIFF, got mode {img.mode!r}")
            return np.asarray(img, dtype=np.float64)
    except SampleReadError:
        raise
    except Exception as exc:
        raise SampleReadError(path, f"cannot read the TIFF ({exc})") from exc


def read_depth_file(path: PathLike, encoding: DepthEncoding = DepthEncoding()) -> np.ndarray:
    """HxW float64 depth in metres, 0 where there is no measurement. Raises SampleReadError naming the file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise SampleReadError(path, "missing: no depth file for this image")
    if suffix == ".png":
        raw = read_png_uint16(path).astype(np.float64)
    elif suffix == ".npy":
        try:
            raw = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        except (OSError, ValueError, EOFError) as e:
            raise SampleReadError(path, f"cannot read the array ({e})") from e
    elif suffix in (".tif", ".tiff"):
        raw = _read_float_tiff(path)
    elif suffix == ".exr":
        raw = _read_exr(path)
    else:
        raise SampleReadError(path, f"unknown depth format {suffix!r} (expected {', '.join(DEPTH_SUFFIXES)})")
    if raw.ndim != 2:
        raise SampleReadError(path, f"expected a single-channel depth map, got shape {raw.shape}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth = encoding.scale / raw if encoding.disparity else raw * encoding.scale
        depth = np.where(np.isfinite(depth) & (raw > 0), depth, 0.0)
    if not (depth > 0).any():
        raise SampleReadError(path, "no valid depth (every pixel 0, NaN or inf)")
    return depth


def read_mask_file(root: PathLike, rgb_rel: str, shape: tuple[int, int]) -> np.ndarray | None:
    """``ROOT/mask/NAME.png`` as a bool mask (nonzero = usable), None when the pair has none."""
    path = Path(root) / "mask" / f"{Path(rgb_rel).stem}.png"
    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            mask = np.asarray(img.convert("L")) > 0
    except Exception as exc:
        raise SampleReadError(path, f"cannot read the mask ({exc})") from exc
    if mask.shape != tuple(shape):
        raise SampleReadError(path, f"mask size {mask.shape[0]}x{mask.shape[1]} does not match the depth "
                                    f"({shape[0]}x{shape[1]})")
    return mask


def read_pair(root: PathLike, pair: Pair, encoding: DepthEncoding = DepthEncoding()
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(rgb uint8 HxWx3, depth float64 metres, own mask or None) of one pair, sizes checked."""
    root = Path(root)
    rgb_path, depth_path = root / pair[0], root / pair[1]
    rgb = read_rgb_uint8(rgb_path)
    depth = read_depth_file(depth_path, encoding)
    if depth.shape != rgb.shape[:2]:
        raise SampleReadError(depth_path, f"depth size {depth.shape[0]}x{depth.shape[1]} does not match the image "
                                          f"{rgb_path.name} ({rgb.shape[0]}x{rgb.shape[1]})")
    return rgb, depth, read_mask_file(root, pair[0], depth.shape)


def _held_out_by_hash(name: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{Path(name).stem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_pairs(pairs: Sequence[Pair], holdout: float | PathLike | None, seed: int = 0) -> tuple[list[Pair],
                                                                                                  list[Pair]]:
    """(train, held-out) pairs. ``holdout``: a fraction in [0, 1) (each pair held out by a hash of its image name and
    ``seed``), or a file listing the held-out images (one rgb path or name per line, like a filename list's first
    column), or None (nothing held out)."""
    if holdout is None:
        return list(pairs), []
    if isinstance(holdout, int | float) and not isinstance(holdout, bool):
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be a fraction in [0, 1) or a list file, got {holdout}")
        held = {p for p in pairs if _held_out_by_hash(p[0], float(holdout), seed)}
    else:
        path = Path(holdout)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "held-out list not found", str(path))
        listed = {cols[0] for cols in (ln.split() for ln in path.read_text(encoding="utf-8").splitlines())
                  if cols and not cols[0].startswith("#")}
        stems = {Path(x).stem for x in listed}
        held = {p for p in pairs if p[0] in listed or Path(p[0]).stem in stems}
        if not held:
            raise ValueError(f"held-out list {path} names none of the folder's images")
    return [p for p in pairs if p not in held], [p for p in pairs if p in held]


def write_pair_list(path: PathLike, pairs: Sequence[Pair]) -> None:
    """A two-column list file (``depth-eval --filename-list``) of the pairs."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{r} {d}\n" for r, d in pairs), encoding="utf-8")


def cover_crop(rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray, size: tuple[int, int]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resize so the frame covers ``size`` (rgb antialiased, depth and mask nearest: no mixed depths at edges),
    then centre-crop to it."""
    h, w = size
    scale = max(h / rgb.shape[0], w / rgb.shape[1])
    rh, rw = max(h, round(rgb.shape[0] * scale)), max(w, round(rgb.shape[1] * scale))
    if (rh, rw) != rgb.shape[:2]:
        rgb = np.array(Image.fromarray(rgb).resize((rw, rh), Image.Resampling.BILINEAR))
        rows = np.minimum((np.arange(rh) + 0.5) * depth.shape[0] / rh, depth.shape[0] - 1).astype(np.int64)
        cols = np.minimum((np.arange(rw) + 0.5) * depth.shape[1] / rw, depth.shape[1] - 1).astype(np.int64)
        depth, valid = depth[np.ix_(rows, cols)], valid[np.ix_(rows, cols)]
    top, left = (rh - h) // 2, (rw - w) // 2
    sl = (slice(top, top + h), slice(left, left + w))
    return rgb[sl], depth[sl], valid[sl]


class FolderTrainDataset(torch.utils.data.Dataset):
    """Training samples (:mod:`agdepth.data.base`'s dict) from a folder's pairs, each resized to cover ``size`` and
    centre-cropped to it; usable pixels: a positive finite depth inside ``depth_range``, and the mask file's.

    Flips are a pure function of (seed, epoch, index) as in :class:`agdepth.data.base.DepthDataset`.
    """

    def __init__(self, root: PathLike, pairs: Sequence[Pair], size: tuple[int, int], *,
                 encoding: DepthEncoding = DepthEncoding(), depth_range: tuple[float, float] = (1e-3, 1000.0),
                 domain: str = "folder", hflip: bool = False, seed: int = 0) -> None:
        self.root = Path(root)
        self.pairs = list(pairs)
        if not self.pairs:
            raise ValueError(f"folder source {self.root} has no training pairs")
        lo, hi = depth_range
        if not 0 <= lo < hi:
            raise ValueError(f"folder source {self.root}: depth range must satisfy 0 <= min < max, got {depth_range}")
        self.size, self.encoding, self.depth_range = tuple(size), encoding, (float(lo), float(hi))
        self.domain, self.hflip, self.seed, self.epoch = domain, hflip, seed, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb, depth, mask = read_pair(self.root, self.pairs[index], self.encoding)
        lo, hi = self.depth_range
        valid = (depth > lo) & (depth < hi)
        if mask is not None:
            valid &= mask
        rgb, depth, valid = cover_crop(rgb, depth, valid, self.size)
        if self.hflip:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            if state & 1:
                rgb, depth, valid = rgb[:, ::-1], depth[:, ::-1], valid[:, ::-1]
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).to(torch.float32)
        return {
            "rgb": rgb_t / 127.5 - 1.0,
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None],
            "valid": torch.from_numpy(np.ascontiguousarray(valid))[None],
            "name": self.pairs[index][0],
            "domain": self.domain,
        }
