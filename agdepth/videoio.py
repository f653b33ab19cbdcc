"""Video input/output for ``depth-run``: decoding clips and frame folders, writing result videos atomically.

Everything goes through PyAV (FFmpeg), imported lazily so image-only use never needs it; without it the video
functions raise an :class:`ImportError` saying ``pip install 'agdepth[video]'``. Conventions chosen here:

* Frames are yielded as ``[H,W,3]`` RGB ``uint8`` C-contiguous arrays with their 0-based index among the *decoded*
  frames of the file, so ``stride``/``max_frames`` never change which index a frame gets.
* The YUV→RGB conversion honours the colour matrix and range the stream is tagged with (untagged: BT.601, limited
  range, FFmpeg's default). A display rotation (phone videos) in multiples of 90° is applied, like EXIF orientation
  in :mod:`agdepth.imageio`, so frames come out the way players show them; display flips and sample aspect ratios
  (anamorphic video) are ignored.
* Any failure — missing, empty or non-video file, no video stream, corrupt or truncated data — is a
  :class:`VideoReadError`, one line naming the file (and the frame index where decoding broke). FFmpeg often stops
  silently at the end of a truncated file, so the frames read are checked against the container's frame count, or
  for single-stream containers without a count (Matroska) against its duration; a shortfall is an error too.
* A folder of frames reads its image files in natural name order (``frame2`` before ``frame10``) through
  :func:`agdepth.imageio.read_image` (so ``uint16`` for 16-bit frames); every frame must have the first one's size.

Writing (:class:`VideoWriter`): H.264 (``libx264`` where available), ``yuv420p``, converted with and tagged as
BT.709 limited range, so players show the colours written. ``yuv420p`` needs an even width and height: an odd one
gets one more row/column, a copy of the last, so the video is up to one pixel larger than the frames given. Like
every writer of :mod:`agdepth.imageio`, it writes a temporary file in the destination folder and renames it onto
the path with ``os.replace`` on a clean close, so the path never holds a half-written video; on an error or
:meth:`VideoWriter.abort` the temporary file is deleted and the path is left untouched.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from agdepth.imageio import IMAGE_EXTENSIONS, OUTPUT_LEDGER, ImageReadError, PathLike, read_image, read_ledger

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")

# encoders tried in order when VideoWriter gets no codec: H.264 everywhere but WebM, which only admits VP8/VP9/AV1
_H264_CODECS = ("libx264", "h264", "mpeg4")
_WEBM_CODECS = ("libvpx-vp9", "libvpx", "libsvtav1")
# a truncation shorter than this many frame intervals is not detected from a duration: muxers round timestamps
_DURATION_SLACK_FRAMES = 2


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:
        raise ImportError("video input/output needs PyAV: pip install 'agdepth[video]' (or 'av>=14,<20')") from exc
    return av


class VideoReadError(Exception):
    """A video (or frame of a frame folder) could not be read; ``str(err)`` is one line naming the file, the frame
    index when decoding got that far (``frame``, 0-based; ``None`` when the file could not be opened), and why."""

    def __init__(self, path: PathLike, reason: str, frame: int | None = None) -> None:
        self.path = os.fspath(path)
        self.frame = frame
        self.reason = " ".join(reason.split())  # one line, whatever FFmpeg or Pillow put in the message
        where = "" if frame is None else f" at frame {frame}"
        super().__init__(f"cannot read video {self.path}{where}: {self.reason}")


@dataclass
class VideoInfo:
    """What :func:`probe_video` finds: ``frames`` is the container's count (``None`` when it has none, as in
    Matroska; it can exceed the frames decoded when an edit list trims the clip), ``fps`` the average frame rate
    (0.0 if unknown), ``width``/``height`` the size of the frames :func:`iter_video_frames` yields (rotation
    applied)."""

    frames: int | None
    fps: float
    width: int
    height: int


def _describe(exc: BaseException) -> str:
    av = _import_av()
    if isinstance(exc, av.error.InvalidDataError):
        return f"corrupt data, or not a video format FFmpeg can read ({exc.strerror})"
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return exc.strerror  # e.g. "No such file or directory", without repeating the path
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _check_selection(stride: int, max_frames: int | None) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames must be an integer >= 1 or None, got {max_frames!r}")


def _open_video(path: PathLike) -> tuple[Any, Any]:
    """(container, its first video stream), or :class:`VideoReadError` with ``frame=None``."""
    av = _import_av()
    with contextlib.suppress(OSError):  # a missing file is left to FFmpeg, so every case reads the same way
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise VideoReadError(path, "empty file (0 bytes)")
    try:
        # absolute: FFmpeg would read "name:rest.mp4" as a URL with protocol "name"; metadata is not ours to judge
        container = av.open(os.path.abspath(path), metadata_errors="replace")
    except MemoryError:
        raise
    except Exception as exc:  # FFmpegError mostly, but the format probes and metadata decoding raise other types too
        raise VideoReadError(path, _describe(exc)) from exc
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream in the file")
    stream = container.streams.video[0]
    stream.codec_context.thread_type = "AUTO"  # frame + slice threads: decoding must not hold the model back
    return container, stream


def _fps(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns (0-3) of the frame's display rotation; other angles are ignored."""
    degrees = float(frame.rotation or 0)  # counter-clockwise, from the display matrix; 0 without one
    turns = round(degrees / 90) if math.isfinite(degrees) else 0
    return turns % 4 if abs(degrees - 90 * turns) < 1 else 0


