"""Image input/output for ``depth-run``: reading photos, expanding input folders, writing depth outputs atomically.

Reading (:func:`read_image`) always yields ``[H,W,3]`` RGB, ``uint8`` — or ``uint16`` for 16-bit sources, so the
preprocessing (which divides by the dtype's maximum) keeps their precision. Conventions chosen here:

* EXIF orientation is applied, so outputs line up with what image viewers show.
* Alpha is dropped, exactly like Pillow's ``convert("RGB")`` (and diffusers' ``load_image``): the stored colour under
  transparent pixels is kept, nothing is composited, so results match the reference pipelines on the same file.
* 16-bit greyscale (``I;16*``, or ``I`` with values in 0..65535) is replicated to 3 channels as ``uint16``; ``I`` values
  outside 0..65535 are refused rather than silently clipped or rescaled.
* Float (``F``) images must hold finite values in [0, 1]; they become ``uint16`` ``round(x * 65535)``. Anything else
  (metres, disparities, HDR) has no defined mapping to an RGB photo, so it is refused instead of guessed.
* Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr`` …) goes through Pillow's own conversion to RGB; ICC
  profiles are not applied; 16-bit-per-channel colour files arrive as 8 bits (Pillow has no 48-bit RGB mode); only the
  first frame of a multi-frame file is read.
* Any failure — missing file, not an image, truncated or corrupt data, decompression bomb — is an
  :class:`ImageReadError` with a one-line message naming the file. Decoding is forced with ``load()`` so truncation is
  caught here rather than yielding a half-grey image (``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False``).

Writing: every writer goes through a temporary file in the destination folder and ``os.replace``, so a reader (or a
rerun after Ctrl-C) never sees a half-written output. Depth maps are affine-invariant depth in [0, 1], 0 = near.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = str | os.PathLike[str]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# written by depth-run into its output folder: the outputs it planned and the settings that made them, so a rerun
# resumes, and input discovery never takes those outputs for inputs (also with --out inside or equal to an input folder)
OUTPUT_LEDGER = ".agdepth-outputs.json"

OUTPUT_FORMATS: tuple[str, ...] = ("png16", "npy", "color", "ply")
# file-name suffix appended to the stem, per output kind (the "uncertainty" kind is selected by a flag, not a format)
OUTPUT_SUFFIXES: dict[str, str] = {
    "png16": "_depth.png",
    "npy": "_depth.npy",
    "color": "_depth_color.png",
    "ply": "_points.ply",  # a coloured point cloud (agdepth.pointcloud), written by depth-run with the image
    "uncertainty": "_uncertainty.png",
}

# cmap's name for matplotlib's "Spectral": matplotlib's table *is* ColorBrewer's 11-colour Spectral, and cmap builds
# the same 256-entry LUT and indexing, so colours are byte-identical (checked against matplotlib in the tests).
SPECTRAL = "colorbrewer:Spectral"

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_F_TOLERANCE = 1e-6  # float images may overshoot [0, 1] by rounding noise; that much is clipped, not refused


class ImageReadError(Exception):
    """An input image could not be read; ``str(err)`` is one line naming the file and the reason."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = " ".join(reason.split())  # one line, whatever the underlying library put in its message
        super().__init__(f"cannot read image {self.path}: {self.reason}")


