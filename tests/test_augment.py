"""Random zoom crops: shapes, value ranges, depth values never blended, identity at scale 1, seeded."""

from __future__ import annotations

import pytest
import torch

from agdepth.training.augment import random_zoom_crop


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    depth = torch.randint(1, 20, (3, 1, 16, 24), generator=g).float()  # a few discrete metric values
    return {"rgb": torch.rand(3, 3, 16, 24, generator=g) * 2 - 1, "depth": depth, "valid": depth > 3, "name": "x"}


def test_scale_one_is_the_identity() -> None:
    b = _batch()
    out = random_zoom_crop(b, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(out["rgb"], b["rgb"])
    assert torch.equal(out["depth"], b["depth"]) and torch.equal(out["valid"], b["valid"]) and out["name"] == "x"


def test_zoom_keeps_shapes_and_never_invents_depth_values() -> None:
    b = _batch()
    out = random_zoom_crop(b, 0.4, torch.Generator().manual_seed(2))
    assert out["rgb"].shape == b["rgb"].shape and out["valid"].dtype == torch.bool
    assert -1 <= out["rgb"].min() and out["rgb"].max() <= 1
    assert set(out["depth"].unique().tolist()) <= set(b["depth"].unique().tolist())  # nearest: no blends
    assert torch.equal(out["valid"], out["depth"] > 3)  # mask and depth resampled alike
    assert not torch.equal(out["depth"], b["depth"])
    again = random_zoom_crop(b, 0.4, torch.Generator().manual_seed(2))
    assert torch.equal(again["depth"], out["depth"])  # seeded by the step's generator


def test_bad_scale() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        random_zoom_crop(_batch(), 0.0, torch.Generator())