def _to_rgb(frame: Any) -> np.ndarray:
    # the stream's range passed explicitly, so full-range (JPEG-range) video is expanded as such in every PyAV version
    kwargs = {"src_color_range": frame.color_range} if frame.color_range else {}
    rgb = frame.to_ndarray(format="rgb24", **kwargs)
    turns = _quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(rgb, turns) if turns else rgb)  # np.rot90 turns counter-clockwise too


def _decoded_frames(path: PathLike, container: Any, stream: Any) -> Generator[tuple[int, Any], None, None]:
    """(index, av.VideoFrame) for every frame of ``stream``; decoding errors and silent truncation raise
    :class:`VideoReadError` after the frames before them were yielded."""
    index = packets = 0
    last_end: Fraction | None = None
    try:
        for packet in container.demux(stream):
            if packet.size:  # size 0: the flush packet at the end of the stream
                packets += 1
                if packet.pts is not None and packet.time_base is not None:
                    end = (packet.pts + (packet.duration or 0)) * packet.time_base
                    last_end = end if last_end is None else max(last_end, end)
            for frame in packet.decode():
                yield index, frame
                index += 1
    except MemoryError:
        raise
    except Exception as exc:  # FFmpegError mostly (InvalidDataError for corrupt packets, OSError-like for I/O)
        raise VideoReadError(path, _describe(exc), frame=index) from exc
    # counted in packets, not frames: an edit list (a clip trimmed without re-encoding) drops decoded frames legally
    if stream.frames and packets < stream.frames:
        raise VideoReadError(path, f"truncated: {index} of {stream.frames} frames decoded", frame=index)
    duration = container.duration  # microseconds; for one stream it is that stream's
    fps = _fps(stream)
    if not stream.frames and len(container.streams) == 1 and duration and fps and last_end is not None:
        start = Fraction(container.start_time or 0, 1_000_000)
        if last_end - start < Fraction(duration, 1_000_000) - Fraction(_DURATION_SLACK_FRAMES) / Fraction(fps):
            expected = round(duration / 1_000_000 * fps)
            raise VideoReadError(path, f"truncated: {index} of about {expected} frames decoded", frame=index)
    if index == 0:
        raise VideoReadError(path, "the video stream has no decodable frame", frame=0)


def probe_video(path: PathLike) -> VideoInfo:
    """Open a video and decode its first frame: frame count (if the container has one), fps and frame size.

    Raises:
        VideoReadError: missing, empty or non-video file, no video stream, or no decodable first frame.
    """
    container, stream = _open_video(path)
    with container:
        frames = _decoded_frames(path, container, stream)
        try:
            _, first = next(frames)
        finally:
            frames.close()
        sideways = _quarter_turns(first) % 2 == 1
        width, height = (first.height, first.width) if sideways else (first.width, first.height)
        return VideoInfo(frames=stream.frames or None, fps=_fps(stream), width=width, height=height)


