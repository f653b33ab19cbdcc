"""Export a checkpoint's three networks to ONNX (fp32, and fp16 on request) with a manifest the runtime reads, and
build TensorRT engines from them. The work is in :mod:`agdepth.export.exporter`; the on-disk format in
:mod:`agdepth.artifacts.manifest`."""

from agdepth.artifacts.manifest import (
    EMBEDDING_NPY,
    MANIFEST,
    MANIFEST_FORMAT,
    PRECISIONS,
    TENSORRT_PRECISION,
    VERIFIED,
    Manifest,
    foreign_files,
    onnx_file,
    sha256,
)
from agdepth.export.exporter import ExportOptions, build_engines_only, export_checkpoint, fp16_depth_check

__all__ = ["EMBEDDING_NPY", "MANIFEST", "MANIFEST_FORMAT", "PRECISIONS", "TENSORRT_PRECISION", "VERIFIED",
           "ExportOptions", "Manifest", "build_engines_only", "export_checkpoint", "foreign_files", "fp16_depth_check",
           "onnx_file", "sha256"]
