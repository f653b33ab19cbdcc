"""depth-eval never scores a broken prediction silently: non-finite or malformed maps fail their sample, with the
file and the count of bad pixels; any failed sample makes the exit status 1 (unless --allow-failures); no NaN mean
is ever reported; a rerun retries what failed."""

from __future__ import annotations

import csv
import json
import math
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import agdepth.evaluation.protocol as protocol
from agdepth.evaluation.cli import main
from agdepth.evaluation.datasets import EvalDataset, EvalSample, ProceduralEvalDataset
from agdepth.evaluation.procedural import evaluate_on_domains
from agdepth.evaluation.protocol import PredictionError, evaluate_dataset, score_checked
from agdepth.metrics import METRIC_NAMES

DOMAIN, COUNT, SIZE = "tabletop", 3, 32


def _dataset(domain: str = DOMAIN) -> ProceduralEvalDataset:
    return ProceduralEvalDataset(domain, count=COUNT, size=(SIZE, SIZE))


def _clean(sample: EvalSample) -> np.ndarray:
    """A plausible imperfect prediction: the ground truth plus noise (finite everywhere)."""
    rng = np.random.default_rng(zlib.crc32(sample.name.encode()))
    return (np.where(sample.mask, sample.depth, 1.0) + rng.normal(0, 0.2, sample.depth.shape)).astype(np.float32)


def _write(root: Path, domain: str = DOMAIN, broken: dict[int, Any] | None = None) -> dict[int, Path]:
    """Saved predictions of every sample; ``broken[i]`` (a function of (map, sample)) edits sample i's map."""
    ds, paths = _dataset(domain), {}
    for i in range(COUNT):
        s = ds.load(i)
        pred = _clean(s)
        if broken and i in broken:
            pred = broken[i](pred, s)
        paths[i] = root / Path(s.name).with_suffix(".npy")
        paths[i].parent.mkdir(parents=True, exist_ok=True)
        np.save(paths[i], pred)
    return paths


def _one_scored_pixel(value: float):  # noqa: ANN202
    def edit(pred: np.ndarray, s: EvalSample) -> np.ndarray:
        ys, xs = np.nonzero(s.mask)
        pred = pred.copy()
        pred[ys[len(ys) // 2], xs[len(xs) // 2]] = value
        return pred

    return edit


def _args(preds: Path, out: Path, domain: str = DOMAIN) -> list[str]:
    return ["--dataset", f"procedural-{domain}", "--predictions", str(preds), "--count", str(COUNT), "--size",
            str(SIZE), "--out", str(out), "--no-progress"]


def _no_nan(const: str) -> float:
    raise AssertionError(f"summary.json holds {const}")


def _summary(out: Path) -> dict[str, Any]:
    """summary.json, parsed strictly: a NaN/Infinity token anywhere fails the test."""
    return json.loads((out / "summary.json").read_text(), parse_constant=_no_nan)


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "per_sample.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("value, kind", [(np.nan, "NaN"), (np.inf, "+inf"), (-np.inf, "-inf")])
def test_one_non_finite_pixel_fails_its_sample_naming_the_file(tmp_path: Path, value: float, kind: str) -> None:
    paths = _write(tmp_path / "p", broken={1: _one_scored_pixel(value)})
    r = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "out"))
    assert r.exit_code == 1, r.output
    reason = f"{paths[1]}: 1 of {SIZE * SIZE} scored pixels are not finite (1 {kind})"
    assert reason in r.output
    assert "2 of 3 samples scored, 1 failed" in r.output and "1 invalid" in r.output
    assert "error: 1 of 3 samples failed" in r.output
    rows = _rows(tmp_path / "out")
    assert [row["status"] for row in rows] == ["ok", "invalid", "ok"] and rows[1]["reason"] == reason
    summary = _summary(tmp_path / "out")
    assert summary["count"]["scored"] == 2 and summary["count"]["failed"] == 1 and summary["count"]["invalid"] == 1
    assert summary["failed"] == [{"name": rows[1]["name"], "status": "invalid", "reason": reason}]
    # the means are those of the two good samples: the broken one changes nothing
    assert all(math.isfinite(v) for v in summary["metrics"].values())
    assert summary["metrics"]["abs_rel"] == pytest.approx(np.mean([float(rows[i]["abs_rel"]) for i in (0, 2)]))
    assert "nan" not in (tmp_path / "out" / "row.md").read_text().lower()
    assert (tmp_path / "out" / "row.md").read_text().rstrip().endswith("| 2/3 |")