def describe_error(exc: BaseException) -> str:
    """One line saying why Pillow could not read an image (its exception's text, or what an unidentified file means)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file, or a format Pillow cannot read"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        return exc.strerror  # e.g. "No such file or directory", without repeating the path
    return str(exc) or type(exc).__name__


def read_image(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``[H,W,3]`` RGB, ``uint8`` (or ``uint16`` for 16-bit sources), EXIF orientation applied.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding). ``None``
            keeps only Pillow's own decompression-bomb limit (an error above ``2 * Image.MAX_IMAGE_PIXELS``, about
            179 MP by default); either way the refusal is an :class:`ImageReadError`.
    Raises:
        ImageReadError: for any file that cannot be read, with the path and the reason in one line.
    """
    try:
        img_file = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"{exc} (refused as a possible decompression bomb)") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's format probes raise many unrelated types for non-images
        raise ImageReadError(path, describe_error(exc)) from exc

    with img_file:
        w, h = img_file.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageReadError(
                path, f"{w}x{h} is {w * h} pixels, over the limit of {max_pixels} (possible decompression bomb)"
            )
        try:
            img_file.load()  # decode everything now: truncation/corruption must fail here, not yield grey pixels
        except MemoryError:
            raise
        except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, EOFError, … for bad data
            raise ImageReadError(path, f"corrupt or truncated image data ({describe_error(exc)})") from exc
        try:
            img = ImageOps.exif_transpose(img_file)
            return pil_to_array(img)  # raises ValueError for modes/values it refuses
        except MemoryError:
            raise
        except Exception as exc:
            raise ImageReadError(path, describe_error(exc)) from exc


