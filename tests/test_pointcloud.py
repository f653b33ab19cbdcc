"""agdepth.pointcloud: unprojection against the procedural scenes' own geometry, PLY round trip through another
library (trimesh), voxel downsampling, intrinsics parsing, EXIF focal lengths, atomic writes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
import pytest
from PIL import Image

from agdepth.data import procedural
from agdepth.pointcloud import (
    Intrinsics,
    IntrinsicsFileError,
    IntrinsicsRowError,
    depth_to_ply,
    intrinsics_from_exif,
    intrinsics_from_fov,
    parse_intrinsics,
    read_intrinsics_file,
    unproject,
    voxel_downsample,
    write_ply,
)


@pytest.fixture
def trimesh() -> Any:
    """trimesh, the reader that checks the PLYs (a library other than the writer, plyfile); skips without either."""
    pytest.importorskip("plyfile")
    return pytest.importorskip("trimesh")


SIZE = (48, 64)  # (H, W): non-square, so a swapped axis or a wrong principal point shows


def _scene(domain: str, index: int = 3) -> tuple[procedural.Scene, procedural.Camera]:
    scene = procedural.render_scene(domain, index, SIZE, split="val", shadows=False)
    cam = procedural.sample_layout(domain, scene.seed).camera
    return scene, cam


def _surface_distance(geo: procedural.Geometry, p: np.ndarray) -> np.ndarray:
    """|signed distance| of world points p [N, 3] to the nearest primitive surface of the scene, in metres."""
    dists = []
    for n_o in geo.planes:
        dists.append(np.abs(p @ n_o[:3] - n_o[3]))
    for lo_hi in geo.boxes:
        lo, hi = lo_hi[:3].astype(np.float64), lo_hi[3:].astype(np.float64)
        q = np.abs(p - (lo + hi) / 2) - (hi - lo) / 2
        dists.append(np.abs(np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)))
    for cx, cz, r, y0, y1 in geo.cylinders.astype(np.float64):
        dr = np.hypot(p[:, 0] - cx, p[:, 2] - cz) - r
        dy = np.maximum(y0 - p[:, 1], p[:, 1] - y1)
        dists.append(np.abs(np.minimum(np.maximum(dr, dy), 0) + np.hypot(np.maximum(dr, 0), np.maximum(dy, 0))))
    for s in geo.spheres.astype(np.float64):
        dists.append(np.abs(np.linalg.norm(p - s[:3], axis=1) - s[3]))
    return np.min(dists, axis=0)


def _to_world(points: np.ndarray, cam: procedural.Camera) -> np.ndarray:
    """OpenCV camera frame (y down) to the procedural world (camera rotation's columns: right, up, forward)."""
    up = points.astype(np.float64) * np.array([1.0, -1.0, 1.0])
    return up @ cam.rotation().T + cam.position


# ------------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("domain", ["indoor", "shapes", "tabletop"])
def test_unproject_lands_on_the_scene_surfaces(domain: str) -> None:
    """Model-free: unprojecting the ground-truth depth with the scene's K gives points that, moved to the world with
    the camera pose, lie on the scene's primitives (distances computed here from the primitives, not by ray casting)."""
    scene, cam = _scene(domain)
    K = Intrinsics.from_matrix(scene.intrinsics)
    assert (K.cx, K.cy) == (SIZE[1] / 2, SIZE[0] / 2)
    points, index = unproject(scene.depth, K, scene.valid)
    assert points.dtype == np.float32 and len(points) == scene.valid.sum() > SIZE[0] * SIZE[1] // 4
    np.testing.assert_array_equal(index, np.flatnonzero(scene.valid))
    z = scene.depth.reshape(-1)[index]
    np.testing.assert_array_equal(points[:, 2], z)
    geo = procedural.sample_layout(domain, scene.seed).geo
    off = _surface_distance(geo, _to_world(points, cam))
    assert np.max(off / z) < 1e-4, f"max relative off-surface distance {np.max(off / z):.2e}"
    # the check has teeth: the principal point half a pixel off (pixel corners instead of centres), or y up instead
    # of down, moves most points off the surfaces by far more than the tolerance
    corners = unproject(scene.depth, Intrinsics(K.fx, K.fy, K.cx + 0.5, K.cy + 0.5), scene.valid)[0]
    assert np.median(_surface_distance(geo, _to_world(corners, cam)) / z) > 1e-3
    flipped = _to_world(points * np.array([1, -1, 1], np.float32), cam)
    assert np.median(_surface_distance(geo, flipped) / z) > 1e-3


def test_unproject_matches_render_geometry_rays() -> None:
    """Same points as the renderer's own rays (camera space, z = 1, y up) times planar depth, with y flipped to down."""
    scene, cam = _scene("street")
    h, w = SIZE
    f = float(cam.intrinsics(SIZE)[0, 0])
    jj, ii = np.meshgrid(np.arange(w), np.arange(h))
    rays = np.stack([(jj + 0.5 - w / 2) / f, -(ii + 0.5 - h / 2) / f, np.ones((h, w))], -1)
    expected = (rays * scene.depth[..., None])[scene.valid] * np.array([1, -1, 1])
    points, _ = unproject(scene.depth, Intrinsics.from_matrix(scene.intrinsics), scene.valid)
    np.testing.assert_allclose(points, expected, rtol=1e-4, atol=0)


def test_unproject_drops_invalid_depth() -> None:
    depth = np.array([[1.0, 0.0, -2.0], [np.nan, np.inf, 3.0]], np.float32)
    mask = np.array([[True, True, True], [True, True, False]])
    points, index = unproject(depth, intrinsics_from_fov(90, (2, 3)), mask)
    np.testing.assert_array_equal(index, [0])
    _, index = unproject(depth, intrinsics_from_fov(90, (2, 3)))
    np.testing.assert_array_equal(index, [0, 5])
    with pytest.raises(ValueError, match="mask shape"):
        unproject(depth, intrinsics_from_fov(90, (2, 3)), mask[:1])


def test_fov_intrinsics_equal_the_procedural_camera() -> None:
    _, cam = _scene("indoor")
    K = intrinsics_from_fov(np.degrees(cam.hfov), SIZE)
    np.testing.assert_allclose(K.matrix(), cam.intrinsics(SIZE), rtol=1e-6)
    assert K.resized(SIZE, (96, 128)) == intrinsics_from_fov(np.degrees(cam.hfov), (96, 128))


# ------------------------------------------------------------------------------------------------ PLY


def _header(path: Path) -> str:
    data = path.read_bytes()
    return data[: data.index(b"end_header")].decode("ascii")


@pytest.mark.parametrize("metric", [False, True])
def test_ply_loads_in_trimesh(tmp_path: Path, metric: bool, trimesh: Any) -> None:
    scene, _ = _scene("tabletop")
    K = Intrinsics.from_matrix(scene.intrinsics)
    depth = np.where(scene.valid, scene.depth, 0.0)  # invalid pixels as depth-run would see them: no point
    path = tmp_path / "out" / "cloud.ply"
    n = depth_to_ply(path, depth, scene.rgb, K, metric=metric)
    points, index = unproject(scene.depth, K, scene.valid)
    assert n == len(points) == scene.valid.sum()
    header = _header(path)
    assert "format binary_little_endian 1.0" in header
    for prop in ("float x", "float y", "float z", "uchar red", "uchar green", "uchar blue"):
        assert f"property {prop}" in header
    assert ("affine-invariant" in header) is (not metric)
    assert ("in metres" in header) is metric
    cloud = trimesh.load(path, process=False)
    assert isinstance(cloud, trimesh.PointCloud) and len(cloud.vertices) == n
    np.testing.assert_allclose(cloud.vertices, points, rtol=1e-4, atol=0)
    np.testing.assert_array_equal(np.asarray(cloud.colors)[:, :3], scene.rgb.reshape(-1, 3)[index])
    assert sorted(os.listdir(path.parent)) == ["cloud.ply"]


def test_ply_without_colours_and_16_bit_rgb(tmp_path: Path, trimesh: Any) -> None:
    depth = np.full((4, 5), 2.0, np.float32)
    K = intrinsics_from_fov(60, (4, 5))
    assert depth_to_ply(tmp_path / "a.ply", depth, None, K, metric=True) == 20
    assert "red" not in _header(tmp_path / "a.ply")
    rgb16 = np.full((4, 5, 3), 65535, np.uint16)
    rgb16[0, 0] = (0, 257, 32896)  # 32896 = 128 * 257
    depth_to_ply(tmp_path / "b.ply", depth, rgb16, K, metric=True)
    colors = np.asarray(trimesh.load(tmp_path / "b.ply", process=False).colors)[:, :3]
    np.testing.assert_array_equal(colors[0], (0, 1, 128))
    assert (colors[1:] == 255).all()


def test_depth_to_ply_voxel(tmp_path: Path, trimesh: Any) -> None:
    depth = np.full((20, 20), 5.0, np.float32)
    rgb = np.zeros((20, 20, 3), np.uint8)
    K = intrinsics_from_fov(90, (20, 20))  # pixel pitch at z = 5: 0.5 m
    n = depth_to_ply(tmp_path / "v.ply", depth, rgb, K, metric=False, voxel=1.0)
    assert n == 100  # 2 x 2 pixels per 1 m cell, cells aligned to the origin, principal point on a cell border
    assert len(trimesh.load(tmp_path / "v.ply", process=False).vertices) == 100
    assert "voxel 1" in _header(tmp_path / "v.ply")


# ------------------------------------------------------------------------------------------------ voxels


def test_voxel_downsample_counts_and_means() -> None:
    points = np.array([[0.1, 0.1, 0.1], [0.3, 0.2, 0.9],  # cell (0, 0, 0)
                       [1.5, 0.0, 0.0],  # cell (1, 0, 0)
                       [-0.5, 0.5, 0.5], [-0.1, 0.1, 0.1], [-0.9, 0.9, 0.9]],  # cell (-1, 0, 0)
                      np.float32)
    colors = np.array([[0, 0, 0], [255, 10, 3], [7, 8, 9], [30, 0, 0], [60, 0, 1], [91, 0, 1]], np.uint8)
    out, col = voxel_downsample(points, colors, 1.0)
    assert out.dtype == np.float32 and col is not None and col.dtype == np.uint8
    order = np.argsort(out[:, 0])
    np.testing.assert_allclose(out[order], [[-0.5, 0.5, 0.5], [0.2, 0.15, 0.5], [1.5, 0, 0]], rtol=1e-6)
    np.testing.assert_array_equal(col[order], [[60, 0, 1], [128, 5, 2], [7, 8, 9]])  # 127.5 -> 128, 1.5 -> 2
    out, none = voxel_downsample(points, None, 10.0)
    assert none is None and len(out) == 2  # [-10, 0) and [0, 10) along x
    out, _ = voxel_downsample(points, None, 1e-6)
    assert len(out) == len(points)
    with pytest.raises(ValueError, match="voxel"):
        voxel_downsample(points, None, 0)
    huge = np.array([[-1e12, 0, 0], [1e12, 0, 0], [1e12, 0, 0]], np.float32)  # > 2**62 cells: the axis=0 unique path
    out, _ = voxel_downsample(huge, None, 1e-3)
    assert len(out) == 2


# ------------------------------------------------------------------------------------------------ intrinsics


def test_parse_intrinsics() -> None:
    assert parse_intrinsics(" 500, 510.5,320 ,240") == Intrinsics(500, 510.5, 320, 240)


@pytest.mark.parametrize(("text", "reason"), [
    ("1,2,3", "4 comma-separated"),
    ("a,b,c,d", "not a number"),
    ("0,1,2,3", "> 0"),
    ("1,-1,2,3", "> 0"),
    ("1,1,nan,3", "finite"),
    ("", "4 comma-separated"),
])
def test_parse_intrinsics_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as err:
        parse_intrinsics(text)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("fov", [0, 180, 200, -5, float("nan")])
def test_fov_errors(fov: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 180\)") as err:
        intrinsics_from_fov(fov, (10, 10))
    assert "\n" not in str(err.value)


def test_intrinsics_file_rows_by_name_or_stem(tmp_path: Path) -> None:
    path = tmp_path / "cams.csv"
    path.write_text("\ufeffName, fx, fy, cx, cy\n0001.jpg,500,510,320,240\n\n 0002 , 400 ,401, 300.5,200\n"
                    "0003.jpg,1,1,0,0\n0003,2,2,0,0\n", encoding="utf-8")
    cams = read_intrinsics_file(path)
    assert cams.camera("/data/0001.jpg") == Intrinsics(500, 510, 320, 240)  # by file name
    assert cams.camera(Path("x") / "0002.png") == Intrinsics(400, 401, 300.5, 200)  # by stem, padded cells
    assert cams.camera("0003.jpg") == Intrinsics(1, 1, 0, 0)  # the file name's row before the stem's
    assert cams.camera("0003.png") == Intrinsics(2, 2, 0, 0)
    with pytest.raises(IntrinsicsRowError, match=r"cams\.csv: no row for 0004\.jpg") as err:
        cams.camera("0004.jpg")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("row", "reason"), [
    ("a.png,abc,1,2,3", "fx 'abc' is not a number"),
    ("a.png,1,2,3", "4 cells, expected 5"),
    ("a.png,1,2,3,4,5", "6 cells, expected 5"),
    ("a.png,1,0,3,4", "fx and fy must be > 0"),
    ("a.png,-1,1,3,4", "fx and fy must be > 0"),
    ("a.png,1,1,inf,4", "cx 'inf' is not finite"),
    ("a.png,1,1,2,nan", "cy 'nan' is not finite"),
    ("a.png,1,1,2,", "cy '' is not a number"),
])
def test_intrinsics_file_bad_rows_name_their_line(tmp_path: Path, row: str, reason: str) -> None:
    path = tmp_path / "cams.csv"
    path.write_text(f"name,fx,fy,cx,cy\nb.png,5,5,2,2\n{row}\n")
    cams = read_intrinsics_file(path)  # one bad row does not stop the reading
    assert cams.camera("b.png") == Intrinsics(5, 5, 2, 2)
    with pytest.raises(IntrinsicsRowError) as err:
        cams.camera("a.png")
    assert str(err.value).startswith(f"{path}: line 3: {reason}")
    assert "\n" not in str(err.value)


