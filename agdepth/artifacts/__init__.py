"""The on-disk contracts and nothing else: checkpoint directories (atomic), the engines manifest and its integrity
checks, the inference-defaults record, the ONNX Runtime session factory and TensorRT availability. Everything above
(training, export, runtime, evaluation, benchmarks) reads and writes artifacts through these modules."""
