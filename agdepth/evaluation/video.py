"""Video depth benchmarks: rendered camera paths of the unseen procedural domains, and folder-of-frames datasets.

A sequence is scored as video-depth papers score it (:func:`agdepth.metrics.evaluate_sequence`): one least-squares
scale and shift for the whole sequence, the depth range's clip, per-frame metrics averaged over the frames, and the
temporal error between consecutive frames (which per-frame alignment would hide). Two ways to predict a clip:

* ``frames``: the image pipeline on each frame on its own, frame i with seed + i (what ``depth-run`` gives a folder
  of frames);
* ``stream``: :class:`agdepth.runtime.stream.DepthStream` (fixed noise, warm start, online alignment).

Folder-of-frames layout, for real video datasets converted to files: ``ROOT/<sequence>/rgb/<frame>.<image ext>`` and
``ROOT/<sequence>/depth/<frame>.npy`` (metres) or ``.png`` (16-bit, metres × ``depth_scale``), frames matched by
name stem, in natural name order; 0 or non-finite depth is invalid.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agdepth.data.procedural import DEPTH_RANGES, EVAL_DOMAINS
from agdepth.data.procedural_video import render_sequence
from agdepth.imageio import read_image
from agdepth.metrics import evaluate_sequence
from agdepth.runtime.pipeline import DepthPipeline
from agdepth.runtime.stream import DepthStream
from agdepth.videoio import list_frame_files, natural_key

VIDEO_DATASETS: dict[str, str] = {f"procedural-{d}-video": d for d in EVAL_DOMAINS}  # benchmark name -> domain
FRAME_FOLDERS = "frame-folders"  # a real dataset in the folder-of-frames layout
MODES = ("stream", "frames")


@dataclass
class VideoSequence:
    name: str
    rgb: list[np.ndarray]  # [H,W,3] uint8 (or uint16) frames
    depth: np.ndarray  # float32 [T,H,W] metres
    valid: np.ndarray  # bool [T,H,W]
    depth_range: tuple[float, float]


def procedural_sequences(domain: str, count: int, frames: int = 24, size: tuple[int, int] = (96, 128),
                         fps: float = 12.0) -> Iterator[VideoSequence]:
    """Test-split camera paths 0..count-1 of ``domain`` (:func:`agdepth.data.procedural_video.render_sequence`)."""
    for i in range(count):
        seq = render_sequence(domain, i, frames=frames, size=size, split="test", fps=fps)
        yield VideoSequence(f"{domain}-{i:03d}", list(seq.rgb), seq.depth, seq.valid, DEPTH_RANGES[domain])


def frame_folder_sequences(root: str | Path, depth_range: tuple[float, float],
                           depth_scale: float = 1000.0) -> Iterator[VideoSequence]:
    """The sequences of a folder-of-frames dataset (see the module docstring), in name order. Raises
    FileNotFoundError / ValueError naming the folder or file that does not fit the layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder")
    folders = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not folders:
        raise ValueError(f"{root}: no sequence folders (expected {root}/<sequence>/rgb and .../depth)")
    for folder in folders:
        rgb_files = list_frame_files(folder / "rgb")
        rgb, depth = [], []
        for f in rgb_files:
            d = next((c for c in (folder / "depth" / f"{f.stem}.npy", folder / "depth" / f"{f.stem}.png")
                      if c.is_file()), None)
            if d is None:
                raise ValueError(f"{f}: no depth frame {folder / 'depth' / f.stem}.npy or .png")
            img = read_image(f)
            gt = (np.load(d).astype(np.float32) if d.suffix == ".npy"
                  else np.asarray(Image.open(d), dtype=np.float32) / depth_scale)
            if gt.shape != img.shape[:2] or (rgb and img.shape != rgb[0].shape):
                raise ValueError(f"{d}: depth {gt.shape} and frame {img.shape[:2]} sizes differ from each other or "
                                 "from the sequence's first frame")
            rgb.append(img)
            depth.append(gt)
        stack = np.stack(depth)
        lo, hi = depth_range
        valid = np.isfinite(stack) & (stack >= lo) & (stack <= hi) & (stack > 0)
        yield VideoSequence(folder.name, rgb, stack, valid, depth_range)


def predict_clip(pipe: DepthPipeline, frames: list[np.ndarray], mode: str, *, steps: int | None = None,
                 processing_res: int | None = None, vae: str | None = None, seed: int = 0,
                 strength: float | None = None) -> tuple[list[np.ndarray], float]:
    """Depth of every frame of a clip in ``mode`` (:data:`MODES`) and the mean seconds per frame."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out: list[np.ndarray] = []
    t0 = time.perf_counter()
    if mode == "frames":
        for i, f in enumerate(frames):
            out.append(pipe(f, steps=steps, ensemble=1, processing_res=processing_res, vae=vae, seed=seed + i).depth[0])
    else:
        kwargs = {} if strength is None else {"strength": strength}
        stream = DepthStream(pipe, steps=steps, processing_res=processing_res, vae=vae, seed=seed, **kwargs)
        out = [stream.push(f).depth for f in frames]
    return out, (time.perf_counter() - t0) / len(frames)


def evaluate_clips(sequences: Iterator[VideoSequence] | list[VideoSequence],
                   predict: Callable[[list[np.ndarray]], tuple[list[np.ndarray], float]],
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-sequence :func:`agdepth.metrics.evaluate_sequence` (plus seconds per frame) and their mean."""
    rows = []
    for seq in sequences:
        preds, seconds = predict(seq.rgb)
        m = evaluate_sequence(preds, seq.depth, seq.valid, seq.depth_range)
        rows.append({"sequence": seq.name, "frames": len(seq.rgb), **m, "seconds_per_frame": seconds})
        if progress:
            progress(f"{seq.name}: abs_rel {m['abs_rel']:.4f}, temporal error {m['temporal_error']:.4f}")
    if not rows:
        raise ValueError("no sequences to evaluate")
    keys = [k for k in rows[0] if k not in ("sequence", "frames")]
    return {"per_sequence": rows, "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys}}


__all__ = ["FRAME_FOLDERS", "MODES", "VIDEO_DATASETS", "VideoSequence", "evaluate_clips", "frame_folder_sequences",
           "predict_clip", "procedural_sequences"]
