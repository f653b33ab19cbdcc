"""Video-depth metrics: one scale/shift per sequence, temporal error and the ground truth's own change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agdepth.metrics import (
    METRIC_NAMES,
    align_sequence_least_squares,
    evaluate,
    evaluate_sequence,
    temporal_change,
    temporal_error,
)

NAN = float("nan")


def _lsq_case() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Two 2x2 frames whose valid pixels are x = [0, 1, 2, 3] -> y = [1, 3, 3, 5]: s = t = 1.2 by hand
    (mean x 1.5, mean y 3, cov 6, var 5). Frame 0's lower row is invalid through gt <= 0 and NaN, frame 1's by
    the mask; alone, frame 0 would fit exactly with s = 2, t = 1."""
    preds = [np.array([[0.0, 1.0], [9.0, 7.0]]), np.array([[2.0, 3.0], [5.0, 6.0]])]
    gts = [np.array([[1.0, 3.0], [-1.0, NAN]]), np.array([[3.0, 5.0], [7.0, 8.0]])]
    masks = [np.ones((2, 2), bool), np.array([[True, True], [False, False]])]
    return preds, gts, masks


def test_align_sequence_one_scale_and_shift_by_hand() -> None:
    preds, gts, masks = _lsq_case()
    aligned, s, t = align_sequence_least_squares(preds, gts, masks)
    assert s == pytest.approx(1.2) and t == pytest.approx(1.2)
    assert len(aligned) == 2 and all(a.dtype == np.float64 and a.shape == (2, 2) for a in aligned)
    np.testing.assert_allclose(aligned[0], [[1.2, 2.4], [12.0, 9.6]])  # every pixel, also the invalid ones
    np.testing.assert_allclose(aligned[1], [[3.6, 4.8], [7.2, 8.4]])
    # stacked arrays and torch tensors give the same fit
    stacked = torch.tensor(np.stack(preds)), np.stack(gts), torch.tensor(np.stack(masks))
    _, s2, t2 = align_sequence_least_squares(*stacked)
    assert (s2, t2) == pytest.approx((s, t))


def _temporal_case() -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    gts = [np.array([[1.0, 2.0], [4.0, 8.0]]), np.array([[2.0, 2.0], [4.0, 4.0]]), np.array([[2.0, 8.0], [4.0, 4.0]])]
    preds = [np.array([[1.0, 2.0], [4.0, 8.0]]), np.array([[1.0, 3.0], [4.0, 4.0]]), np.array([[2.0, 4.0], [5.0, 4.0]])]
    masks = [np.ones((2, 2), bool), np.array([[True, False], [True, True]]), np.ones((2, 2), bool)]
    return preds, gts, masks


def test_temporal_error_and_change_by_hand() -> None:
    preds, gts, masks = _temporal_case()
    # pair (0,1) on pixels (0,0),(1,0),(1,1): |dp - dg| / g1 = [|0-1|/2, 0, |-4+4|/4] -> 1/6
    # pair (1,2) on the same pixels:          [|1-0|/2, |1-0|/4, 0]                  -> 1/4
    assert temporal_error(preds, gts, masks) == pytest.approx((1 / 6 + 1 / 4) / 2)
    # |dg| / g_t: pair (0,1) [1/2, 0, 4/4] -> 1/2; pair (1,2) [0, 0, 0] -> 0
    assert temporal_change(gts, masks) == pytest.approx(0.25)
    # without the mask pixel (0,1) counts: pair (0,1) [1/2, 0, 0, 1] -> 3/8; pair (1,2) [0, 6/8, 0, 0] -> 3/16
    assert temporal_change(gts) == pytest.approx((3 / 8 + 3 / 16) / 2)
    # gt <= 0 / NaN are never valid, as in the per-image metrics
    gts_bad = [g.copy() for g in gts]
    gts_bad[1][0, 1] = NAN
    assert temporal_change(gts_bad) == pytest.approx(0.25)
    assert temporal_error(torch.tensor(np.stack(preds)), torch.tensor(np.stack(gts)), masks) == pytest.approx(5 / 24)


