"""TensorRT backend: the three engines ``depth-export --fp16`` built, run on one CUDA stream (TensorRT 10+ I/O API).

- Each engine is deserialised once, after the manifest's TensorRT version and GPU were checked against this machine
  (engines are not portable: a mismatch is a clear error, not a crash).
- One device-memory block, sized for the largest engine, is shared by the three execution contexts: they never run
  at the same time (one stream, one call after the other).
- I/O: ``set_input_shape`` / ``set_tensor_address`` on PyTorch CUDA tensors, ``execute_async_v3`` on the backend's
  stream; output buffers are allocated per shape and reused.
- Shapes outside the engines' profile are refused before any work (:meth:`BackendBase.check_shapes`).
- CUDA graphs for the U-Net step when the engines are static (``depth-export --static``): captured after a warm-up
  call, replayed every step.

NOT RUN in this project's development environment (no TensorRT, no GPU); checked by mypy against tensorrt-stubs
(``make typecheck``).
"""

from __future__ import annotations

from typing import Any

import torch

from agdepth.export import Manifest
from agdepth.export.tensorrt_build import FALLBACK_DECODER, TensorRTStatus, tensorrt_status
from agdepth.networks import NETWORK_NAMES, NetworkSpec, ShapeRange, describe_networks
from agdepth.runtime.backends import BackendBase, NonFiniteOutputError, RuntimeDefaults
from agdepth.schedule import NoiseSchedule


def check_engines(info: dict[str, Any] | None, status: TensorRTStatus, where: str) -> None:
    """Raise (naming both sides) unless TensorRT runs here and the engines were built for this TensorRT and GPU."""
    if not status.available:
        raise RuntimeError(f"cannot run TensorRT engines here: {status.reason}")
    if not info:
        raise FileNotFoundError(f"{where} lists no TensorRT engines: build them with `depth-export --engines-only`")
    problems = []
    if info.get("version") != status.version:
        problems.append(f"TensorRT {info.get('version')} (this machine: {status.version})")
    if info.get("gpu") != status.gpu:
        problems.append(f"GPU {info.get('gpu')!r} (this machine: {status.gpu!r})")
    if problems:
        raise ValueError(f"{where}: engines were built for " + " and ".join(problems)
                         + "; rebuild them here with `depth-export --engines-only`")


