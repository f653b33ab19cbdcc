"""Training losses of the paper (Kim & Kim, JBE 2025, section II.3, eqs. 3-8).

L_total = L_v + L_BerHu + L_GM + L_feature  (eq. 8, all weights 1 in the paper).

Conventions shared by the pixel-space losses:

* ``pred`` / ``target`` are depth maps ``[B, 1, H, W]`` (``[B, H, W]`` is accepted too).
* ``mask`` is a bool tensor of the same shape; ``None`` means every pixel is valid.
* Invalid pixels never reach the arithmetic: they are removed by boolean indexing or ``torch.where`` *before* any
  nonlinearity, so NaN/inf/huge values there change neither the loss nor the gradient.
* Means are taken over the valid pixels of the whole batch (each valid pixel weighs the same, as in Marigold's
  masked latent MSE); a batch with no valid pixel gives a zero loss that is still attached to the graph.
* fp16/bf16 inputs are upcast to fp32 (squares and sums of small differences underflow in half precision);
  other dtypes are kept, so fp64 stays fp64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor


def autoencoder_loss(recon: Tensor, target: Tensor, mask: Tensor | None = None, gradient_weight: float = 1.0) -> Tensor:
    """Pretraining loss of the depth autoencoder: masked L1 + ``gradient_weight`` x gradient-matching (eq. 5).

    The gradient term keeps depth edges sharp, which is what the paper wants the AE features to capture.
    ``gradient_weight=0`` gives plain L1 (the gradient term is then not computed).
    """
    loss = masked_l1_loss(recon, target, mask)
    if gradient_weight != 0.0:
        loss = loss + gradient_weight * gradient_matching_loss(recon, target, mask)
    return loss


__all__ = ["autoencoder_loss",
    "LossWeights",
    "berhu_loss",
    "combine_losses",
    "feature_loss",
    "gradient_matching_loss",
    "masked_l1_loss",
    "v_loss",
]

# Fraction of the largest absolute residual used as the BerHu threshold (eq. 4, after Laina et al. 2016).
BERHU_C_FRACTION = 0.2


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _as_4d(x: Tensor, name: str) -> Tensor:
    if x.dim() == 3:
        return x.unsqueeze(1)
    if x.dim() == 4:
        return x
    raise ValueError(f"{name} must be [B,1,H,W] or [B,H,W], got shape {tuple(x.shape)}")


def _prepare(pred: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Bring pred/target/mask to one 4-D shape; mask defaults to all-valid."""
    pred4, target4 = _as_4d(pred, "pred"), _as_4d(target, "target")
    if pred4.shape != target4.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is None:
        mask4 = torch.ones_like(pred4, dtype=torch.bool)
    else:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
        mask4 = _as_4d(mask, "mask")
        if mask4.shape != pred4.shape:
            raise ValueError(f"mask {tuple(mask.shape)} does not match pred {tuple(pred.shape)}")
    return _upcast(pred4), _upcast(target4), mask4


def masked_l1_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute error over valid pixels (used for depth-autoencoder pretraining)."""
    pred, target, mask = _prepare(pred, target, mask)
    x = (pred[mask] - target[mask]).abs()
    return x.mean() if x.numel() else x.sum()


def berhu_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reverse Huber (BerHu) loss, eq. 4, averaged over valid pixels.

    x = |d - d_hat|, c = 0.2 * max(x) over the batch's valid pixels; per pixel x if x <= c else (x^2 + c^2) / (2c).

    The max is detached: c is a data-dependent threshold, not something to optimise (standard practice; otherwise
    the largest residual would receive an extra, oddly-signed gradient through c).
    """
    pred, target, mask = _prepare(pred, target, mask)
    # Index first so invalid pixels (possibly inf/NaN) never enter the graph.
    x = (pred[mask] - target[mask]).abs()
    if x.numel() == 0:
        return x.sum()
    c = BERHU_C_FRACTION * x.detach().max()
    # c == 0 means a perfect prediction: every x is 0 and takes the L1 branch; use 1 as a dummy divisor so the
    # unused quadratic branch stays finite (torch.where back-propagates 0 * its gradient, and 0 * inf = NaN).
    c_safe = torch.where(c > 0, c, torch.ones_like(c))
    # The paper writes `x < c` for the L1 branch; at x = c both branches equal c (and both slopes are 1),
    # so `<=` vs `<` makes no difference.
    per_pixel = torch.where(x <= c, x, (x * x + c_safe * c_safe) / (2 * c_safe))
    return per_pixel.mean()


