"""TensorRT backend: the engines ``depth-export --fp16`` built, run on one CUDA stream (TensorRT 10+ I/O API).

The U-Net and the VAE's encoder and decoder, and the light VAE's two when the export has them.

- Each engine is deserialised once, after the manifest's TensorRT version and GPU were checked against this machine
  (engines are not portable: a mismatch is a clear error, not a crash) and the plan file's sha256 against the
  manifest's (:meth:`agdepth.artifacts.manifest.Manifest.verify`).
- One device-memory block, sized for the largest engine, is shared by the execution contexts: they never run
  at the same time (one stream, one call after the other).
- I/O: ``set_input_shape`` / ``set_tensor_address`` on PyTorch CUDA tensors, ``execute_async_v3`` on the backend's
  stream; output buffers are allocated per shape and reused.
- Shapes outside the engines' profile are refused before any work (:meth:`BackendBase.check_shapes`).
- Static engines (``depth-export --static``): calls with fewer rows are padded to the engine's batch, and the U-Net
  step is replayed as a CUDA graph captured after a warm-up call; a call of another shape is refused.
- NaN/Inf check on every output (on by default), with the fp32 decoder engine as the fallback for fp16 overflows.

Checked without a GPU by contract tests against a fake TensorRT that enforces the API's preconditions
(``tests/fake_tensorrt.py``) and by mypy against tensorrt-stubs (``make typecheck``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.artifacts.manifest import Manifest
from agdepth.artifacts.tensorrt import FALLBACK_DECODER, TensorRTStatus, tensorrt_status
from agdepth.networks import (
    LIGHT_NETWORKS,
    NETWORK_NAMES,
    NetworkSpec,
    ShapeRange,
    describe_light_networks,
    describe_networks,
    vae_variants,
)
from agdepth.runtime.backends import BackendBase, NonFiniteOutputError


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
    """:class:`agdepth.runtime.backends.DepthBackend` over TensorRT engines (float32 I/O, fp16 inside).

    ``device`` is the CUDA device whose memory the engines read and write. ``check_finite`` (on by default) tests
    every output for NaN/Inf: a non-finite fp16 decoder output is redone with the fp32 decoder engine when the
    export built one (counted in :attr:`fallbacks`), anything else raises :class:`NonFiniteOutputError`.
    """

    def __init__(self, manifest: Manifest | str, device: str | torch.device = "cuda", check_finite: bool = True,
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
        self._schedule = m.schedule()
        self._defaults = RuntimeDefaults(**m.data["defaults"])
        self._shapes = ShapeRange.from_dict(info["shapes"])
        self.specs: dict[str, NetworkSpec] = describe_networks(self._f, emb.shape[1], emb.shape[2])
        self.specs.update(describe_light_networks(self._f))
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        self.engines: dict[str, trt.ICudaEngine] = {}
        for name in (*NETWORK_NAMES, FALLBACK_DECODER, *LIGHT_NETWORKS):
            if name not in info["files"]:
                if name == FALLBACK_DECODER or name in LIGHT_NETWORKS:
                    continue  # optional
                raise FileNotFoundError(f"{m.root / 'manifest.json'} lists no {name} engine")
            # the plan's sha256 (recorded after the build) first: TensorRT would run a modified plan without a word
            path = m.verify(info["files"][name], (info.get("sha256") or {}).get(name),
                            remedy=f"rebuild it with `depth-export --engines-only {m.root}`")
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeError(f"{path}: TensorRT {status.version} could not deserialise this engine (built by "
                                   "another TensorRT version, or damaged): rebuild it here with "
                                   f"`depth-export --engines-only {m.root}`")
            self.engines[name] = engine
        # one scratch block for all contexts (they run one after another on one stream)
        size = max(e.device_memory_size_v2 for e in self.engines.values())
        self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self._device)
        self.contexts: dict[str, trt.IExecutionContext] = {}
        for name, engine in self.engines.items():
            ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            ctx.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            self.contexts[name] = ctx
        self.specs[FALLBACK_DECODER] = self.specs["vae_decoder"]
        self._vae_variants = vae_variants(self.engines)
        self._torch_dtypes = {name: {t: _torch_dtype(engine.get_tensor_dtype(t)) for t in
                                     (*self.specs[name].input_names, *self.specs[name].output_names)}
                              for name, engine in self.engines.items()}
        self.fallbacks = 0  # decoder calls redone with the fp32 engine
        self._outputs: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._stream = torch.cuda.Stream(device=self._device)
        self.check_finite = check_finite
        # CUDA graphs need one fixed shape per graph: only for static engines (`depth-export --static`), whose calls
        # are padded to that shape
        self.cuda_graphs = cuda_graphs and self._shapes.is_static
        self._graphed: dict[str, _CapturedCall] = {}

    # ------------------------------------------------------------------ execution

    def _bind(self, name: str, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Set every input's shape and address, then the output's (its shape is known once all inputs are set);
        returns the output buffer (one per network and shape, reused)."""
        spec, ctx, dtypes = self.specs[name], self.contexts[name], self._torch_dtypes[name]
        for tname, t in zip(spec.input_names, inputs, strict=True):
            if not ctx.set_input_shape(tname, tuple(t.shape)):
                raise ValueError(f"{name}: shape {tuple(t.shape)} of {tname!r} is outside the engine's profile")
            ctx.set_tensor_address(tname, t.data_ptr())
        (oname,) = spec.output_names
        dims = ctx.get_tensor_shape(oname)
        shape = tuple(int(dims[i]) for i in range(len(dims)))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"{name}: TensorRT could not infer the shape of {oname!r} ({shape})")
        out = self._outputs.get((name, shape))
        if out is None:
            out = self._outputs[(name, shape)] = torch.empty(shape, dtype=dtypes[oname], device=self._device)
        ctx.set_tensor_address(oname, out.data_ptr())
        return out

    def _execute(self, name: str) -> None:
        self._stream.wait_stream(torch.cuda.current_stream(self._device))  # inputs were written on that stream
        if not self.contexts[name].execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{name}: TensorRT execution failed")
        torch.cuda.current_stream(self._device).wait_stream(self._stream)

    def _run_graphed(self, name: str, inputs: list[torch.Tensor]) -> torch.Tensor:
        """One CUDA graph per network, for its static shape: inputs are copied into persistent buffers whose
        addresses the graph keeps. The first call runs eagerly (TensorRT's warm-up, which also flushes its deferred
        updates), then captures; later calls of the same shapes replay; other shapes are refused."""
        shapes = tuple(tuple(t.shape) for t in inputs)
        call = self._graphed.get(name)
        if call is None:
            bufs = [t.clone() for t in inputs]
            out = self._bind(name, bufs)
            self._execute(name)  # warm-up enqueue with the addresses the graph will keep
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self.contexts[name].execute_async_v3(self._stream.cuda_stream)
            self._graphed[name] = _CapturedCall(shapes, bufs, out, graph)
            return out
        if shapes != call.shapes:
            raise ValueError(f"{name}: the CUDA graph was captured for input shapes {call.shapes}, got {shapes}")
        for b, t in zip(call.inputs, inputs, strict=True):
            b.copy_(t)
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._stream):
            call.graph.replay()
        torch.cuda.current_stream(self._device).wait_stream(self._stream)
        return call.out

    def _run(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        if name not in self.contexts:
            raise ValueError(f"{self.manifest.root / 'manifest.json'} lists no {name!r} engine (VAE choices here: "
                             f"{', '.join(self._vae_variants)})")
        dtypes = self._torch_dtypes[name]
        feeds = [t.to(device=self._device, dtype=dtypes[n]).contiguous()
                 for n, t in zip(self.specs[name].input_names, inputs, strict=True)]
        rows = int(feeds[0].shape[0])
        if self._shapes.is_static:  # static engines: pad the rows to the engine's batch (rows are independent)
            batch = self._shapes.max_batch
            if rows > batch:
                return torch.cat([self._run(name, *(t[i : i + batch] for t in inputs)) for i in range(0, rows, batch)])
            if rows < batch:
                feeds = [torch.cat([t, t.new_zeros((batch - rows, *t.shape[1:]))]) for t in feeds]
        if name == "unet" and self.cuda_graphs:
            out = self._run_graphed(name, feeds)
        else:
            out = self._bind(name, feeds)
            self._execute(name)  # `feeds` stay referenced until the stream has consumed them
        # the buffer is reused by the next call of this shape: hand out a copy of the caller's rows
        result = out[:rows].float().clone()
        if self.check_finite and not bool(torch.isfinite(result).all()):
            if name == "vae_decoder" and FALLBACK_DECODER in self.contexts:
                self.fallbacks += 1
                return self._run(FALLBACK_DECODER, *inputs)
            raise NonFiniteOutputError(f"{name} (TensorRT) returned NaN/Inf for input shapes "
                                       f"{[tuple(t.shape) for t in inputs]}")
        return result

    def encode(self, rgb: torch.Tensor, network: str = "vae_encoder") -> torch.Tensor:
        return self._run(network, rgb)

    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self._run("unet", sample, timestep, encoder_hidden_states)

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        return self._run(network, latent)


@dataclass
class _CapturedCall:
    shapes: tuple[tuple[int, ...], ...]
    inputs: list[torch.Tensor]
    out: torch.Tensor
    graph: Any  # torch.cuda.CUDAGraph


def _torch_dtype(dt: Any) -> torch.dtype:
    import tensorrt as trt

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BF16: torch.bfloat16}
    if dt not in table:
        raise ValueError(f"unsupported engine I/O dtype {dt}")
    return table[dt]