class TensorRTBackend(BackendBase):
    """:class:`agdepth.runtime.backends.DepthBackend` over TensorRT engines (float32 I/O, fp16 inside)."""

    def __init__(self, manifest: Manifest | str, device: str | torch.device = "cuda", check_finite: bool = False,
                 cuda_graphs: bool = True) -> None:
        status = tensorrt_status()
        if not status.available:  # before touching anything else: the one line a user without TensorRT needs
            raise RuntimeError(f"cannot run TensorRT engines here: {status.reason}")
        import tensorrt as trt

        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        m = self.manifest
        info = m.data.get("tensorrt")
        check_engines(info, status, str(m.root / "manifest.json"))
        assert info is not None
        emb = m.embedding()
        self._f = int(m.data["vae_scale_factor"])
        self._device, self._dtype = torch.device(device), torch.float32
        self._emb = torch.from_numpy(emb).float().to(self._device)
        self._schedule = NoiseSchedule.from_config(m.data["scheduler"])
        self._defaults = RuntimeDefaults(**m.data["defaults"])
        self._shapes = ShapeRange.from_dict(info["shapes"])
        self.specs: dict[str, NetworkSpec] = describe_networks(self._f, emb.shape[1], emb.shape[2])
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engines: dict[str, trt.ICudaEngine] = {}
        for name in (*NETWORK_NAMES, FALLBACK_DECODER):
            if name not in info["files"]:
                if name == FALLBACK_DECODER:
                    continue  # optional
                raise FileNotFoundError(f"{m.root / 'manifest.json'} lists no {name} engine")
            path = m.root / info["files"][name]
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (listed in {m.root / 'manifest.json'})")
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"{path}: TensorRT could not deserialise this engine")
            self.engines[name] = engine
        # one scratch block for all contexts (they run one after another on one stream)
        size = max(e.device_memory_size_v2 for e in self.engines.values())
        self._scratch = torch.empty(size, dtype=torch.uint8, device=self._device)
        self.contexts: dict[str, trt.IExecutionContext] = {}
        for name, engine in self.engines.items():
            ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            ctx.set_device_memory(self._scratch.data_ptr(), size)
            self.contexts[name] = ctx
        self.specs[FALLBACK_DECODER] = self.specs["vae_decoder"]
        self._torch_dtypes = {name: {t: _torch_dtype(engine.get_tensor_dtype(t)) for t in
                                     (*self.specs[name].input_names, *self.specs[name].output_names)}
                              for name, engine in self.engines.items()}
        self.fallbacks = 0  # decoder calls redone with the fp32 engine
        self._outputs: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._stream = torch.cuda.Stream(device=self._device)
        self.check_finite = check_finite  # NaN/Inf: the fp32 decoder engine for the decoder, else an error
        # CUDA graphs need one fixed shape: only for engines built with `depth-export --static`
        r = self._shapes
        self.cuda_graphs = cuda_graphs and r.min_batch == r.max_batch and r.min_resolution == r.max_resolution
        self._graphed: dict[str, dict[str, Any]] = {}

    def _run_graphed(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        """Static shapes: inputs are copied into persistent buffers whose addresses the context keeps; the first call
        runs eagerly (TensorRT's warm-up), the second captures a CUDA graph on the backend's stream, later calls
        replay it."""
        spec, ctx, dtypes = self.specs[name], self.contexts[name], self._torch_dtypes[name]
        st = self._graphed.get(name)
        if st is None:
            bufs = [torch.empty(tuple(t.shape), dtype=dtypes[n], device=self._device)
                    for n, t in zip(spec.input_names, inputs, strict=True)]
            for n, b in zip(spec.input_names, bufs, strict=True):
                if not ctx.set_input_shape(n, tuple(b.shape)):
                    raise ValueError(f"{name}: shape {tuple(b.shape)} of {n!r} is not the engine's static shape")
                ctx.set_tensor_address(n, b.data_ptr())
            (oname,) = spec.output_names
            dims = ctx.get_tensor_shape(oname)
            out = torch.empty(tuple(int(dims[i]) for i in range(len(dims))), dtype=dtypes[oname], device=self._device)
            ctx.set_tensor_address(oname, out.data_ptr())
            st = self._graphed[name] = {"inputs": bufs, "out": out, "graph": None}
        for b, t in zip(st["inputs"], inputs, strict=True):
            b.copy_(t)
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        if st["graph"] is not None:
            with torch.cuda.stream(self._stream):
                st["graph"].replay()
        else:
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"{name}: TensorRT execution failed")
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                ctx.execute_async_v3(self._stream.cuda_stream)
            st["graph"] = graph
        torch.cuda.current_stream(self._device).wait_stream(self._stream)
        return st["out"].float().clone()

    def _run(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        if name == "unet" and self.cuda_graphs:
            return self._run_graphed(name, *inputs)
        spec, ctx, dtypes = self.specs[name], self.contexts[name], self._torch_dtypes[name]
        keep = []  # inputs stay alive until the stream has consumed them
        for tname, t in zip(spec.input_names, inputs, strict=True):
            t = t.to(device=self._device, dtype=dtypes[tname]).contiguous()
            keep.append(t)
            if not ctx.set_input_shape(tname, tuple(t.shape)):
                raise ValueError(f"{name}: shape {tuple(t.shape)} of {tname!r} is outside the engine's profile")
            ctx.set_tensor_address(tname, t.data_ptr())
        (oname,) = spec.output_names
        dims = ctx.get_tensor_shape(oname)
        shape = tuple(int(dims[i]) for i in range(len(dims)))
        out = self._outputs.get((name, shape))
        if out is None:
            out = self._outputs[(name, shape)] = torch.empty(shape, dtype=dtypes[oname], device=self._device)
        ctx.set_tensor_address(oname, out.data_ptr())
        self._stream.wait_stream(torch.cuda.current_stream(self._device))  # inputs were written on that stream
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{name}: TensorRT execution failed")
        torch.cuda.current_stream(self._device).wait_stream(self._stream)
        if self.check_finite and not bool(torch.isfinite(out).all()):
            if name == "vae_decoder" and FALLBACK_DECODER in self.contexts:
                self.fallbacks += 1
                return self._run(FALLBACK_DECODER, *inputs)
            raise NonFiniteOutputError(f"{name} (TensorRT) returned NaN/Inf for output shape {shape}")
        # the buffer is reused by the next call of this shape: hand out a copy
        return out.float().clone()

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return self._run("vae_encoder", rgb)

    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self._run("unet", sample, timestep, encoder_hidden_states)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self._run("vae_decoder", latent)


def _torch_dtype(dt: Any) -> torch.dtype:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BF16: torch.bfloat16}
    if dt not in table:
        raise ValueError(f"unsupported engine I/O dtype {dt}")
    return table[dt]