def pil_to_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image as :func:`read_image` returns it (the conventions of the module docstring); ValueError
    for what it refuses. The one conversion for files and for image bytes received otherwise (``depth-serve``)."""
    mode = img.mode
    if mode in _INT16_MODES:
        grey = np.asarray(img).astype(np.uint16)  # I;16B arrives big-endian; make it native
    elif mode == "I":
        values = np.asarray(img)
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"32-bit integer image with values in [{lo}, {hi}]; only 0..65535 can be read as 16-bit")
        grey = values.astype(np.uint16)
    elif mode == "F":
        grey = _float_to_uint16(np.asarray(img, dtype=np.float64))
    else:
        if mode in _ALPHA_MODES or "transparency" in img.info:
            # via RGBA so palette transparency is resolved by Pillow without warnings; then the alpha is dropped
            return np.ascontiguousarray(np.asarray(img.convert("RGBA"))[..., :3])
        return np.array(img.convert("RGB"))
    return np.repeat(grey[..., None], 3, axis=2)


def _float_to_uint16(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    lo = float(values[finite].min()) if finite.any() else float("nan")
    hi = float(values[finite].max()) if finite.any() else float("nan")
    if not finite.all() or lo < -_F_TOLERANCE or hi > 1 + _F_TOLERANCE:
        raise ValueError(
            f"float image must hold finite values in [0, 1] (found min {lo:g}, max {hi:g}, "
            f"{int((~finite).sum())} non-finite)"
        )
    return np.round(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)


def read_ledger(folder: PathLike) -> dict[str, Any]:
    """The :data:`OUTPUT_LEDGER` of ``folder`` ({} when absent or unreadable: then nothing is known to be ours)."""
    try:
        data = json.loads(Path(folder, OUTPUT_LEDGER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(path: PathLike) -> str:
    return os.path.normcase(os.path.abspath(path))


def _scan_folder(folder: Path, recursive: bool, exclude: set[str], problems: list[str]) -> list[Path]:
    """Image files under ``folder`` as paths relative to it, sorted; dot-files and dot-folders are skipped, and so are
    folders in ``exclude`` and the outputs listed in any :data:`OUTPUT_LEDGER` met on the way. Unreadable folders and
    broken links are added to ``problems`` (one line each) and skipped."""

    def fail(err: OSError) -> None:  # os.walk would otherwise skip unreadable folders silently
        problems.append(f"cannot read folder {err.filename}: {err.strerror or err}")

    found: list[Path] = []
    ours: set[str] = set()
    for root, dirs, files in os.walk(folder, onerror=fail):
        if OUTPUT_LEDGER in files:
            ours |= {_key(Path(root, rel)) for rel in read_ledger(root).get("outputs", []) if isinstance(rel, str)}
        # hidden entries are skipped: macOS "._x.jpg" resource forks and our own ".x.tmp" files are not inputs
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _key(Path(root, d)) not in exclude) \
            if recursive else []
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            full = Path(root, name)
            if _key(full) in ours:
                continue
            if full.is_file():
                found.append(full.relative_to(folder))
            elif full.is_symlink():
                problems.append(f"skipped {full}: a broken link")
    return sorted(found, key=lambda p: p.as_posix())


def collect_inputs(inputs: Sequence[PathLike], recursive: bool = False, exclude: Sequence[PathLike] = (),
                   problems: list[str] | None = None) -> list[tuple[Path, Path]]:
    """Expand the INPUT arguments into ``(absolute image path, relative output stem)`` pairs.

    A file is kept whatever its extension (if it is no image, reading it gives the clear :class:`ImageReadError`); its
    stem is its name without extension. A folder contributes its files with an image extension (see
    :data:`IMAGE_EXTENSIONS`, case-insensitive; sub-folders only with ``recursive``), sorted, with stems relative to
    that folder (``sub/img``). Arguments keep their order; a file reached twice is listed once (first stem wins).
    Folders in ``exclude`` (the output folder) are not descended into, and files a depth-run ledger lists as its
    outputs are never inputs. Unreadable folders and broken links are appended to ``problems`` and skipped.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: two different files would get the same output stem, or nothing was found.
    """
    pairs: list[tuple[Path, Path]] = []
    problems = [] if problems is None else problems
    excluded = {_key(p) for p in exclude}
    seen: set[str] = set()
    stem_owner: dict[str, Path] = {}
    for raw in inputs:
        if not os.fspath(raw):
            raise FileNotFoundError("an input path is empty ('')")
        given = Path(raw)
        try:  # a path under a folder we may not enter raises PermissionError here: one input fails, not the run
            exists, is_dir = given.exists() or given.is_symlink(), given.is_dir()
        except OSError as e:
            problems.append(f"cannot read {os.fspath(raw)}: {e.strerror or e}")
            continue
        if not exists:
            raise FileNotFoundError(f"input path does not exist: {os.fspath(raw)!r}")
        given = Path(os.path.abspath(given))  # absolute and '..'-free, but symlinks are inputs in their own right
        if is_dir:
            found = [(given / rel, rel.with_suffix("")) for rel in _scan_folder(given, recursive, excluded, problems)]
        else:
            found = [(given, Path(given.stem))]
        for source, stem in found:
            key = os.path.normcase(source)
            if key in seen:
                continue
            seen.add(key)
            owner = stem_owner.setdefault(stem.as_posix(), source)
            if owner != source:
                raise ValueError(
                    f"inputs {owner} and {source} would both be written as '{stem.as_posix()}'; "
                    "rename one, or pass a common parent folder so sub-folders keep them apart"
                )
            pairs.append((source, stem))
    if not pairs:
        where = ", ".join(os.fspath(p) for p in inputs) or "(no inputs given)"
        raise ValueError(f"no input images found in {where}" + (f" ({'; '.join(problems)})" if problems else ""))
    return pairs


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Run ``write`` on a temporary file next to ``path``, then rename it over ``path``; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 (not mkstemp's 0o600) so the final file gets the user's usual umask-based permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        # no fsync: atomicity is against interrupted runs and concurrent readers, not power loss, and fsync per output
        # would dominate the cost of writing many small files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_bytes_atomic(path: PathLike, data: bytes) -> Path:
    """``data`` to ``path`` through a temporary file and a rename: never a half-written file."""
    return _atomic_write(path, lambda f: f.write(data))


def _unit_map(values: Any, what: str) -> np.ndarray:
    """Validate a finite 2-D map and clip it to [0, 1] (float64, so ``round(x * 65535)`` is exact)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{what} must be a non-empty 2-D [H,W] array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return np.clip(arr, 0.0, 1.0)


# zlib level for every PNG written: level 1 writes several times faster than Pillow's default (6) for somewhat larger
# files, and a deployment runtime is latency-bound, disk is not.
PNG_COMPRESS_LEVEL = 1


