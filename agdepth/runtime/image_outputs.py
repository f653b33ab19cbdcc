"""One image's ``depth-run`` outputs, with what users do with the depth: metres from sparse anchors, point clouds.

* ``--anchors PATH``: the image's anchor file (``PATH`` itself, or ``PATH/<stem>.png|npy|csv``;
  :mod:`agdepth.anchors`) turns the prediction metric: ``_depth.npy`` then holds metres (float32) and ``_depth.png``
  millimetres (16-bit, 0 = unknown); the colour map stays the affine-invariant one. An image whose anchors are
  missing, unreadable or too few keeps its affine-invariant outputs, and the reason is reported for it.
* ``ply`` in ``--formats``: ``_points.ply``, the coloured point cloud of the depth (metric with anchors, else labelled
  up-to-scale in its header) with the camera of ``--intrinsics fx,fy,cx,cy`` or ``--fov`` (horizontal degrees), else
  the file's EXIF focal length, else :data:`ASSUMED_FOV` degrees (said in the header and reported).
  ``--intrinsics FILE`` (:func:`agdepth.pointcloud.read_intrinsics_file`) gives each image the camera of its row; an
  image whose row does not parse, or that has none, falls back as if none was given (EXIF, then the assumed field of
  view), with one note naming the file, the line and the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agdepth.anchors import AnchorError, MetricFit, find_anchor_file, fit_metric, read_anchors
from agdepth.imageio import write_depth_png16_mm, write_npy, write_outputs
from agdepth.pointcloud import (
    Intrinsics,
    IntrinsicsFile,
    IntrinsicsRowError,
    depth_to_ply,
    intrinsics_from_exif,
    intrinsics_from_fov,
    parse_intrinsics,
    read_intrinsics_file,
)

ASSUMED_FOV = 60.0  # horizontal degrees, for a point cloud of an image without intrinsics


@dataclass(frozen=True)
class OutputOptions:
    anchors: Path | None = None
    intrinsics: Intrinsics | IntrinsicsFile | None = None  # every image's (at the size given), or one per image
    fov: float | None = None
    voxel: float | None = None


@dataclass
class ImageReport:
    """What became of one image's extras: the metric fit (or why none), and notes (assumed intrinsics)."""

    source: str
    fit: MetricFit | None = None
    problem: str | None = None
    notes: tuple[str, ...] = ()


def parse_camera_option(value: str) -> Intrinsics | IntrinsicsFile:
    """``--intrinsics VALUE``: an existing file is read as per-image intrinsics (:func:`read_intrinsics_file`),
    anything else is parsed as ``fx,fy,cx,cy``. Raises ValueError (one line) for a file that cannot be used at all
    (:class:`agdepth.pointcloud.IntrinsicsFileError`) or a value that is neither."""
    if Path(value).is_file():
        return read_intrinsics_file(value)
    try:
        return parse_intrinsics(value)
    except ValueError as e:
        raise ValueError(f"neither an existing file nor fx,fy,cx,cy: {e}") from None


def _camera(source: Path, size: tuple[int, int], opts: OutputOptions) -> tuple[Intrinsics, str | None]:
    """The camera of one image's point cloud, and a note when it is not the one asked for (one line)."""
    problem = None
    if isinstance(opts.intrinsics, IntrinsicsFile):
        try:
            return opts.intrinsics.camera(source), None
        except IntrinsicsRowError as e:  # falls back as if no intrinsics were given
            problem = str(e)
    elif opts.intrinsics is not None:
        return opts.intrinsics, None
    if opts.fov is not None:
        return intrinsics_from_fov(opts.fov, size), None
    try:
        exif = intrinsics_from_exif(source, size)
    except OSError:
        exif = None
    if exif is not None:
        return exif, None if problem is None else f"{problem}; {source}: the point cloud uses its EXIF focal length"
    if problem is None:
        note = (f"{source}: no intrinsics given or in EXIF, the point cloud assumes a {ASSUMED_FOV:g}° horizontal "
                "field of view")
    else:
        note = (f"{problem}; {source}: no intrinsics in EXIF, the point cloud assumes a {ASSUMED_FOV:g}° horizontal "
                "field of view")
    return intrinsics_from_fov(ASSUMED_FOV, size), note


def write_image_outputs(paths: dict[str, Path], depth: np.ndarray, uncertainty: Any, source: Path,
                        rgb: np.ndarray | None, opts: OutputOptions) -> ImageReport:
    """Write ``paths`` (an output set of :func:`agdepth.imageio.output_paths`) for one image; see the module
    docstring. Raises what the writers raise (OSError, ValueError) for an output that cannot be written."""
    report = ImageReport(str(source))
    metric = None
    if opts.anchors is not None:
        anchor_file = find_anchor_file(opts.anchors, source.stem)
        try:
            if anchor_file is None:
                raise AnchorError(f"{source}: no anchor file {opts.anchors}/{source.stem}.png|.npy|.csv")
            report.fit = fit_metric(depth, read_anchors(anchor_file, depth.shape), name=str(anchor_file))
            metric = report.fit.depth
        except AnchorError as e:
            report.problem = str(e)
    plain = {k: p for k, p in paths.items() if k != "ply" and not (metric is not None and k in ("png16", "npy"))}
    write_outputs(plain, depth, uncertainty)
    if metric is not None:
        if "npy" in paths:
            write_npy(paths["npy"], metric)
        if "png16" in paths:
            write_depth_png16_mm(paths["png16"], metric)
    if "ply" in paths:
        camera, note = _camera(source, depth.shape, opts)
        if note:
            report.notes = (note,)
        depth_to_ply(paths["ply"], depth if metric is None else metric, rgb, camera, metric=metric is not None,
                     voxel=opts.voxel)
    return report


__all__ = ["ASSUMED_FOV", "ImageReport", "OutputOptions", "parse_camera_option", "write_image_outputs"]
