"""Metric depth from sparse anchors: the three file formats, their errors (one line naming the file), and the fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agdepth.anchors import AnchorError, find_anchor_file, fit_metric, read_anchors

H, W = 12, 16


def _truth() -> tuple[np.ndarray, np.ndarray]:
    """A prediction in [0, 1] and metric depth = 4·p + 1.5 (metres)."""
    p = np.linspace(0, 1, H * W).reshape(H, W) ** 1.3
    return p, 4.0 * p + 1.5


def test_the_three_formats_read_the_same_anchors(tmp_path: Path) -> None:
    _, z = _truth()
    sparse = np.full((H, W), np.nan)
    pts = [(2, 3), (5, 9), (11, 15), (0, 0)]
    for i, j in pts:
        sparse[i, j] = round(z[i, j], 3)
    np.save(tmp_path / "a.npy", sparse)
    Image.fromarray(np.nan_to_num(sparse * 1000).round().astype(np.uint16)).save(tmp_path / "a.png")
    rows = "u,v,z\n" + "".join(f"{j},{i},{sparse[i, j]}\n" for i, j in pts)
    (tmp_path / "a.csv").write_text(rows)
    for suffix in (".npy", ".png", ".csv"):
        got = read_anchors(tmp_path / f"a{suffix}", (H, W))
        assert np.array_equal(np.isnan(got), np.isnan(sparse))
        np.testing.assert_allclose(got[~np.isnan(got)], sparse[~np.isnan(sparse)], atol=1e-9)
    assert find_anchor_file(tmp_path, "a") == tmp_path / "a.png" and find_anchor_file(tmp_path, "b") is None


@pytest.mark.parametrize(("name", "write", "message"), [
    ("size.npy", lambda p: np.save(p, np.ones((H + 1, W))), r"17x12|16x13"),
    ("nan.npy", lambda p: np.save(p, np.full((H, W), np.nan)), "no anchor"),
    ("neg.npy", lambda p: np.save(p, np.where(np.eye(H, W) > 0, -1.0, np.nan)), "zero, negative"),
    ("zero.csv", lambda p: p.write_text("1,2,0\n"), "depth 0"),
    ("out.csv", lambda p: p.write_text("99,2,1.5\n"), "outside"),
    ("text.csv", lambda p: p.write_text("1,2,x\n1,2\n"), "not three numbers"),
    ("rgb.png", lambda p: Image.new("RGB", (W, H)).save(p), "16-bit"),
    ("junk.png", lambda p: p.write_bytes(b"not a png"), "cannot read anchors"),
])
def test_bad_anchor_files_are_one_line_naming_the_file(tmp_path: Path, name: str, write, message: str) -> None:  # noqa: ANN001
    path = tmp_path / name
    write(path)
    with pytest.raises(AnchorError, match=message) as err:
        read_anchors(path, (H, W))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_robust_fit_recovers_metres_despite_outliers() -> None:
    p, z = _truth()
    rng = np.random.default_rng(0)
    sparse = np.full((H, W), np.nan)
    idx = rng.choice(H * W, 100, replace=False)
    sparse.flat[idx] = z.flat[idx] * (1 + 0.01 * rng.standard_normal(100))
    bad = idx[:20]
    sparse.flat[bad] = rng.uniform(0.1, 20, 20)  # 20 % outliers
    robust = fit_metric(p, sparse)
    plain = fit_metric(p, sparse, robust=False)
    assert robust.space == "depth" and abs(robust.scale - 4) < 0.1 and abs(robust.shift - 1.5) < 0.05
    assert np.median(np.abs(robust.depth - z) / z) < 0.01 < np.median(np.abs(plain.depth - z) / z)
    assert 75 <= robust.inliers <= 85 and robust.anchors == 100 and robust.residual < 0.02


def test_a_disparity_like_prediction_is_fitted_in_disparity_space() -> None:
    p, z = _truth()
    disparity_like = (1 / z - 1 / z.max()) / (1 / z.min() - 1 / z.max())  # 1/z affine in it
    sparse = np.where(np.random.default_rng(1).random((H, W)) < 0.3, z, np.nan)
    fit = fit_metric(disparity_like, sparse)
    assert fit.space == "disparity"
    np.testing.assert_allclose(fit.depth, z, rtol=1e-4)


def test_too_few_or_degenerate_anchors_are_refused() -> None:
    p, z = _truth()
    two = np.full((H, W), np.nan)
    two[0, 0], two[5, 5] = 1, 2
    with pytest.raises(AnchorError, match="img: 2 usable anchor"):
        fit_metric(p, two, name="img")
    flat = np.full((H, W), np.nan)
    flat[:, 0] = 3.0
    with pytest.raises(AnchorError, match="one predicted depth"):
        fit_metric(np.zeros((H, W)), flat)


def test_depth_eval_anchors_from_gt_scores_metric_depth_without_alignment(tmp_path: Path) -> None:
    """Predictions that are an affine map of the ground truth come out exact from their anchors; the summary says
    that nothing was aligned to the ground truth."""
    import json

    from click.testing import CliRunner

    from agdepth.evaluation.cli import main as eval_main
    from agdepth.evaluation.registry import build_dataset

    ds = build_dataset("procedural-tabletop", count=2, size=(48, 48))
    preds = tmp_path / "preds"
    for i, name in enumerate(ds.names()):
        s = ds.load(i)
        d = np.where(s.depth > 0, s.depth, 1.0)
        target = preds / f"{name}.npy"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, ((d - 0.2) / 3.0).astype(np.float32))  # affine-invariant: an unknown scale and shift
    out = tmp_path / "eval"
    res = CliRunner().invoke(eval_main, ["--dataset", "procedural-tabletop", "--count", "2", "--size", "48",
                                         "--predictions", str(preds), "--anchors-from-gt", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["alignment"] is None and summary["settings"]["anchors_from_gt"] == 20
    assert summary["metrics"]["abs_rel"] < 1e-6