def test_evaluate_sequence_by_hand() -> None:
    preds, gts, masks = _lsq_case()
    out = evaluate_sequence(preds, gts, masks)
    assert set(out) == set(METRIC_NAMES) | {"temporal_error", "temporal_change", "scale", "shift"}
    assert all(isinstance(v, float) for v in out.values())
    assert (out["scale"], out["shift"]) == pytest.approx((1.2, 1.2))
    # aligned valid pixels: frame 0 [1.2, 2.4] vs [1, 3]; frame 1 [3.6, 4.8] vs [3, 5]
    assert out["abs_rel"] == pytest.approx(((0.2 + 0.2) / 2 + (0.2 + 0.04) / 2) / 2)
    assert out["rmse"] == pytest.approx(np.sqrt(0.2))
    assert out["sq_rel"] == pytest.approx(((0.04 / 1 + 0.36 / 3) / 2 + (0.36 / 3 + 0.04 / 5) / 2) / 2)
    # pair on pixels (0,0),(0,1): dp = [2.4, 2.4], dg = [2, 2], g1 = [3, 5]
    assert out["temporal_error"] == pytest.approx((0.4 / 3 + 0.4 / 5) / 2)
    assert out["temporal_change"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    # clipping to (1.5, 4.5): frame 0 [1.5, 2.4], frame 1 [3.6, 4.5]; the temporal error sees the clipped frames
    clipped = evaluate_sequence(preds, gts, masks, depth_range=(1.5, 4.5))
    assert clipped["abs_rel"] == pytest.approx(((0.5 + 0.2) / 2 + (0.2 + 0.1) / 2) / 2)
    assert clipped["temporal_error"] == pytest.approx((0.1 / 3 + 0.1 / 5) / 2)
    assert clipped["temporal_change"] == out["temporal_change"]


def _random_gts(frames: int = 4, shape: tuple[int, int] = (6, 7)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 10, shape)
    gts = np.stack([base * (1 + 0.03 * k) + rng.uniform(0, 0.2, shape) for k in range(frames)])
    return gts, rng.random(gts.shape) < 0.8


def test_one_affine_transform_for_the_sequence_is_perfect() -> None:
    gts, masks = _random_gts()
    preds = (gts - 0.5) / 3.0  # affine-invariant prediction: one scale and shift for the whole clip
    preds[~masks] = -7.0  # invalid pixels must not matter
    out = evaluate_sequence(preds, gts, masks)
    assert out["abs_rel"] < 1e-12 and out["temporal_error"] < 1e-12 and out["delta1"] == 1.0
    assert (out["scale"], out["shift"]) == pytest.approx((3.0, 0.5))
    assert out["temporal_change"] > 0.01


def test_per_frame_affine_transforms_are_penalised() -> None:
    gts, masks = _random_gts()
    scales, shifts = [1.0, 1.3, 0.8, 1.1], [0.0, -0.4, 0.9, 0.3]
    preds = np.stack([s * g + t for s, t, g in zip(scales, shifts, gts, strict=True)])
    # each frame alone aligns perfectly, so the per-image protocol cannot see the flicker ...
    assert max(evaluate(p, g, m)["abs_rel"] for p, g, m in zip(preds, gts, masks, strict=True)) < 1e-12
    # ... one alignment for the sequence does
    out = evaluate_sequence(preds, gts, masks)
    assert out["abs_rel"] > 0.01 and out["temporal_error"] > 0.01


def test_frozen_prediction_error_equals_the_true_change() -> None:
    gts, masks = _random_gts()
    frozen = np.repeat(gts[:1], len(gts), 0)
    assert temporal_error(frozen, gts, masks) == temporal_change(gts, masks) > 0
    out = evaluate_sequence(frozen * 2.0 + 1.0, gts, masks, depth_range=(0.5, 20.0))
    assert out["temporal_error"] == out["temporal_change"] == temporal_change(gts, masks)


def test_pairs_without_common_valid_pixels_are_skipped() -> None:
    gts, _ = _random_gts(3, (2, 2))
    masks = np.array([[[1, 1], [0, 0]], [[0, 0], [1, 1]], [[0, 0], [1, 1]]], bool)  # pair (0,1) shares nothing
    m = masks[1]
    assert temporal_change(gts, masks) == pytest.approx(np.mean(np.abs(gts[2] - gts[1])[m] / gts[2][m]))
    with pytest.raises(ValueError, match="no pair"):
        temporal_change(gts[:2], masks[:2])


def test_validation_errors() -> None:
    gts, masks = _random_gts(3)
    with pytest.raises(ValueError, match="length mismatch"):
        evaluate_sequence(gts[:2], gts)
    with pytest.raises(ValueError, match="length mismatch"):
        temporal_error(gts, gts, masks[:2])
    with pytest.raises(ValueError, match="at least 2 frames"):
        evaluate_sequence(gts[:1], gts[:1])
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_change(gts[:1])
    with pytest.raises(ValueError, match="one shape"):
        evaluate_sequence([gts[0], gts[1][:, :-1]], [gts[0], gts[1][:, :-1]])
    with pytest.raises(ValueError, match="shape mismatch"):
        align_sequence_least_squares([gts[0][:, :-1], gts[1]], list(gts[:2]))
    with pytest.raises(ValueError, match="depth_range"):
        evaluate_sequence(gts, gts, depth_range=(5.0, 1.0))
    with pytest.raises(ValueError, match="at least 2 valid pixels"):
        align_sequence_least_squares(gts, gts, np.zeros_like(masks))
