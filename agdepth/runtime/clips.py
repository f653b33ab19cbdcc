"""``depth-run`` on videos: a video file, or with ``--video`` a folder of frames, through one :class:`DepthStream`.

Outputs of clip ``NAME`` (a file's stem, or a folder's name): ``OUT/NAME/<frame>_depth.png`` (16-bit) and
``OUT/NAME/<frame>_depth.npy`` per frame (``<frame>`` = the frame's index in the clip, six digits), as ``--formats``
asks, and with ``color`` the coloured depth video ``OUT/NAME_depth.mp4`` (``--side-by-side``: the input on the
left). The depth is the stream's (one frame of reference for the clip: the first frame's [0, 1] range): the npy
files hold it as it is, the 16-bit PNGs and the video clipped to [0, 1].

Every file is written whole or not at all (per-frame files atomically on the writer pool, the video through a
temporary file renamed on close). A clip that cannot be read to its end is one error line naming the file and the
frame; the frames before it keep their outputs and the video is closed on them. A clip is always predicted whole (the
stream carries state from frame to frame), so existing outputs of a clip are refused without ``--overwrite``; with
it, once the clip has a new frame, the earlier run's frame files this run does not rewrite are removed (they belong to
another frame of reference), and a clip that fails before its first frame keeps its earlier outputs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from agdepth.imageio import colorize_depth, write_depth_png16, write_npy
from agdepth.runtime.stream import DepthStream
from agdepth.runtime.writer import BackgroundWriter, OutputWriteError, default_writers
from agdepth.videoio import (
    VIDEO_SUFFIXES,
    VideoReadError,
    VideoWriter,
    iter_frame_folder,
    iter_video_frames,
    list_frame_files,
    probe_video,
)
from agdepth.videoio import side_by_side as side_by_side_frames

FRAME_FORMATS = {"png16": "_depth.png", "npy": "_depth.npy"}
VIDEO_OUTPUT_SUFFIX = "_depth.mp4"
FOLDER_FPS = 30.0  # frames per second of the coloured video of a frames folder, unless --fps says otherwise


@dataclass
class Clip:
    source: Path
    is_folder: bool
    frames_dir: Path  # per-frame outputs
    video: Path | None  # the coloured depth video, or None without the color format
    earlier: list[Path] = field(default_factory=list)  # per-frame outputs of an earlier run (--overwrite)


def is_clip(path: str | Path, folders_are_clips: bool) -> bool:
    """A video file (by suffix), or with ``folders_are_clips`` (``--video``) a folder."""
    p = Path(path)
    return p.suffix.lower() in VIDEO_SUFFIXES or (folders_are_clips and p.is_dir())


def plan_clips(inputs: list[str], out: Path, formats: list[str], overwrite: bool) -> list[Clip]:
    """One :class:`Clip` per input, its outputs checked before any work: missing inputs, two clips with one name, an
    output that would replace an input, or existing outputs without ``overwrite`` raise ValueError /
    FileNotFoundError naming the files."""
    clips: list[Clip] = []
    names: dict[str, Path] = {}
    for raw in inputs:
        src = Path(os.path.abspath(raw))
        if not src.exists():
            raise FileNotFoundError(f"input path does not exist: {raw!r}")
        if src.is_dir():
            list_frame_files(src)  # a folder without frames is refused now, not after the other clips ran
        name = src.name if src.is_dir() else src.stem
        if name in names:
            raise ValueError(f"inputs {names[name]} and {src} would both be written as {out / name}: rename one")
        names[name] = src
        clip = Clip(src, src.is_dir(), out / name, out / f"{name}{VIDEO_OUTPUT_SUFFIX}" if "color" in formats else None)
        if Path(os.path.abspath(clip.frames_dir)) == src or (clip.video and Path(os.path.abspath(clip.video)) == src):
            raise ValueError(f"the outputs of {src} would replace it: choose another --out (inputs are never "
                             "overwritten)")
        existing = ([clip.video] if clip.video and clip.video.exists() else []) + (
            sorted(p for k in FRAME_FORMATS for p in clip.frames_dir.glob(f"*{FRAME_FORMATS[k]}"))
            if clip.frames_dir.is_dir() else [])
        if existing and not overwrite:
            raise ValueError(f"{len(existing)} output file(s) of {src} exist already, e.g. {existing[0]}: a clip is "
                             "predicted whole, pass --overwrite to redo it, or choose another --out")
        clip.earlier = [p for p in existing if p != clip.video]
        clips.append(clip)
    return clips


def _frames(clip: Clip, stride: int, max_frames: int | None) -> Iterator[tuple[int, np.ndarray]]:
    if clip.is_folder:
        for index, _, rgb in iter_frame_folder(clip.source, stride, max_frames):
            yield index, rgb
    else:
        yield from iter_video_frames(clip.source, stride, max_frames)


def _as_uint8(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.dtype == np.uint8 else (rgb >> 8).astype(np.uint8)


def _write_frame(paths: dict[str, Path], depth: np.ndarray) -> None:
    if "png16" in paths:
        write_depth_png16(paths["png16"], np.clip(depth, 0.0, 1.0))
    if "npy" in paths:
        write_npy(paths["npy"], depth)


def run_clips(stream: DepthStream, clips: list[Clip], formats: list[str], stride: int, max_frames: int | None,
              fps: float | None, side_by_side: bool) -> tuple[int, list[str]]:
    """Predict and write every clip; returns (frames done, failure lines). Raises OutputWriteError when an output
    cannot be written, and KeyboardInterrupt after the queued writes finished (the open video is dropped)."""
    done, failures = 0, []
    frame_kinds = [k for k in FRAME_FORMATS if k in formats]
    writer = BackgroundWriter(max_pending=2 * default_writers() + 2)
    try:
        for clip in clips:
            try:
                rate = fps or (FOLDER_FPS if clip.is_folder else probe_video(clip.source).fps or FOLDER_FPS)
                total = None if clip.is_folder else probe_video(clip.source).frames
            except VideoReadError as e:
                failures.append(str(e))
                tqdm.write(f"error: {e}", file=sys.stderr)
                continue
            if total is not None:
                total = -(-total // stride) if max_frames is None else min(max_frames, -(-total // stride))
            stream.reset()
            done_before, written = done, set()
            video = VideoWriter(clip.video, rate / stride) if clip.video else None
            bar = tqdm(total=total, desc=clip.source.name, unit="frame", dynamic_ncols=True)
            try:
                for index, rgb in _frames(clip, stride, max_frames):
                    result = stream.push(rgb)
                    if frame_kinds:
                        clip.frames_dir.mkdir(parents=True, exist_ok=True)
                        paths = {k: clip.frames_dir / f"{index:06d}{FRAME_FORMATS[k]}" for k in frame_kinds}
                        writer.submit_call(str(clip.source), _write_frame, paths, result.depth)
                        written.update(paths.values())
                    if video is not None:
                        color = colorize_depth(np.clip(result.depth, 0.0, 1.0))
                        video.write(side_by_side_frames(_as_uint8(rgb), color) if side_by_side else color)
                    done += 1
                    bar.update(1)
            except VideoReadError as e:  # the frames before it keep their outputs
                failures.append(str(e))
                tqdm.write(f"error: {e}", file=sys.stderr)
            except BaseException:
                if video is not None:
                    video.abort()
                raise
            finally:
                bar.close()
            if video is not None:
                if video.frames_written:
                    video.close()
                else:
                    video.abort()
            if done_before != done:  # the clip was redone: an earlier run's frames this run did not write go
                for old in clip.earlier:
                    if old not in written:
                        old.unlink(missing_ok=True)
        writer.close()
    except (OutputWriteError, KeyboardInterrupt):
        writer.abandon()
        raise
    return done, failures


__all__ = ["FRAME_FORMATS", "VIDEO_OUTPUT_SUFFIX", "Clip", "is_clip", "plan_clips", "run_clips"]
