"""agdepth.metrics against hand-computed values on tiny arrays."""

import math

import numpy as np
import pytest
import torch

from agdepth import metrics as M

LN2 = math.log(2.0)


def test_hand_computed_metrics():
    pred, gt = np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 2.0])
    got = M.compute_metrics(pred, gt, np.ones(3, dtype=bool))
    assert tuple(got) == M.METRIC_NAMES
    expect = {
        "abs_rel": 1 / 3,  # (0 + 0 + 2/2) / 3
        "sq_rel": 2 / 3,  # (0 + 0 + 4/2) / 3
        "rmse": math.sqrt(4 / 3),  # 1.1547005383792515
        "rmse_log": LN2 / math.sqrt(3),  # 0.4001887...
        "log10": math.log10(2) / 3,  # 0.1003433...
        "delta1": 2 / 3,  # ratios 1, 1, 2
        "delta2": 2 / 3,
        "delta3": 2 / 3,  # 2 > 1.25**3 = 1.953125
        "i_rmse": math.sqrt(0.25**2 / 3),  # 1/4 - 1/2 on one pixel: 0.1443375...
        "silog_rmse": 100 * LN2 * math.sqrt(2) / 3,  # d = (0,0,ln2): sqrt(ln2²/3 - ln2²/9) = 32.6752...
    }
    for k, v in expect.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
    assert got["rmse"] == pytest.approx(1.1547005383792515)
    assert got["silog_rmse"] == pytest.approx(32.675271, abs=1e-6)


def test_delta_thresholds_are_symmetric_and_strict():
    gt = np.ones(5)
    pred = np.array([1.0, 1.2, 0.7, 1.8, 3.0])  # max(p/g, g/p) = 1, 1.2, 1.428.., 1.8, 3
    got = M.compute_metrics(pred, gt)
    assert (got["delta1"], got["delta2"], got["delta3"]) == (2 / 5, 3 / 5, 4 / 5)
    # strict "<": a ratio of exactly 1.25 does not count for delta1 (1.25 is exact in binary)
    assert M.compute_metrics(np.array([1.25]), np.array([1.0]))["delta1"] == 0.0
    assert got["i_rmse"] == pytest.approx(
        math.sqrt((0 + (1 / 6) ** 2 + (3 / 7) ** 2 + (4 / 9) ** 2 + (2 / 3) ** 2) / 5)
    )


def test_perfect_prediction():
    gt = np.array([[0.5, 1.0], [2.0, 10.0]])
    got = M.compute_metrics(gt.copy(), gt)
    for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "i_rmse", "silog_rmse"):
        assert got[k] == 0.0, k
    assert got["delta1"] == got["delta2"] == got["delta3"] == 1.0
    # silog is scale-invariant: a uniformly scaled prediction still scores ~0 there
    assert M.compute_metrics(3 * gt, gt)["silog_rmse"] == pytest.approx(0.0, abs=1e-6)


def test_mask_and_nonpositive_gt_excluded():
    pred = np.array([1.0, 2.0, 4.0, 100.0, 7.0])
    gt = np.array([1.0, 2.0, 2.0, 1.0, 0.0])  # pixel 4 has gt 0 -> invalid even if the mask says valid
    mask = np.array([True, True, True, False, True])
    ref = M.compute_metrics(pred[:3], gt[:3])
    assert M.compute_metrics(pred, gt, mask) == ref
    assert M.compute_metrics(pred, gt, None)["abs_rel"] != ref["abs_rel"]  # pixel 3 counts without the mask
    with pytest.raises(ValueError):
        M.compute_metrics(pred, gt, np.zeros(5, dtype=bool))


def test_pred_clamped_to_epsilon():
    got = M.compute_metrics(np.array([0.0, -1.0]), np.array([1.0, 1.0]))
    assert all(math.isfinite(v) for v in got.values())
    assert got["abs_rel"] == pytest.approx(1 - M.PRED_EPS)
    assert got["delta3"] == 0.0


def test_align_recovers_scale_and_shift():
    gt = np.array([[1.0, 2.0, 3.5], [4.0, 8.0, 9.25]])
    pred = (gt - 3) / 2  # negative values are fine for an affine-invariant prediction
    aligned, s, t = M.align_least_squares(pred, gt, np.ones_like(gt, dtype=bool))
    assert s == pytest.approx(2.0, abs=1e-12) and t == pytest.approx(3.0, abs=1e-12)
    np.testing.assert_allclose(aligned, gt, atol=1e-12)
    assert aligned.shape == gt.shape and aligned.dtype == np.float64


def test_align_hand_computed_fit_and_mask():
    # Least squares of gt ≈ s·x + t on x=(0,1,2), gt=(1,2,4): s = 1.5, t = 5/6.
    x, gt = np.array([0.0, 1.0, 2.0, 5.0]), np.array([1.0, 2.0, 4.0, 1000.0])
    mask = np.array([True, True, True, False])  # the outlier is masked out of the fit...
    aligned, s, t = M.align_least_squares(x, gt, mask)
    assert s == pytest.approx(1.5) and t == pytest.approx(5 / 6)
    assert aligned[3] == pytest.approx(1.5 * 5 + 5 / 6)  # ...but the aligned map covers every pixel


