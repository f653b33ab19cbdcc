"""depth-run --anchors / --formats ply: metric outputs, point clouds read back by another library, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth.data.procedural import render_scene
from agdepth.pointcloud import Intrinsics, intrinsics_from_fov, unproject
from agdepth.runtime.cli import main

trimesh = pytest.importorskip("trimesh")
SIZE = (48, 64)


@pytest.fixture()
def scene_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "anchors").mkdir()
    for i in range(3):
        sc = render_scene("tabletop", i, SIZE, "test")
        Image.fromarray(sc.rgb).save(tmp_path / "img" / f"s{i}.png")
        a = np.full(SIZE, np.nan)
        idx = rng.choice(np.flatnonzero(sc.valid), 60, replace=False)
        a.flat[idx] = sc.depth.flat[idx]
        np.save(tmp_path / "anchors" / f"s{i}.npy", a)
    return tmp_path


def _run(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def test_metric_outputs_and_their_point_clouds(scene_dir: Path) -> None:
    out = scene_dir / "out"
    k = "50,52,32,24"
    code, text = _run(scene_dir / "img", "--out", out, "--anchors", scene_dir / "anchors", "--intrinsics", k,
                      "--formats", "png16,npy,ply")
    assert code == 0, text
    assert "metric depth for 3 of 3 image(s)" in text and (out / "anchors_fit.csv").is_file()
    for i in range(3):
        metres = np.load(out / f"s{i}_depth.npy")
        mm = np.asarray(Image.open(out / f"s{i}_depth.png"))
        z = metres.astype(np.float64)
        ok = np.isfinite(z) & (z > 0)
        np.testing.assert_array_equal(mm, np.where(ok, np.clip(np.round(np.where(ok, z, 0) * 1000), 1, 65535), 0))
        cloud = trimesh.load(out / f"s{i}_points.ply")  # read by another library than the writer (plyfile)
        want, index = unproject(metres, Intrinsics(50, 52, 32, 24))
        assert len(cloud.vertices) == len(want) == int((np.isfinite(metres) & (metres > 0)).sum())
        np.testing.assert_allclose(cloud.vertices, want, rtol=1e-4, atol=1e-6)
        rgb = np.asarray(Image.open(scene_dir / "img" / f"s{i}.png")).reshape(-1, 3)[index]
        np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], rgb)
        assert b"depth in metres" in (out / f"s{i}_points.ply").read_bytes()[:400]


def test_bad_anchors_are_one_line_each_and_the_run_goes_on(scene_dir: Path) -> None:
    anchors = scene_dir / "anchors"
    np.save(anchors / "s0.npy", np.ones((5, 5)))  # another size
    np.save(anchors / "s1.npy", np.full(SIZE, np.nan))  # no anchor
    np.save(anchors / "s2.npy", np.where(np.eye(*SIZE) > 0, -2.0, np.nan))  # negative depths
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img", "--out", out, "--anchors", anchors, "--formats", "npy,ply", "--fov", "70")
    assert code == 0, text
    warnings = [ln for ln in text.splitlines() if ln.startswith("warning: no metric depth")]
    assert len(warnings) == 3 and all(str(anchors / f"s{i}.npy") in w for i, w in enumerate(warnings))
    assert "5x5 px for an image of 64x48" in warnings[0] and "no anchor" in warnings[1] and "negative" in warnings[2]
    for i in range(3):  # the affine-invariant outputs are written, and the cloud says it is up to scale
        depth = np.load(out / f"s{i}_depth.npy")
        assert 0 <= depth.min() <= depth.max() <= 1
        assert b"affine-invariant" in (out / f"s{i}_points.ply").read_bytes()[:400]


def test_intrinsics_that_do_not_parse_are_refused_before_any_work(scene_dir: Path) -> None:
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img", "--out", out, "--formats", "ply", "--intrinsics", "50,52,abc")
    assert code == 2 and "--intrinsics '50,52,abc'" in text and not out.exists()


def test_a_point_cloud_without_a_camera_says_what_it_assumed(scene_dir: Path) -> None:
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img" / "s0.png", "--out", out, "--formats", "ply")
    assert code == 0 and "assumes a 60° horizontal field of view" in text, text


def _cloud_uses(out: Path, stem: str, K: Intrinsics) -> None:
    """The image's PLY holds exactly the unprojection of its written depth with K (and says K in its header)."""
    cloud = trimesh.load(out / f"{stem}_points.ply")
    want, _ = unproject(np.load(out / f"{stem}_depth.npy"), K)
    assert len(cloud.vertices) == len(want)
    np.testing.assert_allclose(cloud.vertices, want, rtol=1e-4, atol=1e-6)
    assert f"agdepth: intrinsics fx,fy,cx,cy {K}".encode() in (out / f"{stem}_points.ply").read_bytes()[:600]


