"""agdepth.videoio: PyAV round trips, frame selection, truncated and bad files, frame folders, atomic writing."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agdepth import videoio
from agdepth.imageio import OUTPUT_LEDGER, colorize_depth
from agdepth.videoio import (
    VideoReadError,
    VideoWriter,
    iter_frame_folder,
    iter_video_frames,
    list_frame_files,
    probe_video,
    side_by_side,
)

av = pytest.importorskip("av")

H, W, N = 48, 64, 12


def _gradients(n: int = N, h: int = H, w: int = W) -> list[np.ndarray]:
    """Frames of moving gradients: smooth (so a lossy codec keeps them close) and different from frame to frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 4 + i * 16) % 256, (yy * 5 + i * 8) % 256, np.full_like(xx, 60 + 12 * i)],
                     axis=-1).astype(np.uint8) for i in range(n)]


def _write(path: Path, frames: list[np.ndarray], fps: float = 25) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == len(frames)
    return path


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _one_line_naming(err: pytest.ExceptionInfo[VideoReadError], path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and err.value.path == str(path)
    return msg


def _read_all(path: Path) -> tuple[list[tuple[int, np.ndarray]], VideoReadError | None]:
    got: list[tuple[int, np.ndarray]] = []
    try:
        for item in iter_video_frames(path):
            got.append(item)
    except VideoReadError as exc:
        return got, exc
    return got, None


# ---------------------------------------------------------------- round trips


def test_mp4_round_trip_frames_size_content_and_probe(tmp_path: Path) -> None:
    src = _gradients()
    path = _write(tmp_path / "clip.mp4", src)
    info = probe_video(path)
    assert (info.frames, info.fps, info.width, info.height) == (N, 25.0, W, H)
    got = list(iter_video_frames(path))
    assert [i for i, _ in got] == list(range(N))
    for index, frame in got:
        assert frame.dtype == np.uint8 and frame.shape == (H, W, 3) and frame.flags.c_contiguous
        assert _mad(frame, src[index]) < 8  # lossy, but close
        # and in order: each decoded frame is nearest to the frame written at its index
        assert int(np.argmin([_mad(frame, s) for s in src])) == index


def test_flat_colours_survive_the_colour_conversion(tmp_path: Path) -> None:
    # BT.709 conversion on write and the tag read back on decode must agree, or flat colours shift visibly
    colours = [(200, 50, 100), (10, 240, 30), (30, 60, 250), (255, 255, 255), (0, 0, 0)]
    path = _write(tmp_path / "flat.mp4", [np.full((H, W, 3), c, np.uint8) for c in colours])
    for (_, frame), colour in zip(iter_video_frames(path), colours, strict=True):
        assert np.abs(frame[H // 2, W // 2].astype(int) - colour).max() <= 4


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov", ".avi", ".webm"])
def test_coloured_depth_video_round_trip_keeps_every_frame(tmp_path: Path, suffix: str) -> None:
    # what depth-run --video writes: the input next to its coloured depth; every frame written must decode back
    count = 13
    frames = []
    for i, rgb in enumerate(_gradients(count)):
        depth = np.linspace(0, 1, H * W).reshape(H, W) * (0.5 + i / (2 * count))
        frames.append(side_by_side(rgb, colorize_depth(depth)))
    path = _write(tmp_path / f"out{suffix}", frames)
    got = list(iter_video_frames(path))
    assert len(got) == count
    assert [i for i, _ in got] == list(range(count))
    assert all(f.shape == (H, 2 * W, 3) for _, f in got)
    assert max(_mad(f, frames[i]) for i, f in got) < 12
    assert probe_video(path).frames in (count, None)  # Matroska/WebM keep no count


def test_stride_and_max_frames_select_decoded_indices(tmp_path: Path) -> None:
    src = _gradients()
    path = _write(tmp_path / "clip.mp4", src)
    assert [i for i, _ in iter_video_frames(path, stride=3)] == [0, 3, 6, 9]
    assert [i for i, _ in iter_video_frames(path, stride=5, max_frames=2)] == [0, 5]
    assert [i for i, _ in iter_video_frames(path, max_frames=4)] == [0, 1, 2, 3]
    assert [i for i, _ in iter_video_frames(path, stride=20)] == [0]
    for index, frame in iter_video_frames(path, stride=4):
        assert int(np.argmin([_mad(frame, s) for s in src])) == index


@pytest.mark.parametrize("kwargs", [{"stride": 0}, {"stride": 1.5}, {"max_frames": 0}, {"max_frames": -1}])
def test_bad_selection_is_refused_at_the_call(tmp_path: Path, kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        iter_video_frames(tmp_path / "missing.mp4", **kwargs)  # type: ignore[arg-type]  # before any file access
    with pytest.raises(ValueError):
        iter_frame_folder(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_ntsc_rate_is_kept_exact(tmp_path: Path) -> None:
    path = _write(tmp_path / "ntsc.mp4", _gradients(4), fps=30000 / 1001)
    assert probe_video(path).fps == pytest.approx(30000 / 1001, rel=1e-6)


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    # a phone video: stored landscape, with a display matrix turning it 90 degrees counter-clockwise
    path = tmp_path / "phone.mp4"
    frame = np.zeros((H, W, 3), np.uint8)
    frame[:8, :16] = 255  # top-left block: ends up bottom-left after a counter-clockwise quarter turn
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.set_display_rotation(90)
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    info = probe_video(path)
    assert (info.width, info.height) == (H, W)
    _, got = next(iter_video_frames(path))
    assert got.shape == (W, H, 3)
    np.testing.assert_allclose(got.astype(float), np.rot90(frame).astype(float), atol=40)


def test_a_colon_in_a_relative_name_is_a_file_not_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # FFmpeg alone reads "take:1.mp4" as protocol "take"
    _write(Path("take:1.mp4"), _gradients(2))
    assert probe_video("take:1.mp4").frames == 2
    assert len(list(iter_video_frames("take:1.mp4"))) == 2


def test_clip_trimmed_by_an_edit_list_is_not_called_truncated(tmp_path: Path) -> None:
    # remuxed with the first 5 frames before time 0: the container counts 24 frames, only 19 are shown and decoded
    full = _write(tmp_path / "full.mp4", _gradients(24))
    trimmed = tmp_path / "trimmed.mp4"
    with av.open(str(full)) as src, av.open(str(trimmed), mode="w") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        shift = round(5 / (ist.average_rate * ist.time_base))
        for packet in src.demux(ist):
            if packet.dts is None:
                continue
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = ost
            dst.mux(packet)
    got, err = _read_all(trimmed)
    assert err is None
    assert probe_video(trimmed).frames == 24 and len(got) == 19


# ---------------------------------------------------------------- truncated and bad files


def test_truncated_mp4_with_index_at_the_end_fails_before_any_frame(tmp_path: Path) -> None:
    # the default mp4 layout puts the index (moov) last: cutting the file loses it, so nothing can be decoded
    data = _write(tmp_path / "full.mp4", _gradients()).read_bytes()
    for fraction in (0.3, 0.6, 0.9):
        path = tmp_path / f"cut{int(fraction * 100)}.mp4"
        path.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(VideoReadError) as err:
            probe_video(path)
        _one_line_naming(err, path)
        got, exc = _read_all(path)
        assert got == [] and exc is not None and str(path) in str(exc)
        assert exc.frame in (None, 0)  # None: unopenable; 0: opened, but no frame decodes


def _packet_positions(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.pos for p in container.demux(container.streams.video[0]) if p.size]


def _faststart_mp4(path: Path, frames: list[np.ndarray]) -> Path:
    # index first ("faststart", as streamed files are), so a cut loses frame data, not the index
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("kind", ["mkv", "faststart-mp4"])
def test_truncated_mid_stream_yields_frames_then_names_file_and_frame(tmp_path: Path, kind: str) -> None:
    src = _gradients()
    full = _write(tmp_path / "full.mkv", src) if kind == "mkv" else _faststart_mp4(tmp_path / "full.mp4", src)
    cut_at = _packet_positions(full)[8] + 5  # inside the 9th packet: 8 whole packets remain
    path = tmp_path / f"cut{full.suffix}"
    path.write_bytes(full.read_bytes()[:cut_at])

    got, err = _read_all(path)
    assert err is not None, "a truncated file must not read as a complete, shorter video"
    assert 1 <= len(got) <= 8
    assert [i for i, _ in got] == list(range(len(got)))
    for index, frame in got:
        assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
        assert _mad(frame, src[index]) < 8
    assert err.frame == len(got)  # the first frame not delivered
    msg = str(err)
    assert "\n" not in msg and str(path) in msg and f"at frame {len(got)}:" in msg
    assert f"truncated: {len(got)} of " in msg or "corrupt data" in msg
    if kind == "mkv":  # no frame count in Matroska: found from the duration in its header
        assert msg.endswith(f"truncated: {len(got)} of about {N} frames decoded")
    # max_frames within the intact part reads fine: the missing tail is never reached
    assert len(list(iter_video_frames(path, max_frames=1))) == 1


def _audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize(("case", "reason"), [
    ("empty", "empty file (0 bytes)"),
    ("text", "not a video format FFmpeg can read"),
    ("missing", "No such file or directory"),
    ("audio", "no video stream in the file"),
    ("folder", "Is a directory"),
])
def test_unreadable_files_raise_one_line_error_without_frame(tmp_path: Path, case: str, reason: str) -> None:
    path = tmp_path / "clip.mp4"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is a shopping list, not a video\n" * 20, encoding="utf-8")
    elif case == "audio":
        _audio_only(path)
    elif case == "folder":
        path.mkdir()
    for read in (probe_video, lambda p: next(iter_video_frames(p))):
        with pytest.raises(VideoReadError) as err:
            read(path)
        msg = _one_line_naming(err, path)
        assert err.value.frame is None
        assert msg.startswith(f"cannot read video {path}: ") and reason in msg


def test_missing_pyav_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # "import av" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'agdepth\[video\]'"):
        probe_video(tmp_path / "clip.mp4")
    with pytest.raises(ImportError, match=r"agdepth\[video\]"):
        VideoWriter(tmp_path / "out.mp4", 25)


# ---------------------------------------------------------------- frame folders


def _save(path: Path, frame: np.ndarray) -> Path:
    Image.fromarray(frame).save(path)
    return path


def test_frame_files_in_natural_order_skipping_hidden_and_non_images(tmp_path: Path) -> None:
    frames = _gradients(5, 8, 10)
    names = ["frame10.png", "frame2.png", "Frame3.PNG", "frame1.jpg", "frame100.png"]
    for name, frame in zip(names, frames, strict=True):
        _save(tmp_path / name, frame)
    _save(tmp_path / ".frame0.png", frames[0])
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_frame_files(tmp_path)]
    assert names == ["frame1.jpg", "frame2.png", "Frame3.PNG", "frame10.png", "frame100.png"]


def test_frame_folder_skips_depth_run_outputs(tmp_path: Path) -> None:
    _save(tmp_path / "f1.png", _gradients(1, 8, 8)[0])
    _save(tmp_path / "f1_depth.png", _gradients(1, 8, 8)[0])
    (tmp_path / OUTPUT_LEDGER).write_text('{"outputs": ["f1_depth.png"]}', encoding="utf-8")
    assert [p.name for p in list_frame_files(tmp_path)] == ["f1.png"]


def test_frame_folder_without_images_or_missing(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="no image files in " + str(tmp_path)):
        list_frame_files(tmp_path)
    with pytest.raises(ValueError, match="no image files"):
        iter_frame_folder(tmp_path)  # at the call, not at the first frame
    with pytest.raises(FileNotFoundError, match="missing"):
        list_frame_files(tmp_path / "missing")


def test_frame_folder_reads_selected_frames_exactly(tmp_path: Path) -> None:
    frames = _gradients(7, 12, 16)
    files = [_save(tmp_path / f"f{i}.png", frame) for i, frame in enumerate(frames)]
    got = list(iter_frame_folder(tmp_path))
    assert [(i, p) for i, p, _ in got] == list(enumerate(files))
    for i, _, arr in got:
        np.testing.assert_array_equal(arr, frames[i])
    assert [(i, p.name) for i, p, _ in iter_frame_folder(tmp_path, stride=3)] == [(0, "f0.png"), (3, "f3.png"),
                                                                                   (6, "f6.png")]
    assert [i for i, _, _ in iter_frame_folder(tmp_path, stride=2, max_frames=2)] == [0, 2]


def test_frame_folder_16_bit_frames_stay_16_bit(tmp_path: Path) -> None:
    grey = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "f0.png")
    (_, _, arr), = iter_frame_folder(tmp_path)
    assert arr.dtype == np.uint16 and arr.shape == (6, 8, 3)


def test_frame_of_another_size_names_file_and_index_after_earlier_frames(tmp_path: Path) -> None:
    for i, frame in enumerate(_gradients(3, 60, 80)):
        _save(tmp_path / f"frame{i}.png", frame)
    odd = _save(tmp_path / "frame3.png", _gradients(1, 48, 64)[0])
    _save(tmp_path / "frame4.png", _gradients(1, 60, 80)[0])
    seen = []
    with pytest.raises(VideoReadError) as err:
        for index, _, _ in iter_frame_folder(tmp_path):
            seen.append(index)
    assert seen == [0, 1, 2]
    msg = _one_line_naming(err, odd)
    assert err.value.frame == 3
    assert msg == f"cannot read video {odd} at frame 3: frame size 64x48 differs from the first frame's 80x60"


def test_garbage_frame_names_file_and_index_after_earlier_frames(tmp_path: Path) -> None:
    for i, frame in enumerate(_gradients(2, 8, 8)):
        _save(tmp_path / f"frame{i}.png", frame)
    bad = tmp_path / "frame2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    seen = []
    with pytest.raises(VideoReadError) as err:
        for index, _, _ in iter_frame_folder(tmp_path):
            seen.append(index)
    assert seen == [0, 1]
    msg = _one_line_naming(err, bad)
    assert err.value.frame == 2 and msg.startswith(f"cannot read video {bad} at frame 2: ")


# ---------------------------------------------------------------- writing


def test_writer_goes_through_a_hidden_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with VideoWriter(path, 25) as writer:
        for frame in _gradients(3):
            writer.write(frame)
        # the encoder may still hold every frame (no file yet); anything on disk is the hidden temp file
        assert {p.name for p in tmp_path.iterdir()} <= {writer._tmp.name}
        assert writer._tmp.name.startswith(".out.mp4.") and writer._tmp.name.endswith(".tmp.mp4")  # suffix last
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_exception_in_with_block_leaves_path_untouched_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="model failed"), VideoWriter(path, 25) as writer:
        for frame in _gradients(4):
            writer.write(frame)
        raise RuntimeError("model failed")
    assert list(tmp_path.iterdir()) == []

    path.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt), VideoWriter(path, 25) as writer:
        writer.write(_gradients(1)[0])
        raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and path.read_bytes() == b"previous result"


def test_abort_discards_and_close_without_frames_refuses(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "a.mp4", 25)
    writer.write(_gradients(1)[0])
    writer.abort()
    writer.close()  # after abort: nothing left to do
    with pytest.raises(ValueError, match="closed"):
        writer.write(_gradients(1)[0])
    with pytest.raises(ValueError, match="no frame was written"), VideoWriter(tmp_path / "b.mp4", 25):
        pass
    assert list(tmp_path.iterdir()) == []


def test_odd_size_is_padded_by_replicating_the_last_row_and_column(tmp_path: Path) -> None:
    src = _gradients(5, 47, 63)
    path = _write(tmp_path / "odd.mp4", src)
    info = probe_video(path)
    assert (info.width, info.height) == (64, 48)
    for index, frame in iter_video_frames(path):
        assert _mad(frame[:47, :63], src[index]) < 8
        assert _mad(frame[47], frame[46]) < 8 and _mad(frame[:, 63], frame[:, 62]) < 8


def test_writer_refuses_bad_frames_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="differs"), VideoWriter(path, 25) as writer:
        writer.write(_gradients(1)[0])
        writer.write(_gradients(1, H + 2, W)[0])
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(path, 25) as writer:
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((H, W, 3), np.float32))
        with pytest.raises(ValueError, match=r"\[H,W,3\]"):
            writer.write(np.zeros((H, W), np.uint8))
        writer.write(_gradients(1)[0])
    assert len(list(iter_video_frames(path))) == 1
    for fps in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            VideoWriter(tmp_path / "x.mp4", fps)
    with pytest.raises(ValueError, match="suffix"):
        VideoWriter(tmp_path / "x.unknownformat", 25)
    with pytest.raises(ValueError, match="cannot write video"):
        VideoWriter(tmp_path / "x.mp4", 25, codec="no-such-codec")
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    exact = VideoWriter(tmp_path / "y.mp4", Fraction(30000, 1001))
    assert exact.fps == Fraction(30000, 1001)
    exact.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_side_by_side() -> None:
    left, right = _gradients(1, 6, 4)[0], _gradients(1, 6, 5)[0]
    both = side_by_side(left, right)
    assert both.shape == (6, 9, 3) and both.dtype == np.uint8
    np.testing.assert_array_equal(both[:, :4], left)
    np.testing.assert_array_equal(both[:, 4:], right)
    with pytest.raises(ValueError, match="equal heights"):
        side_by_side(left, _gradients(1, 7, 4)[0])
    with pytest.raises(ValueError, match="uint8"):
        side_by_side(left, right.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        side_by_side(left, right[..., 0])


def test_video_suffixes() -> None:
    assert set(videoio.VIDEO_SUFFIXES) == {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}
    assert all(s == s.lower() and s.startswith(".") for s in videoio.VIDEO_SUFFIXES)
