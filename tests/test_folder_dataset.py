"""depth-eval --dataset folder: a user's RGB-D pairs in every depth format score as the same data in the NYU layout;
the mask folder, the list file, disparity input and bad pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth.data.base import SampleReadError
from agdepth.evaluation.cli import main as eval_main
from agdepth.evaluation.readers import FolderDataset, nyu_eigen_crop_mask

H, W = 480, 640  # NYU's frame, so its Eigen crop applies
COUNT = 2


def _scene(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([yy % 256, xx % 256, np.full_like(yy, 40 * i)], -1).astype(np.uint8)
    mm = (1000 + 3 * yy + 2 * xx + rng.integers(0, 50, (H, W))).astype(np.uint16)
    mm[:20] = 0  # no measurement
    pred = (mm.astype(np.float32) / 5000 + rng.normal(0, 0.02, (H, W))).astype(np.float32)
    return rgb, mm, pred


def _score(args: list[str], out: Path) -> dict:
    res = CliRunner().invoke(eval_main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads((out / "summary.json").read_text())["metrics"]


@pytest.mark.parametrize("fmt", ["png-mm", "npy", "tiff", "exr"])
def test_every_depth_format_scores_as_the_nyu_layout(tmp_path: Path, fmt: str) -> None:
    if fmt == "exr":
        pytest.importorskip("OpenEXR")
    nyu, preds_nyu, preds_folder = tmp_path / "nyu", tmp_path / "pn", tmp_path / "pf"
    lines = []
    for i in range(COUNT):
        rgb, mm, pred = _scene(i)
        base = nyu / "test" / "room"
        base.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(base / f"rgb_{i}.png")
        Image.fromarray(mm).save(base / f"depth_{i}.png")
        Image.fromarray(mm).save(base / f"filled_{i}.png")
        lines.append(f"test/room/rgb_{i}.png test/room/depth_{i}.png test/room/filled_{i}.png")
        (preds_nyu / "test" / "room").mkdir(parents=True, exist_ok=True)
        np.save(preds_nyu / "test" / "room" / f"rgb_{i}.npy", pred)
        (preds_folder / "rgb").mkdir(parents=True, exist_ok=True)
        np.save(preds_folder / "rgb" / f"s{i}.npy", pred)
    (nyu / "filename_list_test.txt").write_text("\n".join(lines) + "\n")
    want = _score(["--dataset", "nyu", "--data-root", str(nyu), "--predictions", str(preds_nyu)], tmp_path / "en")

    crop = (nyu_eigen_crop_mask((H, W)) * 255).astype(np.uint8)
    root = tmp_path / fmt
    for sub in ("rgb", "depth", "mask"):
        (root / sub).mkdir(parents=True)
    for i in range(COUNT):
        rgb, mm, _ = _scene(i)
        Image.fromarray(rgb).save(root / "rgb" / f"s{i}.png")
        Image.fromarray(crop).save(root / "mask" / f"s{i}.png")
        metres = mm.astype(np.float32) / 1000
        if fmt == "png-mm":
            Image.fromarray(mm).save(root / "depth" / f"s{i}.png")
        elif fmt == "npy":
            np.save(root / "depth" / f"s{i}.npy", np.where(mm > 0, metres, np.nan))
        elif fmt == "tiff":
            Image.fromarray(metres).save(root / "depth" / f"s{i}.tif")
        else:
            import OpenEXR

            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            with OpenEXR.File(header, {"Z": np.where(mm > 0, metres, np.inf).astype(np.float32)}) as f:
                f.write(str(root / "depth" / f"s{i}.exr"))
    scale = ["--depth-scale", "0.001"] if fmt == "png-mm" else []
    got = _score(["--dataset", "folder", "--data-root", str(root), *scale, "--min-depth", "0.001",
                  "--max-depth", "10", "--predictions", str(preds_folder)], tmp_path / f"e-{fmt}")
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (fmt, k)


def test_disparity_input_and_the_list_file(tmp_path: Path) -> None:
    rgb, mm, _ = _scene(0)
    (tmp_path / "a").mkdir()
    Image.fromarray(rgb[:32, :48]).save(tmp_path / "a" / "left.png")
    depth = mm[:32, :48].astype(np.float64) / 1000
    np.save(tmp_path / "a" / "disp.npy", np.where(depth > 0, 2.0 / np.where(depth > 0, depth, 1), 0.0))
    (tmp_path / "pairs.txt").write_text("a/left.png a/disp.npy\n")
    ds = FolderDataset(tmp_path, tmp_path / "pairs.txt", depth_scale=2.0, disparity=True)
    s = ds.load(0)
    np.testing.assert_allclose(s.depth, np.where(depth > 0, depth, 0), rtol=1e-6)  # float32 samples
    assert ds.names() == ["a/left.png"]


def test_bad_pairs_are_named_and_counted(tmp_path: Path) -> None:
    for sub in ("rgb", "depth"):
        (tmp_path / sub).mkdir()
    rgb, mm, _ = _scene(0)
    small = rgb[:24, :32]
    for name in ("ok", "nodepth", "unreadable", "allbad", "mismatch"):
        Image.fromarray(small).save(tmp_path / "rgb" / f"{name}.png")
    Image.fromarray(mm[:24, :32]).save(tmp_path / "depth" / "ok.png")
    (tmp_path / "depth" / "unreadable.png").write_bytes(b"\x89PNG broken")
    np.save(tmp_path / "depth" / "allbad.npy", np.full((24, 32), np.nan))
    Image.fromarray(mm[30:50, :32]).save(tmp_path / "depth" / "mismatch.png")  # 20 rows for 24
    ds = FolderDataset(tmp_path, depth_scale=0.001)
    names = ds.names()
    assert names == [f"rgb/{n}.png" for n in ("allbad", "mismatch", "nodepth", "ok", "unreadable")]
    reasons = {}
    for i, n in enumerate(names):
        try:
            ds.load(i)
        except SampleReadError as e:
            reasons[n] = str(e)
    assert set(reasons) == {"rgb/allbad.png", "rgb/mismatch.png", "rgb/nodepth.png", "rgb/unreadable.png"}
    assert "no valid depth" in reasons["rgb/allbad.png"] and "does not match" in reasons["rgb/mismatch.png"]
    assert "missing" in reasons["rgb/nodepth.png"] and "unreadable.png" in reasons["rgb/unreadable.png"]