def test_intrinsics_file_repeated_and_unnamed_rows(tmp_path: Path) -> None:
    path = tmp_path / "cams.csv"
    path.write_text("name,fx,fy,cx,cy\na.png,5,5,2,2\n,1,1,1,1\na.png,6,6,2,2\nb.png,5,5,2,2\n")
    cams = read_intrinsics_file(path)
    with pytest.raises(IntrinsicsRowError, match=r"line 4: a second row for a\.png \(the first is line 2\)"):
        cams.camera("a.png")  # ambiguous: neither row is taken
    assert cams.camera("b.png") == Intrinsics(5, 5, 2, 2)
    assert cams.unnamed == ("line 3: no image name, row skipped",)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty"),
    (b"\n \n", "empty"),
    (b"a.png,1,1,1,1\n", "line 1: expected the header name,fx,fy,cx,cy"),
    (b"name,fx,fy,cx\na.png,1,1,1\n", "expected the header"),
    (b"name,fx,fy,cx,cy\n", "no rows"),
    (b"name,fx,fy,cx,cy\n\xff\xfe\x00a,1,1,1,1\n", "cannot read"),
])
def test_intrinsics_file_that_cannot_be_used(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "cams.csv"
    path.write_bytes(content)
    with pytest.raises(IntrinsicsFileError, match=reason) as err:
        read_intrinsics_file(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
    with pytest.raises(IntrinsicsFileError, match="cannot read"):
        read_intrinsics_file(tmp_path / "missing.csv")


def _jpeg(tmp_path: Path, tags: dict[int, object], size: tuple[int, int] = (40, 30)) -> Path:
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd.update(tags)
    path = tmp_path / "photo.jpg"
    Image.new("RGB", size).save(path, exif=exif)
    return path


def test_intrinsics_from_exif(tmp_path: Path) -> None:
    # 35 mm equivalent 26 mm on a 4000 x 3000 photo: f = 26 * 5000 / hypot(36, 24)
    path = _jpeg(tmp_path, {0xA405: 26, 0x920A: 4.2})
    K = intrinsics_from_exif(path, (3000, 4000))
    assert K is not None
    assert K.fx == K.fy == pytest.approx(26 * 5000 / np.hypot(36, 24)) and (K.cx, K.cy) == (2000, 1500)
    # FocalLength 4 mm, 1000 pixels per cm at PixelXDimension 4000: 400 px at 4000 wide, 40 px at 400 wide
    path = _jpeg(tmp_path, {0x920A: 4.0, 0xA20E: 1000.0, 0xA210: 3, 0xA002: 4000, 0xA003: 3000})
    K = intrinsics_from_exif(path, (300, 400))
    assert K is not None and K.fx == pytest.approx(40.0)
    assert intrinsics_from_exif(_jpeg(tmp_path, {0x920A: 4.0}), (30, 40)) is None  # no sensor size
    Image.new("RGB", (4, 3)).save(tmp_path / "plain.png")
    assert intrinsics_from_exif(tmp_path / "plain.png", (3, 4)) is None


# ------------------------------------------------------------------------------------------------ atomic writes


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plyfile = pytest.importorskip("plyfile")
    path = tmp_path / "c.ply"
    bad = np.array([[0, 0, 1], [np.nan, 0, 1]], np.float32)
    with pytest.raises(ValueError, match="finite"):
        write_ply(path, bad)
    with pytest.raises(ValueError, match="uint8"):
        write_ply(path, np.ones((2, 3)), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="single-line"):
        write_ply(path, np.ones((2, 3)), comments=["two\nlines"])
    assert os.listdir(tmp_path) == []

    def fail(*_: object) -> NoReturn:
        raise OSError("disk full")

    write_ply(path, np.ones((2, 3)))
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", fail)  # the rename after the temp file was written
    with pytest.raises(OSError, match="disk full"):
        write_ply(path, np.ones((5, 3)))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.ply"] and path.read_bytes() == before  # old file intact, no temp file

    def write_then_fail(self: object, stream: IO[bytes]) -> NoReturn:
        stream.write(b"ply\n")
        fail()

    monkeypatch.setattr(plyfile.PlyData, "write", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_ply(tmp_path / "d.ply", np.ones((2, 3)))
    assert os.listdir(tmp_path) == ["c.ply"]


def test_missing_plyfile_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plyfile", None)  # makes `import plyfile` raise ImportError
    with pytest.raises(ImportError, match="pip install plyfile"):
        write_ply(tmp_path / "e.ply", np.ones((2, 3)))
    assert not (tmp_path / "e.ply").exists()
