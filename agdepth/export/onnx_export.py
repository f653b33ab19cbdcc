"""PyTorch -> ONNX for one network: export, graph cleanup, optional fp16, external data, validation against PyTorch.

- Export: ``torch.onnx.export`` (TorchScript exporter, ``dynamo=False``: the path diffusers' U-Net and VAE have been
  exported with for years, and ``dynamic_axes`` comes straight from :mod:`agdepth.networks`).
- Cleanup: onnxslim (constant folding, dead-node and redundant-op elimination).
- fp16: ONNX Runtime's own converter (``onnxruntime.transformers.float16``; onnxconverter-common's copy produces
  invalid graphs for the U-Net's timestep ``Cast``). Kept in fp32 (see :data:`FP16_BLOCKED_OPS`): normalisation
  (GroupNorm exports as InstanceNormalization; its mean/variance reductions over whole feature maps overflow or lose
  precision in fp16), LayerNormalization, the attention Softmax (logits can exceed fp16's range at large sizes), and
  the sinusoidal timestep embedding (t·freq reaches ~1000 rad, where fp16's spacing is ~0.5 rad: the phases would be
  meaningless). I/O stays fp32 so every backend feeds and reads the same dtypes.
- External data: models over :data:`EXTERNAL_DATA_THRESHOLD` bytes of weights (SD2's U-Net is ~3.5 GB in fp32,
  past protobuf's 2 GB limit) are saved with their tensors in ``<name>.onnx.data`` beside the graph.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from agdepth.artifacts.sessions import onnx_session
from agdepth.networks import NetworkSpec

logger = logging.getLogger(__name__)

OPSET = 17
EXTERNAL_DATA_THRESHOLD = 1_800_000_000  # bytes of initializers; below protobuf's 2 GiB hard limit with headroom
FP16_BLOCKED_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "Softmax")


class ExportValidationError(RuntimeError):
    """An exported model disagrees with PyTorch (or produces NaN/Inf)."""


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Weight bytes of a model whose tensors are loaded in memory."""
    return sum(len(t.raw_data) if t.raw_data else np.prod(t.dims, dtype=np.int64) * 4 for t in model.graph.initializer)


def save_onnx(model: onnx.ModelProto, path: Path, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> None:
    """Save ``model`` at ``path``; tensors go to ``path.name + '.data'`` when the weights exceed the threshold."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    if initializer_bytes(model) > external_data_threshold:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                        size_threshold=1024)
    else:
        onnx.save_model(model, path)


def torch_to_onnx(module: torch.nn.Module, spec: NetworkSpec, path: Path, sample: dict[str, torch.Tensor],
                  opset: int = OPSET) -> onnx.ModelProto:
    """Trace ``module`` on ``sample`` into ``path`` (a scratch file) and return the cleaned-up graph in memory."""
    import onnxslim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches in diffusers
        torch.onnx.export(
            module, tuple(sample[n] for n in spec.input_names), str(path), input_names=spec.input_names,
            output_names=spec.output_names, dynamic_axes=spec.dynamic_axes(), opset_version=opset,
            do_constant_folding=True, dynamo=False,
        )
    model = onnx.load(str(path))  # external data (if torch wrote any) is read in too
    slim = onnxslim.slim(model)
    return slim if slim is not None else model


def _timestep_embedding_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes between any int64 graph input (the timestep) and the first linear layer they feed: the sinusoidal
    embedding, which fp16 cannot represent (found by dataflow, not by node names)."""
    int_inputs = {i.name for i in model.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.INT64}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    blocked: list[str] = []
    frontier, seen = list(int_inputs), set(int_inputs)
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in ("Gemm", "MatMul") or node.name in blocked:
                continue
            blocked.append(node.name)
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    frontier.append(out)
    return blocked


def fp32_ops(softmax_fp32: bool = True) -> tuple[str, ...]:
    """The op types :func:`to_fp16` keeps in fp32."""
    return FP16_BLOCKED_OPS if softmax_fp32 else tuple(op for op in FP16_BLOCKED_OPS if op != "Softmax")


def to_fp16(model: onnx.ModelProto, softmax_fp32: bool = True) -> onnx.ModelProto:
    """fp16 weights and compute with the sensitive parts in fp32 (module docstring); fp32 inputs and outputs.

    ``softmax_fp32=False`` keeps attention's MatMul → Softmax → MatMul chain in one precision (fp16), the form
    TensorRT fuses into one attention kernel (which accumulates in fp32 itself); with Casts around an fp32 Softmax it
    cannot fuse, and the unfused score tensor is huge at large sizes."""
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    big = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": tiny weights, expected
        half = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(fp32_ops(softmax_fp32)),
            node_block_list=_timestep_embedding_nodes(model),
            disable_shape_infer=big,  # onnx's shape inference refuses models over 2 GB
        )
    # the converter appends its input casts at the end of the node list; ONNX requires topological order (ONNX
    # Runtime tolerates it, the checker and other consumers do not): onnxslim re-sorts and folds back-to-back casts
    slim = onnxslim.slim(half)
    return slim if slim is not None else half


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out − ref| / max(1, max |ref|): an absolute error for unit-scale tensors, relative for large ones."""
    return float(np.abs(out.astype(np.float64) - ref).max() / max(1.0, float(np.abs(ref).max())))


def validate_against_torch(path: Path, module: torch.nn.Module, spec: NetworkSpec,
                           shapes: list[tuple[int, int, int]], tolerance: float) -> dict[str, float]:
    """Run the ONNX model and the PyTorch module on sample inputs of each (batch, H, W); raise if they differ.

    Returns the worst :func:`relative_error` per output name.
    """
    sess = onnx_session(path)
    worst: dict[str, float] = dict.fromkeys(spec.output_names, 0.0)
    for k, (b, h, w) in enumerate(shapes):
        sample = spec.sample_inputs(b, h, w, seed=k)
        with torch.no_grad():
            ref = module(*(sample[n] for n in spec.input_names))
        refs = ref if isinstance(ref, tuple) else (ref,)
        outs = sess.run(spec.output_names, {n: t.numpy() for n, t in sample.items()})
        for name, out, r in zip(spec.output_names, outs, refs, strict=True):
            if not np.isfinite(out).all():
                raise ExportValidationError(f"{path.name}: output {name!r} has NaN/Inf for input shape {b}x{h}x{w}")
            err = relative_error(out, r.float().numpy())
            worst[name] = max(worst[name], err)
            if err > tolerance:
                raise ExportValidationError(
                    f"{path.name}: output {name!r} differs from PyTorch by {err:.2e} (tolerance {tolerance:.0e}) "
                    f"for input shape batch={b} {h}x{w}"
                )
    return worst
