"""Inference runtime: the DDIM depth pipeline over interchangeable backends (PyTorch, ONNX Runtime, TensorRT)."""

from agdepth.runtime.backends import DepthBackend, RuntimeDefaults
from agdepth.runtime.pipeline import STAGES, DepthOutput, DepthPipeline

__all__ = ["STAGES", "DepthBackend", "DepthOutput", "DepthPipeline", "RuntimeDefaults"]
