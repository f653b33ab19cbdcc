"""depth-bench roofline: FLOP counts against analytic formulas, scaling on the bundled model, report arithmetic."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from agdepth import default_checkpoint
from agdepth.artifacts.checkpoint import load_checkpoint
from agdepth.bench import roofline as rl
from agdepth.networks import NETWORK_NAMES


@pytest.fixture(scope="module")
def models() -> Any:
    return load_checkpoint(default_checkpoint())


def test_linear_and_conv_match_the_analytic_count() -> None:
    n, a, b = 7, 12, 5
    assert rl.count_flops(torch.nn.Linear(a, b), [torch.randn(n, a)]) == 2 * n * a * b
    # stride 2, padding 1: Hout = (17 + 2 - 3) // 2 + 1 = 9, Wout = (13 + 2 - 3) // 2 + 1 = 7; the bias is not counted
    batch, cin, cout, k = 2, 3, 5, 3
    conv = torch.nn.Conv2d(cin, cout, k, stride=2, padding=1, bias=True)
    assert rl.count_flops(conv, [torch.randn(batch, cin, 17, 13)]) == 2 * cout * 9 * 7 * cin * k * k * batch


def test_attention_is_counted_on_cpu() -> None:
    # CPU's fused SDPA kernel has no FLOP formula: counted as-is it would be 0, not QK^T + AV = 4·B·H·Sq·Sk·D
    class Attn(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, k)

    bsz, heads, sq, sk, d = 2, 3, 10, 6, 8
    flops = rl.count_flops(Attn(), [torch.randn(bsz, heads, sq, d), torch.randn(bsz, heads, sk, d)])
    assert flops == 4 * bsz * heads * sq * sk * d


def test_timers_use_the_median_after_warmup(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count(step=0.5)  # every perf_counter read advances 0.5 s: each timed call takes 0.5 s
    monkeypatch.setattr(rl.time, "perf_counter", lambda: next(clock))
    assert rl.matmul_peak("cpu", n=8, repeats=3) == pytest.approx(2 * 8**3 / 0.5)
    calls = []
    seconds = rl.measure_call_seconds(lambda x: calls.append(x), [torch.zeros(1)], repeats=4, warmup=2)
    assert seconds == [0.5] * 4 and len(calls) == 6


def test_network_flops_scale_with_batch_and_size(models: Any) -> None:
    f = rl.vae_scale_factor(models.vae)
    assert 32 % f == 0
    one, two = rl.network_flops(models, 1, 32, 32), rl.network_flops(models, 2, 32, 32)
    assert set(one) == set(NETWORK_NAMES)
    assert all(two[n] == 2 * one[n] > 0 for n in NETWORK_NAMES)
    # convs and linears grow with the pixel count (4x), self-attention faster
    assert rl.network_flops(models, 1, 64, 64)["unet"] >= 4 * one["unet"]


def test_roofline_report(models: Any) -> None:
    steps, ensemble = 3, 2
    rep = rl.roofline(models, resolution=62, steps=steps, ensemble=ensemble, repeats=2, peak_n=256)
    assert rep["resolution"] == 64  # rounded up to a multiple of the scale factor (4)
    peak = rep["measured_peak"]["flops_per_s"]
    ref = rl.network_flops(models, 1, 64, 64)
    assert peak > 0
    for name in NETWORK_NAMES:
        r = rep["networks"][name]
        assert r["flops_per_call"] == ref[name] > 0 and r["seconds_per_call"] > 0 and r["params"] > 0
        assert r["achieved_flops_per_s"] == pytest.approx(r["flops_per_call"] / r["seconds_per_call"])
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_flops_per_s"] / peak)
        assert r["rtx3090_projection_seconds_at_peak"] == pytest.approx(r["flops_per_call"] / 71e12)
        assert r["rtx3090_projection_seconds_at_measured_fraction"] == pytest.approx(
            r["flops_per_call"] / (71e12 * min(r["fraction_of_peak"], 1.0)))
    assert sum(rep["networks"][n]["params"] for n in NETWORK_NAMES) <= sum(
        p.numel() for m in (models.unet, models.vae) for p in m.parameters())
    p = rep["pipeline"]
    assert p["flops_per_image"] == ref["vae_encoder"] + steps * ensemble * ref["unet"] + ensemble * ref["vae_decoder"]
    assert p["rtx3090_projection_seconds_at_peak"] == pytest.approx(p["flops_per_image"] / 71e12)
    assert p["rtx3090_projection_seconds_at_measured_fraction"] >= p["rtx3090_projection_seconds_at_peak"]
    md = rl.markdown(rep)
    assert "projection, not measured" in md and "Measured matmul peak" in md
    assert all(f"| {n} |" in md for n in NETWORK_NAMES)
