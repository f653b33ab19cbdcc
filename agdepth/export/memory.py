"""What an engine will need in GPU memory at its profile's largest shape, estimated from the ONNX graph.

Two parts: the weights (initializer bytes, at the graph's own precision) and the largest attention score tensor
(Softmax input: batch × heads × query tokens × key tokens). TensorRT's fused attention never materialises the scores;
when it cannot fuse (mixed precision along MatMul → Softmax → MatMul) the scores are a real buffer, ~1 GiB per head at
16 384 tokens in fp32, and that decides whether a large profile fits the card. Shapes come from ONNX Runtime's
symbolic shape inference, evaluated at the profile's maximum.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

GIB = 2**30


@dataclass(frozen=True)
class EngineMemoryEstimate:
    weights_bytes: int
    attention_scores_bytes: int  # the largest Softmax input at the maximum shape (0: no attention)
    attention_scores_shape: tuple[int, ...]
    attention_dtype: str
    max_shapes: dict[str, tuple[int, ...]]

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.max_shapes.items())
        text = f"memory estimate at the largest shape ({shapes}): weights {self.weights_bytes / GIB:.2f} GiB"
        if self.attention_scores_bytes:
            text += (f"; largest attention score tensor {'x'.join(map(str, self.attention_scores_shape))} "
                     f"{self.attention_dtype} = {self.attention_scores_bytes / GIB:.2f} GiB if TensorRT does not fuse "
                     "that attention")
        return text


def _elem_size(elem_type: int) -> int:
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)


def estimate_engine_memory(onnx_path: Path, max_shapes: dict[str, tuple[int, ...]]) -> EngineMemoryEstimate:
    """Estimate for the graph at ``onnx_path`` when its inputs have ``max_shapes`` (input name -> shape)."""
    import sympy
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(onnx_path), load_external_data=False)  # shapes and dtypes only, not the weights
    weights = sum(int(np.prod(t.dims, dtype=np.int64)) * _elem_size(t.data_type) for t in model.graph.initializer)
    values: dict[str, int] = {}
    for inp in model.graph.input:
        if inp.name in max_shapes:
            for d, v in zip(inp.type.tensor_type.shape.dim, max_shapes[inp.name], strict=True):
                if d.dim_param:
                    values[d.dim_param] = int(v)
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    symbols = {k: sympy.Symbol(k, integer=True, positive=True) for k in values}
    best: tuple[int, tuple[int, ...], str] = (0, (), "")
    for node in inferred.graph.node:
        if node.op_type != "Softmax" or node.input[0] not in infos:
            continue
        tt = infos[node.input[0]].type.tensor_type
        dims = []
        for d in tt.shape.dim:
            if d.dim_param:
                expr = sympy.sympify(d.dim_param, locals=symbols)
                dims.append(int(expr.subs({symbols[k]: v for k, v in values.items()})))
            else:
                dims.append(int(d.dim_value))
        size = int(np.prod(dims, dtype=np.int64)) * _elem_size(tt.elem_type)
        if size > best[0]:
            best = (size, tuple(dims), onnx.TensorProto.DataType.Name(tt.elem_type).lower())
    return EngineMemoryEstimate(weights, best[0], best[1], best[2], {k: tuple(v) for k, v in max_shapes.items()})
