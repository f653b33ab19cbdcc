"""Procedural RGB-D video: determinism, splits, smooth safe camera paths, poses consistent with the depth."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import agdepth.data.procedural_video as pv
from agdepth.data.procedural import (
    DOMAINS,
    EVAL_DOMAINS,
    SKY_DEPTH,
    Camera,
    Layout,
    Light,
    _Builder,
    _finish,
    render_geometry,
    render_scene,
    sample_layout,
    scene_seed,
)
from agdepth.data.procedural_video import (
    MAX_TRAVEL,
    MIN_VALID,
    SceneSequence,
    render_sequence,
    render_sequences,
)
from agdepth.metrics import temporal_change

SIZE = (48, 64)  # non-square on purpose: catches H/W mix-ups
FRAMES = 12
MOTION_DOMAINS = (*EVAL_DOMAINS, "indoor", "street")


@functools.cache
def _seq(domain: str, index: int, split: str = "test") -> SceneSequence:
    return render_sequence(domain, index, FRAMES, SIZE, split)


def test_shapes_dtypes_and_metadata() -> None:
    s = _seq("forest", 0)
    t, (h, w) = FRAMES, SIZE
    assert len(s) == t and s.rgb.shape == (t, h, w, 3) and s.rgb.dtype == np.uint8
    assert s.depth.shape == s.valid.shape == (t, h, w) and s.depth.dtype == np.float32 and s.valid.dtype == bool
    assert s.poses.shape == (t, 4, 4) and s.poses.dtype == np.float64
    np.testing.assert_array_equal(s.poses[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (t, 1)))
    rot = s.poses[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.tile(np.eye(3), (t, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0)
    assert s.intrinsics.shape == (3, 3) and s.intrinsics.dtype == np.float32
    assert (s.fps, s.domain, s.index, s.split, s.seed) == (12.0, "forest", 0, "test", scene_seed("test", 0))
    sky = ~s.valid & (s.depth == np.float32(SKY_DEPTH))
    assert sky.any() and np.all(s.depth > 0) and np.isfinite(s.depth).all()


def test_deterministic_and_index_dependent() -> None:
    a, b = render_sequence("tabletop", 3, 5, SIZE), render_sequence("tabletop", 3, 5, SIZE)
    for name in ("rgb", "depth", "valid", "poses", "intrinsics"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes(), name
    c = render_sequence("tabletop", 4, 5, SIZE)
    assert not np.array_equal(a.depth, c.depth) and not np.array_equal(a.poses, c.poses)


def test_splits_are_disjoint() -> None:
    tr, te = render_sequence("indoor", 1, 3, SIZE, "train"), _seq("indoor", 1)
    assert tr.seed == scene_seed("train", 1) != te.seed == scene_seed("test", 1)
    assert not np.array_equal(tr.depth, te.depth) and not np.array_equal(tr.poses[-1], te.poses[-1])
    with pytest.raises(ValueError):
        render_sequence("indoor", 0, 2, SIZE, "holdout")


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_first_frame_is_render_scene(domain: str) -> None:
    ref = render_scene(domain, 2, SIZE, "test")
    for s in (render_sequence(domain, 2, 1, SIZE, "test"), render_sequence(domain, 2, 3, SIZE, "test")):
        assert s.rgb[0].tobytes() == ref.rgb.tobytes() and s.depth[0].tobytes() == ref.depth.tobytes()
        assert np.array_equal(s.valid[0], ref.valid) and np.array_equal(s.intrinsics, ref.intrinsics)
        assert s.seed == ref.seed
    lay, flip = sample_layout(domain, ref.seed), np.diag([1.0, -1.0, 1.0])
    np.testing.assert_array_equal(s.poses[0, :3, 3], flip @ lay.camera.position)
    np.testing.assert_allclose(flip @ s.poses[0, :3, :3] @ flip, lay.camera.rotation(), atol=1e-15)
    unlit = render_sequence(domain, 2, 1, SIZE, "test", shadows=False)
    assert unlit.rgb[0].tobytes() == render_scene(domain, 2, SIZE, "test", shadows=False).rgb.tobytes()


def test_sensor_noise_is_fresh_per_frame_and_gain_shared() -> None:
    seed = scene_seed("test", 0)
    lay = sample_layout("indoor", seed)
    out = render_geometry(lay.geo, lay.camera, SIZE, lay.light)
    frames = [_finish(out, "indoor", seed, SIZE, frame=k) for k in range(3)]
    assert _finish(out, "indoor", seed, SIZE, frame=1)[0].tobytes() == frames[1][0].tobytes()
    for rgb, depth, valid in frames[1:]:
        assert np.array_equal(depth, frames[0][1]) and np.array_equal(valid, frames[0][2])
        diff = rgb.astype(np.float64) - frames[0][0]
        assert np.abs(diff).max() > 0  # new noise ...
        assert abs(diff.mean()) < 0.5 and np.abs(diff).mean() < 10  # ... but the same gain and noise level


@pytest.mark.parametrize("domain", MOTION_DOMAINS)
def test_smooth_motion_with_a_few_percent_depth_change(domain: str) -> None:
    changes = []
    for i in range(3):
        s = _seq(domain, i)
        step = np.linalg.norm(np.diff(s.poses[:, :3, 3], axis=0), axis=1)
        rel = s.poses[:-1, :3, :3].transpose(0, 2, 1) @ s.poses[1:, :3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        near = np.percentile(s.depth[0][s.valid[0]], 5)
        assert angle.max() < 0.6 and step.max() < 0.1 * near  # < 0.6 deg and < 10 % of the near depth per frame
        # smooth: velocity changes little from frame to frame
        assert np.abs(np.diff(s.poses[:, :3, 3], 2, axis=0)).max() < 0.25 * max(step.max(), 1e-9)
        travel = np.linalg.norm(s.poses[:, :3, 3] - s.poses[0, :3, 3], axis=1)
        assert travel.max() <= MAX_TRAVEL * near * (1 + 1e-9)
        changes.append(temporal_change(s.depth, s.valid))
    assert 0.003 < np.mean(changes) < 0.05, changes


@pytest.mark.parametrize("domain", MOTION_DOMAINS)
def test_frames_keep_valid_pixels(domain: str) -> None:
    for i in range(3):
        s = _seq(domain, i)
        frac = s.valid.mean((1, 2))
        assert frac.min() >= min(MIN_VALID, 0.9 * frac[0]), frac
        if frac[0] >= MIN_VALID / 0.9:
            assert frac.min() >= MIN_VALID


def _reprojection_error(s: SceneSequence, a: int, b: int) -> np.ndarray:
    """Relative depth error of frame a's valid pixels moved into frame b with the poses (bilinear lookup)."""
    h, w = SIZE
    k = s.intrinsics.astype(np.float64)
    ii, jj = np.nonzero(s.valid[a])
    pc = np.linalg.inv(k) @ np.stack([jj + 0.5, ii + 0.5, np.ones(len(ii))]) * s.depth[a][ii, jj]
    world = s.poses[a, :3, :3] @ pc + s.poses[a, :3, 3:]
    inv = np.linalg.inv(s.poses[b])
    q = inv[:3, :3] @ world + inv[:3, 3:]
    u, v = (k @ q)[:2] / q[2] - 0.5
    j0, i0 = np.floor(u).astype(int), np.floor(v).astype(int)
    ok = (j0 >= 0) & (j0 < w - 1) & (i0 >= 0) & (i0 < h - 1) & (q[2] > 0)
    fu, fv, j0, i0, z = u[ok] - j0[ok], v[ok] - i0[ok], j0[ok], i0[ok], q[2][ok]
    d = s.depth[b]
    look = (d[i0, j0] * (1 - fu) * (1 - fv) + d[i0, j0 + 1] * fu * (1 - fv) + d[i0 + 1, j0] * (1 - fu) * fv
            + d[i0 + 1, j0 + 1] * fu * fv)
    return np.abs(look - z) / z


