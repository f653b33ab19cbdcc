"""Nothing lost, nothing silently wrong: engines, checkpoints and export folders. One test per guarantee.

Engine files (checked when a backend opens them):
- test_changed_byte_in_unet_onnx_is_refused_naming_the_file: same size, other weights -> ValueError naming the file,
  from DepthPipeline.from_engine and from depth-run (exit 2, one ``error:`` line, no traceback)
- test_second_load_uses_the_hash_cache_and_a_changed_file_is_rehashed: .verified.json saves the rehash; a touched
  mtime, or new contents with the old mtime put back, hash again; an unreadable cache is ignored
- test_a_graph_with_the_wrong_io_is_named: vae_encoder.onnx copied over vae_decoder.onnx, with and without the hash
- test_truncated_unet_onnx_is_one_line: with the hash, and without it (ONNX Runtime's parse error), and via depth-run
- test_tensorrt_plan_hash_is_recorded_and_checked: build_engines_only records each plan's sha256; a changed plan is
  refused before TensorRT deserialises it (fake TensorRT)
Checkpoint files (checked before diffusers reads them):
- test_damaged_checkpoint_file_is_one_line_naming_it: truncated/garbage safetensors, bad config JSON -> one
  ValueError naming the file, no `accelerate` text
- test_damaged_checkpoint_through_depth_run: the same through the PyTorch backend and depth-run (exit 2, one line)
Export folders (depth-export --out, atomic_dir):
- test_symlinked_out_stays_a_link_with_the_new_contents
- test_new_folder_mode_follows_the_umask
- test_overwrite_refuses_foreign_files_and_force_replaces
- test_no_leftovers_after_a_failed_export
- test_a_stray_old_link_from_earlier_versions_is_healed
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import agdepth.export as export_mod
from agdepth import default_checkpoint
from agdepth.artifacts.checkpoint import atomic_dir, load_checkpoint
from agdepth.data.procedural import render_scene
from agdepth.export import VERIFIED, ExportOptions, Manifest, build_engines_only, export_checkpoint
from agdepth.export.cli import main as export_main
from agdepth.runtime import DepthPipeline
from agdepth.runtime.backends.onnx_backend import OnnxBackend
from agdepth.runtime.cli import main as run_main


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eng") / "engines"
    export_checkpoint(default_checkpoint(), out, ExportOptions(max_resolution=64), progress=lambda _: None)
    return out


@pytest.fixture()
def eng(engines: Path, tmp_path: Path) -> Path:
    """A private copy of the export, to damage."""
    return Path(shutil.copytree(engines, tmp_path / "engines"))


@pytest.fixture()
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "room.png"
    path.parent.mkdir()
    Image.fromarray(render_scene("indoor", 0, size=(48, 64), split="test").rgb).save(path)
    return path


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one weight changed
    path.write_bytes(bytes(data))


def _edit_manifest(root: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads((root / "manifest.json").read_text())
    edit(data)
    (root / "manifest.json").write_text(json.dumps(data))


def _depth_run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(run_main, list(args))
    return res.exit_code, res.output


def _one_error_line(code: int, text: str, *needles: str) -> None:
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in text, text
    assert all(n in errors[0] for n in needles), errors[0]


# ------------------------------------------------------------------------------------------------ engine files


@pytest.mark.slow
def test_changed_byte_in_unet_onnx_is_refused_naming_the_file(eng: Path, photo: Path, tmp_path: Path) -> None:
    _flip_byte(eng / "unet.onnx")
    with pytest.raises(ValueError, match=r"unet\.onnx: contents differ from manifest\.json .*re-export"):
        DepthPipeline.from_engine(eng / "unet.onnx")
    code, text = _depth_run(str(photo), "--engine", str(eng / "unet.onnx"), "--out", str(tmp_path / "out"))
    _one_error_line(code, text, str(eng / "unet.onnx"), "contents differ from manifest.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_second_load_uses_the_hash_cache_and_a_changed_file_is_rehashed(eng: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: list[str] = []
    import agdepth.artifacts.manifest as manifest_mod  # where Manifest.verify hashes

    real = manifest_mod.sha256
    monkeypatch.setattr(manifest_mod, "sha256", lambda p: hashed.append(Path(p).name) or real(p))
    OnnxBackend(eng)
    assert sorted(hashed) == ["empty_text_embedding.npy", "unet.onnx", "vae_decoder.onnx", "vae_decoder_light.onnx",
                              "vae_encoder.onnx", "vae_encoder_light.onnx"]  # every graph, whichever VAE runs
    hashed.clear()
    OnnxBackend(eng)
    assert hashed == []  # second load: a stat per file, no hashing
    st = (eng / "unet.onnx").stat()
    os.utime(eng / "unet.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    OnnxBackend(eng)
    assert hashed == ["unet.onnx"]
    # new contents with the old size and mtime put back (cp --preserve, touch -d): the ctime still changed
    st = (eng / "vae_decoder.onnx").stat()
    _flip_byte(eng / "vae_decoder.onnx")
    os.utime(eng / "vae_decoder.onnx", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match=r"vae_decoder\.onnx: contents differ"):
        OnnxBackend(eng)
    (eng / VERIFIED).write_text("{not json")  # an unreadable cache is ignored and rewritten
    hashed.clear()
    with pytest.raises(ValueError, match=r"vae_decoder\.onnx: contents differ"):
        OnnxBackend(eng)
    assert "unet.onnx" in hashed and json.loads((eng / VERIFIED).read_text())["files"]


@pytest.mark.slow
def test_a_graph_with_the_wrong_io_is_named(eng: Path) -> None:
    shutil.copy(eng / "vae_encoder.onnx", eng / "vae_decoder.onnx")
    with pytest.raises(ValueError, match=r"vae_decoder\.onnx: contents differ from manifest\.json"):
        DepthPipeline.from_engine(eng)
    # a manifest without hashes (older exports): the check is skipped and the session's I/O names the graph, when
    # the session opens (the full VAE's on first use: the bundled model runs its light VAE by default)
    _edit_manifest(eng, lambda d: [e.pop("sha256") for e in d["networks"]["fp32"].values()])
    pipe = DepthPipeline.from_engine(eng)
    with pytest.raises(ValueError, match=r"vae_decoder\.onnx: inputs \['image'\] / outputs \['latent'\], expected "
                                         r"inputs \['latent'\] / outputs \['depth'\]"):
        pipe(np.zeros((32, 32, 3), np.uint8), vae="full")


@pytest.mark.slow
def test_truncated_unet_onnx_is_one_line(eng: Path, photo: Path, tmp_path: Path) -> None:
    data = (eng / "unet.onnx").read_bytes()
    (eng / "unet.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"unet\.onnx: contents differ"):
        DepthPipeline.from_engine(eng / "unet.onnx")
    _edit_manifest(eng, lambda d: d["networks"]["fp32"]["unet"].pop("sha256"))
    with pytest.raises(ValueError, match=r"unet\.onnx: not a readable ONNX file \(.*\); re-export") as e:
        DepthPipeline.from_engine(eng / "unet.onnx")
    assert "\n" not in str(e.value)
    code, text = _depth_run(str(photo), "--engine", str(eng / "unet.onnx"), "--out", str(tmp_path / "out"))
    _one_error_line(code, text, str(eng / "unet.onnx"), "not a readable ONNX file")


@pytest.mark.slow
def test_tensorrt_plan_hash_is_recorded_and_checked(eng: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fake_tensorrt as fake

    fake.install(monkeypatch)
    # the fake builds from any graph: the fp32 ones stand in for an --fp16 export's (a full one costs minutes here)
    _edit_manifest(eng, lambda d: d["networks"].update(fp16=d["networks"]["fp32"]))
    m = build_engines_only(eng, progress=lambda _: None)
    info = m.data["tensorrt"]
    assert set(info["sha256"]) == set(info["files"])
    assert Manifest.load(eng).data["tensorrt"]["sha256"] == info["sha256"]
    plan = eng / info["files"]["unet"]
    DepthPipeline.from_engine(plan, device="cpu")
    data = json.loads(plan.read_text())
    data["edited"] = True  # still a plan TensorRT would deserialise and run
    plan.write_text(json.dumps(data))
    n = len(fake.STATE.deserialised)
    with pytest.raises(ValueError, match=rf"{plan.name}: contents differ from manifest\.json.*--engines-only"):
        DepthPipeline.from_engine(plan, device="cpu")
    assert len(fake.STATE.deserialised) == n  # refused before TensorRT saw the plan


# ------------------------------------------------------------------------------------------------ checkpoint files


def _damaged_checkpoint(tmp_path: Path, file: str, damage: Callable[[bytes], bytes]) -> Path:
    ckpt = Path(shutil.copytree(default_checkpoint(), tmp_path / "runs" / "x" / "checkpoint"))
    (ckpt / file).write_bytes(damage((ckpt / file).read_bytes()))
    return ckpt


DAMAGES = {
    "unet/diffusion_pytorch_model.safetensors": (lambda b: b[: len(b) // 2], "not a readable safetensors file"),
    "vae/diffusion_pytorch_model.safetensors": (lambda b: b"\x93garbage" * 100, "not a readable safetensors file"),
    "empty_text_embedding.safetensors": (lambda b: b[:40], "not a readable safetensors file"),
    "unet/config.json": (lambda b: b[: len(b) // 2], "not valid JSON"),
}


@pytest.mark.parametrize("file", list(DAMAGES))
def test_damaged_checkpoint_file_is_one_line_naming_it(file: str, tmp_path: Path,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    damage, message = DAMAGES[file]
    ckpt = _damaged_checkpoint(tmp_path, file, damage)
    with pytest.raises(ValueError) as e:
        load_checkpoint(ckpt)
    assert str(e.value).startswith(f"{ckpt / file}: {message} (") and "\n" not in str(e.value)
    assert "accelerate" not in "".join(capfd.readouterr())


def test_damaged_checkpoint_through_depth_run(tmp_path: Path, photo: Path, capfd: pytest.CaptureFixture[str]) -> None:
    file = "unet/diffusion_pytorch_model.safetensors"
    ckpt = _damaged_checkpoint(tmp_path, file, DAMAGES[file][0])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        DepthPipeline.from_checkpoint(ckpt)  # the PyTorch backend loads through load_checkpoint too
    code, text = _depth_run(str(photo), "--engine", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu")
    _one_error_line(code, text, str(ckpt / file), "not a readable safetensors file")
    assert "accelerate" not in "".join(capfd.readouterr())


# ------------------------------------------------------------------------------------------------ export folders


def _export(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(export_main, ["--max-resolution", "32", *args])
    return res.exit_code, res.output


def _listing(*dirs: Path) -> list[str]:
    return sorted(p.name for d in dirs for p in d.iterdir())


@pytest.mark.slow
def test_symlinked_out_stays_a_link_with_the_new_contents(engines: Path, tmp_path: Path) -> None:
    real = Path(shutil.copytree(engines, tmp_path / "store" / "engines-v1"))
    link = tmp_path / "work" / "engines"
    link.parent.mkdir()
    link.symlink_to(real)
    code, text = _export("--out", str(link), "--overwrite")
    assert code == 0, text
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert Manifest.load(link).shapes.max_resolution == 32  # the new export, where the link points
    assert _listing(tmp_path / "store", tmp_path / "work") == ["engines", "engines-v1"]  # no .tmp / .old
    code, text = _export("--out", str(link), "--overwrite")  # and again: a later --overwrite works too
    assert code == 0 and link.is_symlink(), text


def test_new_folder_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_dir(tmp_path / "a") as tmp:
            (tmp / "f").write_text("x")
        with atomic_dir(tmp_path / "a") as tmp:  # a replaced folder too
            (tmp / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o750
    assert _listing(tmp_path) == ["a"] and (tmp_path / "a" / "f").read_text() == "y"


@pytest.mark.slow
def test_overwrite_refuses_foreign_files_and_force_replaces(engines: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(engines, tmp_path / "engines"))
    # an export's own extras are not foreign: the hash cache, engines and timing caches of any TensorRT version
    for extra in (VERIFIED, "unet.trt10.1.0.nvidia-a100.plan", "timing.trt10.1.0.nvidia-a100.cache"):
        (out / extra).write_text("x")
    assert export_mod.foreign_files(out) == []
    (out / "notes.txt").write_text("mine")
    (out / "data").mkdir()
    code, text = _export("--out", str(out), "--overwrite")
    assert code == 2 and "notes.txt" in text and "data" in text and "--force" in text, text
    assert (out / "notes.txt").read_text() == "mine"
    (out / "manifest.json").unlink()  # a non-empty folder without manifest.json: everything in it is foreign
    assert "unet.onnx" in export_mod.foreign_files(out)
    code, text = _export("--out", str(out), "--overwrite", "--force")
    assert code == 0, text
    assert not (out / "notes.txt").exists() and Manifest.load(out).shapes.max_resolution == 32


@pytest.mark.slow
def test_no_leftovers_after_a_failed_export(engines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agdepth.export import onnx_export

    out = Path(shutil.copytree(engines, tmp_path / "engines"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail(*args: object, **kwargs: object) -> None:
        raise onnx_export.ExportValidationError("unet.onnx: output 'v' differs from PyTorch")

    monkeypatch.setattr(onnx_export, "validate_against_torch", fail)
    code, text = _export("--out", str(out), "--overwrite")
    assert code == 1 and "error: export failed" in text, text
    assert _listing(tmp_path) == ["engines"]  # no temporary folder beside it
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export untouched


def test_a_stray_old_link_from_earlier_versions_is_healed(tmp_path: Path) -> None:
    # earlier versions renamed a symlinked --out to `.X.old` and then failed to delete it; every later swap failed
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "data").write_text("keep")
    (tmp_path / ".out.old").symlink_to(kept)
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("new")
    assert _listing(tmp_path) == ["kept", "out"] and (kept / "data").read_text() == "keep"
    assert (tmp_path / "out" / "f").read_text() == "new"
