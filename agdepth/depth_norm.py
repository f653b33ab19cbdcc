"""Depth / RGB normalisation between data space and the VAE's input space.

Depth targets: per image, the 2 % and 98 % quantiles of valid depth map affinely to −1 and 1 and the map is clipped to
[−1, 1] (Marigold's ``ScaleShiftDepthNormalizer``), stacked to 3 channels for the frozen RGB VAE, and the VAE latent
is multiplied by the VAE's ``config.scaling_factor`` (0.18215 for SD's). RGB goes to [−1, 1]. Predictions come back
via :func:`mean_of_channels` and :func:`depth_to_unit`; no de-normalisation exists because predictions are
affine-invariant (evaluation aligns them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _sorted_quantiles(values: torch.Tensor, qs: tuple[float, ...]) -> list[torch.Tensor]:
    """Linear-interpolation quantiles (torch.quantile / numpy default), exact for any size.

    torch.quantile refuses inputs over 2**24 elements; a full sort has no such limit and gives the same numbers, so
    large maps are handled exactly instead of by subsampling.
    """
    s = torch.sort(values).values
    n = s.numel()
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(np.floor(pos))
        hi = min(lo + 1, n - 1)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


def normalize_depth(
    depth: torch.Tensor, valid: torch.Tensor | None = None, low: float = 0.02, high: float = 0.98
) -> torch.Tensor:
    """Per-image affine map of the ``low``/``high`` quantiles of valid depth to −1/1, clipped to [−1, 1].

    Args:
        depth: [B,1,H,W] or [B,H,W] depth (or any positive depth-like quantity).
        valid: bool mask of the same shape, or None (all pixels). Pixels that are non-finite or ≤ 0 are always
            treated as invalid (as in Marigold, where 0 marks missing depth).
    Returns:
        float tensor shaped like ``depth`` (float64 stays float64, everything else becomes float32).
        Quantiles use valid pixels only. Invalid pixels with a finite depth get the same affine map + clip as valid
        ones (Marigold's behaviour; their value is masked out of the losses anyway); non-finite invalid pixels are
        set to −1, which is what a zero-filled missing pixel becomes. Degenerate images (fewer than 2 valid pixels
        or high quantile == low quantile) come back as all zeros — finite, never NaN.
    """
    if depth.dim() not in (3, 4):
        raise ValueError(f"depth must be [B,1,H,W] or [B,H,W], got shape {tuple(depth.shape)}")
    if valid is not None and valid.shape != depth.shape:
        raise ValueError(f"valid shape {tuple(valid.shape)} != depth shape {tuple(depth.shape)}")
    x = depth if depth.dtype == torch.float64 else depth.float()
    finite = torch.isfinite(x)
    mask = finite & (x > 0)
    if valid is not None:
        mask &= valid.to(device=x.device, dtype=torch.bool)

    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        vals = x[i][mask[i]]
        if vals.numel() < 2:
            continue
        q_lo, q_hi = _sorted_quantiles(vals, (low, high))
        span = q_hi - q_lo
        if not bool(span > 0):
            continue
        norm = (x[i] - q_lo) / span * 2 - 1
        out[i] = torch.where(finite[i], norm, torch.full_like(norm, -1.0)).clamp(-1, 1)
    return out


def depth_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Decoded prediction in [−1, 1] (nominally) -> affine-invariant depth in [0, 1]."""
    return ((x + 1) / 2).clamp(0, 1)


def stack_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """[B,1,H,W] -> [B,3,H,W] by repetition (the RGB VAE expects three channels)."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected [B,1,H,W], got shape {tuple(x.shape)}")
    return x.repeat(1, 3, 1, 1)


def mean_of_channels(x: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] decoded depth -> [B,1,H,W] (mean over channels, as Marigold and the paper do)."""
    if x.dim() != 4:
        raise ValueError(f"expected [B,C,H,W], got shape {tuple(x.shape)}")
    return x.mean(dim=1, keepdim=True)


def rgb_to_model(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB in [0, 255] -> float32 [−1, 1] channels-first (x / 127.5 − 1).

    numpy input is channels-last: [H,W,3] -> [1,3,H,W], [B,H,W,3] -> [B,3,H,W] (CPU).
    torch input is channels-first, [3,H,W] or [B,3,H,W], shape and device kept. Any numeric dtype holding [0, 255].
    """
    if isinstance(rgb, np.ndarray):
        if rgb.ndim == 3:
            rgb = rgb[None]
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise ValueError(f"numpy RGB must be [H,W,3] or [B,H,W,3], got shape {rgb.shape}")
        t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    elif isinstance(rgb, torch.Tensor):
        if rgb.dim() not in (3, 4) or rgb.shape[-3] != 3:
            raise ValueError(f"tensor RGB must be [3,H,W] or [B,3,H,W], got shape {tuple(rgb.shape)}")
        t = rgb
    else:
        raise TypeError(f"expected numpy array or torch tensor, got {type(rgb).__name__}")
    return t.to(torch.float32) / 127.5 - 1.0


def latent_valid_mask(valid: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """Pixel validity [B,1,H,W] (or [B,H,W]) -> bool [B,1,H//f,W//f], True where the whole f×f block is valid.

    Max-pooling the *invalid* mask marks a latent invalid as soon as one pixel of its block is. Trailing rows/columns
    that do not fill a block are dropped, like the VAE's floor(H/8) latent size.
    """
    if valid.dim() == 3:
        valid = valid[:, None]
    if valid.dim() != 4 or valid.shape[1] != 1:
        raise ValueError(f"expected [B,1,H,W] or [B,H,W], got shape {tuple(valid.shape)}")
    invalid = (~valid.bool()).float()
    return F.max_pool2d(invalid, kernel_size=factor, stride=factor) == 0
