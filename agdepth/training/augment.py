"""Geometric augmentation of training pairs, applied per sample inside the U-Net stage (seeded by the step).

Random zoom-in crops vary the apparent field of view and move image borders off the room's walls, so a model cannot
learn "the border is near" from the training domains' layouts. Depth and the valid mask are resampled with nearest
neighbours (metric values are never blended across edges); RGB bilinearly with antialiasing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def random_zoom_crop(batch: dict[str, Any], min_scale: float, gen: torch.Generator) -> dict[str, Any]:
    """Each sample: a crop of side ``s`` × the image's (s ~ U[min_scale, 1], same aspect), at a uniform position,
    resized back to the input size. ``rgb`` [B,3,H,W], ``depth`` [B,1,H,W], ``valid`` [B,1,H,W] bool."""
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    rgb, depth, valid = batch["rgb"], batch["depth"], batch["valid"]
    b, _, h, w = rgb.shape
    out_rgb, out_d, out_v = [], [], []
    for i in range(b):
        s = min_scale + (1 - min_scale) * float(torch.rand((), generator=gen))
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
        crop = (slice(None), slice(None), slice(y0, y0 + ch), slice(x0, x0 + cw))
        out_rgb.append(F.interpolate(rgb[i : i + 1][crop], (h, w), mode="bilinear", antialias=True,
                                     align_corners=False))
        out_d.append(F.interpolate(depth[i : i + 1][crop], (h, w), mode="nearest-exact"))
        out_v.append(F.interpolate(valid[i : i + 1][crop].float(), (h, w), mode="nearest-exact") > 0.5)
    return {**batch, "rgb": torch.cat(out_rgb).clamp(-1, 1), "depth": torch.cat(out_d), "valid": torch.cat(out_v)}