def test_align_degenerate_mask_raises():
    with pytest.raises(ValueError):
        M.align_least_squares(np.array([1.0, 2.0]), np.array([1.0, 2.0]), np.array([True, False]))
    with pytest.raises(ValueError):
        M.align_least_squares(np.array([1.0, 2.0]), np.array([1.0, 0.0]))  # gt 0 is invalid
    with pytest.raises(ValueError):
        M.evaluate(np.ones(3), np.ones(3), np.zeros(3, dtype=bool))


def test_align_max_resolution_fits_on_downsampled_copy():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, size=(64, 96))
    pred = (gt - 1) / 4 + rng.normal(0, 1e-3, size=gt.shape)
    full = M.align_least_squares(pred, gt)
    small = M.align_least_squares(pred, gt, max_resolution=16)
    assert small[1] == pytest.approx(4.0, rel=1e-2) and small[1] != full[1]
    # exact data: downsampled fit is exact too
    _, s, t = M.align_least_squares((gt - 1) / 4, gt, max_resolution=16)
    assert (s, t) == (pytest.approx(4.0), pytest.approx(1.0))


def test_disparity_alignment():
    gt = np.array([1.0, 2.0, 4.0, 5.0])
    disp = 3.0 * (1.0 / gt) + 0.5  # affine-invariant disparity
    depth, s, t = M.align_least_squares_disparity(disp, gt)
    assert s == pytest.approx(1 / 3) and t == pytest.approx(-0.5 / 3)
    np.testing.assert_allclose(depth, gt, rtol=1e-10)
    # aligned disparity is clipped to MIN_DISPARITY before inversion
    depth, _, _ = M.align_least_squares_disparity(np.array([3.5, 2.0, 1.25, 0.05]), gt, np.array([1, 1, 1, 0], bool))
    assert depth[3] == pytest.approx(1 / M.MIN_DISPARITY)
    assert M.evaluate(disp, gt, alignment="least_squares_disparity")["abs_rel"] == pytest.approx(0.0, abs=1e-10)


def test_evaluate_aligns_clips_and_scores():
    gt = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = (gt - 3) / 2
    assert M.evaluate(pred, gt, np.ones_like(gt, bool))["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    # no alignment + depth_range clipping: pred (0.5, 20, 4, 8) clipped to [1, 10] -> (1, 10, 4, 8)
    raw = np.array([[0.5, 20.0], [4.0, 8.0]])
    got = M.evaluate(raw, gt, None, depth_range=(1.0, 10.0), alignment=None)
    assert got["abs_rel"] == pytest.approx((0 + 8 / 2 + 0 + 0) / 4)
    np.testing.assert_array_equal(M.aligned_depth(raw, gt, None, (1.0, 10.0), None), [[1.0, 10.0], [4.0, 8.0]])
    with pytest.raises(ValueError):
        M.evaluate(raw, gt, alignment="median")


def test_torch_inputs_and_singleton_dims():
    gt = np.array([[1.0, 2.0], [4.0, 8.0]])
    pred = np.array([[1.5, 2.0], [3.0, 9.0]])
    ref = M.evaluate(pred, gt, gt > 0, depth_range=(0.001, 10.0))
    got = M.evaluate(
        torch.tensor(pred, dtype=torch.float32)[None, None],  # [1,1,H,W] float32 tensor
        torch.tensor(gt),
        torch.tensor(gt > 0),
        depth_range=(0.001, 10.0),
    )
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-6, abs=1e-9), k
    with pytest.raises(ValueError):
        M.compute_metrics(np.ones(3), np.ones(4))


def test_mean_metrics_is_per_image_average():
    a = {"abs_rel": 0.1, "delta1": 1.0}
    b = {"abs_rel": 0.3, "delta1": 0.5}
    assert M.mean_metrics([a, b]) == pytest.approx({"abs_rel": 0.2, "delta1": 0.75})
    assert M.mean_metrics(iter([a])) == a
    with pytest.raises(ValueError):
        M.mean_metrics([])
    with pytest.raises(ValueError):
        M.mean_metrics([a, {"abs_rel": 0.1}])


def test_boundary_f1_hand_cases() -> None:
    from agdepth.metrics import boundary_f1, depth_edges

    gt = np.ones((6, 8))
    gt[:, 4:] = 2.0  # one vertical discontinuity between columns 3 and 4
    e = depth_edges(gt)
    assert e[:, 3].all() and e[:, 4].all() and e.sum() == 12
    # perfect prediction (any positive affine copy): F1 = 1
    assert boundary_f1(gt * 3 + 1, gt)["edge_f1"] == 1.0
    # a flat prediction finds no edge: recall 0, F1 0, precision undefined
    r = boundary_f1(np.ones_like(gt), gt)
    assert r["edge_recall"] == 0.0 and r["edge_f1"] == 0.0 and np.isnan(r["edge_precision"])
    # the edge one column off: matched with tolerance 1, not with 0 (columns 4,5 vs 3,4: half overlap)
    shifted = np.ones((6, 8))
    shifted[:, 5:] = 2.0
    assert boundary_f1(shifted, gt, tolerance=1)["edge_f1"] == 1.0
    r0 = boundary_f1(shifted, gt, tolerance=0)
    assert r0["edge_precision"] == 0.5 and r0["edge_recall"] == 0.5
    # masked pixels neither create nor hide edges
    mask = np.ones_like(gt, bool)
    mask[:, 4:] = False
    assert np.isnan(boundary_f1(gt, gt, mask)["edge_f1"])
