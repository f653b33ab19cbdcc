"""depth-run loses nothing and is never silently wrong. The guarantees, one test (or group) each:

1. an output never replaces an input of the same run (refused, naming both; the input is byte-identical);
2. reruns never read their own outputs, with --out inside or equal to the input folder;
3. every option is checked before the model loads; settings the model decides (processing resolution against an
   exported range) before any image is read; the header shows the values used;
4. an unreadable sub-folder or file argument, a broken link or an empty argument is one line, not a traceback, and
   the other inputs still run; GIFs are read;
5. a full disk is said in those words, and the same command afterwards finishes the rest;
6. an interrupted run, run again without --overwrite, completes and equals an uninterrupted run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import HANG_GUARD_S
from PIL import Image

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.export import ExportOptions, export_checkpoint
from agdepth.runtime.cli import main


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, list(args))
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


def _scenes(folder: Path, n: int, size: tuple[int, int] = (40, 56)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(render_scene(("indoor", "street", "tabletop")[i % 3], i, size=size, split="test").rgb).save(p)
        paths.append(p)
    return paths


def _digest(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rel") / "engines"
    export_checkpoint(default_checkpoint(), out, ExportOptions(max_resolution=64), progress=lambda s: None)
    return out


# ------------------------------------------------------------------------------------------- 1, 2: inputs


def test_an_output_never_replaces_an_input(tmp_path: Path) -> None:
    d = tmp_path / "photos"
    _scenes(d, 1)
    (d / "img00.png").rename(d / "x.png")
    Image.fromarray(render_scene("forest", 0, size=(40, 56), split="test").rgb).save(d / "x_depth.png")
    before = _digest(d)
    code, text = run(str(d), "--out", str(d), "--overwrite", "--formats", "png16")
    assert code == 2 and f"{d / 'x_depth.png'}" in text and "x.png" in text and "never overwritten" in text
    assert _digest(d) == before


@pytest.mark.parametrize("inside", [True, False])
def test_reruns_never_read_their_own_outputs(tmp_path: Path, inside: bool) -> None:
    d = tmp_path / "photos"
    _scenes(d, 2)
    inputs = _digest(d)
    out = d / "depth" if inside else d
    for _ in range(2):
        code, text = run(str(d), "--recursive", "--out", str(out), "--overwrite", "--formats", "png16,color")
        assert code == 0 and "2 image(s)" in text, text
    assert not (out / "depth").exists() and not list(d.rglob("*_depth_depth*"))
    assert {k: v for k, v in _digest(d).items() if k in inputs} == inputs
    code, text = run(str(d), "--recursive", "--out", str(out), "--formats", "png16,color")  # plain rerun: resumes
    assert code == 0 and "2 image(s)" in text and "2 done earlier, skipped" in text


# ------------------------------------------------------------------------------------------- 3: validation


@pytest.mark.parametrize("args,option", [
    (["--ensemble", "0"], "--ensemble"), (["--steps", "0"], "--steps"), (["--steps", "-1"], "--steps"),
    (["--processing-res", "-1"], "--processing-res"), (["--batch-size", "0"], "--batch-size"),
    (["--seed", "100000000000000000000"], "--seed"), (["--seed", "1e20"], "--seed"),
    (["--formats", "tiff"], "tiff")])
def test_options_are_checked_before_the_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    args: list[str], option: str) -> None:
    _scenes(tmp_path / "in", 1)

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("agdepth.runtime.cli.open_run_pipeline", no_load)
    code, text = run(str(tmp_path / "in"), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and option in text and "Traceback" not in text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("res", ["100000", "3"])
@pytest.mark.slow
def test_processing_res_outside_the_exported_range_is_refused_before_any_image(
        engines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, res: str) -> None:
    _scenes(tmp_path / "in", 2)

    def no_read(*a: object, **k: object) -> None:
        raise AssertionError("an image was read before the settings were checked")

    monkeypatch.setattr("agdepth.runtime.cli.read_image", no_read)
    code, text = run(str(tmp_path / "in"), "--engine", str(engines / "unet.onnx"), "--processing-res", res,
                     "--out", str(tmp_path / "o"))
    assert code == 2 and "outside [8, 64]" in text and "--processing-res" in text


def test_the_header_shows_the_values_used(tmp_path: Path) -> None:
    _scenes(tmp_path / "in", 1)
    code, text = run(str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--steps", "2", "--formats", "npy")
    assert code == 0 and "steps 2, ensemble 1, trailing, processing res 64" in text


# ------------------------------------------------------------------------------------------- 4: odd inputs


def test_unreadable_subfolder_is_one_line_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    d = tmp_path / "in"
    _scenes(d, 1)
    _scenes(d / "locked", 1)
    real = os.scandir

    def scandir(path: object = ".") -> object:  # root can read anything: deny one folder the way the OS would
        if Path(os.fspath(path)) == d / "locked":  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    code, text = run(str(d), "--recursive", "--out", str(tmp_path / "o"), "--formats", "npy")
    assert code == 1 and f"cannot read folder {d / 'locked'}: Permission denied" in text
    assert (tmp_path / "o" / "img00_depth.npy").is_file() and "Traceback" not in text


def test_an_unreadable_file_argument_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _scenes(tmp_path / "in", 1)
    locked = tmp_path / "locked" / "x.png"
    real = Path.exists

    def exists(self: Path, **kw: object) -> bool:  # stat() under a folder without search permission
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "exists", exists)
    code, text = run(str(locked), str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--formats", "npy")
    assert code == 1 and f"cannot read {locked}: Permission denied" in text
    assert (tmp_path / "o" / "img00_depth.npy").is_file()


def test_gifs_are_read_broken_links_and_empty_arguments_are_reported(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(render_scene("indoor", 0, size=(40, 56), split="test").rgb).save(d / "anim.gif")
    (d / "gone.png").symlink_to(tmp_path / "nowhere.png")
    code, text = run(str(d), "--out", str(tmp_path / "o"), "--formats", "npy")
    assert code == 1 and "gone.png: a broken link" in text
    assert np.load(tmp_path / "o" / "anim_depth.npy").shape == (40, 56)
    code, text = run("", "--out", str(tmp_path / "o2"))
    assert code == 2 and "empty" in text and not (tmp_path / "o2").exists()


# ------------------------------------------------------------------------------------------- 5, 6: resume


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     OSError("76800 requested and 56288 written")])
def test_a_full_disk_is_named_and_the_same_command_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           failure: OSError) -> None:
    import agdepth.imageio as io

    _scenes(tmp_path / "in", 5)
    args = [str(tmp_path / "in"), "--formats", "png16,npy", "--batch-size", "1"]
    assert run(*args, "--out", str(tmp_path / "whole"))[0] == 0
    real, calls = io.write_npy, []

    def write_npy(path: object, arr: object) -> object:
        calls.append(path)
        if len(calls) > 2:
            raise failure
        return real(path, arr)  # type: ignore[arg-type]

    monkeypatch.setattr(io, "write_npy", write_npy)
    code, text = run(*args, "--out", str(tmp_path / "o"))
    assert code == 1 and "no space left on device" in text and "run the same command again" in text
    monkeypatch.setattr(io, "write_npy", real)
    code, text = run(*args, "--out", str(tmp_path / "o"))  # no --overwrite: the rest is done, the rest only
    assert code == 0 and "2 done earlier, skipped" in text and "done: 3 image(s)" in text, text
    whole, resumed = _digest(tmp_path / "whole"), _digest(tmp_path / "o")
    assert {k for k in whole if not k.startswith(".")} == {k for k in resumed if not k.startswith(".")}
    for k in whole:
        if k.endswith(".npy"):
            np.testing.assert_allclose(np.load(tmp_path / "o" / k), np.load(tmp_path / "whole" / k), atol=1e-6)


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    n = 60  # enough work left after the first outputs that the interrupt lands mid-run on a fast or a busy machine
    _scenes(tmp_path / "in", n)
    cmd = [sys.executable, "-m", "agdepth.runtime.cli", str(tmp_path / "in"), "--formats", "npy,png16",
           "--steps", "3", "--ensemble", "3", "--batch-size", "3"]
    # SIGINT's default disposition in the child, whatever this process inherited (a suite started in the background
    # of a non-interactive shell ignores SIGINT, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "o")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + HANG_GUARD_S  # a hang guard: the run ends the wait itself, slow or not
    while len(list((tmp_path / "o").glob("*.npy"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=HANG_GUARD_S)[0]
    written = len(list((tmp_path / "o").glob("*.npy")))
    assert proc.returncode == 130 and "run the same command again" in text and "Traceback" not in text, text
    assert 3 <= written < n and not list((tmp_path / "o").glob(".*.tmp"))
    rerun = subprocess.run([*cmd, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert rerun.returncode == 0 and f"{written} done earlier, skipped" in rerun.stdout, rerun.stdout + rerun.stderr
    whole = subprocess.run([*cmd, "--out", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=HANG_GUARD_S)
    assert whole.returncode == 0
    names = sorted(p.name for p in (tmp_path / "whole").glob("*_depth.*"))
    assert len(names) == 2 * n and names == sorted(p.name for p in (tmp_path / "o").glob("*_depth.*"))
    for name in names:
        a, b = tmp_path / "o" / name, tmp_path / "whole" / name
        if name.endswith(".npy"):
            np.testing.assert_allclose(np.load(a), np.load(b), atol=1e-5)
        else:
            diff = np.abs(np.asarray(Image.open(a), np.int64) - np.asarray(Image.open(b), np.int64))
            assert diff.max() <= 1, name  # 16-bit quantisation of maps equal to 1e-5
