"""agdepth.depth_norm on hand-made maps."""

import numpy as np
import pytest
import torch

from agdepth import depth_norm as dn


def _ramp(lo=1.0, n=100):
    # 10x10 map of lo, lo+1, ..., lo+n-1 as [1,1,10,10]
    return (torch.arange(n, dtype=torch.float32) + lo).reshape(1, 1, 10, 10)


def test_quantiles_map_to_minus_one_and_one():
    d = _ramp()  # 1..100: 2% quantile = 1 + 0.02*99 = 2.98, 98% = 1 + 0.98*99 = 98.02
    out = dn.normalize_depth(d)
    q_lo, q_hi = 2.98, 98.02
    expect = ((d - q_lo) / (q_hi - q_lo) * 2 - 1).clamp(-1, 1)
    torch.testing.assert_close(out, expect)
    assert out.shape == d.shape and out.dtype == torch.float32
    assert out.min() == -1 and out.max() == 1
    # depths 1, 2 lie below 2.98 and 99, 100 above 98.02: exactly two pixels clip at each end...
    assert int((out == -1).sum()) == 2 and int((out == 1).sum()) == 2
    # ...and the middle value lands where the affine map puts it
    assert out.flatten()[49].item() == pytest.approx((50 - q_lo) / (q_hi - q_lo) * 2 - 1, abs=1e-6)


def test_matches_torch_quantile_on_random_map():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(2, 37, 53, generator=g) * 10 + 0.1  # [B,H,W] accepted
    out = dn.normalize_depth(d, low=0.05, high=0.9)
    for i in range(2):
        q = torch.quantile(d[i].flatten(), torch.tensor([0.05, 0.9]))
        expect = ((d[i] - q[0]) / (q[1] - q[0]) * 2 - 1).clamp(-1, 1)
        torch.testing.assert_close(out[i], expect, atol=1e-5, rtol=0)


def test_invalid_pixels_ignored_in_quantiles():
    d = _ramp()
    valid = torch.ones_like(d, dtype=torch.bool)
    valid[0, 0, 0, 0] = False  # the pixel holding depth 1
    base = dn.normalize_depth(d, valid)
    d2 = d.clone()
    d2[0, 0, 0, 0] = 1e9  # huge value in an invalid pixel
    changed = dn.normalize_depth(d2, valid)
    torch.testing.assert_close(changed[valid], base[valid])
    assert changed[0, 0, 0, 0] == 1  # finite invalid pixel: same affine map + clip
    # quantiles come from the 99 valid values 2..100: 2 + 0.02*98 = 3.96 -> -1
    assert base.flatten()[1] == -1 and base.flatten()[2] == -1  # depths 2 and 3 lie below 3.96
    torch.testing.assert_close(base.flatten()[3], torch.tensor((4 - 3.96) / (98.04 - 3.96) * 2 - 1))


def test_nonpositive_and_nonfinite_are_invalid():
    d = _ramp()
    ref = dn.normalize_depth(d)
    d2 = d.clone()
    d2[0, 0, 9, 7], d2[0, 0, 9, 8], d2[0, 0, 9, 9] = 0.0, float("nan"), float("inf")  # replace 98, 99, 100
    out = dn.normalize_depth(d2)
    assert torch.isfinite(out).all()
    assert out[0, 0, 9, 7] == -1 and out[0, 0, 9, 8] == -1 and out[0, 0, 9, 9] == -1
    # the quantiles now come from 1..97 only, so valid pixels differ from the full ramp
    assert not torch.allclose(out[0, 0, 5], ref[0, 0, 5])


def test_batch_independence():
    a, b = _ramp(), _ramp(lo=1000.0) * 3
    both = dn.normalize_depth(torch.cat([a, b]))
    torch.testing.assert_close(both[0:1], dn.normalize_depth(a))
    torch.testing.assert_close(both[1:2], dn.normalize_depth(b))
    # affine invariance: a scaled and shifted copy normalises to the same map
    torch.testing.assert_close(dn.normalize_depth(a * 7 + 3), dn.normalize_depth(a), atol=1e-5, rtol=0)


