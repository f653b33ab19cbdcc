"""Procedural RGB-D video: smooth camera paths through the procedural scenes, with per-frame ground truth.

A sequence is a pure function of ``(domain, split, index, frames, size, fps, shadows)``. The scene (geometry, light,
sky, fog) is exactly the one :func:`~agdepth.data.procedural.render_scene` renders for ``(domain, index, split)``,
and frame 0 *is* that render: ``render_sequence(d, i, 1, size, split).rgb[0] == render_scene(d, i, size,
split).rgb`` (same for depth and valid). Splits stay disjoint through :func:`scene_seed`.

Units: depth in metres (planar z, sky = :data:`SKY_DEPTH` and invalid, like ``render_scene``); poses in metres
(camera-to-world, OpenCV axes, see :class:`SceneSequence`); ``fps`` in frames per second, frame ``k`` is at time
``k / fps`` seconds. The camera path is defined in seconds (speeds in m/s and deg/s), so a higher ``fps`` samples
the same motion more densely and the per-frame change shrinks accordingly.

Camera path (its random draws come from the stream ``default_rng([crc32(domain), seed, 2])``, so the layout
sampling and the render_scene frame are untouched):

* translation, in the axes of the first camera: a dolly along the optical axis at constant speed, a sideways drift
  (≤ 0.3 of the speed) plus a gentle sinusoid, and a small vertical bob. The nominal speed comes from the scene's
  own depth scale: 1.2 % (× 0.8–1.25) of the harmonic mean of frame 0's valid depth per 1/12 s;
* the whole path is then shrunk to stay within :data:`MAX_TRAVEL` (30 %) of the 5th percentile of frame 0's valid
  depth from the start — the camera never gets near what it sees. This cap binds for most clips longer than ~1 s
  (the default 24 frames at 12 fps), so long clips move slower;
* rotation: a slow yaw pan (1–3 deg/s) plus a sinusoid of ≤ 1 deg, and a bounded pitch sinusoid within 2 deg
  (tilting down, never up, when frame 0 shows sky); roll and field of view stay fixed.

Measured at 96x128, 24 frames, 12 fps (scenes 0–23 of the test split), the mean relative change of ground-truth
depth between consecutive frames (``agdepth.metrics.temporal_change``) is about 0.8 % (forest), 1.5 % (tabletop),
0.8 % (indoor), 0.8 % (street); ``shapes`` varies most (median 2.8 %, but up to
~100 % when a near object's edge sweeps across a backdrop 100× farther: the statistic is dominated by such edges).

Safety checks, in order of decreasing motion (the path is damped to 1/2, 1/4, then frozen, until both hold): no
path segment, extended by 10 % of that depth percentile, crosses any geometry, and every frame keeps at least
``min(MIN_VALID, 0.9 × valid fraction of frame 0)`` valid pixels. Frame 0 itself can have fewer than 50 % valid
pixels (forest scenes looking up at the sky): the path cannot change that.

Camera effects: gain and vignetting (and the noise level) are the scene's, shared by all frames; sensor noise is
drawn afresh for every frame from a deterministic per-frame stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from agdepth.data.procedural import (
    DOMAINS,
    SKY_DEPTH,
    Camera,
    Layout,
    _finish,
    _intersect,
    render_geometry,
    sample_layout,
    scene_seed,
)

__all__ = ["MAX_TRAVEL", "MIN_VALID", "SKY_DEPTH", "SceneSequence", "render_sequence", "render_sequences"]

MAX_TRAVEL = 0.3  # the path stays within this fraction of frame 0's 5th-percentile valid depth from its start
MIN_VALID = 0.5  # every frame keeps at least min(MIN_VALID, _VALID_SLACK * frame 0's valid fraction) valid pixels
_VALID_SLACK = 0.9
_REL_RATE = 0.012  # nominal dolly per frame at 12 fps, as a fraction of the harmonic-mean depth of frame 0
_REF_FPS = 12.0
_DAMPING = (1.0, 0.5, 0.25, 0.0)  # motion scales tried in turn until the safety checks pass
# OpenCV axes (x right, y down, z forward) from the generator's (x right, y up, z forward), for cameras and world
_FLIP_Y = np.diag([1.0, -1.0, 1.0])


@dataclass
class SceneSequence:
    """A rendered camera path with ground truth (see the module docstring for units and conventions).

    ``poses[k]`` maps OpenCV camera coordinates of frame k (x right, y down, z forward; metres) to world
    coordinates, a proper rigid transform (det R = +1). The world frame is the scene's (``sample_layout``) with y
    negated so it is right-handed like the cameras: x, −y (y points down, along gravity), z; a level camera with
    zero yaw has R = I, and ``poses[0]`` is ``render_scene``'s camera. Pixel (row i, column j) sees the ray
    ``K⁻¹ [j + 0.5, i + 0.5, 1]`` with ``K = intrinsics``; its z component is 1, so ``depth[k, i, j]`` times that
    ray is the surface point in camera k's coordinates.
    """

    rgb: np.ndarray  # uint8 [T, H, W, 3]
    depth: np.ndarray  # float32 [T, H, W] planar depth in metres; sky = SKY_DEPTH (invalid)
    valid: np.ndarray  # bool [T, H, W]: surface hit within the domain's depth range
    poses: np.ndarray  # float64 [T, 4, 4] camera-to-world, OpenCV camera axes
    intrinsics: np.ndarray  # float32 [3, 3] pinhole K in pixels, shared by all frames
    fps: float  # frames per second: frame k is at time k / fps seconds
    domain: str
    seed: int  # scene_seed(split, index)
    index: int
    split: str

    def __len__(self) -> int:
        return len(self.rgb)


@dataclass
class _Path:
    """Smooth camera motion relative to the first camera; functions of time in seconds."""

    speed: float  # m/s along the first camera's optical axis (before the travel cap)
    drift: float  # sideways velocity / speed
    lat_amp: float  # sideways sinusoid amplitude, seconds of travel at ``speed``
    lat_period: float
    lat_phase: float
    bob_amp: float  # vertical sinusoid amplitude, seconds of travel at ``speed``
    bob_period: float
    bob_phase: float
    yaw_rate: float  # rad/s
    yaw_amp: float  # rad
    yaw_period: float
    yaw_phase: float
    pitch_amp: float  # rad
    pitch_period: float
    pitch_phase: float
    tilt_down: bool  # frame 0 shows sky: pitch only ever tilts down

    @staticmethod
    def _wave(t: np.ndarray, amp: float, period: float, phase: float) -> np.ndarray:
        return amp * (np.sin(2 * np.pi * t / period + phase) - np.sin(phase))  # 0 at t = 0

    def offsets(self, t: np.ndarray) -> np.ndarray:
        """[T, 3] displacement (m) in the first camera's (right, up, forward) axes at times t (s)."""
        lateral = self.drift * t + self._wave(t, self.lat_amp, self.lat_period, self.lat_phase)
        bob = self._wave(t, self.bob_amp, self.bob_period, self.bob_phase)
        return self.speed * np.stack([lateral, bob, t], 1)

    def angles(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(yaw, pitch) offsets in radians at times t (s)."""
        yaw = self.yaw_rate * t + self._wave(t, self.yaw_amp, self.yaw_period, self.yaw_phase)
        if self.tilt_down:
            pitch = -self.pitch_amp * (1 - np.cos(2 * np.pi * t / self.pitch_period)) / 2
        else:
            pitch = self._wave(t, self.pitch_amp / 2, self.pitch_period, self.pitch_phase)
        return yaw, pitch


def _sample_path(domain: str, seed: int, harmonic_depth: float, sky: bool) -> _Path:
    rng = np.random.default_rng([zlib.crc32(domain.encode()), seed, 2])
    rad = np.deg2rad
    return _Path(
        speed=_REL_RATE * _REF_FPS * harmonic_depth * rng.uniform(0.8, 1.25),
        drift=rng.uniform(-0.3, 0.3), lat_amp=rng.uniform(0.05, 0.2), lat_period=rng.uniform(1.5, 4.0),
        lat_phase=rng.uniform(0, 2 * np.pi), bob_amp=rng.uniform(0.01, 0.05), bob_period=rng.uniform(0.8, 2.0),
        bob_phase=rng.uniform(0, 2 * np.pi),
        yaw_rate=rad(rng.uniform(1.0, 3.0)) * rng.choice([-1.0, 1.0]), yaw_amp=rad(rng.uniform(0.2, 1.0)),
        yaw_period=rng.uniform(2.0, 5.0), yaw_phase=rng.uniform(0, 2 * np.pi),
        pitch_amp=rad(rng.uniform(0.5, 2.0)), pitch_period=rng.uniform(2.0, 5.0),
        pitch_phase=rng.uniform(0, 2 * np.pi), tilt_down=sky,
    )


def _cameras(first: Camera, path: _Path, times: np.ndarray, travel_cap: float, motion: float) -> list[Camera]:
    off = path.offsets(times)
    reach = float(np.linalg.norm(off, axis=1).max())
    scale = motion * min(1.0, travel_cap / reach) if reach > 0 else 0.0
    pos = first.position + (scale * off) @ first.rotation().T  # camera axes -> world
    yaw, pitch = (motion * a for a in path.angles(times))
    cams = [first]
    for k in range(1, len(times)):
        cams.append(replace(first, position=pos[k], yaw=first.yaw + float(yaw[k]), pitch=first.pitch + float(pitch[k])))
    return cams


def _path_is_clear(lay: Layout, cams: list[Camera], margin: float) -> bool:
    """No straight segment between consecutive camera centres (extended by margin) crosses geometry."""
    for a, b in zip(cams[:-1], cams[1:], strict=True):
        seg = np.asarray(b.position - a.position, np.float64)
        length = float(np.linalg.norm(seg))
        if length == 0:
            continue
        o = np.asarray(a.position, np.float32)[None]
        d = (seg / length).astype(np.float32)[None]
        if float(_intersect(lay.geo, o, d).min()) <= length + margin:
            return False
    return True


def _pose(cam: Camera) -> np.ndarray:
    """Camera-to-world in OpenCV axes on both sides (right-handed, y down): det(R) = +1."""
    pose = np.eye(4)
    pose[:3, :3] = _FLIP_Y @ cam.rotation() @ _FLIP_Y
    pose[:3, 3] = _FLIP_Y @ cam.position
    return pose


def render_sequence(domain: str, index: int, frames: int = 24, size: tuple[int, int] = (96, 128),
                    split: str = "test", fps: float = 12.0, *, shadows: bool = True) -> SceneSequence:
    """Render ``frames`` frames (at ``fps`` frames per second) of a smooth camera path through scene ``index`` of
    ``domain``/``split`` at size (H, W); a deterministic function of its arguments. Frame 0 equals
    ``render_scene(domain, index, size, split, shadows=shadows)``. See the module docstring for the path."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    size = (int(size[0]), int(size[1]))
    seed = scene_seed(split, index)  # validates split and index
    lay = sample_layout(domain, seed)  # validates domain
    render_args = {"shadows": shadows, "sky": lay.sky, "fog": lay.fog}
    first = render_geometry(lay.geo, lay.camera, size, lay.light, **render_args)
    rgb0, depth0, valid0 = _finish(first, domain, seed, size)
    out = [(rgb0, depth0, valid0)]
    cams = [lay.camera]
    if frames > 1:
        z = depth0[valid0] if valid0.any() else first.depth[first.hit]
        if z.size:
            near, harmonic = float(np.percentile(z, 5)), float(1.0 / np.mean(1.0 / z))
        else:  # nothing in view: turn on the spot
            near = harmonic = 0.0
        path = _sample_path(domain, seed, harmonic, bool((~first.hit).any()))
        times = np.arange(frames) / float(fps)
        need = min(MIN_VALID, _VALID_SLACK * float(valid0.mean()))
        for motion in _DAMPING:
            cams = _cameras(lay.camera, path, times, MAX_TRAVEL * near, motion)
            if motion and not _path_is_clear(lay, cams, 0.1 * near):
                continue
            out = out[:1]
            for k, cam in enumerate(cams[1:], 1):
                rgb, depth, valid = _finish(render_geometry(lay.geo, cam, size, lay.light, **render_args),
                                            domain, seed, size, frame=k)
                if motion and valid.mean() < need:
                    break
                out.append((rgb, depth, valid))
            if len(out) == frames:
                break
    rgb, depth, valid = (np.stack(a) for a in zip(*out, strict=True))
    return SceneSequence(rgb, depth, valid, np.stack([_pose(c) for c in cams]), lay.camera.intrinsics(size),
                         float(fps), domain, seed, int(index), split)


def render_sequences(domain: str, count: int, frames: int = 24, size: tuple[int, int] = (96, 128),
                     split: str = "test", fps: float = 12.0, *, start: int = 0,
                     shadows: bool = True) -> Iterator[SceneSequence]:
    """Yield ``render_sequence(domain, i, frames, size, split, fps)`` for scene indices ``start .. start+count-1``
    (lazily: one sequence in memory at a time). Units as in :func:`render_sequence`: metres, frames per second."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    for i in range(start, start + count):
        yield render_sequence(domain, i, frames, size, split, fps, shadows=shadows)
