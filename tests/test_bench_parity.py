"""depth-bench parity: Polygraphy's comparator gates each network; end to end against PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agdepth import default_checkpoint
from agdepth.bench import parity
from agdepth.bench.cli import main
from agdepth.export import ExportOptions, Manifest, export_checkpoint


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "engines"
    export_checkpoint(default_checkpoint(), out, ExportOptions(fp16=True, max_resolution=96), progress=lambda s: None)
    return out


@pytest.mark.slow
def test_parity_table(engines: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["parity", "--engine", str(engines), "--count", "1", "--settings", "1x1",
                                    "--md", str(tmp_path / "p.md")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "p.md").read_text()
    rows = ("| unet | onnxruntime-fp32 |", "| vae_decoder | onnxruntime-fp16 |", "| 1x1 trailing | onnxruntime-fp16 |")
    for row in rows:
        assert row in md


@pytest.mark.slow
def test_comparator_gates_on_the_thresholds(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = parity.compare_networks(Manifest.load(engines), default_checkpoint(), log=lambda s: None)
    assert all(r["passed"] for r in rows)
    assert {r["backend"] for r in rows} == {"onnxruntime-fp32", "onnxruntime-fp16", "onnxruntime-fp16-trt"}
    fp16 = [r for r in rows if r["backend"] == "onnxruntime-fp16"]
    monkeypatch.setitem(parity.SNR_DB, "fp16", max(r["snr_db"] for r in fp16) + 1)  # stricter than fp16 can be
    rows = parity.compare_networks(Manifest.load(engines), default_checkpoint(), log=lambda s: None)
    assert not any(r["passed"] for r in rows if r["backend"] == "onnxruntime-fp16")
    assert all(r["passed"] for r in rows if r["backend"] in ("onnxruntime-fp32", "onnxruntime-fp16-trt"))
