"""depth-run as a pipeline (inputs read ahead, outputs written on a pool): the same bytes as one image at a time, the
same error lines in the same order, and the read-ahead / writer pools' own guarantees."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from agdepth import default_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.imageio import ImageReadError, output_paths, read_image, write_outputs
from agdepth.runtime import DepthPipeline
from agdepth.runtime import cli as run_cli
from agdepth.runtime.writer import BackgroundWriter, OutputWriteError, ReadAhead, default_readers, default_writers

SCENES = ("indoor", "street", "tabletop", "forest")


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(run_cli.main, list(args))
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


def _save(path: Path, i: int, size: tuple[int, int], mode: str = "RGB") -> None:
    rgb = render_scene(SCENES[i % len(SCENES)], i, size=size, split="test").rgb
    img = Image.fromarray(rgb)
    if mode == "I;16":  # a 16-bit greyscale file: read as uint16, which the pipeline takes as an array
        img = Image.fromarray((rgb.mean(axis=2) * 257).astype(np.uint16))
    elif mode != "RGB":
        img = img.convert(mode)
    img.save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def _reference(folder: Path, out: Path, chunks: list[list[str]], index: dict[str, int], formats: str,
               seed: int = 0, ensemble: int | None = None, batch_size: int = 8, uncertainty: bool = False) -> None:
    """One image at a time, as before the pipeline: read a chunk, predict it with the per-image seeds, write it."""
    pipe = DepthPipeline.from_checkpoint(default_checkpoint())
    steps, ens, res, spacing = pipe.check_settings(None, ensemble, None, None)
    for chunk in chunks:
        imgs = [read_image(folder / name) for name in chunk]
        lat = [pipe.initial_latents([img], ens, res, seed=seed + index[name])[0]
               for img, name in zip(imgs, chunk, strict=True)]
        r = pipe(imgs, steps=steps, ensemble=ens, processing_res=res, timestep_spacing=spacing,
                 batch_size=batch_size, latents=lat, output_uncertainty=uncertainty)
        for j, name in enumerate(chunk):
            unc = r.depth_uncertainty[j] if uncertainty else None
            write_outputs(output_paths(out, Path(name).stem, formats, uncertainty), np.asarray(r.depth[j]), unc)


def test_outputs_are_byte_identical_to_one_image_at_a_time(tmp_path: Path) -> None:
    """Images of different sizes, modes and formats and an unreadable file among them (which still takes its index,
    so the seeds of the images after it are those of a run without the pipeline): every output file is the same
    bytes as the Python API writes calling one image at a time with seed + index."""
    d = tmp_path / "in"
    d.mkdir()
    specs = [("a.png", (40, 56), "RGB"), ("b.jpg", (48, 36), "RGB"), ("c.png", (33, 70), "RGBA"),
             ("e.png", (64, 64), "I;16"), ("f.jpg", (50, 40), "RGB"), ("g.png", (21, 30), "L"),
             ("h.png", (58, 44), "RGB"), ("i.jpg", (45, 60), "RGB"), ("j.png", (30, 52), "RGB"),
             ("k.png", (62, 38), "RGB")]
    for i, (name, size, mode) in enumerate(specs):
        _save(d / name, i, size, mode)
    (d / "d.png").write_bytes(b"not an image")  # sorted between c and e: index 3
    names = sorted([n for n, _, _ in specs] + ["d.png"])
    index = {n: i for i, n in enumerate(names)}
    code, text = run(str(d), "--out", str(tmp_path / "out"), "--device", "cpu", "--seed", "7")
    assert code == 1 and "1 input(s) failed" in text and "d.png" in text, text
    readable = [n for n in names if n != "d.png"]
    # every image has a size of its own, so each is alone in its network calls whatever the chunk: one at a time
    _reference(d, tmp_path / "ref", [[n] for n in readable], index, "png16,npy,color", seed=7)
    got, want = _outputs(tmp_path / "out"), _outputs(tmp_path / "ref")
    assert sorted(got) == sorted(want) and len(want) == 3 * len(readable)
    assert [k for k in want if got[k] != want[k]] == []


def test_chunks_and_ensembles_are_those_of_the_sequential_run(tmp_path: Path) -> None:
    """Images of one size share network calls: the pipeline forms the same chunks (slices of the input list, less
    the unreadable images) as reading one image after another did, so ensembles and uncertainty come out the same."""
    d = tmp_path / "in"
    d.mkdir()
    names = [f"img{i:02d}.png" for i in range(7)]
    for i, name in enumerate(names):
        if name == "img02.png":
            (d / name).write_bytes(b"\x89PNG truncated")
        else:
            _save(d / name, i, (40, 56))
    code, text = run(str(d), "--out", str(tmp_path / "out"), "--device", "cpu", "--ensemble", "2", "--uncertainty",
                     "--batch-size", "6", "--formats", "npy,png16")
    assert code == 1 and "img02.png" in text, text
    index = {n: i for i, n in enumerate(names)}
    per_call = 6 // 2
    chunks = [[n for n in names[k:k + per_call] if n != "img02.png"] for k in range(0, len(names), per_call)]
    _reference(d, tmp_path / "ref", chunks, index, "npy,png16", ensemble=2, batch_size=6, uncertainty=True)
    got, want = _outputs(tmp_path / "out"), _outputs(tmp_path / "ref")
    assert sorted(got) == sorted(want) and len(want) == 3 * 6
    assert [k for k in want if got[k] != want[k]] == []


def test_error_lines_keep_the_input_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads finish out of order (the first files are the slowest); the error lines still come in input order."""
    d = tmp_path / "in"
    d.mkdir()
    bad = ["b1.png", "b4.png", "b5.png", "b8.png"]
    for i in range(10):
        name = f"b{i}.png"
        if name in bad:
            (d / name).write_bytes(b"garbage " * i)
        else:
            _save(d / name, i, (24, 32))
    real = run_cli.read_image

    def slow_read(path: object, *a: object, **k: object) -> np.ndarray:
        time.sleep(0.02 * (10 - int(Path(str(path)).stem[1:])))  # earlier files take longer
        return real(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(run_cli, "read_image", slow_read)
    code, text = run(str(d), "--out", str(tmp_path / "o"), "--device", "cpu", "--formats", "npy", "--batch-size", "3")
    assert code == 1 and "4 input(s) failed" in text, text
    lines = text.splitlines()
    errors = [ln for ln in lines if ln.startswith("error: cannot read image")]
    assert [Path(ln.split("cannot read image ")[1].split(":")[0]).name for ln in errors] == bad
    summary = [ln for ln in lines[lines.index("4 input(s) failed:") + 1:] if ln.startswith("  ")]
    assert [Path(ln.strip().split(":")[0].split()[-1]).name for ln in summary] == bad
    assert sorted(p.name for p in (tmp_path / "o").glob("*.npy")) == [
        f"b{i}_depth.npy" for i in range(10) if f"b{i}.png" not in bad]


# ------------------------------------------------------------------------------------------- the pools


def test_read_ahead_keeps_order_bounds_its_lead_and_keeps_errors_per_item() -> None:
    running, most, lock = [0], [0], threading.Lock()
    rng = random.Random(0)
    delays = [rng.random() * 0.01 for _ in range(40)]

    def read(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(delays[i])
        with lock:
            running[0] -= 1
        if i % 7 == 3:
            raise ImageReadError(f"x{i}", "broken")
        return i * i

    started: list[int] = []

    def items() -> Iterator[int]:
        for i in range(40):
            started.append(i)
            yield i

    got: list[object] = []
    with ReadAhead(items(), read, depth=5, workers=3) as reads:
        for taken in range(40):
            assert len(started) <= taken + 5  # never more than `depth` items beyond what was taken
            try:
                got.append(reads.take())
            except ImageReadError as e:
                got.append(e.path)
        with pytest.raises(IndexError):
            reads.take()
    assert got == [f"x{i}" if i % 7 == 3 else i * i for i in range(40)]
    assert most[0] <= 3


def test_read_ahead_close_drops_the_reads_not_started() -> None:
    done: list[int] = []

    def read(i: int) -> int:
        time.sleep(0.05)
        done.append(i)
        return i

    reads = ReadAhead(range(100), read, depth=8, workers=1)
    assert reads.take() == 0
    reads.close()
    assert len(done) < 9  # not every read queued: those not started when it closed were dropped


def test_writer_pool_reports_the_first_failure_in_submission_order(tmp_path: Path) -> None:
    maps = [np.random.default_rng(i).random((16, 20)).astype(np.float32) for i in range(12)]
    (tmp_path / "out" / "img05_depth.npy").mkdir(parents=True)  # img05 and img09 cannot be written
    (tmp_path / "out" / "img09_depth.npy").mkdir(parents=True)
    writer = BackgroundWriter(max_pending=4, workers=3)
    with pytest.raises(OutputWriteError, match="img05"):
        for i, m in enumerate(maps):
            writer.submit(f"img{i:02d}", output_paths(tmp_path / "out", f"img{i:02d}", "png16,npy", False), m)
        writer.close()
    writer.abandon()
    for i in range(5):  # everything submitted before the failure was written whole
        assert np.array_equal(np.load(tmp_path / "out" / f"img{i:02d}_depth.npy"), maps[i])
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_pools_are_sized_to_the_machine() -> None:
    assert 1 <= default_writers() <= 8 and 1 <= default_readers() <= 4
    with pytest.raises(ValueError):
        BackgroundWriter(workers=0)
    with pytest.raises(ValueError):
        ReadAhead([], lambda x: x, depth=0)


def test_images_stay_arrays_on_the_cpu() -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    assert run_cli.device_image(img, torch.device("cpu")) is img


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_images_are_uploaded_as_bytes_and_give_the_same_depth() -> None:
    pipe = DepthPipeline.from_checkpoint(default_checkpoint(), device="cuda")
    imgs = [render_scene("indoor", i, size=(48 + 8 * i, 64), split="test").rgb for i in range(3)]
    grey16 = (imgs[0].astype(np.uint16) * 257)
    inputs = [*imgs, grey16]
    prepared = [run_cli.device_image(img, pipe.backend.device) for img in inputs]
    assert [type(p) for p in prepared] == [torch.Tensor] * 3 + [np.ndarray]
    assert prepared[0].dtype == torch.uint8 and prepared[0].is_cuda and tuple(prepared[0].shape) == (3, 48, 64)
    lat = [pipe.initial_latents([img], 1, None, seed=i)[0] for i, img in enumerate(inputs)]
    want = pipe(inputs, latents=lat, batch_size=8)
    got = pipe(prepared, latents=lat, batch_size=8)
    for a, b in zip(want.depth, got.depth, strict=True):
        assert np.array_equal(a, b)


def test_prepared_images_give_the_same_depth() -> None:
    """depth-run preprocesses on its reader threads (``pipe.prepare``): a call given prepared images, alone or mixed
    with raw ones of the same size, returns the depth of the raw images, bit for bit."""
    pipe = DepthPipeline.from_checkpoint(default_checkpoint())
    imgs = [render_scene(SCENES[i], i, size=(40 + 8 * (i % 2), 56), split="test").rgb for i in range(4)]
    lat = [pipe.initial_latents([img], 2, 48, seed=i)[0] for i, img in enumerate(imgs)]
    kw = {"processing_res": 48, "ensemble": 2, "batch_size": 4, "latents": lat, "resample_method_input": "bicubic"}
    want = pipe(imgs, **kw).depth
    prepared = pipe.prepare(imgs, processing_res=48, resample_method_input="bicubic")
    assert [p.original_size for p in prepared] == [img.shape[:2] for img in imgs]
    for inputs in (prepared, [prepared[0], imgs[1], imgs[2], prepared[3]]):
        got = pipe(inputs, **kw).depth
        assert all(np.array_equal(a, b) for a, b in zip(want, got, strict=True))


def test_images_prepared_for_other_settings_are_refused() -> None:
    pipe = DepthPipeline.from_checkpoint(default_checkpoint())
    img = render_scene("indoor", 0, size=(40, 56), split="test").rgb
    prepared = pipe.prepare(img, processing_res=48)
    with pytest.raises(ValueError, match="prepared for other settings.*processing res 48.*processing res 64"):
        pipe([img, prepared[0]], processing_res=64)
    with pytest.raises(ValueError, match="bilinear.*nearest"):
        pipe(prepared, processing_res=48, resample_method_input="nearest")
