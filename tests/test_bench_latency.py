"""The latency suite: what it times, that timing does not change the result, backend choice, peak memory, the CLI.

No test here asserts on a wall time or a ratio of wall times: those are benchmark results, and a busy machine moves
them. What the tests check is the report's shape and arithmetic, counted network calls, and that ``--quick``'s exit
status depends only on the checks that hold on any machine.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agdepth import default_checkpoint
from agdepth.bench.latency import (
    TIMED,
    BackendChoice,
    LatencySettings,
    TimedBackend,
    bench_images,
    choose_backends,
    markdown,
    measure,
    peak_host_rss,
    relation,
    relations_markdown,
    run_latency,
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
    out = DepthPipeline(timed)(images, steps=3, ensemble=2, timestep_spacing="trailing", seed=0,  # type: ignore[arg-type]
                               batch_size=0)
    ref = pipe(images, steps=3, ensemble=2, timestep_spacing="trailing", seed=0, batch_size=0)
    np.testing.assert_array_equal(out.depth, ref.depth)
    assert timed.calls == 1 + 3 + 1  # one encode, one U-Net call per step (all 4 rows batched), one decode
    assert timed.calls_by_network == {"encode": 1, "denoise": 3, "decode": 1}
    assert 0 < timed.network_seconds < out.timings["total"]  # the network calls lie inside the run's own clock


def test_measure_reports_stages_ratios_and_memory(pipe: DepthPipeline) -> None:
    s = LatencySettings(resolution=64, steps=2, ensemble=3, spacing="trailing", images=2, warmup=1, repeats=3)
    r = measure(pipe, s)
    assert set(r["stages"]) == set(TIMED)
    for stage in TIMED:
        assert 0 <= r["stages"][stage]["p50"] <= r["stages"][stage]["p90"]
    assert r["stages"]["ensemble"]["p50"] > 0  # 3 members per image are ensembled
    assert r["unet_per_step_p50"] == pytest.approx(r["stages"]["unet"]["p50"] / 2)
    assert r["images_per_s"] == pytest.approx(2 / r["stages"]["total"]["p50"])
    assert 0 < r["overhead_fraction_p50"] < 1
    assert r["network_calls_per_run"] == 1 + 2 + 1 and r["unet_calls_per_run"] == 2
    assert r["peak_rss_mib"] is None or r["peak_rss_mib"] > 50
    assert r["device_peak_mib"] is None  # CPU


def test_measure_passes_the_settings_batch_size_to_the_pipeline(pipe: DepthPipeline) -> None:
    """``batch_size`` caps the rows per network call (0 = all at once); ``pipeline_batch_size`` overrides it."""
    s = LatencySettings(resolution=64, steps=2, ensemble=3, spacing="trailing", images=2, warmup=0, repeats=1)
    assert s.batch_size == 0
    assert measure(pipe, s)["unet_calls_per_run"] == 2  # 6 rows in one call per step
    assert measure(pipe, replace(s, batch_size=3))["unet_calls_per_run"] == 2 * 2  # one image's 3 members per call
    assert measure(pipe, replace(s, batch_size=1))["unet_calls_per_run"] == 2 * 6  # one row per call
    assert measure(pipe, replace(s, batch_size=1), pipeline_batch_size=0)["unet_calls_per_run"] == 2


def test_run_latency_report_and_markdown(pipe: DepthPipeline) -> None:
    s = LatencySettings(resolution=64, steps=1, ensemble=2, spacing="trailing", images=2, warmup=0, repeats=1,
                        batch_size=2)
    report = run_latency([BackendChoice("torch", pipe), BackendChoice("tensorrt", None, "no TensorRT here")], s,
                         progress=lambda _: None)
    assert set(report) == {"settings", "backends", "summary"}
    assert report["settings"] == {"resolution": 64, "steps": 1, "ensemble": 2, "spacing": "trailing", "vae": None,
                                  "seed": 0, "images": 2, "batch_size": 2, "warmup": 0, "repeats": 1}
    torch_row = report["backends"][0]
    assert torch_row["speedup_vs_torch"] == 1.0 and torch_row["unet_calls_per_run"] == 2  # 4 rows, 2 per call
    assert report["summary"] == {"overhead_backend": "torch", "overhead_fraction": torch_row["overhead_fraction_p50"]}
    md = markdown(report)
    assert "2 image(s) per call, at most 2 row(s) per network call" in md
    assert "| tensorrt | skipped: no TensorRT here |" in md
    assert f"on the fastest backend (torch): {100 * torch_row['overhead_fraction_p50']:.1f}% of pipeline time" in md
    assert not re.search(r"\bmet\b|target", md, re.IGNORECASE)  # measured values, no verdicts
    unbatched = {**report, "settings": {**report["settings"], "batch_size": 0}}
    assert "2 image(s) per call, all rows in one network call" in markdown(unbatched)


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


@pytest.mark.slow
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
    assert report["summary"]["onnx_speedup_vs_torch"] == rows["onnx-fp32"]["speedup_vs_torch"]
    text = md.read_text()
    assert "Command: `depth-bench" in text and "skipped" in text
    assert f"ONNX Runtime fp32 vs PyTorch eager, whole pipeline: {rows['onnx-fp32']['speedup_vs_torch']:.2f}x" in text


def test_relations_markdown_says_which_ones_decide() -> None:
    text = relations_markdown([
        relation("U-Net calls: 1 in a 1-step run, 10 in a 10-step run", True, "counted calls", [1, 10], "calls"),
        relation("1-step run < 10-step run (total p50)", False, "wall time", [0.0123, 0.0101], "s"),
        relation("the Pareto front is not empty", True, "report"),
    ])
    assert text.splitlines() == [
        "- U-Net calls: 1 in a 1-step run, 10 in a 10-step run: holds (1, 10 calls) [counted calls, checked]",
        "- 1-step run < 10-step run (total p50): DOES NOT HOLD (12.30 ms, 10.10 ms) [wall time, reported only: a "
        "busy machine can invert it]",
        "- the Pareto front is not empty: holds [report, checked]",
    ]


def _invoke_quick_latency(tmp_path: Path, work_dir: Path) -> tuple[int, str, dict, str]:
    from agdepth.bench.cli import main

    js, md = tmp_path / "lat.json", tmp_path / "lat.md"
    res = CliRunner().invoke(main, ["latency", "--quick", "--backends", "torch", "--work-dir", str(work_dir),
                                    "--json", str(js), "--md", str(md)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output, json.loads(js.read_text()), md.read_text()


def test_quick_exit_status_ignores_wall_time(tmp_path: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick mode's relations: counted U-Net calls decide (exact on any machine); wall-time orders are measured
    and reported but never decide. What a busy machine does (every wall-time order inverted) does not fail --quick; a
    wrong call count does."""
    from agdepth.bench import latency as lat

    original, measured = lat.relations, []

    def real(pipe: DepthPipeline, resolution: int) -> list[dict]:  # measured once, shared by both runs
        if not measured:
            measured.extend(original(pipe, resolution, repeats=1))
        return measured

    def busy(pipe: DepthPipeline, resolution: int, repeats: int = 3) -> list[dict]:
        return [r if r["gate"] else {**r, "holds": False} for r in real(pipe, resolution)]

    monkeypatch.setattr(lat, "relations", busy)
    code, output, report, md = _invoke_quick_latency(tmp_path, work_dir)
    counted = [r for r in measured if r["basis"] == "counted calls"]
    assert [r["values"] for r in counted] == [[1, 10], [2, 10]]  # 1 vs 10 steps; 2 steps x 5 members batched vs not
    assert all(r["gate"] and r["holds"] and r["unit"] == "calls" for r in counted)
    for r in (r for r in measured if r["basis"] == "wall time"):  # as measured, whichever way it came out
        assert r["unit"] == "s" and len(r["values"]) == 2 and all(v > 0 for v in r["values"])
        assert r["holds"] == (r["values"][0] < r["values"][1]) and not r["gate"]
    assert code == 0, output
    timing = [r for r in report["relations"] if r["basis"] == "wall time"]
    assert len(timing) == 2 and not any(r["holds"] or r["gate"] for r in timing)
    assert all(r["holds"] for r in report["relations"] if r["gate"])
    assert "every requested backend ran or was skipped with the reason: holds" in md
    assert md.count("DOES NOT HOLD") == 2 and md.count("reported only") == 2
    assert "note: wall-time relation(s) did not hold on this run" in output and "error:" not in output

    def miscounted(pipe: DepthPipeline, resolution: int, repeats: int = 3) -> list[dict]:
        return [{**r, "holds": False} if r["basis"] == "counted calls" else r for r in real(pipe, resolution)]

    monkeypatch.setattr(lat, "relations", miscounted)
    code, output, report, md = _invoke_quick_latency(tmp_path, work_dir)
    assert code == 1
    assert "error: check(s) that hold on any machine failed: U-Net calls: 1 in a 1-step run" in output


