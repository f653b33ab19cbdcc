"""Readers of the real benchmarks (agdepth.evaluation.readers) on tiny folders in Marigold's evaluation-data layout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agdepth.data.base import SampleReadError
from agdepth.evaluation.readers import NYUv2
from agdepth.evaluation.registry import REAL, build_dataset

H, W = 16, 24


# --- writers in the datasets' own encodings --------------------------------------------------------------------------
def _rgb(path: Path, h: int = H, w: int = W, fmt: str | None = None) -> np.ndarray:
    """An image whose red channel encodes the row and green the column (mod 256), so crops can be located."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([yy % 256, xx % 256, np.full_like(yy, 7)], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


def _png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values, dtype=np.uint16)).save(path, format="PNG")


def _lines(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


# --- NYU --------
NYU_LINE = "test/{s}/rgb_{i}.png test/{s}/depth_{i}.png test/{s}/filled_{i}.png"


def _nyu(root: Path, depth_mm: np.ndarray, scene: str = "kitchen_0004", idx: str = "0001") -> Path:
    h, w = depth_mm.shape
    _rgb(root / f"test/{scene}/rgb_{idx}.png", h, w)
    _png16(root / f"test/{scene}/depth_{idx}.png", depth_mm)
    _png16(root / f"test/{scene}/filled_{idx}.png", np.full((h, w), 4000))  # in-painted: must not be scored
    return _lines(root / "filename_list_test.txt", [NYU_LINE.format(s=scene, i=idx)])


def test_nyu_decodes_millimetres_and_masks_invalid(tmp_path: Path) -> None:
    mm = np.full((H, W), 1500)
    mm[0, 0] = 0  # no measurement
    mm[1, 1] = 12000  # 12 m: beyond NYU's 10 m
    _nyu(tmp_path, mm)
    ds = build_dataset("nyu", tmp_path, eigen_crop=False)  # list found in the root under Marigold's name
    assert ds.names() == ["test/kitchen_0004/rgb_0001.png"]
    s = ds.load(0)
    assert s.rgb.dtype == np.uint8 and s.rgb.shape == (H, W, 3)
    assert s.depth.dtype == np.float32 and s.depth.shape == (H, W)
    assert s.depth[5, 5] == pytest.approx(1.5)  # raw depth column, not the filled one (4 m)
    assert s.depth[0, 0] == 0 and s.depth[1, 1] == pytest.approx(12.0)
    expected = np.ones((H, W), bool)
    expected[0, 0] = expected[1, 1] = False
    np.testing.assert_array_equal(s.mask, expected)


def test_nyu_eigen_crop_matches_published_window(tmp_path: Path) -> None:
    mm = np.full((480, 640), 2000)
    mm[100, 100] = 0
    _nyu(tmp_path, mm)
    s = build_dataset("nyu", tmp_path).load(0)
    expected = np.zeros((480, 640), bool)
    expected[45:471, 41:601] = True  # Eigen crop (Marigold nyu_dataset.py)
    expected[100, 100] = False
    np.testing.assert_array_equal(s.mask, expected)
    assert s.mask.sum() == 426 * 560 - 1


def test_nyu_eigen_crop_on_wrong_size_is_a_bad_sample(tmp_path: Path) -> None:
    _nyu(tmp_path, np.full((H, W), 1500))
    ds = build_dataset("nyu", tmp_path)
    with pytest.raises(SampleReadError, match="depth_0001.png"):
        ds.load(0)


def test_nyu_count_note_and_overrides(tmp_path: Path) -> None:
    _nyu(tmp_path, np.full((H, W), 1500))
    ds = build_dataset("nyu", tmp_path, eigen_crop=False, max_depth=1.0)
    note = ds.count_note()
    assert note is not None and "1 samples" in note and "654" in note
    assert ds.depth_range == (1e-3, 1.0)
    assert not ds.load(0).mask.any()  # 1.5 m is now out of range
    assert NYUv2.depth_range == (1e-3, 10.0)  # the override does not leak into the class


# --- KITTI --------
KITTI_RGB = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/{f}.png"
KITTI_GT = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/{f}.png"


def _kitti(root: Path, depth_raw: np.ndarray, frame: str = "0000000069") -> None:
    h, w = depth_raw.shape
    _rgb(root / KITTI_RGB.format(f=frame), h, w)
    _png16(root / KITTI_GT.format(f=frame), depth_raw)
    _lines(root / "eigen_test_files_with_gt.txt", [
        f"{KITTI_RGB.format(f=frame)} {KITTI_GT.format(f=frame)} 721.5377",
        f"{KITTI_RGB.format(f='0000000075')} None 721.5377",  # no ground truth: dropped
    ])


def _fraction_window(h: int, w: int, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[int(top * h) : int(bottom * h), int(left * w) : int(right * w)] = True
    return m


def test_kitti_benchmark_crop_decode_and_eigen_mask(tmp_path: Path) -> None:
    raw = np.full((375, 1242), int(256 * 12.5))
    raw[23 + 200, 620] = 0  # no LiDAR return, inside both crops
    raw[300, 620] = 256 * 90  # 90 m: beyond KITTI's 80 m
    _kitti(tmp_path, raw)
    ds = build_dataset("kitti", tmp_path)
    assert len(ds) == 1 and ds.skipped_without_gt == 1  # the None line is not a sample
    s = ds.load(0)
    assert s.rgb.shape == (352, 1216, 3) and s.depth.shape == (352, 1216) and s.mask.shape == (352, 1216)
    top, left = 375 - 352, (1242 - 1216) // 2  # bottom rows, centred columns
    assert s.rgb[0, 0, 0] == top and s.rgb[0, 0, 1] == left
    assert s.depth[100, 100] == pytest.approx(12.5)
    assert s.depth[200, 620 - left] == 0
    expected = _fraction_window(352, 1216, 0.3324324, 0.91351351, 0.0359477, 0.96405229)  # Eigen (BTS/Marigold)
    rows, cols = np.nonzero(expected)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (117, 320, 43, 1171)  # on the cropped frame
    expected[200, 620 - left] = expected[300 - top, 620 - left] = False
    np.testing.assert_array_equal(s.mask, expected)


def test_kitti_garg_and_no_crop(tmp_path: Path) -> None:
    raw = np.full((375, 1242), 256 * 10)
    _kitti(tmp_path, raw)
    garg = build_dataset("kitti", tmp_path, crop="garg").load(0)
    expected = _fraction_window(352, 1216, 0.40810811, 0.99189189, 0.03594771, 0.96405229)  # Garg
    rows, cols = np.nonzero(expected)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (143, 348, 43, 1171)
    np.testing.assert_array_equal(garg.mask, expected)
    full = build_dataset("kitti", tmp_path, crop=None, kb_crop=False).load(0)
    assert full.depth.shape == (375, 1242) and full.mask.all()


def test_kitti_rejects_unknown_crop_and_small_frames(tmp_path: Path) -> None:
    _kitti(tmp_path, np.full((H, W), 256))
    with pytest.raises(ValueError, match="unknown KITTI crop"):
        build_dataset("kitti", tmp_path, crop="tight")
    with pytest.raises(SampleReadError, match="0000000069.png"):
        build_dataset("kitti", tmp_path).load(0)  # smaller than 352x1216
    assert build_dataset("kitti", tmp_path, kb_crop=False, crop=None).load(0).mask.all()


# --- ETH3D --------
ETH_RGB = "rgb/office/images/dslr_images/DSC_0219.JPG"
ETH_GT = "depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG"


def _eth3d(root: Path, depth: np.ndarray) -> None:
    _rgb(root / ETH_RGB, *depth.shape, fmt="JPEG")
    (root / ETH_GT).parent.mkdir(parents=True, exist_ok=True)
    (root / ETH_GT).write_bytes(np.asarray(depth, dtype="<f4").tobytes())  # headerless float32, despite .JPG
    _lines(root / "eth3d_filename_list.txt", [f"{ETH_RGB} {ETH_GT}"])


def test_eth3d_raw_float_with_inf(tmp_path: Path) -> None:
    d = np.full((H, W), 3.25, np.float32)
    d[2, 3] = np.inf
    d[4, 5] = np.nan
    d[6, 7] = 0.0
    _eth3d(tmp_path, d)
    s = build_dataset("eth3d", tmp_path, raw_hw=(H, W)).load(0)
    assert s.rgb.shape == (H, W, 3)
    assert s.depth[0, 0] == pytest.approx(3.25)
    assert s.depth[2, 3] == 0 and s.depth[4, 5] == 0 and np.isfinite(s.depth).all()
    expected = np.ones((H, W), bool)
    expected[2, 3] = expected[4, 5] = expected[6, 7] = False
    np.testing.assert_array_equal(s.mask, expected)


def test_eth3d_default_raw_size_and_wrong_size_file(tmp_path: Path) -> None:
    _eth3d(tmp_path, np.ones((H, W), np.float32))
    ds = build_dataset("eth3d", tmp_path)
    assert ds.raw_hw == (4032, 6048)
    with pytest.raises(SampleReadError, match="DSC_0219.JPG") as e:
        ds.load(0)  # a 16x24 file is not a 4032x6048 one
    assert "ground_truth_depth" in e.value.path and str(4032 * 6048 * 4) in str(e.value)


# --- ScanNet --------
SCN_RGB, SCN_GT = "scene0406_02/color/000300.jpg", "scene0406_02/depth/000300.png"


def test_scannet_millimetres_and_size_mismatch(tmp_path: Path) -> None:
    _rgb(tmp_path / SCN_RGB, fmt="JPEG")
    mm = np.full((H, W), 1500)
    mm[3, 3] = 0
    _png16(tmp_path / SCN_GT, mm)
    _lines(tmp_path / "scannet_val_sampled_list_800_1.txt", [f"{SCN_RGB} {SCN_GT}"])
    ds = build_dataset("scannet", tmp_path)
    s = ds.load(0)
    assert s.depth[0, 0] == pytest.approx(1.5) and s.depth[3, 3] == 0
    assert s.mask.sum() == H * W - 1 and not s.mask[3, 3]
    assert "800" in (ds.count_note() or "")
    _png16(tmp_path / SCN_GT, np.full((H + 1, W), 1500))
    with pytest.raises(SampleReadError, match="depth/000300.png"):
        ds.load(0)


# --- DIODE --------
def _diode_sample(root: Path, kind: str, scene: str, scan: str, view: str, depth: np.ndarray,
                  mask: np.ndarray) -> str:
    stem = f"{kind}/scene_{scene}/scan_{scan}/{scene}_{scan}_{kind}_{view}"
    _rgb(root / f"{stem}.png", *depth.shape)
    np.save(root / f"{stem}_depth.npy", depth[..., None].astype(np.float32))  # DIODE stores HxWx1
    np.save(root / f"{stem}_depth_mask.npy", mask.astype(np.float32))
    return f"{stem}.png {stem}_depth.npy {stem}_depth_mask.npy"


def _diode(root: Path) -> tuple[str, str]:
    d = np.full((H, W), 5.0)
    d[0, 0] = 0.3  # below DIODE's 0.6 m
    m = np.ones((H, W))
    m[:, :4] = 0  # the scanner's own invalid region
    indoor = _diode_sample(root, "indoors", "00021", "00189", "200_010", d, m)
    outdoor = _diode_sample(root, "outdoor", "00022", "00193", "000_000", np.full((H, W), 40.0), np.ones((H, W)))
    _lines(root / "diode_val_all_filename_list.txt", [indoor, outdoor])
    _lines(root / "diode_val_indoor_filename_list.txt", [indoor])
    _lines(root / "diode_val_outdoor_filename_list.txt", [outdoor])
    return indoor, outdoor


def test_diode_mask_file_and_range(tmp_path: Path) -> None:
    _diode(tmp_path)
    ds = build_dataset("diode", tmp_path)
    assert len(ds) == 2 and ds.expected_count == 771
    s = ds.load(0)
    assert s.depth.shape == (H, W) and s.depth[5, 5] == pytest.approx(5.0)
    expected = np.ones((H, W), bool)
    expected[:, :4] = False
    expected[0, 0] = False
    np.testing.assert_array_equal(s.mask, expected)
    assert ds.load(1).mask.all() and ds.load(1).depth[0, 0] == pytest.approx(40.0)


def test_diode_subsets(tmp_path: Path) -> None:
    _diode(tmp_path)
    indoor, outdoor = build_dataset("diode-indoor", tmp_path), build_dataset("diode-outdoor", tmp_path)
    assert indoor.names() == ["indoors/scene_00021/scan_00189/00021_00189_indoors_200_010.png"]
    assert outdoor.names()[0].startswith("outdoor/")
    assert indoor.expected_count == 325 and "325" in (indoor.count_note() or "")
    assert outdoor.expected_count == 446 and "446" in (outdoor.count_note() or "")


def test_diode_corrupt_and_missing_files(tmp_path: Path) -> None:
    _diode(tmp_path)
    ds = build_dataset("diode", tmp_path)
    mask_file = tmp_path / "indoors/scene_00021/scan_00189/00021_00189_indoors_200_010_depth_mask.npy"
    np.save(mask_file, np.ones((H, W + 1)))
    with pytest.raises(SampleReadError, match="_depth_mask.npy"):
        ds.load(0)
    depth_file = tmp_path / "outdoor/scene_00022/scan_00193/00022_00193_outdoor_000_000_depth.npy"
    depth_file.write_bytes(b"not an npy file")
    with pytest.raises(SampleReadError, match="00022_00193_outdoor_000_000_depth.npy"):
        ds.load(1)
    depth_file.unlink()
    with pytest.raises(SampleReadError, match="00022_00193_outdoor_000_000_depth.npy"):
        ds.load(1)


# --- shared behaviour --------
def test_corrupt_and_missing_image_name_the_file(tmp_path: Path) -> None:
    _nyu(tmp_path, np.full((H, W), 1500))
    ds = build_dataset("nyu", tmp_path, eigen_crop=False)
    rgb = tmp_path / "test/kitchen_0004/rgb_0001.png"
    rgb.write_bytes(b"\x89PNG garbage")
    with pytest.raises(SampleReadError, match="rgb_0001.png") as e:
        ds.load(0)
    assert e.value.path == str(rgb)
    rgb.unlink()
    with pytest.raises(SampleReadError, match="rgb_0001.png"):
        ds.load(0)
    depth = tmp_path / "test/kitchen_0004/depth_0001.png"
    _rgb(rgb)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(depth)  # an 8-bit PNG would decode to wrong metres
    with pytest.raises(SampleReadError, match="depth_0001.png"):
        ds.load(0)


def test_build_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'nyuv3'"):
        build_dataset("nyuv3", tmp_path)
    with pytest.raises(ValueError, match="data-root"):
        build_dataset("kitti", None)
    missing = tmp_path / "no_such_root"
    with pytest.raises(FileNotFoundError) as e:
        build_dataset("eth3d", missing)
    assert e.value.filename == str(missing)
    with pytest.raises(FileNotFoundError, match="scannet_val_sampled_list_800_1.txt"):
        build_dataset("scannet", tmp_path)  # root exists but holds no split list
    with pytest.raises(FileNotFoundError) as e:
        build_dataset("nyu", tmp_path, filename_list=tmp_path / "mine.txt")
    assert e.value.filename == str(tmp_path / "mine.txt")
    with pytest.raises(TypeError):
        build_dataset("nyu", tmp_path, crop="eigen")  # a KITTI-only option


def test_explicit_list_elsewhere_and_marigold_data_split_path(tmp_path: Path) -> None:
    _nyu(tmp_path, np.full((H, W), 1500))
    lst = tmp_path / "filename_list_test.txt"
    moved = tmp_path / "elsewhere" / "my_split.txt"
    moved.parent.mkdir()
    lst.rename(moved)
    assert len(build_dataset("nyu", tmp_path, filename_list=moved)) == 1
    nested = tmp_path / "data_split/nyu/labeled/filename_list_test.txt"
    nested.parent.mkdir(parents=True)
    moved.rename(nested)
    assert build_dataset("nyu", tmp_path, eigen_crop=False).filename_list == nested


@pytest.mark.parametrize(
    "name, depth_range, res, count",
    [
        ("nyu", (1e-3, 10.0), 0, 654),
        ("kitti", (1e-5, 80.0), 0, 652),
        ("eth3d", (1e-5, math.inf), 756, 454),
        ("scannet", (1e-3, 10.0), 0, 800),
        ("diode", (0.6, 350.0), 640, 771),
        ("diode-indoor", (0.6, 350.0), 640, 325),
        ("diode-outdoor", (0.6, 350.0), 640, 446),
    ],
)
def test_registered_protocol_defaults(name: str, depth_range: tuple[float, float], res: int, count: int) -> None:
    cls = REAL[name]
    assert cls.name == name and cls.depth_range == depth_range and cls.processing_res == res
    assert cls.expected_count == count and cls.alignment == "least_squares" and cls.dense is False
    assert cls.alignment_max_res == (1024 if name == "eth3d" else None)