@pytest.mark.parametrize("domain", ["tabletop", "indoor"])
def test_poses_and_intrinsics_agree_with_the_depth(domain: str) -> None:
    s = _seq(domain, 1)
    for a, b in ((0, 1), (0, FRAMES - 1)):
        err = _reprojection_error(s, a, b)
        assert np.median(err) < 1e-3 and np.mean(err < 0.01) > 0.8


def test_render_sequences_and_argument_checks() -> None:
    seqs = list(render_sequences("street", 2, 2, SIZE, "val", 6.0, start=5))
    assert [(s.index, s.split, s.fps, len(s)) for s in seqs] == [(5, "val", 6.0, 2), (6, "val", 6.0, 2)]
    assert seqs[1].depth.tobytes() == render_sequence("street", 6, 2, SIZE, "val", 6.0).depth.tobytes()
    with pytest.raises(ValueError, match="domain"):
        next(render_sequences("moon_base", 1))
    with pytest.raises(ValueError, match="frames"):
        render_sequence("street", 0, 0, SIZE)
    with pytest.raises(ValueError, match="fps"):
        render_sequence("street", 0, 2, SIZE, fps=0.0)


def test_path_clearance_check() -> None:
    b = _Builder(np.random.default_rng(0), DOMAINS["indoor"])
    b.plane((0, 0, -1), -2.0, b.mat("wall", 1.0))  # wall z = 2 in front of a camera at the origin looking along +z
    lay = Layout(b.build(), Camera(np.zeros(3), 0.0, 0.0, 0.0, np.deg2rad(60)), Light(np.array([0.0, 1.0, 0.0])))

    def path(*zs: float) -> list[Camera]:
        return [Camera(np.array([0.0, 0.0, z]), 0.0, 0.0, 0.0, 1.0) for z in zs]

    assert pv._path_is_clear(lay, path(0.0, 0.5, 1.0, 1.0, -3.0), margin=0.5)
    assert not pv._path_is_clear(lay, path(0.0, 1.0, 2.5), margin=0.0)  # through the wall
    assert not pv._path_is_clear(lay, path(0.0, 1.0, 1.6), margin=0.5)  # too close to it


def test_unsafe_paths_are_damped_then_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    motions: list[float] = []
    monkeypatch.setattr(pv, "_path_is_clear", lambda lay, cams, margin: motions.append(len(cams)) or False)
    s = pv.render_sequence("indoor", 0, 4, SIZE)
    assert len(motions) == len(pv._DAMPING) - 1  # every moving path refused, then the camera stays still
    np.testing.assert_array_equal(s.poses, np.repeat(s.poses[:1], 4, 0))
    assert all(np.array_equal(d, s.depth[0]) for d in s.depth) and not np.array_equal(s.rgb[1], s.rgb[0])