def test_all_runs_every_suite_when_one_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A suite that raises fails `depth-bench all` (exit 1, named, its report says why) after the others ran."""
    from agdepth.bench import cli

    def boom(*args: object, **kw: object) -> None:
        raise RuntimeError("out of memory")

    for suite in ("latency_suite", "frontier_suite", "ensemble_suite"):
        monkeypatch.setattr(cli, suite, boom)
    out = tmp_path / "bench"
    res = CliRunner().invoke(cli.main, ["all", "--quick", "--out", str(out)])
    assert res.exit_code == 1, res.output
    for suite in ("latency", "frontier", "ensemble"):
        assert f"{suite}: raised RuntimeError: out of memory" in res.output
        report = json.loads((out / f"bench_{suite}.json").read_text())
        assert report["error"] == "raised RuntimeError: out of memory" and {"command", "machine"} <= set(report)
        assert "did not run to the end" in (out / f"bench_{suite}.md").read_text()
    roofline = json.loads((out / "bench_roofline.json").read_text())  # ran in full, and its checks held
    assert roofline["relations"] and all(r["holds"] for r in roofline["relations"])
    assert "roofline:" not in res.output.split("error: check(s)")[-1]


@pytest.mark.slow
def test_quick_mode_runs_every_suite_and_gates_on_correctness_only(tmp_path: Path, work_dir: Path) -> None:
    """`depth-bench all --quick` (the CI mode): a report per suite, with the command and machine, exit 0 because every
    check that holds on any machine holds: report shapes, counted U-Net calls and FLOPs, the ensembling objective.
    The wall-time relations (1 step < 10 steps, batched members cheaper, 1x1 < 4x2) are in the reports, measured,
    whichever way they came out on this machine."""
    from agdepth.bench.cli import main

    out = tmp_path / "bench"
    res = CliRunner().invoke(main, ["all", "--quick", "--out", str(out), "--work-dir", str(work_dir)])
    assert res.exit_code == 0, res.output
    reports = {}
    for suite in ("latency", "frontier", "roofline", "ensemble"):
        report = reports[suite] = json.loads((out / f"bench_{suite}.json").read_text())
        assert {"command", "date", "machine", "versions", "relations"} <= set(report)
        text = (out / f"bench_{suite}.md").read_text()
        assert text.startswith("# ") and "Checks and relations" in text
        for r in report["relations"]:
            assert set(r) == {"relation", "basis", "gate", "holds", "values", "unit"}
            assert r["gate"] == (r["basis"] != "wall time")
            assert r["holds"] or not r["gate"], r  # exit 0: every gate held
            assert f"{r['relation']}: {'holds' if r['holds'] else 'DOES NOT HOLD'}" in text
    latency = reports["latency"]
    counted = [r["values"] for r in latency["relations"] if r["basis"] == "counted calls"]
    assert counted == [[1, 10], [2, 10]]
    assert [r["relation"] for r in latency["relations"] if not r["gate"]] == [
        "1-step run < 10-step run (total p50)", "U-Net per member: 5 members in one call < one call each"]
    assert {r["backend"] for r in latency["backends"]} == {"torch", "onnx-fp32", "onnx-fp16", "tensorrt", "torch-fp16"}
    frontier = reports["frontier"]
    assert frontier["front"]
    assert [r["relation"] for r in frontier["relations"] if not r["gate"]] == [
        "1x1 faster than 4x2 (8x the U-Net calls)"]
    from PIL import Image

    assert Image.open(out / "bench_frontier.png").format == "PNG"
    assert sum(r["basis"] == "objective" for r in reports["ensemble"]["relations"]) == 2  # vs each diffusers run
    assert set(reports["roofline"]["networks"]) == {"unet", "vae_encoder", "vae_decoder"}
