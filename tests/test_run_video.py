"""depth-run on videos, end to end: per-frame outputs and the coloured video, the same depth as a DepthStream, frame
selection, frame folders, bad and truncated inputs (one error line, nothing half-written, other clips go on), reruns
and usage errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from agdepth import default_checkpoint
from agdepth.data.procedural_video import render_sequence
from agdepth.imageio import colorize_depth
from agdepth.runtime import DepthPipeline
from agdepth.runtime.cli import main
from agdepth.runtime.stream import DepthStream
from agdepth.videoio import VideoReadError, VideoWriter, iter_video_frames, probe_video

av = pytest.importorskip("av")

H, W, N, FPS = 48, 64, 8, 12
# frame files named so that natural order (frame2 before frame10) differs from plain string order
FOLDER_NAMES = ("frame1.png", "frame2.png", "frame3.png", "frame10.png", "frame11.png", "frame20.png")


# ---------------------------------------------------------------- helpers


def run(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    # a crash (a traceback) is never an acceptable answer: only click's own exits
    assert res.exception is None or isinstance(res.exception, SystemExit), (res.output, res.exception)
    return res.exit_code, res.output


def _lines(text: str) -> list[str]:
    """The output's lines, progress bars' carriage returns taken as line breaks."""
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def _error_lines(text: str) -> list[str]:
    return [line for line in _lines(text) if line.startswith("error:")]


def _done(text: str) -> tuple[int, int] | None:
    """(frames, clips) of the closing ``done:`` line, which must report the rate in frames/s; None without one."""
    found = re.findall(r"done: (\d+) frame\(s\) of (\d+) clip\(s\) in \d+\.\d s \(\d+\.\d\d frames/s\)$", text, re.M)
    return (int(found[0][0]), int(found[0][1])) if len(found) == 1 else None


def _write_mp4(path: Path, frames: np.ndarray | list[np.ndarray], fps: float = FPS) -> Path:
    with VideoWriter(path, fps) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _faststart_mp4(path: Path, frames: np.ndarray) -> Path:
    # index first ("faststart"), so cutting the file loses frame data, not the index
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _decode(path: Path) -> tuple[list[np.ndarray], VideoReadError | None]:
    """The frames a file decodes to, and the error that stopped decoding (None when it read to its end)."""
    got: list[np.ndarray] = []
    try:
        for index, frame in iter_video_frames(path):
            assert index == len(got)
            got.append(frame)
    except VideoReadError as exc:
        return got, exc
    return got, None


def _frame_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _expected_names(indices: list[int] | range, kinds: tuple[str, ...] = ("png", "npy")) -> list[str]:
    return sorted(f"{i:06d}_depth.{k}" for i in indices for k in kinds)


def _assert_nothing_hidden(out: Path) -> None:
    """No temporary (dot) file or folder left anywhere under ``out``: every output was written whole or not at all."""
    hidden = list(out.rglob(".*"))
    assert hidden == [], hidden


def _assert_clip_complete(out: Path, name: str, frames: int) -> None:
    assert _frame_names(out / name) == _expected_names(range(frames))
    decoded, err = _decode(out / f"{name}_depth.mp4")
    assert err is None and len(decoded) == frames


def _stream_depths(pipe: DepthPipeline, frames: list[np.ndarray]) -> list[np.ndarray]:
    stream = DepthStream(pipe, seed=0)
    return [stream.push(f).depth for f in frames]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    rgb = render_sequence("indoor", 0, frames=N, size=(H, W), split="test", fps=FPS).rgb
    assert rgb.shape == (N, H, W, 3) and rgb.dtype == np.uint8
    return rgb


@pytest.fixture(scope="module")
def clip(frames: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good mp4 of N frames; only read, so tests share it."""
    return _write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


