"""Depth autoencoder (Fig. 1): shapes, diffusers save/load, input checks, and that it learns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agdepth.depth_autoencoder import DepthAutoencoder
from agdepth.training.losses import autoencoder_loss, feature_loss


def synthetic_depth(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Planar ramps with two constant-depth rectangles in front, each map normalised to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    xs = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    maps = []
    for _ in range(batch):
        a, b = (torch.rand(2, generator=g) * 2 - 1).tolist()
        d = 0.5 + 0.4 * a * xs + 0.4 * b * ys
        for _ in range(2):
            y0, x0 = (
                torch.randint(0, height // 2, (1,), generator=g).item(),
                torch.randint(0, width // 2, (1,), generator=g).item(),
            )
            h, w = (
                torch.randint(height // 4, height // 2, (1,), generator=g).item(),
                torch.randint(width // 4, width // 2, (1,), generator=g).item(),
            )
            d[y0 : y0 + h, x0 : x0 + w] = 0.5 * torch.rand(1, generator=g).item()
        maps.append(d)
    d = torch.stack(maps).unsqueeze(1)
    lo, hi = d.amin(dim=(1, 2, 3), keepdim=True), d.amax(dim=(1, 2, 3), keepdim=True)
    return (d - lo) / (hi - lo) * 2 - 1


def test_encode_features_shapes_and_strides() -> None:
    model = DepthAutoencoder()
    x = torch.zeros(2, 1, 32, 48)
    feats = model.encode_features(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 16, 32, 48),  # stride 1
        (2, 32, 16, 24),  # stride 2
        (2, 64, 8, 12),  # stride 4
        (2, 128, 4, 6),  # stride 8
        (2, 256, 2, 3),  # stride 16
    ]
    assert model.downsample_factor == 16
    assert tuple(model.encode(x).shape) == (2, 8, 2, 3)  # low-dimensional latent


def test_forward_shape_range_and_decode_consistency() -> None:
    torch.manual_seed(0)
    model = DepthAutoencoder().eval()
    x = synthetic_depth(2, 32, 32)
    with torch.no_grad():
        recon = model(x)
        via_decode = model.decode(model.encode_features(x))
    assert recon.shape == x.shape
    assert recon.abs().max() <= 1.0
    torch.testing.assert_close(recon, via_decode, rtol=0, atol=0)
    with pytest.raises(ValueError):
        model.decode(model.encode_features(x)[:4])


def test_save_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DepthAutoencoder(
        block_out_channels=(8, 16, 16, 32, 32), layers_per_block=2, norm_num_groups=4, latent_channels=4
    )
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]  # no pickles

    loaded = DepthAutoencoder.from_pretrained(tmp_path)
    assert tuple(loaded.config.block_out_channels) == (8, 16, 16, 32, 32)
    assert loaded.config.layers_per_block == 2 and loaded.config.latent_channels == 4
    x = synthetic_depth(2, 32, 32)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        for a, b in zip(model.encode_features(x), loaded.encode_features(x), strict=True):
            assert torch.equal(a, b)


def test_input_size_must_be_multiple_of_16() -> None:
    model = DepthAutoencoder()
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 1, 40, 32))
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode_features(torch.zeros(1, 1, 32, 24))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 32, 32))  # wrong channel count
    with pytest.raises(ValueError):
        DepthAutoencoder(block_out_channels=(16, 30), norm_num_groups=8)  # groups must divide channels


def test_frozen_autoencoder_passes_feature_gradient_to_input() -> None:
    # How the trainer uses it: frozen AE, gradients reach d_hat only; fp16 input to an fp32 model is accepted.
    torch.manual_seed(0)
    model = DepthAutoencoder().requires_grad_(False)
    target = synthetic_depth(2, 32, 32)
    pred = (target + 0.1 * torch.randn_like(target)).half().requires_grad_(True)
    with torch.no_grad():
        feats_target = model.encode_features(target)
    loss = feature_loss(model.encode_features(pred), feats_target)
    loss.backward()
    assert loss.item() > 0
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_autoencoder_loss_mask_and_terms() -> None:
    target = synthetic_depth(1, 16, 16)
    recon = target.clone()
    recon[..., :4, :] = 5.0  # corrupt the top rows ...
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., :4, :] = False  # ... and mask them out
    assert autoencoder_loss(recon, target, mask).item() == pytest.approx(0.0, abs=1e-7)
    # gradient_weight=0: plain L1, a constant offset of 0.25 gives exactly 0.25 (its gradients match exactly).
    assert autoencoder_loss(target + 0.25, target, gradient_weight=0.0).item() == pytest.approx(0.25, abs=1e-6)
    assert autoencoder_loss(target + 0.25, target).item() == pytest.approx(0.25, abs=1e-6)


def test_few_adam_steps_reduce_reconstruction_loss() -> None:
    torch.manual_seed(0)
    model = DepthAutoencoder()
    x = synthetic_depth(8, 32, 32, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        initial = autoencoder_loss(model(x), x).item()
    for _ in range(30):
        loss = autoencoder_loss(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = autoencoder_loss(model(x), x).item()
    assert final < 0.7 * initial, (initial, final)
