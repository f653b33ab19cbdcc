"""agdepth.imageio: reading every Pillow mode, input expansion, atomic depth writers, output naming."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agdepth import imageio as io
from agdepth.imageio import ImageReadError, collect_inputs, existing_outputs, output_paths, read_image

RNG = np.random.default_rng(0)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def _assert_one_line_naming(err: pytest.ExceptionInfo[ImageReadError], path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


# ---------------------------------------------------------------- reading: modes


def test_rgb_png_is_read_exactly(tmp_path: Path) -> None:
    pixels = _noise(5, 7)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got, pixels)


def test_rgba_drops_alpha_keeping_stored_colour(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)  # first pixel fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.uint8 and got.shape == (1, 2, 3)
    np.testing.assert_array_equal(got, rgba[..., :3])  # not composited over white or black


def test_la_becomes_grey_rgb_without_alpha(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[40, 0], [220, 255]]], dtype=np.uint8), "LA").save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(got, [[[40, 40, 40], [220, 220, 220]]])


def test_l_is_replicated_to_three_channels(tmp_path: Path) -> None:
    grey = _noise(4, 6, 1)[..., 0]
    Image.fromarray(grey).save(tmp_path / "a.png")
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))


def test_16bit_png_keeps_full_precision(tmp_path: Path) -> None:
    grey = np.array([[0, 255, 256, 1000], [40000, 65534, 65535, 12345]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    got = read_image(tmp_path / "a.png")
    assert got.dtype == np.uint16 and got.shape == (2, 4, 3)
    for ch in range(3):
        np.testing.assert_array_equal(got[..., ch], grey)


def test_big_endian_16bit_and_int32_tiffs_read_as_uint16(tmp_path: Path) -> None:
    grey = np.array([[3, 300, 30000, 65535]], dtype=np.uint16)
    Image.fromarray(grey.astype(">u2")).save(tmp_path / "b.tif")
    Image.fromarray(grey.astype(np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "b.tif").mode == "I;16B" and Image.open(tmp_path / "i.tif").mode == "I"
    for name in ("b.tif", "i.tif"):
        got = read_image(tmp_path / name)
        assert got.dtype == np.dtype(np.uint16)  # native byte order
        np.testing.assert_array_equal(got[..., 2], grey)


def test_int32_out_of_16bit_range_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "i.tif")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "i.tif")
    assert "70000" in _assert_one_line_naming(err, tmp_path / "i.tif")


def test_float_image_in_unit_range_becomes_uint16(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 1 / 65535, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    got = read_image(tmp_path / "f.tif")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got[..., 0], [[0, 16384, 1, 65535]])  # round(0.25 * 65535) = 16384


@pytest.mark.parametrize("bad", [2.5, float("nan")])
def test_float_image_outside_unit_range_is_refused(tmp_path: Path, bad: float) -> None:
    Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "f.tif")
    assert "[0, 1]" in _assert_one_line_naming(err, tmp_path / "f.tif")


def test_cmyk_converts_to_rgb(tmp_path: Path) -> None:
    img = Image.new("CMYK", (3, 1))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])  # white, cyan, black
    img.save(tmp_path / "c.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]])


def test_palette_image_maps_through_palette(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    img.putdata([0, 1, 2, 0])
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "pt.png", transparency=bytes([0, 128, 255]))  # per-entry alpha: dropped like RGBA's
    expect = [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 0, 0]]]
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), expect)
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png"), expect)


def test_bilevel_image_is_black_and_white(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putdata([0, 1])
    img.save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), [[[0, 0, 0], [255, 255, 255]]])


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one.png")
    np.testing.assert_array_equal(read_image(tmp_path / "one.png"), [[[1, 2, 3]]])


def test_exif_orientation_6_is_rotated_clockwise(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # 32 wide, 16 high: left half red, right half blue
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    got = read_image(tmp_path / "r.jpg").astype(int)
    assert got.shape == (32, 16, 3)  # width and height swapped
    # clockwise: the stored left (red) edge ends up on top, the right (blue) one at the bottom
    assert np.abs(got[:12] - (255, 0, 0)).max() < 40
    assert np.abs(got[-12:] - (0, 0, 255)).max() < 40


# ---------------------------------------------------------------- reading: failures


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_is_a_clear_error(tmp_path: Path, ext: str) -> None:
    good = tmp_path / f"good.{ext}"
    Image.fromarray(_noise(64, 64)).save(good)
    cut = tmp_path / f"cut.{ext}"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as err:
        read_image(cut)
    assert "truncated" in _assert_one_line_naming(err, cut)


def test_text_file_with_image_extension_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not an image\nsecond line\n")
    with pytest.raises(ImageReadError) as err:
        read_image(fake)
    assert "not an image" in _assert_one_line_naming(err, fake)


def test_missing_file_is_an_image_read_error(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "gone.jpg")
    _assert_one_line_naming(err, tmp_path / "gone.jpg")


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.png"
    Image.new("L", (40, 40)).save(path)
    with pytest.raises(ImageReadError) as err:
        read_image(path, max_pixels=1000)  # our own header check
    assert "decompression bomb" in _assert_one_line_naming(err, path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow's own check (errors above twice this)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert "decompression bomb" in _assert_one_line_naming(err, path)


def test_large_photo_reads_under_default_limits(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (8000, 6000), 7).save(path, compress_level=1)
    got = read_image(path)
    assert got.shape == (6000, 8000, 3) and got[-1, -1, 2] == 7


# ---------------------------------------------------------------- collect_inputs


def _touch_images(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")  # content is irrelevant to collection


def test_folder_expands_to_sorted_image_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    _touch_images(
        d,
        "b.JPG",
        "a.png",
        "c.TiFf",
        "d.webp",
        "e.bmp",
        "f.jpeg",
        "g.tif",
        "notes.txt",
        "x.gif",
        ".hidden.png",
        "sub/deep.png",
    )
    (d / "dir.png").mkdir()  # a folder with an image-like name is not a file
    got = collect_inputs([d])
    assert [stem.as_posix() for _, stem in got] == ["a", "b", "c", "d", "e", "f", "g", "x"]
    assert [src.name for src, _ in got] == ["a.png", "b.JPG", "c.TiFf", "d.webp", "e.bmp", "f.jpeg", "g.tif", "x.gif"]
    assert all(src.is_absolute() and src.parent == d for src, _ in got)


def test_recursive_keeps_subfolder_structure(tmp_path: Path) -> None:
    d = tmp_path / "in"
    _touch_images(d, "top.png", "b/x.jpg", "a/y.png", "a/z/w.png", ".git/skip.png")
    got = collect_inputs([d], recursive=True)
    assert [stem.as_posix() for _, stem in got] == ["a/y", "a/z/w", "b/x", "top"]
    assert got[1][0] == d / "a" / "z" / "w.png"


def test_file_argument_stem_is_its_name_and_unknown_extension_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _touch_images(tmp_path, "sub/photo.v2.PNG", "scan.raw")
    monkeypatch.chdir(tmp_path)
    got = collect_inputs(["sub/photo.v2.PNG", "scan.raw"])  # relative arguments come back absolute
    assert got == [(tmp_path / "sub" / "photo.v2.PNG", Path("photo.v2")), (tmp_path / "scan.raw", Path("scan"))]


def test_arguments_keep_their_order_and_duplicates_are_dropped(tmp_path: Path) -> None:
    _touch_images(tmp_path, "z.png", "in/a.png", "in/b.png")
    got = collect_inputs(
        [tmp_path / "z.png", tmp_path / "in", tmp_path / "in" / "a.png", tmp_path / "in" / ".." / "z.png"]
    )
    assert [stem.as_posix() for _, stem in got] == ["z", "a", "b"]


def test_same_stem_from_two_files_is_refused_naming_both(tmp_path: Path) -> None:
    _touch_images(tmp_path, "in/a.png", "in/a.jpg")
    with pytest.raises(ValueError) as err:
        collect_inputs([tmp_path / "in"])
    assert "a.png" in str(err.value) and "a.jpg" in str(err.value)
    _touch_images(tmp_path, "one/x.png", "two/x.png")
    with pytest.raises(ValueError) as err:
        collect_inputs([tmp_path / "one", tmp_path / "two"])
    assert str(tmp_path / "one" / "x.png") in str(err.value) and str(tmp_path / "two" / "x.png") in str(err.value)


def test_missing_input_is_file_not_found(tmp_path: Path) -> None:
    _touch_images(tmp_path, "a.png")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        collect_inputs([tmp_path / "a.png", tmp_path / "nope.png"])


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _touch_images(tmp_path, "other/readme.txt", "other/sub/deep.png")
    with pytest.raises(ValueError, match="no input images found in .*empty"):
        collect_inputs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="no input images found"):
        collect_inputs([tmp_path / "other"])  # the image is only reachable recursively
    assert len(collect_inputs([tmp_path / "other"], recursive=True)) == 1


# ---------------------------------------------------------------- writers


def test_png16_round_trip_is_exact(tmp_path: Path) -> None:
    depth = np.concatenate([[0.0, 1.0, 0.5, 1 / 65535, -0.2, 1.3], RNG.random(58)]).reshape(8, 8)
    path = io.write_depth_png16(tmp_path / "new" / "d.png", depth)
    with Image.open(path) as img:
        assert img.mode == "I;16"
        back = np.asarray(img)
    expect = np.round(np.clip(depth, 0, 1) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(back, expect)
    assert back.flat[:6].tolist() == [0, 65535, 32768, 1, 0, 65535]  # out-of-range values are clipped


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 1)), np.array([[0.5, np.nan]])])
def test_depth_writers_refuse_bad_maps(tmp_path: Path, bad: np.ndarray) -> None:
    for write in (io.write_depth_png16, io.write_color_png):
        with pytest.raises(ValueError):
            write(tmp_path / "d.png", bad)
    assert list(tmp_path.iterdir()) == []


def test_npy_round_trip_is_float32(tmp_path: Path) -> None:
    depth = RNG.random((3, 5))
    path = io.write_npy(tmp_path / "d.npy", depth)
    back = np.load(path, allow_pickle=False)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, depth.astype(np.float32))


# matplotlib's Spectral with bytes=True at these values (recorded with matplotlib 3.11; the endpoints are ColorBrewer's
# first and last Spectral colours #9e0142 and #5e4fa2)
SPECTRAL_REFERENCE = {
    0.0: (158, 1, 66),
    0.1: (211, 60, 78),
    0.25: (248, 142, 82),
    0.5: (254, 254, 190),
    0.75: (134, 206, 164),
    0.9: (50, 134, 188),
    1.0: (94, 79, 162),
}


def test_color_png_matches_recorded_spectral_values(tmp_path: Path) -> None:
    values = np.array([list(SPECTRAL_REFERENCE)])
    path = io.write_color_png(tmp_path / "c.png", values)
    with Image.open(path) as img:
        assert img.mode == "RGB"
        got = np.asarray(img)
    np.testing.assert_array_equal(got[0], list(SPECTRAL_REFERENCE.values()))
    near, far = got[0, 0], got[0, -1]
    assert near[0] > near[2] and far[2] > far[0]  # Marigold's "red near, blue far"


# dense values, every LUT bin edge k/256 and the floats just either side of it, and out-of-range values (clipped)
_EDGES = np.arange(257) / 256
SPECTRAL_PROBES = np.concatenate([np.linspace(0, 1, 4001), _EDGES, np.nextafter(_EDGES, -1), np.nextafter(_EDGES, 2),
                                  [-0.5, 1.5]]).reshape(1, -1)


def test_color_png_equals_matplotlib_spectral() -> None:
    matplotlib = pytest.importorskip("matplotlib")
    expect = matplotlib.colormaps["Spectral"](np.clip(SPECTRAL_PROBES, 0, 1), bytes=True)[..., :3]
    np.testing.assert_array_equal(io.colorize_depth(SPECTRAL_PROBES), expect)


def test_colorize_equals_the_colormaps_own_call() -> None:
    from cmap import Colormap

    expect = Colormap(io.SPECTRAL)(np.clip(SPECTRAL_PROBES, 0, 1), bytes=True)[..., :3]
    np.testing.assert_array_equal(io.colorize_depth(SPECTRAL_PROBES), expect)


def test_uncertainty_png_saturates_at_the_95th_percentile(tmp_path: Path) -> None:
    unc = np.arange(100, dtype=np.float64).reshape(10, 10) / 1000  # 95th percentile = 0.09405
    path = io.write_uncertainty_png(tmp_path / "u.png", unc)
    with Image.open(path) as img:
        assert img.mode == "L"
        grey = np.asarray(img)
    expect = np.clip(unc * 255 / np.percentile(unc, 95), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(grey, expect)
    assert grey.flat[0] == 0 and (grey.flat[95:] == 255).all() and grey.flat[47] == 127
    io.write_uncertainty_png(tmp_path / "z.png", np.zeros((2, 3)))  # single-member ensemble: black, not NaN
    with Image.open(tmp_path / "z.png") as img:
        assert np.asarray(img).max() == 0
    with pytest.raises(ValueError, match="non-negative"):
        io.write_uncertainty_png(tmp_path / "n.png", -np.ones((2, 2)))


# ---------------------------------------------------------------- atomicity


def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "er"
    depth = RNG.random((4, 4))
    io.write_depth_png16(out / "a_depth.png", depth)
    io.write_npy(out / "a_depth.npy", depth)
    io.write_color_png(out / "a_depth_color.png", depth)
    io.write_uncertainty_png(out / "a_uncertainty.png", depth)
    io.write_npy(out / "a_depth.npy", depth)  # overwrite
    assert sorted(p.name for p in out.iterdir()) == [
        "a_depth.npy",
        "a_depth.png",
        "a_depth_color.png",
        "a_uncertainty.png",
    ]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.npy"
    io.write_npy(path, np.ones(3))
    old = path.read_bytes()

    def broken_save(f: Any, arr: Any, **kwargs: Any) -> None:
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.np, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk full"):
        io.write_npy(path, np.zeros(3))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["d.npy"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rename and permission semantics")
def test_overwrite_replaces_the_file_instead_of_rewriting_it(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    io.write_npy(path, np.ones(3))
    with open(path, "rb") as reader:  # a reader that opened the old output keeps seeing complete old data
        io.write_npy(path, np.full(3, 2.0))
        np.testing.assert_array_equal(np.load(reader), np.ones(3))
    np.testing.assert_array_equal(np.load(path), np.full(3, 2.0))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a private temp file


# ---------------------------------------------------------------- output naming


def test_output_paths_names_every_kind(tmp_path: Path) -> None:
    got = output_paths(tmp_path / "out", Path("sub/img.v2"), ["color", "npy", "png16"], uncertainty=True)
    base = tmp_path / "out" / "sub"
    assert got == {
        "png16": base / "img.v2_depth.png",
        "npy": base / "img.v2_depth.npy",
        "color": base / "img.v2_depth_color.png",
        "uncertainty": base / "img.v2_uncertainty.png",
    }
    assert list(got) == ["png16", "npy", "color", "uncertainty"]
    assert output_paths("out", "a", "png16, color", uncertainty=False) == {
        "png16": Path("out/a_depth.png"),
        "color": Path("out/a_depth_color.png"),
    }


def test_output_paths_rejects_unknown_formats_and_escaping_stems(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        output_paths(tmp_path, "a", ["png16", "exr"], uncertainty=False)
    assert "'exr'" in str(err.value) and all(name in str(err.value) for name in ("png16", "npy", "color"))
    with pytest.raises(ValueError, match="no output selected"):
        output_paths(tmp_path, "a", [], uncertainty=False)
    for stem in ("../a", str(tmp_path / "abs")):
        with pytest.raises(ValueError, match="relative"):
            output_paths(tmp_path, stem, ["npy"], uncertainty=False)


def test_existing_outputs_lists_only_present_files(tmp_path: Path) -> None:
    paths = output_paths(tmp_path, "a", ["png16", "npy", "color"], uncertainty=True)
    assert existing_outputs(paths) == []
    io.write_npy(paths["npy"], np.zeros((2, 2)))
    paths["color"].symlink_to(tmp_path / "missing-target")  # a dangling link would be replaced too
    assert existing_outputs(paths) == [paths["npy"], paths["color"]]
    assert existing_outputs(list(paths.values())) == [paths["npy"], paths["color"]]


def test_write_outputs_writes_each_requested_file(tmp_path: Path) -> None:
    depth = np.linspace(0, 1, 12).reshape(3, 4)
    paths = output_paths(tmp_path, "sub/a", ["png16", "npy", "color"], uncertainty=True)
    with pytest.raises(ValueError, match="no uncertainty map"):
        io.write_outputs(paths, depth)
    assert existing_outputs(paths) == []  # refused before anything was written
    io.write_outputs(paths, depth, uncertainty=depth / 10)
    assert existing_outputs(paths) == list(paths.values())
    np.testing.assert_array_equal(np.load(paths["npy"]), depth.astype(np.float32))
    with Image.open(paths["png16"]) as img:
        assert np.asarray(img)[-1, -1] == 65535
