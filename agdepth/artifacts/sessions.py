"""The project's one way to open an ONNX Runtime session, and the check that a graph is the network it should be."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from agdepth.networks import NetworkSpec


def onnx_session(path: Path, providers: list[str] | None = None, threads: int = 0):  # -> ort.InferenceSession
    """The project's one way to open an ONNX Runtime session (export validation and the runtime backend)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings about CPU fallbacks would flood the progress output
    # idle workers must not busy-wait: the DDIM update, resizing and ensembling between calls run in PyTorch on the
    # same cores (spinning made preprocessing ~80x slower on 2 cores)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:
        # ONNX Runtime's own exception types derive from Exception only and carry a multi-line C++ message: one
        # ValueError line naming the file instead (and within what depth-run reports as a load error)
        if type(e).__module__.split(".")[0] != "onnxruntime":
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : |Load model from .* failed:", "", first).strip(" .")
        what = ("not a readable ONNX file" if type(e).__name__ in ("InvalidProtobuf", "InvalidArgument")
                else "ONNX Runtime cannot load it")
        raise ValueError(f"{path}: {what} ({detail}); re-export with depth-export") from None


def check_session_io(session: Any, spec: NetworkSpec, path: Path) -> None:
    """Raise a ValueError naming ``path`` unless the graph (an ``onnxruntime.InferenceSession``) has ``spec``'s input
    and output names and ranks: a graph of another network (the encoder copied over the decoder) is refused before
    any image runs, not blamed on every image."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = [a.name for a in inputs], [a.name for a in outputs]
    if names != (spec.input_names, spec.output_names):
        raise ValueError(f"{path}: inputs {names[0]} / outputs {names[1]}, expected inputs {spec.input_names} / "
                         f"outputs {spec.output_names} (the {spec.name} graph); re-export with depth-export")
    for arg, t in zip((*inputs, *outputs), (*spec.inputs, *spec.outputs), strict=True):
        if len(arg.shape) != len(t.dims):
            raise ValueError(f"{path}: {arg.name!r} has {len(arg.shape)} dimensions, expected {len(t.dims)} "
                             f"(the {spec.name} graph); re-export with depth-export")


__all__ = ["check_session_io", "onnx_session"]