def test_allow_failures_exits_0_with_the_same_report(tmp_path: Path) -> None:
    _write(tmp_path / "p", broken={1: _one_scored_pixel(np.nan)})
    strict = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "strict"))
    allowed = CliRunner().invoke(main, [*_args(tmp_path / "p", tmp_path / "allowed"), "--allow-failures"])
    assert strict.exit_code == 1 and allowed.exit_code == 0, allowed.output
    assert "2 of 3 samples scored, 1 failed" in allowed.output and "1 of 3 samples not scored" in allowed.output
    assert "not finite (1 NaN)" in allowed.output and "error:" not in allowed.output
    a, b = _summary(tmp_path / "strict"), _summary(tmp_path / "allowed")
    assert a["count"] == b["count"] and a["failed"] == b["failed"] and a["metrics"] == b["metrics"]


def test_all_failed_exits_1_and_reports_no_means(tmp_path: Path) -> None:
    _write(tmp_path / "p", broken={i: _one_scored_pixel(np.nan) for i in range(COUNT)})
    for extra in ([], ["--allow-failures"]):  # nothing scored is a failed run even when failures are allowed
        r = CliRunner().invoke(main, [*_args(tmp_path / "p", tmp_path / "out"), *extra])
        assert r.exit_code == 1, r.output
        assert "0 of 3 samples scored, 3 failed" in r.output and "note: no sample scored (0 of 3): no mean metrics" \
            in r.output and "error: no sample of procedural-tabletop was scored" in r.output
        assert "| p | procedural-tabletop | - | - | - | - | - | 0/3 |" in r.output.splitlines()
        summary = _summary(tmp_path / "out")
        assert summary["metrics"] == {} and summary["count"]["failed"] == 3
        assert "no sample scored (0 of 3): no mean metrics" in summary["notes"]


def test_rerun_after_fixing_the_file_retries_and_scores_it(tmp_path: Path) -> None:
    paths = _write(tmp_path / "p", broken={2: _one_scored_pixel(np.inf)})
    args = _args(tmp_path / "p", tmp_path / "out")
    assert CliRunner().invoke(main, args).exit_code == 1
    _write(tmp_path / "p")  # fixed
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 3 samples already scored" in r.output and "3 of 3 samples scored, 0 failed" in r.output
    assert str(paths[2]) not in r.output  # retried, no longer failing
    assert [row["status"] for row in _rows(tmp_path / "out")] == ["ok", "ok", "ok"]
    fresh = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "fresh"))
    assert fresh.exit_code == 0
    assert _summary(tmp_path / "out")["metrics"] == pytest.approx(_summary(tmp_path / "fresh")["metrics"])


def test_resume_rescores_an_ok_row_with_non_finite_metrics(tmp_path: Path) -> None:
    """A row an older depth-eval wrote as ok with NaN metrics is not kept: a rerun scores that sample again."""
    _write(tmp_path / "p")
    args = _args(tmp_path / "p", tmp_path / "out")
    assert CliRunner().invoke(main, args).exit_code == 0
    csv_file = tmp_path / "out" / "per_sample.csv"
    rows = _rows(tmp_path / "out")
    rows[0]["abs_rel"] = "nan"
    with csv_file.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "resuming: 2 of 3 samples already scored" in r.output, r.output
    assert math.isfinite(float(_rows(tmp_path / "out")[0]["abs_rel"]))


