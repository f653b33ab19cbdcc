"""depth-eval: per-sample scoring, failures counted, resume, settings guard, saved predictions, table assembly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import agdepth
from agdepth.data.base import SampleReadError
from agdepth.evaluation.cli import main
from agdepth.evaluation.datasets import EvalDataset, EvalSample, ProceduralEvalDataset
from agdepth.evaluation.protocol import PredictionsDir, evaluate_dataset, resize_to, score
from agdepth.evaluation.registry import build_dataset
from agdepth.evaluation.tables import PAPER_TABLE1, assemble, load_results


def _sample(gt: np.ndarray, mask: np.ndarray | None = None, name: str = "a.png") -> EvalSample:
    gt = np.asarray(gt, np.float32)
    return EvalSample(name, np.zeros((*gt.shape, 3), np.uint8), gt, gt > 0 if mask is None else mask)


def test_score_hand_computed_alignment_and_clipping() -> None:
    s = _sample(np.array([[1.0, 2.0, 3.0]]))
    pred = np.array([[0.0, 0.0, 1.0]])
    # least squares: t = 1.5, s = 1.5 -> aligned [1.5, 1.5, 3]; AbsRel = (0.5/1 + 0.5/2 + 0) / 3
    assert score(pred, s, (0.1, 10.0), "least_squares", dense=False)["abs_rel"] == pytest.approx(0.25)
    # clipped to the range's 1.2 m: [1.2, 1.2, 1.2]; AbsRel = (0.2 + 0.8/2 + 1.8/3) / 3
    assert score(pred, s, (0.1, 1.2), "least_squares", dense=False)["abs_rel"] == pytest.approx(0.4)


def test_score_is_affine_invariant_in_the_chosen_space() -> None:
    gt = np.linspace(1, 5, 48, dtype=np.float32).reshape(6, 8)
    depth_like = score(3 * gt + 2, _sample(gt), (0.5, 10), "least_squares", dense=True)
    assert depth_like["abs_rel"] < 1e-6 and depth_like["delta1"] == 1.0
    assert "edge_f1" in depth_like  # dense ground truth gets the boundary metric
    disp_like = score(2 / gt + 0.1, _sample(gt), (0.5, 10), "least_squares_disparity", dense=False)
    assert disp_like["abs_rel"] < 1e-6 and "edge_f1" not in disp_like


def test_predictions_are_resized_to_the_ground_truth() -> None:
    ramp = np.tile(np.linspace(0, 1, 8), (4, 1))
    assert resize_to(ramp, (4, 8)) is not None and resize_to(ramp, (8, 16)).shape == (8, 16)
    gt = np.tile(np.linspace(1, 2, 16, dtype=np.float32), (8, 1))
    coarse = gt[::2, ::2]
    assert score(coarse, _sample(gt), (0.5, 3), "least_squares", dense=False)["abs_rel"] < 0.02


class _Toy(EvalDataset):
    """Four samples: two good, one whose ground truth file is corrupt, one with nothing valid."""

    name = "toy"
    depth_range = (0.1, 10.0)
    expected_count = 5

    def __init__(self) -> None:
        yy, xx = np.mgrid[0:6, 0:8]
        self.gt = [(1 + xx + yy).astype(np.float32), (2 + 0.5 * xx).astype(np.float32)]

    def names(self) -> list[str]:
        return ["scene1/a.png", "scene1/b.png", "scene2/c.png", "scene2/d.png"]

    def load(self, index: int) -> EvalSample:
        if index == 2:
            raise SampleReadError("scene2/c_depth.png", "truncated PNG")
        if index == 3:
            return _sample(np.zeros((6, 8)), name=self.names()[3])
        return _sample(self.gt[index], name=self.names()[index])


def _noisy(sample: EvalSample) -> np.ndarray:
    return sample.depth * 2 + np.random.default_rng(len(sample.name)).normal(0, 0.1, sample.depth.shape)


def test_failures_are_listed_and_counted(tmp_path: Path) -> None:
    summary = evaluate_dataset(_Toy(), _noisy, tmp_path, {"source": "test"}, progress=False)
    assert summary["count"] == {"total": 4, "scored": 2, "failed": 2, "missing": 0, "corrupt": 1, "invalid": 0,
                                "empty": 1}
    failed = {f["name"]: f for f in summary["failed"]}
    assert "c_depth.png" in failed["scene2/c.png"]["reason"] and failed["scene2/d.png"]["status"] == "empty"
    assert summary["notes"] == ["toy: 4 samples, the official split has 5"]
    with (tmp_path / "per_sample.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["ok", "ok", "corrupt", "empty"]
    means = np.mean([float(r["abs_rel"]) for r in rows[:2]])
    assert summary["metrics"]["abs_rel"] == pytest.approx(means)
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert (tmp_path / "row.md").read_text().startswith("| model | toy | ")


class _Interrupt(Exception):
    pass


def test_resume_skips_scored_samples_and_matches_a_fresh_run(tmp_path: Path) -> None:
    calls: list[str] = []

    def flaky(sample: EvalSample) -> np.ndarray:
        calls.append(sample.name)
        if sample.name == "scene1/b.png" and len(calls) == 2:
            raise _Interrupt  # the first run dies after scoring one sample
        return _noisy(sample)

    with pytest.raises(_Interrupt):
        evaluate_dataset(_Toy(), flaky, tmp_path / "r", {"source": "test"}, progress=False)
    calls.clear()
    resumed = evaluate_dataset(_Toy(), flaky, tmp_path / "r", {"source": "test"}, progress=False)
    # a.png was kept; c.png fails before predict; d.png is predicted, then has no valid pixel
    assert calls == ["scene1/b.png", "scene2/d.png"]
    fresh = evaluate_dataset(_Toy(), _noisy, tmp_path / "f", {"source": "test"}, progress=False)
    assert resumed["metrics"] == pytest.approx(fresh["metrics"])


def test_other_settings_are_refused_unless_overwritten(tmp_path: Path) -> None:
    evaluate_dataset(_Toy(), _noisy, tmp_path, {"source": "a", "steps": 1}, progress=False)
    with pytest.raises(ValueError, match=r"steps: 1 -> 4"):
        evaluate_dataset(_Toy(), _noisy, tmp_path, {"source": "a", "steps": 4}, progress=False)
    out = evaluate_dataset(_Toy(), _noisy, tmp_path, {"source": "a", "steps": 4}, progress=False, overwrite=True)
    assert out["settings"]["steps"] == 4


def test_saved_predictions_missing_and_corrupt(tmp_path: Path) -> None:
    preds = PredictionsDir(tmp_path)
    s = _sample(np.ones((2, 2)), name="x/y.png")
    with pytest.raises(FileNotFoundError) as e:
        preds(s)
    assert e.value.filename == str(tmp_path / "x" / "y.npy")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "y.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SampleReadError, match="y.npy"):
        preds(s)


def test_cli_scores_saved_predictions_of_a_procedural_domain(tmp_path: Path) -> None:
    ds = ProceduralEvalDataset("tabletop", count=3, size=(32, 32))
    for i in range(2):  # ground truth as the "prediction" (perfect up to clipping); the third one is missing
        s = ds.load(i)
        (tmp_path / "p" / Path(s.name).parent).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "p" / Path(s.name).with_suffix(".npy"), np.where(s.mask, s.depth, 1.0))
    args = ["--dataset", "procedural-tabletop", "--predictions", str(tmp_path / "p"), "--count", "3", "--size", "32",
            "--out", str(tmp_path / "out"), "--no-progress"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output  # a failed sample fails the run ...
    assert "2 of 3 samples scored, 1 failed" in r.output and "1 missing" in r.output
    r = CliRunner().invoke(main, [*args, "--allow-failures"])  # ... unless allowed; resumes: settings compare equal
    assert r.exit_code == 0 and "resuming: 2 of 3 samples already scored" in r.output, r.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["metrics"]["abs_rel"] < 1e-6 and summary["metrics"]["edge_f1"] == pytest.approx(1.0)
    assert str(tmp_path / "p" / "tabletop" / "test" / "000002.npy") in summary["failed"][0]["reason"]


def test_cli_model_predictions_rescore_identically(tmp_path: Path) -> None:
    common = ["--dataset", "procedural-forest", "--count", "2", "--size", "32", "--no-progress"]
    r = CliRunner().invoke(main, [*common, "--checkpoint", "agdepth/weights/tiny", "--steps", "1", "--ensemble", "1",
                                  "--out", str(tmp_path / "model"), "--save-predictions"])
    assert r.exit_code == 0, r.output
    r2 = CliRunner().invoke(main, [*common, "--predictions", str(tmp_path / "model" / "predictions"),
                                   "--out", str(tmp_path / "again")])
    assert r2.exit_code == 0, r2.output
    a, b = (json.loads((tmp_path / d / "summary.json").read_text())["metrics"] for d in ("model", "again"))
    assert a == pytest.approx(b, rel=1e-5)
    settings = json.loads((tmp_path / "model" / "settings.json").read_text())
    assert settings["source"]["steps"] == 1 and settings["source"]["checkpoint"] == "agdepth/weights/tiny"


def test_retrained_weights_at_the_same_path_are_not_resumed(tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree("agdepth/weights/tiny", ckpt)
    args = ["--dataset", "procedural-forest", "--count", "1", "--size", "32", "--no-progress", "--checkpoint",
            str(ckpt), "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(main, args).exit_code == 0
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "resuming: 1 of 1" in r.output, r.output
    weights = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes())  # "retrained": same path, new file
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "other settings" in r.output and "weights" in r.output, r.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_cli_takes_at_most_one_source_and_defaults_to_the_bundled_model(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["--dataset", "procedural-forest", "--engine", ".", "--predictions", "."])
    assert r.exit_code == 2 and "at most one of --engine, --checkpoint, --predictions" in r.output
    out = tmp_path / "bundled"
    r = CliRunner().invoke(main, ["--dataset", "procedural-forest", "--count", "1", "--size", "32", "--no-progress",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    source = json.loads((out / "summary.json").read_text())["settings"]["source"]
    assert Path(source["checkpoint"]) == agdepth.default_checkpoint() and source["steps"] >= 1
    r = CliRunner().invoke(main, ["--dataset", "nyu", "--predictions", "."])
    assert r.exit_code == 2 and "needs --data-root" in r.output
    with pytest.raises(ValueError, match="unknown dataset 'nyuv3'"):
        build_dataset("nyuv3", ".")


def _summary(label: str, dataset: str, abs_rel: float, d1: float, edge: float | None = None) -> dict:
    m = {"abs_rel": abs_rel, "delta1": d1, "delta2": 0.99, "delta3": 0.999}
    if edge is not None:
        m["edge_f1"] = edge
    return {"label": label, "dataset": dataset, "metrics": m}


def test_table_1_has_the_papers_rows_marked_and_measured_rows_in_percent(tmp_path: Path) -> None:
    for ds in ("nyu", "kitti", "eth3d", "scannet", "diode"):
        (tmp_path / ds).mkdir()
        (tmp_path / ds / "summary.json").write_text(json.dumps(_summary("ours", ds, 0.0567, 0.9612)))
    text = assemble(1, load_results([tmp_path]))
    lines = text.splitlines()
    assert lines[2] == ("| method | NYUv2 AbsRel | NYUv2 δ1 | KITTI AbsRel | KITTI δ1 | ETH3D AbsRel | ETH3D δ1 | "
                        "ScanNet AbsRel | ScanNet δ1 | DIODE AbsRel | DIODE δ1 |")
    assert len([r for r in lines if "(paper, not measured)" in r]) == len(PAPER_TABLE1)
    assert "| Marigold (paper, not measured) | 5.7 | 96.0 | 10.1 | 90.7 |" in text
    assert lines[-1] == "| ours | " + " | ".join(["5.7", "96.1"] * 5) + " |"
    t2 = assemble(2, load_results([tmp_path]))
    assert "NYUv2 δ3" in t2 and t2.splitlines()[-1].startswith("| ours | 96.1 | 99.0 | 99.9 |")


def test_table_of_procedural_domains_adds_edge_f1_and_no_paper_rows() -> None:
    results = [_summary("L_v", "procedural-forest", 0.5, 0.3, 0.1), _summary("L_v", "procedural-tabletop", 0.2, 0.6),
               _summary("full", "procedural-forest", 0.4, 0.4, 0.2)]
    text = assemble(3, results)
    assert "paper" not in text
    assert "| method | procedural-forest AbsRel | procedural-forest δ1 | procedural-forest edge F1 |" in text
    assert "| full | 40.0 | 40.0 | 0.200 | - | - | - |" in text
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        load_results([Path(".")])
