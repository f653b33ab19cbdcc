"""Depth maps to coloured 3-D point clouds (binary PLY), with the pinhole intrinsics that unproject them.

Conventions (the same as the procedural scenes' ``Camera.intrinsics`` and ``render_geometry``):

* Pixel coordinates are continuous, with the image's top-left *corner* at (0, 0): the centre of pixel (row ``i``,
  column ``j``) is at ``(u, v) = (j + 0.5, i + 0.5)``. A centred principal point is therefore ``(W / 2, H / 2)``, and
  resizing an image by ``s`` scales ``fx, fy, cx, cy`` by ``s`` exactly (see :meth:`Intrinsics.resized`).
* Depth is *planar* z (distance along the optical axis, not along the ray).
* Camera frame (OpenCV): x right, y down, z forward. A pixel at depth z unprojects to
  ``((u - cx) / fx * z, (v - cy) / fy * z, z)``. ``render_geometry``'s camera-space rays are
  ``((j + 0.5 - W/2) / f, -(i + 0.5 - H/2) / f, 1)`` with y *up*: the same ray with y negated.

agdepth's depth maps are affine-invariant (an unknown scale *and* shift), so a cloud made from one is only a shape up
to that affine ambiguity, not metres; :func:`depth_to_ply` labels such clouds in the PLY header
(:data:`UP_TO_SCALE_COMMENT`).

Per-image cameras (a dataset's, e.g. ScanNet or ARKit captures) come from a CSV file, :func:`read_intrinsics_file`:
a header ``name,fx,fy,cx,cy`` and one row per image, in pixels of that image (:class:`IntrinsicsFile`).

``plyfile`` (the writer) is imported only when a PLY is written: ``pip install plyfile``.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agdepth.imageio import write_bytes_atomic

PathLike = str | os.PathLike[str]

UP_TO_SCALE_COMMENT = "agdepth: depth is affine-invariant (up to scale and shift), not metres"
METRIC_COMMENT = "agdepth: depth in metres"
FRAME_COMMENT = "agdepth: camera frame x right, y down, z forward; planar depth"

_EXIF_IFD = 0x8769
_FOCAL_LENGTH = 0x920A  # mm
_FOCAL_LENGTH_35MM = 0xA405  # mm, equivalent on a 36 x 24 mm frame
_FOCAL_PLANE_X_RES = 0xA20E  # sensor pixels per FocalPlaneResolutionUnit, at PixelXDimension
_FOCAL_PLANE_UNIT = 0xA210  # 2 inch (default), 3 cm, 4 mm, 5 um
_PIXEL_X_DIM, _PIXEL_Y_DIM = 0xA002, 0xA003
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 1e-3}
_FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5) (module docstring)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"intrinsics {name} must be finite, got {getattr(self, name)}")
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"intrinsics fx and fy must be > 0, got fx={self.fx:g}, fy={self.fy:g}")

    def matrix(self) -> np.ndarray:
        """The 3x3 K (float64)."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)

    @classmethod
    def from_matrix(cls, k: Any) -> Intrinsics:
        """From a 3x3 K (e.g. ``procedural.Scene.intrinsics``); skew is not supported."""
        m = np.asarray(k, np.float64)
        if m.shape != (3, 3):
            raise ValueError(f"K must be 3x3, got shape {m.shape}")
        if m[0, 1] != 0 or np.any(m[2] != (0, 0, 1)) or m[1, 0] != 0:
            raise ValueError("K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (no skew)")
        return cls(float(m[0, 0]), float(m[1, 1]), float(m[0, 2]), float(m[1, 2]))

    def resized(self, old_size: tuple[int, int], new_size: tuple[int, int]) -> Intrinsics:
        """The same camera for the image resized from ``old_size`` to ``new_size`` (both (H, W))."""
        sy, sx = new_size[0] / old_size[0], new_size[1] / old_size[1]
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def __str__(self) -> str:
        return f"{self.fx:.6g},{self.fy:.6g},{self.cx:.6g},{self.cy:.6g}"


