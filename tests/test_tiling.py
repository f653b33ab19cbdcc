"""Tiled high-resolution depth (agdepth.runtime.tiling): grid, blending weights, alignment, batching, the seam
measure, and the exported shape range. The bundled tiny model (processing resolution 64 px) on the CPU."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.networks import ShapeRange
from agdepth.runtime import DepthPipeline
from agdepth.runtime.tiling import (
    add_detail,
    align_tile,
    axis_weights,
    blend_weights,
    default_tile_side,
    gaussian_lowpass,
    plan_tiles,
    predict_tiled,
    seam_jump,
)


@pytest.fixture(scope="module")
def pipe() -> DepthPipeline:
    return DepthPipeline.from_checkpoint(default_checkpoint())


@pytest.fixture(scope="module")
def scene_rgb() -> np.ndarray:
    return render_scene("forest", 0, (200, 232), "val").rgb


def count_denoise(pipe: DepthPipeline, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every U-Net call, recorded by a wrapper on the backend's denoise."""
    calls: list[int] = []
    real = pipe.backend.denoise

    def wrapped(sample: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(int(sample.shape[0]))
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(pipe.backend, "denoise", wrapped)
    return calls


def coverage(grid: Any) -> np.ndarray:
    total = np.zeros((grid.height, grid.width))
    for (y0, y1, x0, x1), w in zip(grid.boxes, blend_weights(grid), strict=True):
        total[y0:y1, x0:x1] += w
    return total


# ------------------------------------------------------------------------------------------------ grid and weights


@pytest.mark.parametrize(("h", "w", "side", "overlap"), [
    (1024, 1024, 256, 0.5), (200, 232, 96, 0.25), (300, 170, 64, 0.0), (257, 513, 100, 0.7), (90, 90, 128, 0.25),
])
def test_grid_covers_and_weights_sum_to_one(h: int, w: int, side: int, overlap: float) -> None:
    grid = plan_tiles(h, w, side, overlap)
    assert grid.side == min(side, h, w)
    for starts, length in ((grid.ys, h), (grid.xs, w)):
        assert starts[0] == 0 and starts[-1] + grid.side == length
        gaps = np.diff(starts)
        assert np.all(gaps > 0) or len(starts) == 1
        if len(starts) > 1:  # overlap at least the requested fraction
            assert grid.side - gaps.max() >= math.floor(overlap * grid.side) - 1
    total = coverage(grid)
    assert np.allclose(total, 1.0, atol=1e-12)
    assert all(wt.min() >= 0 for wt in blend_weights(grid))


def test_axis_weights_ramp_smoothly() -> None:
    wts = axis_weights((0, 48, 96), 64, 160)
    assert np.allclose(wts[0][:48], 1.0) and wts[0][-1] < 0.01  # flat at the image border, ~0 at its inner edge
    assert wts[1][0] < 0.01 and wts[1][-1] < 0.01 and np.isclose(wts[1].max(), 1.0)
    # a raised cosine over 16 px: curvature at most (π/16)²/2 ≈ 0.019, no kink (a linear ramp's is 1/16)
    assert np.abs(np.diff(wts[0], 2)).max() < 0.02


def test_default_tile_rule() -> None:
    assert default_tile_side(1024, 1024, 64) == 320  # TILE_SCALE × processing resolution
    assert default_tile_side(200, 150, 64) == 150  # never larger than the shorter side
    assert default_tile_side(1000, 40, 64) == 40


def test_align_tile_recovers_affine_and_refuses_flat_tiles() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((32, 32))
    aligned, s, t, ok = align_tile((target - 0.3) / 2.5, target)
    assert ok and np.isclose(s, 2.5) and np.isclose(t, 0.3) and np.allclose(aligned, target)
    aligned, _, _, ok = align_tile(np.full((32, 32), 0.5), target)
    assert not ok and np.array_equal(aligned, target)  # a flat tile falls back to the global prediction


def test_gaussian_lowpass_keeps_planes_and_smooths_noise() -> None:
    yy, xx = np.mgrid[0:50, 0:70].astype(np.float64)
    for plane in (np.full((50, 70), 0.7), 0.3 + 0.01 * yy - 0.02 * xx):
        for sigma in (0.0, 2.5, 7.0, 500.0):  # 500: the kernel is truncated at the map's size
            out = gaussian_lowpass(plane, sigma)
            assert out.shape == plane.shape and np.allclose(out, plane, atol=1e-12)
    noise = np.random.default_rng(0).normal(size=(64, 80))
    smooth = gaussian_lowpass(noise, 4.0)
    assert smooth.std() < 0.2 * noise.std() and abs(smooth.mean() - noise.mean()) < 0.05
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        gaussian_lowpass(np.zeros((2, 3, 4)), 1.0)


def test_add_detail_adds_only_the_fine_band() -> None:
    rng = np.random.default_rng(2)
    glob = rng.random((40, 60))
    yy, xx = np.mgrid[0:40, 0:60].astype(np.float64)
    assert np.allclose(add_detail(glob, 2.0 - 0.05 * yy + 0.01 * xx, 6.0), glob, atol=1e-12)  # a plane adds nothing
    fine = np.where((xx // 2) % 2 == 0, 0.1, -0.1)  # a 4-px pattern, far finer than σ
    out = add_detail(glob, 0.5 + 0.02 * yy + fine, 6.0)
    assert np.abs((out - glob) - fine)[8:-8, 8:-8].max() < 0.02


# ------------------------------------------------------------------------------------------------ with the model


def test_output_shape_range_and_finite(pipe: DepthPipeline, scene_rgb: np.ndarray) -> None:
    depth, grid = predict_tiled(pipe, scene_rgb, tile=96, overlap=0.25, return_grid=True)
    assert depth.shape == scene_rgb.shape[:2] and depth.dtype == np.float32
    assert np.isfinite(depth).all()
    assert grid is not None and len(grid) > 1
    assert -0.25 < depth.min() and depth.max() < 1.25  # the global prediction's [0, 1] frame, tiles may overshoot
    again = predict_tiled(pipe, scene_rgb, tile=96, overlap=0.25)
    assert np.array_equal(depth, again)  # seeded: deterministic
    assert seam_jump(depth, grid)["border_samples"] > 0


def test_tiles_are_batched(pipe: DepthPipeline, scene_rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = plan_tiles(*scene_rgb.shape[:2], 96, 0.25)
    steps = pipe.check_settings()[0]
    calls = count_denoise(pipe, monkeypatch)
    predict_tiled(pipe, scene_rgb, tile=96, overlap=0.25, batch_size=8)
    n = len(grid)
    assert n > 8
    assert len(calls) == steps * (1 + math.ceil(n / 8))  # the global call, then the tiles 8 rows at a time
    assert sorted(calls[steps:], reverse=True)[0] == 8 and sum(calls[steps:]) == steps * n


def test_small_image_is_the_plain_prediction(pipe: DepthPipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = render_scene("tabletop", 1, (48, 64), "val").rgb  # longer edge = the processing resolution
    plain = pipe(rgb, latents=pipe.initial_latents(rgb, seed=3)).depth[0]
    calls = count_denoise(pipe, monkeypatch)
    depth, grid = predict_tiled(pipe, rgb, seed=3, return_grid=True)
    assert grid is None and len(calls) == pipe.check_settings()[0]  # one call: no tile
    assert np.array_equal(depth, plain)


def test_tiles_outside_the_exported_range_are_refused(pipe: DepthPipeline, scene_rgb: np.ndarray,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # an export taking at most 4 rows of 8..64 px: the global call fits, 8 tiles per call do not
    monkeypatch.setattr(pipe.backend, "_shapes", ShapeRange(1, 1, 4, 8, 64, 64))
    calls = count_denoise(pipe, monkeypatch)
    refused = r"tiling: .* tiles of 96x96 px .*outside the exported engines' range.*batch 8"
    with pytest.raises(ValueError, match=refused):
        predict_tiled(pipe, scene_rgb, tile=96, batch_size=8)
    assert calls == []  # refused before any network call
    depth = predict_tiled(pipe, scene_rgb, tile=96, batch_size=4)  # within the range: runs
    assert np.isfinite(depth).all() and max(calls) <= 4


# ------------------------------------------------------------------------------------------------ synthetic seams


def known_depth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A smooth map plus a fine texture (so the curvature statistics are not all ~0)."""
    return (0.4 + 0.25 * np.sin(3.0 * x) * np.cos(2.0 * y) + 0.2 * x * y
            + 0.002 * np.sin(0.9 * 400 * x) * np.sin(0.7 * 300 * y))


class AffineTilesPipe:
    """The real pipeline's settings and checks, but each image's prediction is the known function of the pixel
    coordinates the image carries (channel 0: y, channel 1: x), under a different affine per call position."""

    def __init__(self, pipe: DepthPipeline) -> None:
        self.real = pipe
        self.backend = pipe.backend
        self.rng = np.random.default_rng(0)
        self.affines: list[tuple[float, float]] = []

    def check_settings(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.check_settings(*args, **kwargs)

    def _padded_size(self, size: tuple[int, int], res: int) -> tuple[int, int]:
        return self.real._padded_size(size, res)

    def initial_latents(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.initial_latents(*args, **kwargs)

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        images = images if isinstance(images, list) else [images]
        out = []
        for img in images:
            s, t = (1.0, 0.0) if len(images) == 1 else (self.rng.uniform(0.3, 3.0), self.rng.uniform(-1, 1))
            self.affines.append((s, t))
            out.append((s * known_depth(img[..., 0], img[..., 1]) + t).astype(np.float32))
        return SimpleNamespace(depth=np.stack(out) if len({o.shape for o in out}) == 1 else out)


def coordinate_image(h: int, w: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return np.stack([yy, xx, np.zeros_like(xx)], axis=-1).astype(np.float64)


def test_blended_affine_tiles_have_no_seam(pipe: DepthPipeline) -> None:
    img = coordinate_image(300, 260)
    fake = AffineTilesPipe(pipe)
    depth, grid = predict_tiled(fake, img, tile=96, overlap=0.25, robust=False, lowpass=None, return_grid=True)
    truth = known_depth(img[..., 0], img[..., 1])
    assert grid is not None and len(grid) == len(fake.affines) - 1 > 4
    assert len({a for a in fake.affines[1:]}) == len(grid)  # a different affine per tile
    assert np.abs(depth - truth).max() < 1e-5  # the known function in the global frame
    seam = seam_jump(depth, grid)
    assert seam["ratio"] <= 1.02, seam  # the 99th percentiles: borders no rougher than inside
    own = seam_jump(truth, grid)  # the function's own curvature at those columns: nothing added by the tiling
    for k in ("border", "inside", "border_mean", "inside_mean"):
        assert math.isclose(seam[k], own[k], rel_tol=1e-3, abs_tol=1e-7), (k, seam, own)

    # the same tiles without alignment, pasted one over the other (naive stitching): a clear seam
    raw = np.zeros(img.shape[:2])
    tiles = fake([np.ascontiguousarray(img[y0:y1, x0:x1]) for y0, y1, x0, x1 in grid.boxes]).depth
    for (y0, y1, x0, x1), p in zip(grid.boxes, tiles, strict=True):
        raw[y0:y1, x0:x1] = p
    assert seam_jump(raw, grid)["ratio"] > 3
    assert seam_jump(raw, grid)["max_ratio"] > 1 >= seam["max_ratio"] - 0.02  # the largest jump: the seam's


def test_detail_split_keeps_the_global_frame(pipe: DepthPipeline) -> None:
    img = coordinate_image(300, 260)
    blended = predict_tiled(AffineTilesPipe(pipe), img, tile=96, overlap=0.25, robust=False, lowpass=None)
    depth, grid = predict_tiled(AffineTilesPipe(pipe), img, tile=96, overlap=0.25, robust=False, lowpass=2.0,
                                return_grid=True)
    glob = known_depth(img[..., 0], img[..., 1])  # the fake's global prediction (the single-image call)
    sigma = 2.0 * 300 / pipe.check_settings()[2]  # 2 global cells
    assert grid is not None and depth.dtype == np.float32 and depth.shape == (300, 260)
    np.testing.assert_allclose(depth, add_detail(glob, blended, sigma), atol=1e-5)
    # the layout is the global prediction's: the difference is only the tiles' fine band, small and zero-mean
    assert abs(float(np.mean(depth - glob))) < 1e-3 and np.abs(depth - glob).max() < 0.05


def test_seam_jump_flags_a_step() -> None:
    grid = plan_tiles(128, 128, 64, 0.0)
    rng = np.random.default_rng(1)
    depth = rng.normal(0, 0.01, (128, 128))
    assert seam_jump(depth, grid)["ratio"] < 1.2
    depth[:, 64:] += 0.5  # a step at the tile border x = 64
    assert seam_jump(depth, grid)["ratio"] > 5
    with pytest.raises(ValueError, match="does not match"):
        seam_jump(depth[:100], grid)