def _save_png(img: Image.Image) -> Callable[[IO[bytes]], None]:
    return lambda f: img.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def write_depth_png16(path: PathLike, depth: Any) -> Path:
    """Write a [H,W] depth map in [0, 1] (clipped) as a 16-bit greyscale PNG holding ``round(depth * 65535)``."""
    q = np.round(_unit_map(depth, "depth") * 65535).astype("<u2")  # little-endian: Pillow's "I;16"
    return _atomic_write(path, _save_png(Image.fromarray(q)))


def write_depth_png16_mm(path: PathLike, metres: Any) -> Path:
    """Write metric depth [H,W] as a 16-bit greyscale PNG in millimetres (0 where unknown: NaN, ≤ 0; clipped at
    65535 mm), the layout of depth sensors and of NYUv2/ScanNet."""
    z = np.asarray(metres, dtype=np.float64)
    if z.ndim != 2 or z.size == 0:
        raise ValueError(f"depth must be a non-empty 2-D [H,W] array, got shape {z.shape}")
    mm = np.where(np.isfinite(z) & (z > 0), np.clip(np.round(z * 1000.0), 1, 65535), 0).astype("<u2")
    return _atomic_write(path, _save_png(Image.fromarray(mm)))


def write_npy(path: PathLike, array: Any) -> Path:
    """Write ``array`` as a float32 ``.npy`` file (no pickling)."""
    arr = np.asarray(array, dtype=np.float32)
    return _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


@functools.lru_cache(maxsize=1)
def _spectral() -> Any:
    # imported lazily so reading images never depends on the colormap package
    try:
        from cmap import Colormap
    except ImportError as exc:
        raise ImportError("colour depth output needs the 'cmap' package: pip install 'cmap>=0.8,<1'") from exc
    return Colormap(SPECTRAL)


@functools.lru_cache(maxsize=1)
def _spectral_bytes() -> np.ndarray:
    """[256, 3] uint8: the colormap's 256-entry LUT as bytes (integer input indexes cmap's LUT directly)."""
    return np.ascontiguousarray(_spectral()(np.arange(256), bytes=True)[:, :3])


def colorize_depth(depth: Any) -> np.ndarray:
    """[H,W] depth in [0, 1] (clipped) → [H,W,3] uint8 through matplotlib's "Spectral": 0 (near) red, 1 (far) blue.

    This is diffusers' ``MarigoldImageProcessor.visualize_depth`` convention for numpy input (the colormap is applied
    to the depth as is), with matplotlib's 256-entry LUT and byte truncation, via the ``cmap`` package. The LUT row of
    each value is found as matplotlib and cmap find it (``int(x * 256)``, 1.0 in the last row), once per image
    instead of through the colormap's general path (masks for out-of-range and NaN values a clipped map cannot have).
    """
    rows = np.minimum(_unit_map(depth, "depth") * 256, 255).astype(np.intp)
    return _spectral_bytes().take(rows, axis=0)


def write_color_png(path: PathLike, depth: Any) -> Path:
    """Write :func:`colorize_depth` of a [H,W] depth map in [0, 1] as an 8-bit RGB PNG."""
    return _atomic_write(path, _save_png(Image.fromarray(colorize_depth(depth))))


