"""Properties of the procedural RGB-D generator that training and evaluation rely on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agdepth.data.procedural import (
    DEPTH_RANGES,
    DOMAINS,
    EVAL_DOMAINS,
    SKY_DEPTH,
    TRAIN_DOMAINS,
    Camera,
    Light,
    ProceduralDataset,
    _Builder,
    camera_overrides,
    render_geometry,
    render_scene,
    sample_layout,
    scene_seed,
)

SIZE = (48, 64)  # non-square on purpose: catches H/W mix-ups


def _single(kind: str, *args: object) -> _Builder:
    b = _Builder(np.random.default_rng(0), DOMAINS["indoor"])
    getattr(b, kind)(*args, b.mat("wall", 1.0))
    return b


def _light() -> Light:
    return Light(np.array([0.0, 1.0, 0.0]))


def test_domains_declared() -> None:
    assert TRAIN_DOMAINS == ("indoor", "street", "shapes")
    assert len(EVAL_DOMAINS) >= 2 and not set(EVAL_DOMAINS) & set(TRAIN_DOMAINS)
    assert set(DOMAINS) == set(TRAIN_DOMAINS + EVAL_DOMAINS) == set(DEPTH_RANGES)
    with pytest.raises(ValueError, match="indoor"):
        render_scene("moon_base", 0)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_deterministic_and_index_dependent(domain: str) -> None:
    a, b, c = render_scene(domain, 5, SIZE), render_scene(domain, 5, SIZE), render_scene(domain, 6, SIZE)
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert np.array_equal(a.valid, b.valid) and a.seed == b.seed
    assert not np.array_equal(a.rgb, c.rgb) and not np.array_equal(a.depth, c.depth)


def test_splits_never_share_scenes() -> None:
    assert scene_seed("train", 2**30 - 1) < scene_seed("test", 0)
    seeds = {s: {scene_seed(s, i) for i in (0, 1, 2**30 - 1)} for s in ("train", "test", "val")}
    assert not (seeds["train"] & seeds["test"]) and not (seeds["train"] & seeds["val"])
    with pytest.raises(ValueError):
        scene_seed("train", 2**30)
    for domain in DOMAINS:
        tr, te = render_scene(domain, 3, SIZE, "train"), render_scene(domain, 3, SIZE, "test")
        assert tr.seed != te.seed and not np.array_equal(tr.depth, te.depth)


def test_depth_is_planar_z_for_a_fronto_parallel_plane() -> None:
    # A rotated camera facing a plane perpendicular to its optical axis sees constant z, while ray length varies.
    cam = Camera(np.array([0.3, 1.2, -0.7]), yaw=0.4, pitch=-0.25, roll=0.1, hfov=np.deg2rad(80))
    fwd = cam.rotation()[:, 2]
    dist = 3.7
    b = _single("plane", -fwd, -(fwd @ cam.position + dist))
    out = render_geometry(b.build(), cam, SIZE, _light())
    assert out.hit.all()
    np.testing.assert_allclose(out.depth, dist, rtol=1e-4)


def test_floor_depth_matches_pinhole_formula() -> None:
    h, w = SIZE
    cam = Camera(np.array([1.0, 1.5, 2.0]), yaw=1.1, pitch=0.0, roll=0.0, hfov=np.deg2rad(60))
    out = render_geometry(_single("plane", (0, 1, 0), 0.0).build(), cam, SIZE, _light())
    f = cam.intrinsics(SIZE)[0, 0]
    rows = np.arange(h // 2, h)
    expected = 1.5 * f / (rows + 0.5 - h / 2)
    np.testing.assert_allclose(out.depth[rows], np.repeat(expected[:, None], w, 1), rtol=1e-4)
    assert not out.hit[: h // 2].any()  # rays at or above the horizon never reach the floor


@pytest.mark.parametrize(("kind", "args", "near"), [
    ("box", ((-1, -1, 3.0), (1, 1, 5)), 3.0),
    ("sphere", ((0, 0, 5.0), 1.0), 4.0),
    ("cylinder", (0.0, 5.0, 0.5, -2.0, 2.0), 4.5),
])
def test_primitive_depth_on_the_optical_axis(kind: str, args: tuple, near: float) -> None:
    cam = Camera(np.zeros(3), 0.0, 0.0, 0.0, np.deg2rad(40))
    out = render_geometry(_single(kind, *args).build(), cam, (33, 33), _light())
    assert out.depth[16, 16] == pytest.approx(near, rel=1e-5)
    assert not out.hit[0, 0]


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_valid_mask_and_depth_range(domain: str) -> None:
    lo, hi = DEPTH_RANGES[domain]
    for i in range(6):
        s = render_scene(domain, i, SIZE)
        lay = sample_layout(domain, s.seed)
        hit = render_geometry(lay.geo, lay.camera, SIZE, lay.light).hit
        d = s.depth[s.valid]
        assert s.depth.dtype == np.float32 and s.valid.dtype == np.bool_ and s.depth.shape == SIZE
        assert np.isfinite(s.depth).all() and (d >= lo).all() and (d <= hi).all() and (d > 0).all()
        assert (s.depth[~hit] == SKY_DEPTH).all() and not (s.valid & ~hit).any()  # sky / misses: invalid, far
        assert s.valid.mean() > 0.3


def test_street_sky_is_invalid() -> None:
    skies = []
    for i in range(8):
        s = render_scene("street", i, SIZE)
        top = s.valid[: SIZE[0] // 4]
        skies.append(1 - top.mean())
        assert (s.depth[: SIZE[0] // 4][~top] > DEPTH_RANGES["street"][1]).all()  # sky or beyond range: far
        # ground rows near the bottom are always valid (the camera stands on the road)
        assert s.valid[-1].all()
    assert np.mean(skies) > 0.2


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_rgb_textured_and_shadowed(domain: str) -> None:
    index = 1 if domain == "shapes" else 2  # floating shapes often cast their shadows out of view (scene 2: 0.1 %)
    lit = render_scene(domain, index, SIZE)
    flat = render_scene(domain, index, SIZE, shadows=False)
    assert lit.rgb.shape == (*SIZE, 3) and lit.rgb.dtype == np.uint8
    assert lit.rgb.std() > 10 and len(np.unique(lit.rgb.reshape(-1, 3), axis=0)) > 200
    # shadows only remove light, with identical noise streams: never brighter, visibly darker somewhere
    assert (lit.rgb <= flat.rgb).all()
    assert ((flat.rgb.astype(int) - lit.rgb).max(-1) > 20).mean() > 0.01
    assert np.array_equal(lit.depth, flat.depth)


def test_dataset_sample_dict() -> None:
    ds = ProceduralDataset(["indoor", "street"], length=6, size=SIZE, split="test")
    assert len(ds) == 6
    for i in range(2):
        item = ds[i]
        assert set(item) == {"rgb", "depth", "valid", "name", "domain"}
        assert item["rgb"].shape == (3, *SIZE) and item["rgb"].dtype == torch.float32
        assert item["depth"].shape == (1, *SIZE) and item["depth"].dtype == torch.float32
        assert item["valid"].shape == (1, *SIZE) and item["valid"].dtype == torch.bool
        assert -1 <= item["rgb"].min() and item["rgb"].max() <= 1
        assert item["domain"] == ("indoor", "street")[i]
        assert item["name"] == f"{item['domain']}/test/{i // 2:06d}"
        s = render_scene(item["domain"], i // 2, SIZE, "test")
        assert np.array_equal(item["depth"][0].numpy(), s.depth)
    assert ProceduralDataset("forest", 3, size=SIZE, seed=1)[0]["name"] == f"forest/train/{2**20:06d}"
    with pytest.raises(IndexError):
        ds[6]
    with pytest.raises(ValueError):
        ProceduralDataset(["indoor", "mars"], 4)


def test_dataset_hflip_is_consistent_and_deterministic() -> None:
    plain = ProceduralDataset("indoor", 8, size=SIZE)
    flip = ProceduralDataset("indoor", 8, size=SIZE, hflip=True)
    flipped = 0
    for i in range(8):
        a, b = plain[i], flip[i]
        same = [torch.equal(a[k], b[k]) for k in ("rgb", "depth", "valid")]
        mirrored = [torch.equal(a[k].flip(-1), b[k]) for k in ("rgb", "depth", "valid")]
        assert all(same) or all(mirrored)
        flipped += not all(same)
        assert torch.equal(b["rgb"], flip[i]["rgb"])
    assert 0 < flipped < 8


def test_unseen_domains_differ_from_training() -> None:
    def stats(domain: str) -> tuple[float, float]:
        lays = [sample_layout(domain, scene_seed("test", i)) for i in range(30)]
        scenes = [render_scene(domain, i, (24, 32), "test") for i in range(10)]
        depth = [np.median(s.depth[s.valid]) for s in scenes]
        return np.rad2deg(np.mean([lay.camera.hfov for lay in lays])), float(np.median(depth))

    fov = {d: stats(d) for d in DOMAINS}
    layouts = ("indoor", "street")  # the scene-layout training domains; `shapes` spans every lens on purpose
    assert fov["forest"][0] > max(fov[d][0] for d in layouts) + 5  # wider lenses
    assert fov["tabletop"][0] < min(fov[d][0] for d in layouts) - 10  # narrow lenses
    assert fov["tabletop"][1] < 0.5 * min(fov[d][1] for d in TRAIN_DOMAINS)  # close-up scale
    train_tex = {t for d in TRAIN_DOMAINS for names, _, _ in DOMAINS[d].textures.values() for t in names}
    eval_tex = {t for d in EVAL_DOMAINS for names, _, _ in DOMAINS[d].textures.values() for t in names}
    assert not train_tex & eval_tex


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_scene_complexity_stays_bounded(domain: str) -> None:
    # Cost is linear in rays x primitives; keeping primitive counts small is what keeps the generator fast.
    counts = [len(sample_layout(domain, i).geo.materials) for i in range(50)]
    assert max(counts) <= 26 and min(counts) >= 3
    s = render_scene(domain, 0, (128, 128))
    assert s.rgb.shape == (128, 128, 3) and s.intrinsics is not None


def test_cached_dataset_equals_rendering_and_is_not_aliased() -> None:
    fresh = ProceduralDataset(["indoor", "street"], 4, size=SIZE, hflip=True, seed=3)
    cached = ProceduralDataset(["indoor", "street"], 4, size=SIZE, hflip=True, seed=3, cache=True)
    for i in range(4):
        a, b = fresh[i], cached[i]
        assert all(torch.equal(a[k], b[k]) for k in ("rgb", "depth", "valid"))
        b["depth"].zero_()  # a consumer writing into its sample must not change the cached scene
        assert torch.equal(cached[i]["depth"], a["depth"])


def test_camera_overrides_change_only_the_camera() -> None:
    steep = camera_overrides({"pitch_deg": [-60, -40]})
    pitches = [np.rad2deg(sample_layout("indoor", i, steep).camera.pitch) for i in range(20)]
    assert all(-60 <= p <= -40 for p in pitches)
    a, b = sample_layout("indoor", 7), sample_layout("indoor", 7, steep)
    assert np.array_equal(a.geo.boxes, b.geo.boxes) and np.array_equal(a.camera.position, b.camera.position)
    ds = ProceduralDataset(["indoor"], 2, size=SIZE, camera={"pitch_deg": [-60, -40]})
    assert np.array_equal(ds[1]["depth"][0].numpy(), render_scene("indoor", 1, SIZE, camera=steep).depth)
    with pytest.raises(ValueError, match="unknown camera field 'tilt'"):
        camera_overrides({"tilt": [0, 1]})
    with pytest.raises(ValueError, match="pitch_deg must be a range"):
        camera_overrides({"pitch_deg": [10, -10]})
