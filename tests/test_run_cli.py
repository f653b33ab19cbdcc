"""depth-run end to end: outputs, bad inputs (one line each, run goes on, non-zero exit), engines, overwrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, export_checkpoint
from agdepth.runtime import DepthPipeline
from agdepth.runtime.cli import main


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.output


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(render_scene("indoor", 0, size=(60, 80), split="test").rgb).save(d / "room.png")
    Image.fromarray(render_scene("street", 0, size=(64, 64), split="test").rgb).convert("RGBA").save(d / "street.png")
    Image.fromarray(render_scene("forest", 0, size=(50, 40), split="test").rgb).save(d / "sub" / "forest.jpg")
    return d


def test_outputs_match_the_python_api(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(str(photos), "--out", str(out), "--recursive", "--seed", "0", "--batch-size", "1")
    assert code == 0, text
    assert "3 image(s)" in text and "seconds per stage" in text
    assert {p.relative_to(out).as_posix() for p in out.rglob("*")} >= {
        "room_depth.png", "room_depth.npy", "room_depth_color.png", "sub/forest_depth.npy", "street_depth.png"}
    depth = np.load(out / "room_depth.npy")
    assert depth.shape == (60, 80) and depth.dtype == np.float32 and 0 <= depth.min() <= depth.max() <= 1
    png = np.asarray(Image.open(out / "room_depth.png"))
    assert np.array_equal(png, np.round(depth.astype(np.float64) * 65535).astype(np.uint16))
    color = Image.open(out / "room_depth_color.png")
    assert color.mode == "RGB" and color.size == (80, 60)
    # the first image alone with seed 0: the same as the Python API
    api = DepthPipeline.from_checkpoint(default_checkpoint())(np.asarray(Image.open(photos / "room.png")), seed=0)
    np.testing.assert_allclose(depth, api.depth[0], atol=1e-6)


def test_bad_inputs_are_reported_and_the_run_goes_on(photos: Path, tmp_path: Path) -> None:
    (photos / "notes.png").write_text("not an image")
    data = (photos / "room.png").read_bytes()
    (photos / "cut.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, text = run(str(photos), "--out", str(out), "--formats", "npy")
    assert code == 1
    assert "notes.png" in text and "cut.png" in text and "2 input(s) failed" in text
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["room_depth.npy", "street_depth.npy"]


def test_a_failed_write_stops_the_run_and_names_the_input(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "room_depth.npy").mkdir(parents=True)  # a folder where room.png's output must go
    code, text = run(str(photos), "--out", str(out), "--formats", "npy", "--overwrite")
    assert code == 1
    assert "error: could not write the outputs of" in text and "room.png" in text


def test_background_writes_match_direct_writes(tmp_path: Path) -> None:
    from agdepth.imageio import output_paths, write_outputs
    from agdepth.runtime.writer import BackgroundWriter

    maps = [np.random.default_rng(i).random((24, 32)).astype(np.float32) for i in range(9)]
    writer = BackgroundWriter(max_pending=2)  # a queue shorter than the work, so submit has to wait
    for i, m in enumerate(maps):
        writer.submit(f"img{i}", output_paths(tmp_path / "bg", f"img{i}", "png16,npy", False), m)
    writer.close()
    for i, m in enumerate(maps):
        direct = output_paths(tmp_path / "direct", f"img{i}", "png16,npy", False)
        write_outputs(direct, m)
        bg = output_paths(tmp_path / "bg", f"img{i}", "png16,npy", False)
        assert np.array_equal(np.load(bg["npy"]), m)
        assert bg["png16"].read_bytes() == direct["png16"].read_bytes()


def test_device_choice(photos: Path, tmp_path: Path) -> None:
    import torch

    code, text = run(str(photos), "--out", str(tmp_path / "o"), "--device", "cuda", "--formats", "npy")
    if torch.cuda.is_available():
        assert code == 0 and "on cuda" in text
    else:
        assert code == 2 and "PyTorch sees no CUDA GPU" in text
    code, text = run(str(photos), "--out", str(tmp_path / "auto"), "--formats", "npy")
    assert code == 0 and ("on cuda" if torch.cuda.is_available() else "on cpu") in text


def test_rerun_skips_finished_images_and_refuses_foreign_files(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(str(photos / "room.png"), "--out", str(out), "--formats", "npy")[0] == 0
    before = (out / "room_depth.npy").stat().st_mtime_ns
    code, text = run(str(photos / "room.png"), "--out", str(out), "--formats", "npy")
    assert code == 0 and "1 done earlier, skipped" in text and "done: 0 image(s)" in text
    assert (out / "room_depth.npy").stat().st_mtime_ns == before
    code, text = run(str(photos / "room.png"), "--out", str(out), "--formats", "npy", "--steps", "2")
    assert code == 2 and "other settings (steps 1 -> 2)" in text and "--overwrite" in text
    (out / "street_depth.npy").write_bytes(b"a user's file, not depth-run's")
    code, text = run(str(photos / "street.png"), "--out", str(out), "--formats", "npy")
    assert code == 2 and "did not write" in text and "street_depth.npy" in text and "--overwrite" in text
    assert run(str(photos / "room.png"), "--out", str(out), "--formats", "npy", "--overwrite")[0] == 0
    assert (out / "room_depth.npy").stat().st_mtime_ns != before


@pytest.mark.parametrize("engine,message", [
    ("unet.plan", "TensorRT"), ("unet.xml", "unknown engine type"), ("missing.onnx", "does not exist")])
def test_engine_errors(photos: Path, tmp_path: Path, engine: str, message: str) -> None:
    (tmp_path / "unet.plan").write_bytes(b"x")
    (tmp_path / "unet.xml").write_bytes(b"x")
    code, text = run(str(photos), "--engine", str(tmp_path / engine), "--out", str(tmp_path / "o"))
    assert code == 2 and message in text


def test_empty_input_and_uncertainty(tmp_path: Path, photos: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, text = run(str(tmp_path / "empty"))
    assert code == 2 and "no input images" in text
    code, text = run(str(photos / "room.png"), "--uncertainty", "--out", str(tmp_path / "o"))
    assert code == 2 and "--ensemble > 1" in text
    code, _ = run(str(photos / "room.png"), "--uncertainty", "--ensemble", "3", "--out", str(tmp_path / "o"))
    assert code == 0
    unc = np.asarray(Image.open(tmp_path / "o" / "room_uncertainty.png"))
    assert unc.shape == (60, 80) and unc.max() > 0


@pytest.mark.slow
def test_onnx_engine_and_out_of_range(photos: Path, tmp_path: Path) -> None:
    eng = tmp_path / "eng"
    export_checkpoint(default_checkpoint(), eng, ExportOptions(max_resolution=96), progress=lambda s: None)
    code, text = run(str(photos), "--engine", str(eng / "unet.onnx"), "--out", str(tmp_path / "a"))
    assert code == 0 and "OnnxBackend fp32" in text, text
    code, text = run(str(photos / "room.png"), "--engine", str(eng / "unet.onnx"), "--processing-res", "200",
                     "--out", str(tmp_path / "b"))
    assert code == 2 and "outside [8, 96]" in text and not (tmp_path / "b").exists()  # refused before any work


def test_odd_sizes_modes_and_exif(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    Image.new("RGB", (1, 1), (120, 30, 200)).save(d / "dot.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 3000, 3), dtype=np.uint8)).save(d / "pano.png")
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(d / "grey16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display: a 40×30 (w×h) file shows as 30×40
    Image.fromarray(render_scene("indoor", 2, size=(30, 40), split="test").rgb).save(d / "rot.jpg", exif=exif)
    code, text = run(str(d), "--out", str(tmp_path / "o"), "--formats", "npy", "--processing-res", "96")
    assert code == 0, text
    shapes = {p.name: np.load(p).shape for p in (tmp_path / "o").glob("*.npy")}
    assert shapes == {"dot_depth.npy": (1, 1), "pano_depth.npy": (40, 3000), "grey16_depth.npy": (48, 64),
                      "rot_depth.npy": (40, 30)}
    # at 64 px the 75:1 panorama would be 0 px high: it fails alone, named, and the other images are still written
    code, text = run(str(d), "--out", str(tmp_path / "o64"), "--formats", "npy", "--processing-res", "64")
    assert code == 1 and "pano.png: extreme aspect ratio" in text and "1 input(s) failed" in text, text
    assert sorted(p.name for p in (tmp_path / "o64").glob("*.npy")) == ["dot_depth.npy", "grey16_depth.npy",
                                                                        "rot_depth.npy"]