def uncertainty_to_grey(unc: Any, saturation_percentile: float = 95.0) -> np.ndarray:
    """[H,W] uncertainty (≥ 0) → uint8 grey, as diffusers' ``visualize_uncertainty``.

    Scaled per image so the ``saturation_percentile`` value is white: ``uint8(clip(u * 255 / p, 0, 255))`` (truncated).
    Brightness is therefore relative within one image, not comparable across images; keep the raw values elsewhere if
    absolute uncertainty matters. An all-zero map (e.g. a single ensemble member) is black.
    """
    arr = np.asarray(unc, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"uncertainty must be a non-empty 2-D [H,W] array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("uncertainty contains NaN or infinite values")
    if arr.min() < 0:
        raise ValueError(f"uncertainty must be non-negative, found min {arr.min():g}")
    if not 0 < saturation_percentile <= 100:
        raise ValueError(f"saturation_percentile must be in (0, 100], got {saturation_percentile}")
    saturation = float(np.percentile(arr, saturation_percentile))
    if saturation <= 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(arr * 255 / saturation, 0, 255).astype(np.uint8)


def write_uncertainty_png(path: PathLike, unc: Any, saturation_percentile: float = 95.0) -> Path:
    """Write :func:`uncertainty_to_grey` of a [H,W] uncertainty map as an 8-bit greyscale PNG."""
    return _atomic_write(path, _save_png(Image.fromarray(uncertainty_to_grey(unc, saturation_percentile))))


def output_paths(out_dir: PathLike, stem: PathLike, formats: Iterable[str] | str, uncertainty: bool) -> dict[str, Path]:
    """Output files for one input: ``{kind: path}`` for the selected ``formats`` (+ ``"uncertainty"`` if asked).

    ``formats`` are names from :data:`OUTPUT_FORMATS` (a comma-separated string is accepted too). Paths are
    ``<out_dir>/<stem>`` plus :data:`OUTPUT_SUFFIXES`, e.g. ``out/sub/img_depth.png``; keys come in the order
    png16, npy, color, uncertainty.
    """
    names = [s.strip() for s in formats.split(",")] if isinstance(formats, str) else list(formats)
    names = [n for n in names if n]
    unknown = [n for n in names if n not in OUTPUT_FORMATS]
    if unknown:
        bad = ", ".join(map(repr, unknown))
        raise ValueError(f"unknown output format(s) {bad}; valid formats: {', '.join(OUTPUT_FORMATS)}")
    if not names and not uncertainty:
        raise ValueError(f"no output selected: give at least one format ({', '.join(OUTPUT_FORMATS)}) or uncertainty")
    stem_path = Path(stem)
    if stem_path.is_absolute() or ".." in stem_path.parts or not stem_path.name:
        raise ValueError(f"output stem must be a relative path inside the output folder, got {os.fspath(stem)!r}")
    base = Path(out_dir) / stem_path
    kinds = [k for k in OUTPUT_FORMATS if k in names] + (["uncertainty"] if uncertainty else [])
    return {k: base.with_name(base.name + OUTPUT_SUFFIXES[k]) for k in kinds}


def existing_outputs(paths: Mapping[str, PathLike] | Iterable[PathLike]) -> list[Path]:
    """The given output paths that already exist (dangling links count: writing would replace them)."""
    items = paths.values() if isinstance(paths, Mapping) else paths
    return [Path(p) for p in items if os.path.lexists(p)]


def write_outputs(paths: Mapping[str, PathLike], depth: Any, uncertainty: Any = None) -> None:
    """Write each output named in ``paths`` (as returned by :func:`output_paths`) from the depth/uncertainty maps."""
    writers: dict[str, Callable[[PathLike, Any], Path]] = {
        "png16": write_depth_png16,
        "npy": write_npy,
        "color": write_color_png,
    }
    unknown = [k for k in paths if k not in OUTPUT_SUFFIXES]
    if unknown:  # checked before writing anything, so a bad call leaves no partial set of outputs
        raise ValueError(f"unknown output kind(s) {', '.join(map(repr, unknown))}; valid: {', '.join(OUTPUT_SUFFIXES)}")
    if "ply" in paths:
        raise ValueError("a point cloud needs the image and the camera's intrinsics: depth-run writes it "
                         "(agdepth.pointcloud.depth_to_ply)")
    if "uncertainty" in paths and uncertainty is None:
        raise ValueError("an uncertainty output was requested but no uncertainty map was given")
    for kind, path in paths.items():
        if kind == "uncertainty":
            write_uncertainty_png(path, uncertainty)
        else:
            writers[kind](path, depth)