def iter_video_frames(path: PathLike, stride: int = 1,
                      max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video: ``(frame_index, [H,W,3] uint8 RGB)`` for frames 0, stride, 2·stride, …, at most
    ``max_frames`` of them. The file is opened when iteration starts and closed when it ends (or the iterator is
    closed).

    Raises:
        ValueError: ``stride < 1`` or ``max_frames < 1`` (at the call, before anything is read).
        VideoReadError: the file cannot be opened (``frame`` None), or decoding fails or the file turns out truncated
            (``frame`` = index of the first frame not delivered, after the earlier ones were yielded).
    """
    _check_selection(stride, max_frames)
    _import_av()  # a missing PyAV is reported at the call too
    return _iter_video_frames(path, stride, max_frames)


def _iter_video_frames(path: PathLike, stride: int, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    container, stream = _open_video(path)
    with container:
        frames = _decoded_frames(path, container, stream)
        try:
            yielded = 0
            for index, frame in frames:
                if index % stride:
                    continue
                try:
                    rgb = _to_rgb(frame)
                except MemoryError:
                    raise
                except Exception as exc:  # the RGB conversion refuses some exotic pixel formats
                    raise VideoReadError(path, _describe(exc), frame=index) from exc
                yield index, rgb
                yielded += 1
                if max_frames is not None and yielded >= max_frames:
                    return  # the rest is not read, so a truncated tail past the selection is no error
        finally:
            frames.close()


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    # digit runs compare as numbers, text case-insensitively; (kind, value) pairs keep int and str from meeting
    return tuple((0, int(part)) if part.isdecimal() else (1, part.casefold())
                 for part in re.split(r"(\d+)", name) if part)


def list_frame_files(folder: PathLike) -> list[Path]:
    """The image files (suffixes of :data:`agdepth.imageio.IMAGE_EXTENSIONS`, any case) directly in ``folder``, in
    natural name order (``frame2`` before ``frame10``). Hidden files and the outputs a depth-run ledger in the folder
    lists are skipped; a broken link is kept, so reading it fails loudly instead of a frame silently going missing.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: ``folder`` is not a folder, or holds no image file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"frames folder does not exist: {os.fspath(folder)!r}")
    if not root.is_dir():
        raise ValueError(f"not a folder of frames: {os.fspath(folder)}")
    # as agdepth.imageio's input discovery: outputs of a depth-run into this folder are never taken for frames
    ledger = read_ledger(root).get("outputs", []) if (root / OUTPUT_LEDGER).exists() else []
    ours = {os.path.normcase(os.path.abspath(root / rel)) for rel in ledger if isinstance(rel, str)}
    with os.scandir(root) as entries:
        files = [root / e.name for e in entries
                 if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                 and not e.is_dir() and os.path.normcase(os.path.abspath(e.path)) not in ours]
    if not files:
        raise ValueError(f"no image files in {os.fspath(folder)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(files, key=lambda p: (natural_key(p.name), p.name))


def iter_frame_folder(folder: PathLike, stride: int = 1,
                      max_frames: int | None = None) -> Iterator[tuple[int, Path, np.ndarray]]:
    """A folder of frames as a video: ``(frame_index, file, [H,W,3] RGB)`` for the files of :func:`list_frame_files`
    at indices 0, stride, 2·stride, …, at most ``max_frames`` of them; only the selected files are read (arrays are
    ``uint8``, or ``uint16`` for 16-bit frames, as :func:`agdepth.imageio.read_image` reads them).

    Raises:
        FileNotFoundError, ValueError: as :func:`list_frame_files`; ValueError for a bad ``stride``/``max_frames``.
        VideoReadError: a frame cannot be read, or its size differs from the first frame's (naming that file and its
            index, after the earlier frames were yielded).
    """
    _check_selection(stride, max_frames)
    files = list_frame_files(folder)[::stride][:max_frames]  # eager: a bad folder fails at the call
    return _iter_frame_folder(files, stride)


def _iter_frame_folder(files: list[Path], stride: int) -> Iterator[tuple[int, Path, np.ndarray]]:
    first_size: tuple[int, int] | None = None
    for position, file in enumerate(files):
        index = position * stride
        try:
            rgb = read_image(file)
        except ImageReadError as exc:
            raise VideoReadError(file, exc.reason, frame=index) from exc
        height, width = rgb.shape[:2]
        if first_size is None:
            first_size = (width, height)
        elif (width, height) != first_size:
            raise VideoReadError(file, f"frame size {width}x{height} differs from the first frame's "
                                       f"{first_size[0]}x{first_size[1]}", frame=index)
        yield index, file, rgb


def _default_codec(av: Any, suffix: str) -> str:
    candidates = _WEBM_CODECS if suffix == ".webm" else _H264_CODECS
    for name in candidates:
        if name not in av.codecs_available:
            continue
        try:
            av.Codec(name, "w")  # "h264" is listed for its decoder alone; an encoder must exist
        except ValueError:
            continue
        return name
    raise ValueError(f"this FFmpeg build has none of the encoders {', '.join(candidates)} for {suffix} video")


class VideoWriter:
    """Write RGB frames to a video file atomically: ``with VideoWriter("out.mp4", fps) as w: w.write(frame)``.

    The container comes from the suffix of ``path`` (.mp4, .mkv, .mov, .avi, .webm …); ``codec`` defaults to H.264
    (``libx264``, else FFmpeg's ``h264`` encoder, else ``mpeg4``; VP9 for .webm). Frames go to
    ``.NAME.<hex>.tmp<suffix>`` next to ``path`` (the real suffix last, for FFmpeg's format choice), which a clean
    :meth:`close` renames onto ``path``; :meth:`abort`, or an exception leaving the ``with`` block, deletes it.
    Closing without a frame written is an error (there is no empty video to save).

    Raises:
        ValueError: non-positive or non-finite fps, unknown container suffix or codec, bad frames (in :meth:`write`).
        OSError: FFmpeg failed to write (disk full, …), naming ``path``; the temporary file is then removed.
    """

    def __init__(self, path: PathLike, fps: float | Fraction, codec: str | None = None) -> None:
        av = _import_av()
        self.path = Path(path)
        if not (isinstance(fps, Fraction) or math.isfinite(fps)) or fps <= 0:
            raise ValueError(f"fps must be a positive finite number, got {fps!r}")
        # a Fraction so NTSC rates stay exact: 29.97002997… (30000/1001 as a float) becomes 30000/1001 again
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
        suffix = self.path.suffix.lower()
        self.codec = codec or _default_codec(av, suffix)
        self.frames_written = 0
        self._size: tuple[int, int] | None = None  # (height, width) of the frames given, before padding
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp{self.path.suffix}")
        try:
            self._container = av.open(os.path.abspath(self._tmp), mode="w")
        except ValueError as exc:  # "Could not determine output format"
            raise ValueError(f"cannot write video {self.path}: no container format for suffix "
                             f"{self.path.suffix or '(none)'!r}") from exc
        try:
            self._stream = self._container.add_stream(self.codec, rate=self.fps)
        except Exception as exc:  # unknown codec, or one the container does not admit
            self._container.close()
            raise ValueError(f"cannot write video {self.path}: {' '.join(str(exc).split())}") from exc
        self._stream.pix_fmt = "yuv420p"
        # tag what the frames are converted with (in write), so players and our reader undo exactly that
        ctx = self._stream.codec_context
        ctx.colorspace = ctx.color_primaries = ctx.color_trc = 1  # AVCOL_*_BT709
        ctx.color_range = 1  # AVCOL_RANGE_MPEG (limited)

    def write(self, frame: np.ndarray) -> None:
        """Append one ``[H,W,3]`` uint8 RGB frame; the first fixes the size, later ones must match (ValueError)."""
        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        arr = np.asarray(frame)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or not arr.size:
            raise ValueError(f"a video frame must be a non-empty [H,W,3] uint8 RGB array, got {arr.dtype} {arr.shape}")
        height, width = arr.shape[:2]
        if self._size is None:
            self._size = (height, width)
            self._stream.height, self._stream.width = height + height % 2, width + width % 2
        elif (height, width) != self._size:
            raise ValueError(f"frame of {width}x{height} differs from the video's {self._size[1]}x{self._size[0]} "
                             f"({self.path})")
        if height % 2 or width % 2:  # yuv420p subsamples chroma 2x2: replicate the last row/column to an even size
            arr = np.pad(arr, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        av = _import_av()
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        video_frame = video_frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
        video_frame.pts = self.frames_written  # in 1/fps, the stream's time base before the muxer picks its own
        try:
            self._container.mux(self._stream.encode(video_frame))
        except av.FFmpegError as exc:
            raise OSError(f"cannot write video {self.path}: {_describe(exc)}") from exc
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and rename it onto ``path`` (a second call does nothing)."""
        if self._closed:
            return
        if not self.frames_written:
            self.abort()
            raise ValueError(f"no frame was written to {self.path}; nothing saved")
        av = _import_av()
        try:
            self._container.mux(self._stream.encode(None))  # None drains the frames the encoder still holds
            self._container.close()
            os.replace(self._tmp, self.path)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, av.FFmpegError):
                raise OSError(f"cannot write video {self.path}: {_describe(exc)}") from exc
            raise
        self._closed = True

    def abort(self) -> None:
        """Stop without saving: the temporary file is deleted, ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the container may be half-started; the file is what must go
            self._container.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two ``[H,W,3]`` uint8 images of the same height next to each other: ``[H, W1+W2, 3]``."""
    for name, img in (("left", left), ("right", right)):
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            shape = getattr(img, "shape", None)
            raise ValueError(f"{name} must be an [H,W,3] uint8 array, got {getattr(img, 'dtype', type(img))} {shape}")
    if left.shape[0] != right.shape[0]:
        raise ValueError(f"side_by_side needs equal heights, got {left.shape[0]} and {right.shape[0]}")
    return np.concatenate([left, right], axis=1)
