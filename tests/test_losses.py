"""Losses of eqs. 3-8 checked against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from agdepth.training.losses import (
    LossWeights,
    berhu_loss,
    combine_losses,
    feature_loss,
    gradient_matching_loss,
    masked_l1_loss,
    v_loss,
)


def t(rows: list[list[float]], requires_grad: bool = False) -> torch.Tensor:
    """A 1x1xHxW float64 map (float64 so hand-computed values match to ~1e-12)."""
    return torch.tensor(rows, dtype=torch.float64).reshape(1, 1, len(rows), len(rows[0])).requires_grad_(requires_grad)


# ---------------------------------------------------------------- BerHu (eq. 4)

# Residuals |pred - target| = [[0, 1, 2], [5, 10, 3]]  ->  max 10, c = 0.2 * 10 = 2.
#   L1 branch (x <= c): 0, 1, 2          (x = 2 sits exactly on c: both branches give 2)
#   quadratic branch (x^2 + c^2)/(2c):   5 -> 29/4 = 7.25,  10 -> 104/4 = 26,  3 -> 13/4 = 3.25
#   mean = (0 + 1 + 2 + 7.25 + 26 + 3.25) / 6 = 39.5 / 6
BERHU_TARGET = [[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]]
BERHU_PRED = [[1.0, 0.0, 2.5], [5.0, -8.0, 1.0]]  # target + [[0, 1, 2], [5, -10, 3]]


def test_berhu_hand_computed_both_branches() -> None:
    loss = berhu_loss(t(BERHU_PRED), t(BERHU_TARGET))
    assert loss.item() == pytest.approx(39.5 / 6, abs=1e-12)


def test_berhu_accepts_3d_maps() -> None:
    loss = berhu_loss(t(BERHU_PRED)[:, 0], t(BERHU_TARGET)[:, 0])
    assert loss.item() == pytest.approx(39.5 / 6, abs=1e-12)


def test_berhu_gradient_uses_detached_c() -> None:
    pred = t(BERHU_PRED, requires_grad=True)
    berhu_loss(pred, t(BERHU_TARGET)).backward()
    # d/dpred with c held fixed (c = 2, N = 6), sign of (pred - target) = [[0, +, +], [+, -, +]]:
    #   L1 branch: sign / 6 (abs'(0) = 0);  quadratic branch: (x / c) * sign / 6
    expected = torch.tensor([[0.0, 1.0, 1.0], [2.5, -5.0, 1.5]], dtype=torch.float64).reshape(1, 1, 2, 3) / 6
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, expected, rtol=0, atol=1e-12)


def test_berhu_mask_excludes_pixels_and_their_max() -> None:
    # Mask out the residual-10 pixel: valid residuals [0, 1, 2, 5, 3], max 5, c = 1.
    #   0 -> 0,  1 -> 1 (x = c),  2 -> (4+1)/2 = 2.5,  5 -> (25+1)/2 = 13,  3 -> (9+1)/2 = 5
    #   mean = 21.5 / 5 = 4.3
    mask = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = False
    assert berhu_loss(t(BERHU_PRED), t(BERHU_TARGET), mask).item() == pytest.approx(4.3, abs=1e-12)
    for junk in (1e6, -1e30, math.inf, math.nan):
        pred = t(BERHU_PRED, requires_grad=True)
        with torch.no_grad():
            pred[0, 0, 1, 1] = junk
        loss = berhu_loss(pred, t(BERHU_TARGET), mask)
        loss.backward()
        assert loss.item() == pytest.approx(4.3, abs=1e-12)
        assert pred.grad is not None and torch.isfinite(pred.grad).all()
        assert pred.grad[0, 0, 1, 1] == 0


def test_berhu_continuous_at_c() -> None:
    # Residuals [10, 2 -/+ eps] keep c = 2; the second pixel moves across x = c.
    eps = 1e-6
    target = t([[0.0, 0.0]])
    below = t([[10.0, 2.0 - eps]], requires_grad=True)
    above = t([[10.0, 2.0 + eps]], requires_grad=True)
    loss_below, loss_above = berhu_loss(below, target), berhu_loss(above, target)
    # Hand values: (26 + (2 - eps)) / 2 and (26 + ((2 + eps)^2 + 4) / 4) / 2: both -> 14 as eps -> 0.
    assert loss_below.item() == pytest.approx((26 + 2 - eps) / 2, abs=1e-12)
    assert loss_above.item() == pytest.approx((26 + ((2 + eps) ** 2 + 4) / 4) / 2, abs=1e-12)
    assert abs(loss_above.item() - loss_below.item()) < 2 * eps
    # The slope is continuous too: 1 on the L1 side, x / c -> 1 on the quadratic side (divided by N = 2).
    (loss_below + loss_above).backward()
    assert below.grad is not None and above.grad is not None
    assert below.grad[0, 0, 0, 1].item() == pytest.approx(0.5, abs=1e-12)
    assert above.grad[0, 0, 0, 1].item() == pytest.approx(0.5, abs=1e-6)


# ---------------------------------------------------------------- gradient matching (eq. 5)

# Residual r = pred - target = [[0, 1, 3], [2, 2, 7]]
#   horizontal |r_h|: row 0: |1-0| = 1, |3-1| = 2;  row 1: |2-2| = 0, |7-2| = 5      -> 8
#   vertical   |r_v|: |2-0| = 2, |2-1| = 1, |7-3| = 4                               -> 7
#   (8 + 7) / N, N = 6 pixels -> 2.5
GM_TARGET = [[0.5, 0.0, 1.0], [1.0, 2.0, 3.0]]
GM_PRED = [[0.5, 1.0, 4.0], [3.0, 4.0, 10.0]]


def test_gradient_matching_hand_computed() -> None:
    assert gradient_matching_loss(t(GM_PRED), t(GM_TARGET)).item() == pytest.approx(2.5, abs=1e-12)


def test_gradient_matching_ignores_constant_offset() -> None:
    # Gradients of a map do not see a global shift.
    pred = t(GM_TARGET) + 3.0
    assert gradient_matching_loss(pred, t(GM_TARGET)).item() == pytest.approx(0.0, abs=1e-12)


def test_gradient_matching_mask() -> None:
    # Mask out pixel (0, 2) (r = 3): pairs touching it are dropped.
    #   horizontal: row 0: 1 (the (0,1)-(0,2) pair is gone); row 1: 0 + 5  -> 6
    #   vertical:   2 + 1 (column 2 pair is gone)                          -> 3
    #   (6 + 3) / N, N = 5 valid pixels -> 1.8
    mask = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    mask[0, 0, 0, 2] = False
    assert gradient_matching_loss(t(GM_PRED), t(GM_TARGET), mask).item() == pytest.approx(1.8, abs=1e-12)
    for junk in (1e6, math.inf, math.nan):
        pred = t(GM_PRED, requires_grad=True)
        with torch.no_grad():
            pred[0, 0, 0, 2] = junk
        loss = gradient_matching_loss(pred, t(GM_TARGET), mask)
        loss.backward()
        assert loss.item() == pytest.approx(1.8, abs=1e-12)
        assert pred.grad is not None and torch.isfinite(pred.grad).all()
        assert pred.grad[0, 0, 0, 2] == 0


def test_gradient_matching_normalises_by_valid_pixels_of_batch() -> None:
    # Second image: perfect prediction. Sums add up over the batch, N = 6 + 6 -> 15 / 12.
    pred = torch.cat([t(GM_PRED), t(GM_TARGET)])
    target = torch.cat([t(GM_TARGET), t(GM_TARGET)])
    assert gradient_matching_loss(pred, target).item() == pytest.approx(15 / 12, abs=1e-12)


def test_gradient_matching_gradient_hand_computed() -> None:
    # 1x3 map, r = [0, 1, 3]: loss = (|1 - 0| + |3 - 1|) / 3. d/dr = [-1, 1 - 1, 1] / 3 = [-1, 0, 1] / 3.
    pred = t([[0.0, 1.0, 3.0]], requires_grad=True)
    loss = gradient_matching_loss(pred, t([[0.0, 0.0, 0.0]]))
    assert loss.item() == pytest.approx(1.0, abs=1e-12)
    loss.backward()
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, t([[-1 / 3, 0.0, 1 / 3]]), rtol=0, atol=1e-12)


# ---------------------------------------------------------------- feature loss (eq. 7)


def test_feature_loss_hand_computed() -> None:
    # stage 1: diffs [1, 2] -> mean of squares (1 + 4) / 2 = 2.5
    # stage 2: diffs [0, 2] -> (0 + 4) / 2 = 2                         total 4.5
    fp = [torch.tensor([1.0, 2.0]).reshape(1, 1, 1, 2), torch.tensor([0.0, 3.0]).reshape(1, 2, 1, 1)]
    ft = [torch.zeros(1, 1, 1, 2), torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)]
    assert feature_loss(fp, ft).item() == pytest.approx(4.5, abs=1e-6)


def test_feature_loss_errors() -> None:
    a = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="length"):
        feature_loss([a, a], [a])
    with pytest.raises(ValueError, match="shape"):
        feature_loss([a], [torch.zeros(1, 1, 2, 3)])
    with pytest.raises(ValueError):
        feature_loss([], [])


# ---------------------------------------------------------------- v loss (eq. 3)

V_PRED = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 1, 2)  # channel 0: [1, 2], channel 1: [3, 4]


def test_v_loss_hand_computed() -> None:
    # (1 + 4 + 9 + 16) / 4 = 7.5
    assert v_loss(V_PRED, torch.zeros_like(V_PRED)).item() == pytest.approx(7.5)


def test_v_loss_mask_broadcasts_over_channels() -> None:
    # Keep latent column 0 in both channels: (1 + 9) / 2 = 5
    mask = torch.tensor([True, False]).reshape(1, 1, 1, 2)
    assert v_loss(V_PRED, torch.zeros_like(V_PRED), mask).item() == pytest.approx(5.0)
    junk = V_PRED.clone()
    junk[..., 1] = math.nan
    assert v_loss(junk, torch.zeros_like(V_PRED), mask).item() == pytest.approx(5.0)
    assert v_loss(V_PRED, torch.zeros_like(V_PRED), mask[:, 0]).item() == pytest.approx(5.0)  # [B,h,w] too


# ---------------------------------------------------------------- shared properties


def test_masked_l1_hand_computed() -> None:
    # |residuals| [[0, 1, 2], [5, 10, 3]] -> 21 / 6; without the 10: 11 / 5
    assert masked_l1_loss(t(BERHU_PRED), t(BERHU_TARGET)).item() == pytest.approx(3.5, abs=1e-12)
    mask = torch.ones(1, 1, 2, 3, dtype=torch.bool)
    mask[0, 0, 1, 1] = False
    assert masked_l1_loss(t(BERHU_PRED), t(BERHU_TARGET), mask).item() == pytest.approx(2.2, abs=1e-12)


@pytest.mark.parametrize("loss_fn", [berhu_loss, gradient_matching_loss, v_loss, masked_l1_loss])
def test_identical_inputs_zero_loss_finite_grad(loss_fn: Callable[..., torch.Tensor]) -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 1, 4, 5)
    pred = target.clone().requires_grad_(True)
    loss = loss_fn(pred, target)
    loss.backward()
    assert loss.item() == 0.0
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_feature_loss_identical_zero_with_finite_grad() -> None:
    feats = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 2, 2)]
    pred = [f.clone().requires_grad_(True) for f in feats]
    loss = feature_loss(pred, feats)
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pred)


@pytest.mark.parametrize("loss_fn", [berhu_loss, gradient_matching_loss, v_loss])
def test_gradients_flow_to_pred_not_target(loss_fn: Callable[..., torch.Tensor]) -> None:
    torch.manual_seed(0)
    target = torch.randn(2, 1, 4, 5)
    pred = torch.randn(2, 1, 4, 5, requires_grad=True)
    loss_fn(pred, target).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None


def test_all_pixels_masked_gives_zero_attached_loss() -> None:
    pred = torch.randn(1, 1, 4, 4, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    for loss_fn in (berhu_loss, gradient_matching_loss, masked_l1_loss):
        loss = loss_fn(pred, torch.zeros(1, 1, 4, 4), mask)
        assert loss.item() == 0.0 and loss.requires_grad


def test_half_precision_inputs_are_upcast() -> None:
    loss = berhu_loss(t(BERHU_PRED).half(), t(BERHU_TARGET).half())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(39.5 / 6, rel=1e-3)


def test_shape_and_mask_validation() -> None:
    with pytest.raises(ValueError):
        berhu_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 3))
    with pytest.raises(TypeError):
        berhu_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError):
        gradient_matching_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 3).bool())


# ---------------------------------------------------------------- combining (eq. 8)


def test_combine_losses_weighting_and_log() -> None:
    terms = {"v": torch.tensor(2.0), "berhu": torch.tensor(3.0), "gm": torch.tensor(5.0), "feature": torch.tensor(7.0)}
    total, log = combine_losses(terms, LossWeights())  # eq. 8: plain sum
    assert total.item() == pytest.approx(17.0)
    assert log == pytest.approx({"v": 2.0, "berhu": 3.0, "gm": 5.0, "feature": 7.0, "total": 17.0})

    total, log = combine_losses(terms, LossWeights(v=1.0, berhu=0.5, gm=2.0, feature=1.0))
    assert total.item() == pytest.approx(2.0 + 1.5 + 10.0 + 7.0)
    assert log["berhu"] == pytest.approx(3.0)  # logged unweighted
    assert isinstance(log["total"], float)


def test_combine_losses_zero_weight_leaves_term_out() -> None:
    # A NaN in the switched-off term would poison the total if it were included even as 0 * NaN.
    terms = {
        "v": torch.tensor(2.0),
        "berhu": torch.tensor(3.0),
        "gm": torch.tensor(5.0),
        "feature": torch.tensor(math.nan),
    }
    total, log = combine_losses(terms, LossWeights(feature=0.0))
    assert total.item() == pytest.approx(10.0)
    assert "feature" not in log
    # ... and it need not be passed at all.
    del terms["feature"]
    total, log = combine_losses(terms, LossWeights(feature=0.0))
    assert total.item() == pytest.approx(10.0)
    assert set(log) == {"v", "berhu", "gm", "total"}


def test_combine_losses_gradients_and_errors() -> None:
    v = torch.tensor(2.0, requires_grad=True)
    total, _ = combine_losses({"v": v}, LossWeights.preset("baseline"))
    (total * 1.0).backward()
    assert v.grad is not None and v.grad.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-zero weight"):
        combine_losses({"v": torch.tensor(1.0)}, LossWeights())  # berhu/gm/feature are on but missing
    with pytest.raises(ValueError, match="unknown"):
        combine_losses({"v": torch.tensor(1.0), "edge": torch.tensor(1.0)}, LossWeights.preset("baseline"))
    with pytest.raises(ValueError):
        combine_losses({}, LossWeights(v=0.0, berhu=0.0, gm=0.0, feature=0.0))


def test_loss_weights_presets_and_validation() -> None:
    # Table 3 rows.
    assert LossWeights.preset("baseline") == LossWeights(v=1.0, berhu=0.0, gm=0.0, feature=0.0)
    assert LossWeights.preset("depth_loss") == LossWeights(feature=0.0)
    assert LossWeights.preset("full") == LossWeights()
    assert not LossWeights.preset("baseline").needs_depth_decode
    assert LossWeights.preset("depth_loss").needs_depth_decode
    assert LossWeights().enabled("feature") and not LossWeights(feature=0).enabled("feature")
    with pytest.raises(ValueError):
        LossWeights(berhu=-1.0)
    with pytest.raises(ValueError):
        LossWeights.preset("nope")
