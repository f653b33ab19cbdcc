"""The latency suite: what it times, that timing does not change the result, backend choice, peak memory, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agdepth import default_checkpoint
from agdepth.bench.latency import (
    TIMED,
    LatencySettings,
    TimedBackend,
    bench_images,
    choose_backends,
    measure,
    peak_host_rss,
)
from agdepth.runtime import DepthPipeline


@pytest.fixture(scope="module")
def pipe() -> DepthPipeline:
    return DepthPipeline.from_checkpoint(default_checkpoint())


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the CLI tests: the latency suite exports the ONNX graphs here once and reuses them."""
    return tmp_path_factory.mktemp("bench_work")


def test_timed_backend_counts_every_network_call_and_leaves_depth_unchanged(pipe: DepthPipeline) -> None:
    images = bench_images(2, 64)
    timed = TimedBackend(pipe.backend)
    out = DepthPipeline(timed)(images, steps=3, ensemble=2, timestep_spacing="trailing", seed=0)  # type: ignore[arg-type]
    ref = pipe(images, steps=3, ensemble=2, timestep_spacing="trailing", seed=0)
    np.testing.assert_array_equal(out.depth, ref.depth)
    assert timed.calls == 1 + 3 + 1  # one encode, one U-Net call per step (all 4 rows batched), one decode
    assert 0 < timed.network_seconds < out.timings["total"]


def test_measure_reports_stages_ratios_and_memory(pipe: DepthPipeline) -> None:
    s = LatencySettings(resolution=64, steps=2, ensemble=3, spacing="trailing", batch_size=2, warmup=1, repeats=3)
    r = measure(pipe, s)
    assert set(r["stages"]) == set(TIMED)
    for stage in TIMED:
        assert 0 <= r["stages"][stage]["p50"] <= r["stages"][stage]["p90"]
    assert r["stages"]["ensemble"]["p50"] > 0  # 3 members per image are ensembled
    assert r["unet_per_step_p50"] == pytest.approx(r["stages"]["unet"]["p50"] / 2)
    assert r["images_per_s"] == pytest.approx(2 / r["stages"]["total"]["p50"])
    assert 0 < r["overhead_fraction_p50"] < 1
    assert r["network_calls_per_run"] == 1 + 2 + 1
    assert r["peak_rss_mib"] is None or r["peak_rss_mib"] > 50
    assert r["device_peak_mib"] is None  # CPU


def test_peak_host_rss_sees_a_transient_allocation() -> None:
    with peak_host_rss() as base:
        pass
    with peak_host_rss() as mem:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched, then freed before the block ends
        del block
    if mem["peak_rss_mib"] is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert base["peak_rss_mib"] is not None
    assert mem["peak_rss_mib"] >= base["peak_rss_mib"] + 60


def test_report_header_names_the_gpu_that_timed_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from agdepth.machine import machine_info, report_header

    class Props:
        name, total_memory = "NVIDIA GeForce RTX 3090", 24 * 2**30

    meta = {"command": "depth-bench latency", "date": "2026-11-26", "versions": {}}
    here = report_header({**meta, "machine": machine_info()})[2]
    assert here.endswith("; no GPU  ") != torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Props)
    gpu = report_header({**meta, "machine": machine_info()})[2]
    assert "GPU: NVIDIA GeForce RTX 3090, 24576 MiB" in gpu


def test_backends_that_cannot_run_are_skipped_with_the_reason(tmp_path: Path) -> None:
    choices = choose_backends(["torch", "torch-fp16", "tensorrt"], None, None, None, "cpu", None, 64, 10, tmp_path,
                              print)
    by_name = {c.name: c for c in choices}
    assert by_name["torch"].pipeline is not None
    assert by_name["torch-fp16"].pipeline is None and "CUDA" in str(by_name["torch-fp16"].skipped)
    trt = by_name["tensorrt"]
    if trt.pipeline is None:
        assert "TensorRT" in str(trt.skipped) or "CUDA" in str(trt.skipped) or "GPU" in str(trt.skipped)
    with pytest.raises(ValueError, match="onnx-fp32"):
        choose_backends(["tensorflow"], None, None, None, "cpu", None, 64, 10, tmp_path, print)
    with pytest.raises(ValueError, match="random-weights"):
        choose_backends(["onnx-fp32"], None, None, "sd2", "cpu", None, 64, 10, tmp_path, print)


def test_latency_cli_compares_backends_in_one_report(tmp_path: Path, work_dir: Path) -> None:
    js, md = tmp_path / "lat.json", tmp_path / "lat.md"
    from agdepth.bench.cli import main

    res = CliRunner().invoke(main, ["latency", "--backends", "torch,onnx-fp32,torch-fp16", "--repeats", "2",
                                    "--warmup", "1", "--work-dir", str(work_dir), "--json", str(js),
                                    "--md", str(md)])
    assert res.exit_code == 0, res.output
    report = json.loads(js.read_text())
    assert report["settings"]["resolution"] == 64 and report["settings"]["steps"] == 1  # the bundled defaults
    rows = {r["backend"]: r for r in report["backends"]}
    assert rows["torch"]["speedup_vs_torch"] == pytest.approx(1.0)
    assert rows["onnx-fp32"]["speedup_vs_torch"] == pytest.approx(
        rows["torch"]["stages"]["total"]["p50"] / rows["onnx-fp32"]["stages"]["total"]["p50"])
    assert "skipped" in rows["torch-fp16"]
    assert report["targets"]["onnx_1_2x_faster"] == (report["targets"]["onnx_speedup_vs_torch"] >= 1.2)
    text = md.read_text()
    assert "Command: `depth-bench" in text and "target ≥1.2x" in text and "skipped" in text


def test_quick_mode_runs_every_suite_and_checks_relations(tmp_path: Path, work_dir: Path) -> None:
    """`depth-bench all --quick` (the CI mode): a report per suite, with the command and machine, and the relations
    that hold on any machine (1 step < 10 steps, batched members cheaper, frontier order, ensembling objective)."""
    from agdepth.bench.cli import main

    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["all", "--quick", "--out", str(out), "--work-dir", str(work_dir)])
    assert res.exit_code == 0, res.output
    for suite in ("latency", "frontier", "roofline", "ensemble"):
        report = json.loads((out / f"bench_{suite}.json").read_text())
        assert {"command", "date", "machine", "versions"} <= set(report)
        assert (out / f"bench_{suite}.md").read_text().startswith("# ")
    latency = json.loads((out / "bench_latency.json").read_text())
    assert [r["holds"] for r in latency["relations"]] == [True, True]
    assert {r["backend"] for r in latency["backends"]} == {"torch", "onnx-fp32", "onnx-fp16", "tensorrt", "torch-fp16"}
    frontier = json.loads((out / "bench_frontier.json").read_text())
    assert frontier["front"] and all(r["holds"] for r in frontier["relations"])
    from PIL import Image

    assert Image.open(out / "bench_frontier.png").format == "PNG"
    ensemble = json.loads((out / "bench_ensemble.json").read_text())
    assert ensemble["relations"] and all(r["holds"] for r in ensemble["relations"])
    roofline = json.loads((out / "bench_roofline.json").read_text())
    assert set(roofline["networks"]) == {"unet", "vae_encoder", "vae_decoder"}