def test_degenerate_cases_are_zero_and_finite():
    const = torch.full((1, 1, 4, 4), 5.0)
    one_valid = _ramp()
    mask = torch.zeros_like(one_valid, dtype=torch.bool)
    mask[0, 0, 3, 3] = True
    none_valid = torch.zeros(1, 1, 4, 4)
    for d, m in ((const, None), (one_valid, mask), (none_valid, None)):
        out = dn.normalize_depth(d, m)
        assert torch.equal(out, torch.zeros_like(out))
    # a degenerate image in a batch does not disturb its neighbour
    out = dn.normalize_depth(torch.cat([const, _ramp()[..., :4, :4]]))
    assert torch.equal(out[0], torch.zeros_like(out[0])) and out[1].min() == -1


def test_float64_kept_and_shape_checks():
    assert dn.normalize_depth(_ramp().double()).dtype == torch.float64
    with pytest.raises(ValueError):
        dn.normalize_depth(torch.ones(10, 10))
    with pytest.raises(ValueError):
        dn.normalize_depth(_ramp(), torch.ones(1, 10, 10, dtype=torch.bool))


def test_large_map_beyond_torch_quantile_limit():
    d = torch.linspace(1, 2, 2**24 + 100).reshape(1, 1, 1, -1)
    out = dn.normalize_depth(d)
    assert torch.isfinite(out).all() and out.min() == -1 and out.max() == 1


def test_depth_to_unit_and_channels():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 6)
    assert dn.depth_to_unit(x).flatten().tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    rgb = dn.stack_to_rgb(x)
    assert rgb.shape == (1, 3, 1, 6) and torch.equal(rgb[:, 2:3], x)
    three = torch.stack([torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 5.0)])[None]
    torch.testing.assert_close(dn.mean_of_channels(three), torch.full((1, 1, 2, 2), 2.0))
    torch.testing.assert_close(dn.mean_of_channels(dn.stack_to_rgb(x)), x)
    with pytest.raises(ValueError):
        dn.stack_to_rgb(three)


def test_rgb_to_model_exact_values():
    px = np.array([0, 51, 127, 128, 255], dtype=np.uint8)
    img = np.stack([px, px, px], axis=-1)[None]  # [1,5,3] HWC
    out = dn.rgb_to_model(img)
    assert out.shape == (1, 3, 1, 5) and out.dtype == torch.float32
    expect = (px.astype(np.float32) / np.float32(127.5) - np.float32(1)).astype(np.float32)
    np.testing.assert_array_equal(out[0, 0, 0].numpy(), expect)
    assert out[0, 0, 0, 0] == -1 and out[0, 0, 0, 4] == 1
    assert out[0, 0, 0, 1].item() == pytest.approx(-0.6, abs=1e-7)
    # channel order preserved from HWC to CHW
    hwc = np.zeros((2, 2, 3), dtype=np.uint8)
    hwc[..., 0], hwc[..., 2] = 255, 0
    chw = dn.rgb_to_model(hwc)
    assert torch.all(chw[0, 0] == 1) and torch.all(chw[0, 2] == -1)
    # torch uint8 and float [0,255] tensors, channels-first, give the same numbers
    t_u8 = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    assert torch.equal(dn.rgb_to_model(t_u8), out)
    assert torch.equal(dn.rgb_to_model(t_u8.float()), out)
    assert dn.rgb_to_model(t_u8[0]).shape == (3, 1, 5)
    with pytest.raises(ValueError):
        dn.rgb_to_model(np.zeros((4, 4), dtype=np.uint8))


def test_latent_valid_mask_blocks():
    valid = torch.ones(1, 1, 16, 24, dtype=torch.bool)
    valid[0, 0, 3, 3] = False  # kills latent (0, 0)
    valid[0, 0, 15, 23] = False  # kills latent (1, 2)
    valid[0, 0, 8:16, 8:16] = True
    out = dn.latent_valid_mask(valid)
    assert out.dtype == torch.bool and out.shape == (1, 1, 2, 3)
    assert out[0, 0].tolist() == [[False, True, True], [True, True, False]]
    # [B,H,W] input and factor
    out2 = dn.latent_valid_mask(valid[:, 0], factor=4)
    assert out2.shape == (1, 1, 4, 6) and out2.sum() == 22
    # partial trailing block is dropped (latent size is floor(H/8))
    assert dn.latent_valid_mask(torch.ones(2, 1, 17, 9, dtype=torch.bool)).shape == (2, 1, 2, 1)