@pytest.mark.parametrize("bad, expected", [
    (lambda p, s: np.stack([p, p, p], axis=-1), "a prediction must be one [H, W] map, got shape (32, 32, 3)"),
    (lambda p, s: np.zeros((0,), np.float32), "empty prediction (shape (0,))"),
    (lambda p, s: np.zeros((0, 0), np.float32), "empty prediction (shape (0, 0))"),
    (lambda p, s: p.ravel(), "a prediction must be one [H, W] map, got shape (1024,)"),
    (lambda p, s: np.full(p.shape, "x"), "dtype <U1 is not a real-valued depth map"),
])
def test_malformed_predictions_are_invalid_samples(tmp_path: Path, bad: Any, expected: str) -> None:
    paths = _write(tmp_path / "p", broken={0: bad})
    r = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "out"))
    assert r.exit_code == 1, r.output
    assert f"{paths[0]}: {expected}" in r.output
    assert [row["status"] for row in _rows(tmp_path / "out")] == ["invalid", "ok", "ok"]


def test_non_finite_values_outside_the_scored_pixels_are_harmless(tmp_path: Path) -> None:
    """The forest domain has unscored sky: NaN/inf there (at the ground truth's size) neither fails nor changes it."""
    def sky(value: float):  # noqa: ANN202
        return lambda p, s: np.where(s.mask, p, value).astype(np.float32)

    _write(tmp_path / "p", domain="forest", broken={0: sky(np.nan), 1: sky(np.inf)})
    _write(tmp_path / "q", domain="forest")
    r = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "out", "forest"))
    assert r.exit_code == 0 and "3 of 3 samples scored, 0 failed" in r.output, r.output
    assert CliRunner().invoke(main, _args(tmp_path / "q", tmp_path / "clean", "forest")).exit_code == 0
    a, b = _summary(tmp_path / "out")["metrics"], _summary(tmp_path / "clean")["metrics"]
    assert {k: a[k] for k in METRIC_NAMES} == pytest.approx({k: b[k] for k in METRIC_NAMES})


def test_a_coarse_map_counts_non_finite_pixels_after_the_resize(tmp_path: Path) -> None:
    def coarse_nan(p: np.ndarray, s: EvalSample) -> np.ndarray:
        c = p[::2, ::2].copy()
        c[8, 8] = np.nan
        return c

    paths = _write(tmp_path / "p", broken={0: coarse_nan})
    r = CliRunner().invoke(main, _args(tmp_path / "p", tmp_path / "out"))
    assert r.exit_code == 1
    assert str(paths[0]) in r.output and "after resizing the 16x16 map to the ground truth's 32x32" in r.output


class _BadGT(EvalDataset):
    """One sample whose mask covers NaN and inf ground-truth pixels."""

    name = "bad-gt"
    depth_range = (0.1, 10.0)

    def __init__(self, poison: bool) -> None:
        yy, xx = np.mgrid[0:8, 0:8]
        self.gt = (1 + 0.3 * xx + 0.2 * yy).astype(np.float32)
        self.poison = poison

    def names(self) -> list[str]:
        return ["a"]

    def load(self, index: int) -> EvalSample:
        gt = self.gt.copy()
        if self.poison:
            gt[0, 0], gt[3, 4], gt[7, 7] = np.nan, np.inf, -np.inf
        return EvalSample("a", np.zeros((8, 8, 3), np.uint8), gt, np.ones((8, 8), bool))


def test_non_finite_ground_truth_never_enters_the_metrics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.1, (8, 8))

    def predict(s: EvalSample) -> np.ndarray:
        p = _BadGT(False).gt * 2 + noise
        p[0, 0] = np.nan  # at a ground-truth NaN pixel: not scored, so not a failure either
        return p

    poisoned = evaluate_dataset(_BadGT(True), predict, tmp_path / "a", {"source": "t"}, progress=False)
    assert poisoned["count"]["scored"] == 1, poisoned["failed"]

    clean = _BadGT(False)
    mask = np.ones((8, 8), bool)
    mask[0, 0] = mask[3, 4] = mask[7, 7] = False

    class _Masked(_BadGT):
        def load(self, index: int) -> EvalSample:
            return EvalSample("a", np.zeros((8, 8, 3), np.uint8), clean.gt, mask)

    reference = evaluate_dataset(_Masked(False), predict, tmp_path / "b", {"source": "t"}, progress=False)
    assert all(math.isfinite(v) for v in poisoned["metrics"].values() if v is not None)
    assert poisoned["metrics"] == pytest.approx(reference["metrics"])