def parse_intrinsics(text: str) -> Intrinsics:
    """``"fx,fy,cx,cy"`` (pixels) to :class:`Intrinsics`; a one-line ValueError saying what is wrong otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise ValueError(f"intrinsics must be 4 comma-separated numbers fx,fy,cx,cy; got {len(parts)} in {text!r}")
    try:
        return _intrinsics_from_cells(parts)
    except ValueError as e:
        raise ValueError(f"intrinsics {e} in {text!r}") from None


def _intrinsics_from_cells(cells: Sequence[str]) -> Intrinsics:
    """fx, fy, cx, cy from 4 text cells; a ValueError saying what is wrong (``fx 'abc' is not a number``)."""
    values = []
    for name, cell in zip(("fx", "fy", "cx", "cy"), cells, strict=True):
        try:
            v = float(cell)
        except ValueError:
            raise ValueError(f"{name} {cell.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"{name} {cell.strip()!r} is not finite")
        values.append(v)
    fx, fy, cx, cy = values
    if fx <= 0 or fy <= 0:
        raise ValueError(f"fx and fy must be > 0, got fx={fx:g}, fy={fy:g}")
    return Intrinsics(fx, fy, cx, cy)


INTRINSICS_HEADER = ("name", "fx", "fy", "cx", "cy")


class IntrinsicsFileError(ValueError):
    """A per-image intrinsics file that cannot be used at all (unreadable, empty, no header, no rows); one line."""


class IntrinsicsRowError(ValueError):
    """One image's camera is not in a per-image intrinsics file (its row does not parse, or there is none); one line
    naming the file (and the line)."""


@dataclass(frozen=True)
class IntrinsicsFile:
    """Per-image intrinsics read by :func:`read_intrinsics_file`: ``rows`` maps each name in the file to its camera,
    or to why that row cannot be used (``"line 3: fx 'abc' is not a number"``); ``unnamed``: the problems of the rows
    that name no image (``"line 7: no image name, row skipped"``)."""

    path: Path
    rows: Mapping[str, Intrinsics | str]
    unnamed: tuple[str, ...] = ()

    def camera(self, image: PathLike) -> Intrinsics:
        """The camera of ``image`` (a path): the row named by its file name (``0001.jpg``), else by its stem
        (``0001``). Folders play no part, so same-named images in different folders share a row.

        Raises :class:`IntrinsicsRowError` (one line naming the file) when that row does not parse or there is none.
        """
        p = Path(image)
        for key in (p.name, p.stem):
            found = self.rows.get(key)
            if isinstance(found, Intrinsics):
                return found
            if found is not None:
                raise IntrinsicsRowError(f"{self.path}: {found}")
        raise IntrinsicsRowError(f"{self.path}: no row for {p.name} (by its name or its stem {p.stem})")


def read_intrinsics_file(path: PathLike) -> IntrinsicsFile:
    """A CSV of per-image pinhole intrinsics: the header ``name,fx,fy,cx,cy``, then one row per image, its name (the
    image's file name, ``0001.jpg``, or stem, ``0001``) and its camera in pixels of that image (pixel centres at +0.5,
    as :class:`Intrinsics`). Blank lines are skipped; cells may be padded with spaces; UTF-8 (a BOM is allowed).

    A row that does not parse (another number of cells, a value that is no finite number, fx or fy <= 0, no name) or
    that repeats a name does not stop the reading: it is kept as its problem, ``"line N: ..."``, which
    :meth:`IntrinsicsFile.camera` raises for the image it names (a repeated name: the image of both rows; a row
    without a name: :attr:`IntrinsicsFile.unnamed`).

    Raises :class:`IntrinsicsFileError` (one line naming the file) when the file cannot be read, is empty, does not
    begin with the header, or has no rows.
    """
    path = Path(path)
    rows: dict[str, Intrinsics | str] = {}
    first_line: dict[str, int] = {}
    nameless: list[str] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next((r for r in reader if any(c.strip() for c in r)), None)
            if header is None:
                raise IntrinsicsFileError(f"{path}: empty, expected the header {','.join(INTRINSICS_HEADER)}")
            if tuple(c.strip().lower() for c in header) != INTRINSICS_HEADER:
                raise IntrinsicsFileError(f"{path}: line {reader.line_num}: expected the header "
                                          f"{','.join(INTRINSICS_HEADER)}, got {','.join(header)!r}")
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                line = reader.line_num
                name = cells[0].strip()
                if not name:
                    nameless.append(f"line {line}: no image name, row skipped")
                    continue
                if name in first_line:
                    rows[name] = f"line {line}: a second row for {name} (the first is line {first_line[name]})"
                    continue
                first_line[name] = line
                try:
                    if len(cells) != len(INTRINSICS_HEADER):
                        raise ValueError(f"{len(cells)} cells, expected {len(INTRINSICS_HEADER)} "
                                         f"({','.join(INTRINSICS_HEADER)})")
                    rows[name] = _intrinsics_from_cells(cells[1:])
                except ValueError as e:
                    rows[name] = f"line {line}: {e}"
    except IntrinsicsFileError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise IntrinsicsFileError(f"{path}: cannot read it: {reason}") from None
    if not rows and not nameless:
        raise IntrinsicsFileError(f"{path}: no rows after the header {','.join(INTRINSICS_HEADER)}")
    return IntrinsicsFile(path, rows, tuple(nameless))


def intrinsics_from_fov(fov_deg: float, size: tuple[int, int]) -> Intrinsics:
    """Square pixels, centred principal point, horizontal field of view ``fov_deg`` across the width of size (H, W)."""
    fov = float(fov_deg)
    if not 0 < fov < 180:  # also refuses NaN
        raise ValueError(f"horizontal field of view must be in (0, 180) degrees, got {fov_deg}")
    h, w = size
    f = 0.5 * w / math.tan(math.radians(fov) / 2)
    return Intrinsics(f, f, w / 2, h / 2)


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def intrinsics_from_exif(path: PathLike, size: tuple[int, int]) -> Intrinsics | None:
    """Intrinsics of a photo from its EXIF, for a depth map of ``size`` (H, W, after EXIF orientation); None when the
    file carries no usable focal length. Errors opening the file propagate (``OSError``, ``UnidentifiedImageError``).

    Prefers FocalLengthIn35mmFilm, mapped through the diagonal (``f_px = f35 * hypot(W, H) / hypot(36, 24)``, the crop
    factor's definition); otherwise FocalLength (mm) with FocalPlaneXResolution (the sensor's pixels per unit, at
    PixelXDimension). Both assume square pixels, a centred principal point and that ``size`` is the whole photo
    (possibly resized, aspect kept); they are approximations (phones often round or misreport these tags).
    """
    h, w = size
    with Image.open(path) as img:
        exif = img.getexif()
        ifd = exif.get_ifd(_EXIF_IFD)
        stored_w, stored_h = img.size

    def tag(t: int) -> Any:
        return ifd.get(t, exif.get(t))

    f35 = _positive(tag(_FOCAL_LENGTH_35MM))
    if f35 is not None:
        f = f35 * math.hypot(w, h) / _FULL_FRAME_DIAGONAL_MM
        return Intrinsics(f, f, w / 2, h / 2)
    focal_mm, xres = _positive(tag(_FOCAL_LENGTH)), _positive(tag(_FOCAL_PLANE_X_RES))
    unit = _UNIT_MM.get(int(tag(_FOCAL_PLANE_UNIT) or 2))
    if focal_mm is None or xres is None or unit is None:
        return None
    ref_w = _positive(tag(_PIXEL_X_DIM)) or stored_w
    ref_h = _positive(tag(_PIXEL_Y_DIM)) or stored_h
    # focal length in sensor pixels at the reference resolution, then scaled to size (long side, so orientation-free)
    f = focal_mm * xres / unit * max(w, h) / max(ref_w, ref_h)
    return Intrinsics(f, f, w / 2, h / 2)


def unproject(depth: Any, K: Intrinsics, mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Planar depth ``[H, W]`` to camera-frame points (x right, y down, z forward).

    Returns ``(points [N, 3] float32, index [N])``: ``index`` holds the flat (row-major) pixel indices kept, so
    ``rgb.reshape(-1, 3)[index]`` are their colours. Kept: finite depth > 0 where ``mask`` (bool [H, W]) is True.
    """
    d = np.asarray(depth, np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must be a 2-D [H, W] map, got shape {d.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(d) & (d > 0)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != d.shape:
            raise ValueError(f"mask shape {m.shape} differs from depth shape {d.shape}")
        valid &= m.astype(bool)
    index = np.flatnonzero(valid)
    rows, cols = np.divmod(index, d.shape[1])
    z = d.reshape(-1)[index]
    points = np.empty((index.size, 3), np.float32)
    points[:, 0] = (cols + 0.5 - K.cx) / K.fx * z
    points[:, 1] = (rows + 0.5 - K.cy) / K.fy * z
    points[:, 2] = z
    return points, index


def voxel_downsample(points: Any, colors: Any, voxel: float) -> tuple[np.ndarray, np.ndarray | None]:
    """One point per occupied cube of side ``voxel`` (cells aligned to the origin): the mean position, and the mean
    colour (rounded, same dtype as ``colors``) when ``colors`` is not None. Output order: sorted by cell."""
    voxel = float(voxel)
    if not (math.isfinite(voxel) and voxel > 0):
        raise ValueError(f"voxel size must be a finite number > 0, got {voxel}")
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {p.shape}")
    c = None if colors is None else np.asarray(colors)
    if c is not None and c.shape != p.shape:
        raise ValueError(f"colors must be [N, 3] like points {p.shape}, got shape {c.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points must be finite to voxelise")
    if len(p) == 0:
        return p.astype(np.float32), c
    cells = np.floor(p.astype(np.float64) / voxel).astype(np.int64)
    cells -= cells.min(0)
    dims = cells.max(0) + 1
    if float(np.prod(dims.astype(np.float64))) < 2.0**62:  # one integer key per cell: a 1-D unique is fast
        keys = np.ravel_multi_index(tuple(cells.T), tuple(int(x) for x in dims))
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    n = len(counts)

    def mean(values: np.ndarray) -> np.ndarray:
        v = values.astype(np.float64)
        return np.stack([np.bincount(inverse, v[:, k], n) for k in range(3)], 1) / counts[:, None]

    out_points = mean(p).astype(np.float32)
    if c is None:
        return out_points, None
    m = mean(c)
    out_colors = np.rint(m).astype(c.dtype) if np.issubdtype(c.dtype, np.integer) else m.astype(c.dtype)
    return out_points, out_colors


def _plyfile() -> Any:
    try:
        import plyfile  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ImportError("writing point clouds needs plyfile: pip install plyfile") from exc
    return plyfile


def write_ply(path: PathLike, points: Any, colors: Any = None, comments: Sequence[str] = ()) -> Path:
    """Binary little-endian PLY of a point cloud: vertex x, y, z float32 (+ red, green, blue uchar when ``colors``,
    uint8 [N, 3], is given); ``comments`` (one line each, ASCII) go to the header. Everything is checked and encoded
    in memory first, then written through a temporary file and a rename: a failure never leaves a partial file."""
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must be [N, 3], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points must be finite (no NaN or inf)")
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != p.shape:
            raise ValueError(f"colors must be [N, 3] like points {p.shape}, got shape {c.shape}")
        if c.dtype != np.uint8:
            raise ValueError(f"colors must be uint8, got {c.dtype}")
    for line in comments:
        if not line.isascii() or "\n" in line or "\r" in line:
            raise ValueError(f"PLY comments must be single-line ASCII, got {line!r}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(p), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = p[:, 0], p[:, 1], p[:, 2]
    if colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = c[:, 0], c[:, 1], c[:, 2]
    plyfile = _plyfile()
    data = plyfile.PlyData([plyfile.PlyElement.describe(vertex, "vertex")], text=False, byte_order="<",
                           comments=list(comments))
    buf = io.BytesIO()
    data.write(buf)
    return write_bytes_atomic(path, buf.getvalue())


def _colors_for(rgb: Any, size: tuple[int, int]) -> np.ndarray:
    """[H, W, 3] uint8 colours from an RGB image (uint8, or uint16 as ``read_image`` gives), resized to ``size``."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got shape {a.shape}")
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 or uint16, got {a.dtype}")
    if a.shape[:2] != tuple(size):
        a = np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return a


def depth_to_ply(path: PathLike, depth: Any, rgb: Any, K: Intrinsics, metric: bool,
                 voxel: float | None = None, mask: Any = None) -> int:
    """Unproject ``depth`` with ``K``, colour the points with ``rgb`` (None: no colours; resized to the depth's size
    when it differs), optionally voxel-downsample, and write a binary PLY atomically; returns the number of points.

    ``metric=False`` (agdepth's affine-invariant depth) writes :data:`UP_TO_SCALE_COMMENT` into the header, ``True``
    writes :data:`METRIC_COMMENT`. Pixels with depth <= 0 are not points (for affine-invariant maps in [0, 1] that
    drops exactly-0 pixels)."""
    points, index = unproject(depth, K, mask)
    colors = None
    if rgb is not None:
        colors = _colors_for(rgb, np.shape(depth)).reshape(-1, 3)[index]
    comments = [METRIC_COMMENT if metric else UP_TO_SCALE_COMMENT, FRAME_COMMENT,
                f"agdepth: intrinsics fx,fy,cx,cy {K}"]
    if voxel is not None:
        points, colors = voxel_downsample(points, colors, voxel)
        comments.append(f"agdepth: voxel downsampled, voxel {voxel:g} (depth units)")
    write_ply(path, points, colors, comments)
    return len(points)