@pytest.fixture(scope="module")
def clip_run(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """``depth-run clip.mp4 --out OUT`` with the default formats, once for the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("run") / "OUT"
    code, text = run(clip, "--out", out)
    return out, code, text


@pytest.fixture(scope="module")
def pipe() -> DepthPipeline:
    return DepthPipeline.from_checkpoint(default_checkpoint())


@pytest.fixture()
def frames_folder(frames: np.ndarray, tmp_path: Path) -> Path:
    """FOLDER_NAMES holding frames 0..5 in natural order (lossless PNG)."""
    folder = tmp_path / "shots"
    folder.mkdir()
    for name, frame in zip(FOLDER_NAMES, frames, strict=False):
        Image.fromarray(frame).save(folder / name)
    return folder


# ---------------------------------------------------------------- a video file


def test_video_file_writes_every_frame_and_the_coloured_video(clip_run: tuple[Path, int, str]) -> None:
    out, code, text = clip_run
    assert code == 0, text
    assert _frame_names(out / "clip") == _expected_names(range(N))
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip_depth.mp4"]
    for i in range(N):
        depth = np.load(out / "clip" / f"{i:06d}_depth.npy")
        assert depth.dtype == np.float32 and depth.shape == (H, W) and np.isfinite(depth).all()
        png = np.asarray(Image.open(out / "clip" / f"{i:06d}_depth.png"))
        assert png.dtype == np.uint16 and png.shape == (H, W)
        expected = np.round(np.clip(depth.astype(np.float64), 0.0, 1.0) * 65535).astype(np.uint16)
        np.testing.assert_array_equal(png, expected)
    first = np.load(out / "clip" / "000000_depth.npy")
    assert 0.0 <= first.min() < first.max() <= 1.0  # the clip's frame of reference: the first frame's [0, 1]

    video = out / "clip_depth.mp4"
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (N, W, H)
    assert info.fps == pytest.approx(FPS)  # the input's rate
    decoded, err = _decode(video)
    assert err is None and len(decoded) == N
    for i, frame in enumerate(decoded):  # each frame is that frame's coloured depth (lossy, so close)
        depth = np.load(out / "clip" / f"{i:06d}_depth.npy")
        assert frame.shape == (H, W, 3)
        assert _mad(frame, colorize_depth(np.clip(depth, 0.0, 1.0))) < 12

    assert _done(text) == (N, 1), text
    assert _error_lines(text) == []
    _assert_nothing_hidden(out)


def test_depth_equals_a_depth_stream_on_the_decoded_frames(clip_run: tuple[Path, int, str], clip: Path,
                                                           pipe: DepthPipeline) -> None:
    out, code, text = clip_run
    assert code == 0, text
    decoded, err = _decode(clip)
    assert err is None and len(decoded) == N
    for i, expected in enumerate(_stream_depths(pipe, decoded)):
        np.testing.assert_allclose(np.load(out / "clip" / f"{i:06d}_depth.npy"), expected, rtol=0, atol=1e-6)


def test_side_by_side_video_is_twice_as_wide_with_the_input_on_the_left(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(clip, "--out", out, "--side-by-side", "--formats", "color")
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["clip_depth.mp4"]  # no per-frame files asked for
    info = probe_video(out / "clip_depth.mp4")
    assert (info.frames, info.width, info.height) == (N, 2 * W, H)
    decoded, err = _decode(out / "clip_depth.mp4")
    inputs, _ = _decode(clip)
    assert err is None and len(decoded) == N
    for frame, rgb in zip(decoded, inputs, strict=True):
        assert frame.shape == (H, 2 * W, 3)
        assert _mad(frame[:, :W], rgb) < 12
    _assert_nothing_hidden(out)


def test_stride_and_max_frames_select_frames_and_keep_their_indices(clip: Path, tmp_path: Path,
                                                                    pipe: DepthPipeline) -> None:
    out = tmp_path / "out"
    code, text = run(clip, "--out", out, "--stride", "2", "--max-frames", "3")
    assert code == 0, text
    assert _frame_names(out / "clip") == _expected_names([0, 2, 4])
    info = probe_video(out / "clip_depth.mp4")
    assert (info.frames, info.width, info.height) == (3, W, H)
    assert info.fps == pytest.approx(FPS / 2)  # every second frame: the clip keeps its duration
    decoded, err = _decode(out / "clip_depth.mp4")
    assert err is None and len(decoded) == 3
    # the stream sees the selected frames only
    inputs, _ = _decode(clip)
    for i, expected in zip([0, 2, 4], _stream_depths(pipe, [inputs[0], inputs[2], inputs[4]]), strict=True):
        np.testing.assert_allclose(np.load(out / "clip" / f"{i:06d}_depth.npy"), expected, rtol=0, atol=1e-6)
    assert _done(text) == (3, 1), text


# ---------------------------------------------------------------- frame folders


def test_frames_folder_with_video_flag_is_a_clip_in_natural_order(frames_folder: Path, frames: np.ndarray,
                                                                  tmp_path: Path, pipe: DepthPipeline) -> None:
    out = tmp_path / "out"
    count = len(FOLDER_NAMES)
    code, text = run("--video", frames_folder, "--out", out)
    assert code == 0, text
    assert sorted(p.name for p in out.iterdir()) == ["shots", "shots_depth.mp4"]
    assert _frame_names(out / "shots") == _expected_names(range(count))
    info = probe_video(out / "shots_depth.mp4")
    assert (info.frames, info.width, info.height) == (count, W, H)
    decoded, err = _decode(out / "shots_depth.mp4")
    assert err is None and len(decoded) == count
    # frame1, frame2, frame3, frame10, ...: the PNGs hold frames 0..5 exactly, in that order
    for i, expected in enumerate(_stream_depths(pipe, list(frames[:count]))):
        np.testing.assert_allclose(np.load(out / "shots" / f"{i:06d}_depth.npy"), expected, rtol=0, atol=1e-6)
    assert _done(text) == (count, 1), text
    _assert_nothing_hidden(out)


def test_folder_without_video_flag_is_a_folder_of_images(frames_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(frames_folder, "--out", out)
    assert code == 0, text
    names = {p.name for p in out.iterdir()}
    assert {f"{Path(n).stem}_depth.png" for n in FOLDER_NAMES} <= names
    assert not (out / "shots").exists() and not list(out.glob("*.mp4"))
    assert f"{len(FOLDER_NAMES)} image(s)" in text


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("kind", ["mkv", "faststart-mp4"])
def test_truncated_video_keeps_the_frames_before_the_break(kind: str, frames: np.ndarray, clip: Path,
                                                           tmp_path: Path) -> None:
    full = (_write_mp4(tmp_path / "full.mkv", frames) if kind == "mkv"
            else _faststart_mp4(tmp_path / "full.mp4", frames))
    with av.open(str(full)) as container:
        positions = [p.pos for p in container.demux(container.streams.video[0]) if p.size]
    cut = tmp_path / f"cut{full.suffix}"
    cut.write_bytes(full.read_bytes()[:positions[4] + 5])  # inside the 5th packet: well past the mkv reader's slack
    readable, read_err = _decode(cut)
    assert read_err is not None and 1 <= len(readable) < N  # the premise: some frames decode, then it breaks
    good = len(readable)

    out = tmp_path / "out"
    code, text = run(cut, clip, "--out", out)  # the bad clip first: the good one after it still runs
    assert code == 1, text
    errors = _error_lines(text)
    assert len(errors) == 1, text
    assert str(cut) in errors[0] and f"at frame {good}" in errors[0]
    assert "1 clip(s) failed" in text
    # the frames before the break keep their outputs, and the video is closed on exactly those
    assert _frame_names(out / "cut") == _expected_names(range(good))
    decoded, err = _decode(out / "cut_depth.mp4")
    assert err is None and len(decoded) == good
    _assert_clip_complete(out, "clip", N)
    assert _done(text) == (good + N, 2), text
    _assert_nothing_hidden(out)


@pytest.mark.parametrize("case", ["zero-length", "text"])
def test_unreadable_video_is_one_error_line_and_other_clips_run(case: str, clip: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    if case == "zero-length":
        bad.write_bytes(b"")
    else:
        bad.write_text("a shopping list, not a video\n" * 20, encoding="utf-8")
    out = tmp_path / "out"
    code, text = run(bad, clip, "--out", out)
    assert code == 1, text
    errors = _error_lines(text)
    assert len(errors) == 1 and str(bad) in errors[0], text
    assert "1 clip(s) failed" in text
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip_depth.mp4"]  # nothing of bad.mp4
    _assert_clip_complete(out, "clip", N)
    _assert_nothing_hidden(out)


def test_frame_of_another_size_names_the_file_and_its_index(frames: np.ndarray, clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(frames[i] if i != 3 else frames[i][: H - 8]).save(folder / f"frame{i}.png")
    out = tmp_path / "out"
    code, text = run("--video", folder, clip, "--out", out)
    assert code == 1, text
    errors = _error_lines(text)
    assert len(errors) == 1, text
    assert str(folder / "frame3.png") in errors[0] and "at frame 3" in errors[0]
    assert _frame_names(out / "shots") == _expected_names(range(3))
    decoded, err = _decode(out / "shots_depth.mp4")
    assert err is None and len(decoded) == 3
    _assert_clip_complete(out, "clip", N)
    _assert_nothing_hidden(out)


def test_video_folder_without_frames_is_an_error_line_not_a_crash(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here", encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["--video", str(empty), "--out", str(out)])
    assert isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 2  # refused before any work
    assert str(empty) in res.output
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


# ---------------------------------------------------------------- reruns


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_rerun_is_refused_without_overwrite_and_redone_with_it(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(clip, "--out", out, "--max-frames", "4")
    assert code == 0, text
    before = _snapshot(out)
    assert set(before) == {f"clip/{n}" for n in _expected_names(range(4))} | {"clip_depth.mp4"}

    code, text = run(clip, "--out", out, "--max-frames", "4")
    assert code == 2, text
    assert "--overwrite" in text and any(str(out / name) in text for name in before), text
    assert "clip(s) ->" not in text  # refused before the model was loaded, let alone a frame read
    assert _snapshot(out) == before

    # a damaged output is redone from scratch with --overwrite
    depths = {name: np.load(out / name) for name in before if name.endswith(".npy")}
    np.save(out / "clip" / "000001_depth.npy", np.zeros((H, W), np.float32))
    (out / "clip_depth.mp4").write_bytes(b"damaged")
    code, text = run(clip, "--out", out, "--max-frames", "4", "--overwrite")
    assert code == 0, text
    assert set(_snapshot(out)) == set(before)
    for name, depth in depths.items():
        np.testing.assert_array_equal(np.load(out / name), depth)
    decoded, err = _decode(out / "clip_depth.mp4")
    assert err is None and len(decoded) == 4
    _assert_nothing_hidden(out)


def test_overwrite_replaces_the_whole_clip(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(clip, "--out", out, "--max-frames", "4", "--formats", "npy")
    assert code == 0, text
    code, text = run(clip, "--out", out, "--max-frames", "2", "--formats", "npy", "--overwrite")
    assert code == 0, text
    # the clip's outputs are the new run's: frames 0 and 1, not also frames 2 and 3 of the earlier run
    assert _frame_names(out / "clip") == _expected_names(range(2), ("npy",))


# ---------------------------------------------------------------- usage errors


@pytest.fixture()
def image(frames: np.ndarray, tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(path)
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["CLIP", "IMAGE"], "not both"),
    (["IMAGE", "--stride", "2"], "--stride"),
    (["CLIP", "--ensemble", "3"], "--ensemble"),
])
def test_usage_errors(args: list[str], message: str, clip: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(clip) if a == "CLIP" else str(image) if a == "IMAGE" else a for a in args]
    code, text = run(*argv, "--out", out)
    assert code == 2, text
    lines = [line for line in _lines(text) if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], text
    assert not out.exists()  # nothing done, nothing written