def test_every_prediction_source_is_checked(tmp_path: Path) -> None:
    """A predictor function (any backend) returning torch tensors or arrays goes through the same check."""
    import torch

    def predict(s: EvalSample) -> Any:
        p = torch.from_numpy(_clean(s))[None]  # [1, H, W] tensor
        if s.name.endswith("000001"):
            p[0, :2, :] = float("inf")
        return p

    summary = evaluate_dataset(_dataset(), predict, tmp_path, {"source": "t"}, label="mine", progress=False)
    assert summary["count"]["invalid"] == 1
    assert summary["failed"][0]["reason"] == f"prediction of mine: {2 * SIZE} of {SIZE * SIZE} scored pixels are " \
                                             f"not finite ({2 * SIZE} +inf)"


def test_model_predictions_with_nan_fail_and_are_saved_for_inspection(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.runtime import DepthPipeline

    original = DepthPipeline.__call__
    calls = []

    def nan_on_second_image(self: DepthPipeline, *a: Any, **k: Any) -> Any:
        out = original(self, *a, **k)
        calls.append(1)
        if len(calls) == 2:
            out.prediction = np.array(out.prediction)
            out.prediction[0, 5, 7, 0] = np.nan
        return out

    monkeypatch.setattr(DepthPipeline, "__call__", nan_on_second_image)
    common = ["--dataset", "procedural-tabletop", "--count", "2", "--size", str(SIZE), "--no-progress"]
    r = CliRunner().invoke(main, [*common, "--checkpoint", "agdepth/weights/tiny", "--steps", "1", "--ensemble", "1",
                                  "--out", str(tmp_path / "model"), "--save-predictions"])
    saved = tmp_path / "model" / "predictions" / "tabletop" / "test" / "000001.npy"
    assert r.exit_code == 1, r.output
    assert (f"prediction of checkpoint agdepth/weights/tiny (saved as {saved}): 1 of {SIZE * SIZE} scored pixels "
            "are not finite (1 NaN)") in r.output
    assert np.isnan(np.load(saved)).sum() == 1
    # the saved map, scored as saved predictions, fails the same way
    again = CliRunner().invoke(main, [*common, "--predictions", str(tmp_path / "model" / "predictions"),
                                      "--out", str(tmp_path / "again")])
    assert again.exit_code == 1 and f"{saved}: 1 of {SIZE * SIZE} scored pixels are not finite (1 NaN)" \
        in again.output, again.output


def test_a_non_finite_metric_is_a_failure_not_a_nan_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _dataset().load(0)
    real = protocol.score

    def overflowing(*a: Any, **k: Any) -> dict[str, float]:
        return {**real(*a, **k), "rmse": float("inf")}

    monkeypatch.setattr(protocol, "score", overflowing)
    with pytest.raises(PredictionError, match=r"x\.npy: scoring gave non-finite rmse"):
        score_checked(_clean(s), s, (0.05, 5.0), "least_squares", True, origin="x.npy")


def test_procedural_domain_means_are_nan_with_a_warning_for_a_broken_prediction() -> None:
    def predict(images: list[np.ndarray]) -> np.ndarray:
        out = np.stack([np.linspace(1, 2, SIZE * SIZE).reshape(SIZE, SIZE)] * len(images))
        out[-1, 10, 10] = np.inf
        return out

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_on_domains(predict, ["tabletop"], 2, (SIZE, SIZE), progress=False)
    assert all(math.isnan(v) for v in res["tabletop"].values()) and "abs_rel" in res["tabletop"]
    assert any("1 of 2 predictions unusable" in str(w.message) for w in caught)