def test_an_intrinsics_file_gives_each_image_its_camera(scene_dir: Path) -> None:
    cams = scene_dir / "cams.csv"  # by file name or by stem
    cams.write_text("name,fx,fy,cx,cy\ns0.png,50,52,32,24\ns1,70,71,30.5,22\ns2.png,40,40,33,25\n")
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img", "--out", out, "--formats", "npy,ply", "--intrinsics", cams)
    assert code == 0, text
    assert "note:" not in text and "warning:" not in text, text
    for stem, K in [("s0", Intrinsics(50, 52, 32, 24)), ("s1", Intrinsics(70, 71, 30.5, 22)),
                    ("s2", Intrinsics(40, 40, 33, 25))]:
        _cloud_uses(out, stem, K)


def test_a_bad_or_missing_intrinsics_row_falls_back_and_the_run_goes_on(scene_dir: Path) -> None:
    cams = scene_dir / "cams.csv"
    cams.write_text("name,fx,fy,cx,cy\ns0.png,50,52,32,24\ns1.png,abc,52,32,24\n")  # s2: no row
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img", "--out", out, "--formats", "npy,ply", "--intrinsics", cams)
    assert code == 0, text
    _cloud_uses(out, "s0", Intrinsics(50, 52, 32, 24))
    assumed = intrinsics_from_fov(60, SIZE)  # the PNGs have no EXIF: the assumed field of view, as without a camera
    _cloud_uses(out, "s1", assumed)
    _cloud_uses(out, "s2", assumed)
    lines = text.splitlines()
    bad = [ln for ln in lines if "s1.png" in ln]
    assert len(bad) == 1 and bad[0].startswith(f"note: {cams}: line 3: fx 'abc' is not a number; "), text
    assert bad[0].endswith("s1.png: no intrinsics in EXIF, the point cloud assumes a 60° horizontal field of view")
    missing = [ln for ln in lines if "s2.png" in ln]
    assert len(missing) == 1 and missing[0].startswith(f"note: {cams}: no row for s2.png"), text
    assert "assumes a 60° horizontal field of view" in missing[0]
    assert not [ln for ln in lines if "s0.png" in ln], text


def test_a_bad_intrinsics_row_falls_back_to_exif(tmp_path: Path) -> None:
    from agdepth.pointcloud import intrinsics_from_exif, read_intrinsics_file
    from agdepth.runtime.image_outputs import OutputOptions, write_image_outputs

    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm
    photo = tmp_path / "p1.jpg"
    Image.new("RGB", (SIZE[1], SIZE[0]), (90, 120, 30)).save(photo, exif=exif)
    cams = tmp_path / "cams.csv"
    cams.write_text("name,fx,fy,cx,cy\np1.jpg,50,0,32,24\n")
    depth = np.full(SIZE, 0.5, np.float32)
    report = write_image_outputs({"ply": tmp_path / "p1_points.ply"}, depth, None, photo,
                                 np.asarray(Image.open(photo)), OutputOptions(intrinsics=read_intrinsics_file(cams)))
    assert report.notes == (f"{cams}: line 2: fx and fy must be > 0, got fx=50, fy=0; {photo}: the point cloud uses "
                            "its EXIF focal length",)
    K = intrinsics_from_exif(photo, SIZE)
    assert K is not None
    np.testing.assert_allclose(trimesh.load(tmp_path / "p1_points.ply").vertices, unproject(depth, K)[0], rtol=1e-6)


def test_an_intrinsics_file_that_cannot_be_used_is_refused_before_any_work(scene_dir: Path) -> None:
    cams = scene_dir / "cams.csv"
    cams.write_text("s0.png,50,52,32,24\n")  # no header
    out = scene_dir / "out"
    code, text = _run(scene_dir / "img", "--out", out, "--formats", "ply", "--intrinsics", cams)
    assert code == 2 and f"{cams}: line 1: expected the header name,fx,fy,cx,cy" in text and not out.exists(), text
    code, text = _run(scene_dir / "img", "--out", out, "--formats", "ply", "--intrinsics", scene_dir / "nope.csv")
    assert code == 2 and f"--intrinsics '{scene_dir / 'nope.csv'}': neither an existing file nor" in text, text
    assert not out.exists()


def test_tile_writes_the_tiled_prediction(tmp_path: Path) -> None:
    from agdepth import default_checkpoint
    from agdepth.runtime import DepthPipeline
    from agdepth.runtime.tiling import predict_tiled

    rgb = render_scene("forest", 1, (192, 256), "test").rgb
    Image.fromarray(rgb).save(tmp_path / "big.png")
    code, text = _run(tmp_path / "big.png", "--out", tmp_path / "out", "--tile", "--formats", "npy", "--seed", "3")
    assert code == 0, text
    want = predict_tiled(DepthPipeline.from_checkpoint(default_checkpoint()), rgb, seed=3)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "big_depth.npy"), want, atol=1e-6)
    code, text = _run(tmp_path / "big.png", "--out", tmp_path / "o2", "--tile", "--ensemble", "2")
    assert code == 2 and "--tile runs one member" in text
