"""An engines directory on disk (``depth-export``'s output): file names, ``manifest.json`` and its integrity checks.

    engines/
      manifest.json                     # files + sha256, dtypes, shape ranges, scheduler, defaults, VAE choices
      unet.onnx vae_encoder.onnx vae_decoder.onnx              # fp32
      vae_encoder_light.onnx vae_decoder_light.onnx            # fp32, when the checkpoint has a light VAE
      unet.fp16.onnx vae_encoder.fp16.onnx vae_decoder.fp16.onnx   # with --fp16 (ONNX Runtime)
      unet.fp16-trt.onnx ...            # with --fp16: the graphs TensorRT engines are built from
      *.trt<version>.<gpu>.plan         # TensorRT engines, when built
      empty_text_embedding.npy          # [1, L, C] float32: the U-Net's constant text conditioning
      .verified.json                    # written by the runtime: hashes already checked (Manifest.verify)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from agdepth.networks import ShapeRange
from agdepth.schedule import NoiseSchedule

MANIFEST = "manifest.json"
VERIFIED = ".verified.json"  # cache of Manifest.verify, beside the manifest
MANIFEST_FORMAT = "agdepth-engines/1"
EMBEDDING_NPY = "empty_text_embedding.npy"
PRECISIONS = ("fp32", "fp16")
# the fp16 graphs built into TensorRT engines: attention entirely in fp16 so TensorRT can fuse it (ONNX Runtime's fp16
# graphs keep Softmax in fp32)
TENSORRT_PRECISION = "fp16-trt"


def onnx_file(network: str, precision: str) -> str:
    return f"{network}.onnx" if precision == "fp32" else f"{network}.{precision}.onnx"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> list[int]:
    # ctime besides size and mtime: rewriting a file and setting its mtime back (touch -d, cp --preserve) still changes
    # its ctime, which no user call can set; renaming the directory (the export's atomic swap, mv) changes neither
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Manifest:
    """``manifest.json`` of an engines directory: everything a backend needs besides the network files."""

    def __init__(self, root: Path, data: dict[str, Any]) -> None:
        self.root, self.data = Path(root), data

    @classmethod
    def load(cls, root: str | Path) -> Manifest:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: an engines directory is written by `depth-export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path}: unsupported manifest format {data.get('format')!r} (expected {MANIFEST_FORMAT})")
        return cls(root, data)

    @property
    def shapes(self) -> ShapeRange:
        return ShapeRange.from_dict(self.data["shapes"])

    @property
    def precisions(self) -> list[str]:
        return list(self.data["networks"])

    def network(self, name: str, precision: str) -> dict[str, Any]:
        try:
            return self.data["networks"][precision][name]
        except KeyError:
            raise KeyError(f"{self.root / MANIFEST} lists no {precision} {name!r} (has: {self.precisions})") from None

    def path(self, name: str, precision: str) -> Path:
        p = self.root / self.network(name, precision)["file"]
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing (listed in {self.root / MANIFEST})")
        return p

    def schedule(self) -> NoiseSchedule:
        """The scheduler the engines run (DDIM or LCM, from the checkpoint they were exported from)."""
        try:
            return NoiseSchedule.from_config(self.data["scheduler"])
        except ValueError as e:
            raise ValueError(f"{self.root / MANIFEST}: {e}") from None

    def precision_of(self, file: Path) -> tuple[str, str]:
        """(network, precision) of one of this manifest's files."""
        for prec, nets in self.data["networks"].items():
            for name, entry in nets.items():
                if entry["file"] == file.name:
                    return name, prec
        raise ValueError(f"{file.name} is not listed in {self.root / MANIFEST}")

    def embedding(self) -> np.ndarray:
        entry = self.data["empty_text_embedding"]
        path = self.verify(entry["file"], entry.get("sha256"))
        try:
            return np.load(path)
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable .npy file ({e}); re-export with depth-export") from None

    def verify(self, file: str | Path, expected: str | None, remedy: str = "re-export with depth-export") -> Path:
        """``root / file`` after checking its sha256 against ``expected`` (what the manifest recorded; None, as in
        manifests older than the hashes, skips the check): a ValueError naming the file if the contents differ.

        Hashes are cached in ``.verified.json`` beside the manifest, per file name with its size, mtime and ctime: a
        second load of an unchanged multi-GB set costs a stat per file, and any write to a file forces a rehash. The
        cache lives with the export (deleted or replaced with it; no global state) and keys by names relative to the
        root, so the atomic swap at the end of an export or a ``mv`` keeps it valid, while a copy (new ctimes) does
        not. A directory that is not writable just gets no cache: every load hashes again.
        """
        path = self.root / file
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (listed in {self.root / MANIFEST})")
        if expected is None:
            return path
        from agdepth.imageio import write_bytes_atomic

        cache_file, name, stamp = self.root / VERIFIED, Path(file).as_posix(), _stamp(path)
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))["files"]
            hit = cache.get(name) or {}
            digest = hit.get("sha256") if hit.get("stamp") == stamp else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # absent or unreadable: start afresh
            cache, digest = {}, None
        if not isinstance(digest, str):
            digest = sha256(path)
            cache[name] = {"stamp": stamp, "sha256": digest}
            try:
                write_bytes_atomic(cache_file, json.dumps({"files": cache}, indent=1).encode())
            except OSError:
                pass  # a read-only directory: correct, only slower
        if digest != expected:
            raise ValueError(f"{path}: contents differ from {MANIFEST} (sha256 {digest[:12]}..., expected "
                             f"{str(expected)[:12]}...); {remedy}")
        return path


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    # written once the graphs exist, then again as the engines and the fp16 check add their entries
    (root / MANIFEST).write_text(json.dumps(data, indent=2, default=float) + "\n", encoding="utf-8")


def foreign_files(out_dir: str | Path) -> list[str]:
    """Entries of ``out_dir`` no export wrote (anything but what its manifest lists, engines, timing caches and the
    hash cache): what ``depth-export --overwrite`` must not delete unasked. Without a readable manifest: all."""
    out_dir = Path(out_dir)
    entries = sorted(out_dir.iterdir())
    try:
        data = Manifest.load(out_dir).data
        ours = {MANIFEST, VERIFIED, data["empty_text_embedding"]["file"],
                *(data.get("tensorrt") or {}).get("files", {}).values()}
        for nets in data["networks"].values():
            for entry in nets.values():
                ours |= {entry["file"], (entry.get("external_data") or {}).get("file")}
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return [p.name for p in entries]

    def written_by_export(p: Path) -> bool:
        # engines and timing caches of other TensorRT versions or GPUs stay behind when --engines-only rebuilds
        return p.is_file() and (p.name in ours or p.suffix == ".plan"
                                or (p.name.startswith("timing.") and p.suffix == ".cache"))

    return [p.name for p in entries if not written_by_export(p)]


__all__ = ["EMBEDDING_NPY", "MANIFEST", "MANIFEST_FORMAT", "PRECISIONS", "TENSORRT_PRECISION", "VERIFIED", "Manifest",
           "foreign_files", "onnx_file", "sha256", "write_manifest"]