def gradient_matching_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Gradient-matching loss, eq. 5.

    With r = d_hat - d (so that d_h - d_hat_h = -r_h), horizontal and vertical forward differences
    r_h = r[..., :, 1:] - r[..., :, :-1] and r_v = r[..., 1:, :] - r[..., :-1, :] are used.

    Normalisation: ``(sum |r_h| + sum |r_v|) / N`` where a difference is summed only if *both* of its pixels are
    valid, and N is the number of valid pixels in the whole batch (eq. 5's "N = size of the depth map", extended to
    masks and batches the same way as the other losses: every valid pixel of the batch weighs the same). Note that
    N counts pixels, not difference pairs, exactly as in eq. 5; an all-valid H x W map therefore has
    H(W-1) + (H-1)W summands divided by HW.
    """
    pred, target, mask = _prepare(pred, target, mask)
    # Zero the residual at invalid pixels before differencing; pairs touching them are dropped below anyway.
    r = torch.where(mask, pred - target, torch.zeros((), dtype=pred.dtype, device=pred.device))
    valid_h = mask[..., :, 1:] & mask[..., :, :-1]
    valid_v = mask[..., 1:, :] & mask[..., :-1, :]
    r_h = (r[..., :, 1:] - r[..., :, :-1]).abs()
    r_v = (r[..., 1:, :] - r[..., :-1, :]).abs()
    total = r_h[valid_h].sum() + r_v[valid_v].sum()
    # clamp: an all-invalid batch gives 0 / 1 = 0, still attached to pred.
    return total / mask.sum().clamp_min(1)


def feature_loss(feats_pred: Sequence[Tensor], feats_target: Sequence[Tensor]) -> Tensor:
    """Feature (perceptual) loss, eq. 7: sum over encoder stages j of mean((F_j - F_hat_j)^2).

    ``feats_target`` are used as given: the caller extracts them under ``torch.no_grad()`` / detaches them.
    """
    if len(feats_pred) != len(feats_target):
        raise ValueError(f"feature lists differ in length: {len(feats_pred)} vs {len(feats_target)}")
    if len(feats_pred) == 0:
        raise ValueError("feature_loss needs at least one feature stage")
    total: Tensor | None = None
    for j, (fp, ft) in enumerate(zip(feats_pred, feats_target, strict=True)):
        if fp.shape != ft.shape:
            raise ValueError(f"stage {j}: feature shapes differ: {tuple(fp.shape)} vs {tuple(ft.shape)}")
        term = (_upcast(fp) - _upcast(ft)).pow(2).mean()
        total = term if total is None else total + term
    assert total is not None
    return total


def v_loss(v_pred: Tensor, v_target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Latent v-prediction MSE, eq. 3.

    ``mask`` is a latent-resolution bool mask ``[B,1,h,w]`` (or ``[B,h,w]``) broadcast over the latent channels;
    the mean runs over the masked elements only. ``None`` gives the plain mean.
    """
    if v_pred.shape != v_target.shape:
        raise ValueError(f"v_pred {tuple(v_pred.shape)} and v_target {tuple(v_target.shape)} differ in shape")
    v_pred, v_target = _upcast(v_pred), _upcast(v_target)
    if mask is None:
        return (v_pred - v_target).pow(2).mean()
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.dim() == v_pred.dim() - 1:
        mask = mask.unsqueeze(1)
    try:
        full_mask = torch.broadcast_to(mask, v_pred.shape)
    except RuntimeError as err:
        raise ValueError(f"mask {tuple(mask.shape)} cannot broadcast to latents {tuple(v_pred.shape)}") from err
    # Index before squaring so masked-out latents cannot inject NaN/inf.
    diff = v_pred[full_mask] - v_target[full_mask]
    if diff.numel() == 0:
        return diff.sum()
    return diff.pow(2).mean()


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms of eq. 8. A weight of 0 switches a term off: the trainer must not compute it.

    The paper's ablation (Table 3) is a config change: ``LossWeights.preset("baseline" | "depth_loss" | "full")``.
    """

    v: float = 1.0
    berhu: float = 1.0
    gm: float = 1.0
    feature: float = 1.0

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"loss weight {name!r} must be finite and >= 0, got {value}")

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def enabled(self, name: str) -> bool:
        """True when term ``name`` has a non-zero weight (and therefore has to be computed)."""
        weights = self.as_dict()
        if name not in weights:
            raise ValueError(f"unknown loss term {name!r}; known: {sorted(weights)}")
        return weights[name] != 0.0

    @property
    def needs_depth_decode(self) -> bool:
        """Whether any pixel-space term is on (only then must x0_hat be decoded by the VAE)."""
        return self.berhu != 0.0 or self.gm != 0.0 or self.feature != 0.0

    @classmethod
    def preset(cls, name: str) -> LossWeights:
        """Table 3 rows: Marigold baseline, + depth loss (eq. 6), + depth autoencoder (full, eq. 8)."""
        presets = {
            "baseline": cls(berhu=0.0, gm=0.0, feature=0.0),
            "depth_loss": cls(feature=0.0),
            "full": cls(),
        }
        if name not in presets:
            raise ValueError(f"unknown loss preset {name!r}; known: {sorted(presets)}")
        return presets[name]


def combine_losses(terms: dict[str, Tensor], weights: LossWeights) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the loss terms (eq. 8) and detached float values for logging.

    ``terms`` maps term names (``"v"``, ``"berhu"``, ``"gm"``, ``"feature"``) to scalar losses. Terms with weight 0
    are left out of both the total and the log, even if passed; a term with a non-zero weight that is missing from
    ``terms`` is an error (silently dropping it would train a different objective). The log holds each term's
    *unweighted* value and ``"total"`` (the weighted sum).
    """
    weight_of = weights.as_dict()
    unknown = set(terms) - set(weight_of)
    if unknown:
        raise ValueError(f"unknown loss terms {sorted(unknown)}; known: {sorted(weight_of)}")
    missing = [name for name, w in weight_of.items() if w != 0.0 and name not in terms]
    if missing:
        raise ValueError(f"loss terms {missing} have non-zero weight but were not computed")
    total: Tensor | None = None
    log: dict[str, float] = {}
    for name, w in weight_of.items():
        if w == 0.0:
            continue
        value = terms[name]
        if value.numel() != 1:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        log[name] = float(value.detach())
        contribution = value if w == 1.0 else w * value
        total = contribution if total is None else total + contribution
    if total is None:
        raise ValueError("all loss weights are zero: nothing to optimise")
    log["total"] = float(total.detach())
    return total, log
