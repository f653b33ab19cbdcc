"""A fake TensorRT (10.x / 11.x Python API), fake CUDA streams and graphs, and recording fakes of the Polygraphy build
loaders: the TensorRT path's contract tests run on a machine without a GPU.

The fake enforces the preconditions TensorRT documents and records what it was asked:

- ``set_input_shape`` fails (returns False) outside the optimisation profile or at the wrong rank;
- an output's shape reads as -1s until every input shape is set (as ``get_tensor_shape`` does);
- ``execute_async_v3`` requires every I/O address, every input shape, user-managed device memory of at least
  ``device_memory_size_v2`` bytes, and a stream other than the default (legacy) stream;
- a CUDA graph may capture an enqueue only after a warm-up enqueue of the same context with the same shapes and
  addresses; replay runs what was captured, with the captured shapes and addresses;
- a plan built by another TensorRT major.minor does not deserialise (``None``), as with the real runtime;
- strongly typed networks refuse the FP16 builder flag; TensorRT 11 warns on the deprecated STRONGLY_TYPED flag.

Host memory stands in for device memory: execution reads the inputs from the raw addresses set on the context,
runs the ONNX graph the plan was "built" from in ONNX Runtime, and writes the output to its address. A violation
raises :class:`ContractViolation` (the real API would log an error, return False or crash).
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import itertools
import json
import sys
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch


class ContractViolation(AssertionError):
    """The code under test broke a documented precondition of TensorRT, CUDA or Polygraphy."""


@dataclass
class FakeState:
    """What the fake was configured with and what it recorded."""

    version: str = "10.13.0.35"
    gpu: str = "NVIDIA GeForce RTX 3090"
    runtime_fails: bool = False  # Runtime() cannot start (a CUDA 13 wheel on an older driver)
    nan_engines: set[str] = field(default_factory=set)  # ONNX file names whose engines output NaN
    device_memory: int = 1 << 16  # device_memory_size_v2 of every engine
    deserialised: list[str] = field(default_factory=list)  # ONNX file names of deserialised engines
    executions: list[tuple[str, tuple]] = field(default_factory=list)  # (ONNX file, input shapes) per run kernel
    builds: list[dict[str, Any]] = field(default_factory=list)  # one record per built engine
    loaded_caches: list[str] = field(default_factory=list)
    capturing: dict[int, FakeCUDAGraph] = field(default_factory=dict)  # stream handle -> graph being captured


STATE = FakeState()


# --------------------------------------------------------------------------------------------- the tensorrt module


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF,
                onnx.TensorProto.INT64: DataType.INT64, onnx.TensorProto.INT32: DataType.INT32}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class OnnxParserFlag(enum.IntEnum):
    NATIVE_INSTANCENORM = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class Dims(tuple):
    """``trt.Dims``: indexable, ``len()``-able."""


class Builder:  # present so detection finds an API; the build goes through the Polygraphy fakes
    def __init__(self, logger: Logger) -> None:
        self.logger = logger


class Runtime:
    def __new__(cls, logger: Logger) -> Runtime:
        if STATE.runtime_fails:  # pybind11's error when createInferRuntime returns null
            raise TypeError("pybind11::init(): factory function returned nullptr")
        return super().__new__(cls)

    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        try:
            plan = json.loads(bytes(serialized_engine).decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # "Serialization assertion ... failed": not a plan
        if plan.get("version", "").split(".")[:2] != STATE.version.split(".")[:2]:
            return None  # engines are not portable across TensorRT versions
        STATE.deserialised.append(Path(plan["onnx"]).name)
        return ICudaEngine(plan)


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


class ICudaEngine:
    def __init__(self, plan: dict[str, Any]) -> None:
        import onnxruntime as ort

        self.onnx = Path(plan["onnx"])
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in plan["profile"].items()}
        model = onnx.load(str(self.onnx), load_external_data=False)
        self._io: dict[str, tuple[TensorIOMode, DataType, int]] = {}
        for t in model.graph.input:
            self._io[t.name] = (TensorIOMode.INPUT, _ONNX_TO_TRT[t.type.tensor_type.elem_type],
                                len(t.type.tensor_type.shape.dim))
        for t in model.graph.output:
            self._io[t.name] = (TensorIOMode.OUTPUT, _ONNX_TO_TRT[t.type.tensor_type.elem_type],
                                len(t.type.tensor_type.shape.dim))
        missing = [n for n, (mode, _, _) in self._io.items() if mode is TensorIOMode.INPUT and n not in self.profile]
        if missing:
            raise ContractViolation(f"{self.onnx.name}: inputs {missing} have no optimisation profile")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.onnx), sess_options=opts, providers=["CPUExecutionProvider"])
        self._shape_cache: dict[tuple, dict[str, tuple[int, ...]]] = {}

    @property
    def device_memory_size_v2(self) -> int:
        return STATE.device_memory

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return list(self._io)[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._io[name][0] if name in self._io else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._io[name][1]

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        return IExecutionContext(self, strategy)

    def _inputs(self) -> list[str]:
        return [n for n, (mode, _, _) in self._io.items() if mode is TensorIOMode.INPUT]

    def _outputs(self) -> list[str]:
        return [n for n, (mode, _, _) in self._io.items() if mode is TensorIOMode.OUTPUT]

    def _output_shapes(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """What shape inference gives for these input shapes (run once per shape on zeros)."""
        key = tuple(sorted(input_shapes.items()))
        if key not in self._shape_cache:
            feeds = {n: np.zeros(s, dtype=self._io[n][1].value) for n, s in input_shapes.items()}
            outs = self.session.run(self._outputs(), feeds)
            self._shape_cache[key] = {n: tuple(o.shape) for n, o in zip(self._outputs(), outs, strict=True)}
        return self._shape_cache[key]


def _read(ptr: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    nbytes = _volume(shape) * np.dtype(dtype).itemsize
    buf = (ctypes.c_char * nbytes).from_address(ptr)
    return np.frombuffer(memoryview(buf), dtype=dtype).reshape(shape).copy()


def _write(ptr: int, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    ctypes.memmove(ptr, arr.ctypes.data, arr.nbytes)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy) -> None:
        self.engine, self.strategy = engine, strategy
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._device_memory: tuple[int, int] | None = None
        self._warm: set[tuple] = set()  # (shapes, addresses) of eager enqueues

    def set_device_memory(self, memory: int, size: int) -> None:
        if self.strategy is not ExecutionContextAllocationStrategy.USER_MANAGED:
            raise ContractViolation("set_device_memory on a context that does not use USER_MANAGED allocation")
        if not memory or size < self.engine.device_memory_size_v2:
            raise ContractViolation(f"device memory of {size} bytes at {memory:#x}; the engine needs "
                                    f"device_memory_size_v2 = {self.engine.device_memory_size_v2}")
        self._device_memory = (memory, size)

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if name not in self.engine._inputs():
            return False
        shape = tuple(int(d) for d in shape)
        mn, _, mx = self.engine.profile[name]
        if len(shape) != len(mn) or any(not lo <= d <= hi for d, lo, hi in zip(shape, mn, mx, strict=True)):
            return False  # "setInputShape: ... is out of the profile's bounds"
        self._shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        mode, _, rank = self.engine._io[name]
        if mode is TensorIOMode.INPUT:
            return Dims(self._shapes.get(name, (-1,) * rank))
        if any(n not in self._shapes for n in self.engine._inputs()):
            return Dims((-1,) * rank)  # not all input shapes specified yet
        return Dims(self.engine._output_shapes(self._shapes)[name])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self.engine._io:
            return False
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if stream_handle == 0:
            raise ContractViolation("execute_async_v3 on the default stream (TensorRT syncs around it; use a stream)")
        if self.strategy is ExecutionContextAllocationStrategy.USER_MANAGED and self._device_memory is None:
            raise ContractViolation("execute_async_v3 before set_device_memory on a USER_MANAGED context")
        missing = [n for n in self.engine._inputs() if n not in self._shapes]
        if missing:
            raise ContractViolation(f"execute_async_v3 with input shapes not set: {missing}")
        unset = [n for n in self.engine._io if not self._addresses.get(n)]
        if unset:
            raise ContractViolation(f"execute_async_v3 with tensor addresses not set: {unset}")
        launch = _Launch(self.engine, dict(self._shapes), dict(self._addresses))
        graph = STATE.capturing.get(stream_handle)
        if graph is not None:
            if launch.key() not in self._warm:
                raise ContractViolation("CUDA graph capture of an enqueue without a warm-up enqueue of the same "
                                        "shapes and addresses")
            graph.launches.append(launch)
            return True
        self._warm.add(launch.key())
        launch.run()
        return True


@dataclass
class _Launch:
    """One enqueued inference: the shapes and addresses it was enqueued with."""

    engine: ICudaEngine
    shapes: dict[str, tuple[int, ...]]
    addresses: dict[str, int]

    def key(self) -> tuple:
        return tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items()))

    def run(self) -> None:
        e = self.engine
        feeds = {n: _read(self.addresses[n], self.shapes[n], e.get_tensor_dtype(n).value) for n in e._inputs()}
        STATE.executions.append((e.onnx.name, tuple(self.shapes[n] for n in e._inputs())))
        outs = e.session.run(e._outputs(), feeds)
        for name, out in zip(e._outputs(), outs, strict=True):
            out = out.astype(e.get_tensor_dtype(name).value)
            if e.onnx.name in STATE.nan_engines:
                out = np.full_like(out, np.nan)
            _write(self.addresses[name], out)


def tensorrt_module() -> types.ModuleType:
    """A ``tensorrt`` module over this fake (its version is ``STATE.version``)."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = STATE.version  # type: ignore[attr-defined]
    for obj in (DataType, TensorIOMode, ExecutionContextAllocationStrategy, OnnxParserFlag,
                NetworkDefinitionCreationFlag, Logger, Dims, Builder, Runtime, ICudaEngine, IExecutionContext):
        setattr(mod, obj.__name__, obj)
    return mod


# --------------------------------------------------------------------------------------------- CUDA (torch.cuda)


_handles = itertools.count(0x1000)


class FakeStream:
    """``torch.cuda.Stream``: a non-zero handle; work runs synchronously on the host."""

    def __init__(self, device: Any = None, priority: int = 0, handle: int | None = None) -> None:
        self.cuda_stream = next(_handles) if handle is None else handle
        self.device = device

    def wait_stream(self, stream: FakeStream) -> None:
        pass

    def synchronize(self) -> None:
        pass


_DEFAULT_STREAM = FakeStream(handle=0)
_current: list[FakeStream] = [_DEFAULT_STREAM]


class FakeCUDAGraph:
    """``torch.cuda.CUDAGraph``: replays the captured launches with the captured shapes and addresses."""

    def __init__(self) -> None:
        self.launches: list[_Launch] = []
        self.captured = False

    def replay(self) -> None:
        if not self.captured:
            raise ContractViolation("replay of a CUDA graph that was never captured")
        for launch in self.launches:
            launch.run()


@contextmanager
def _stream(stream: FakeStream | None) -> Iterator[None]:
    if stream is None:
        yield
        return
    _current.append(stream)
    try:
        yield
    finally:
        _current.pop()


@contextmanager
def _graph(cuda_graph: FakeCUDAGraph, pool: Any = None, stream: FakeStream | None = None,
           capture_error_mode: str = "global") -> Iterator[None]:
    s = stream or FakeStream()
    if s.cuda_stream == 0:
        raise ContractViolation("CUDA graphs cannot be captured on the default stream")
    STATE.capturing[s.cuda_stream] = cuda_graph
    _current.append(s)
    try:
        yield
    finally:
        _current.pop()
        del STATE.capturing[s.cuda_stream]
        cuda_graph.captured = True


@dataclass
class _Props:
    name: str
    total_memory: int = 24 * 2**30
    major: int = 8
    minor: int = 6


def install_cuda(monkeypatch: Any) -> None:
    """Patch ``torch.cuda`` so code written for a CUDA device runs on host memory with these fakes."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda, "get_device_name", lambda device=None: STATE.gpu)
    monkeypatch.setattr(cuda, "get_device_properties", lambda device=None: _Props(STATE.gpu))
    monkeypatch.setattr(cuda, "Stream", FakeStream)
    monkeypatch.setattr(cuda, "current_stream", lambda device=None: _current[-1])
    monkeypatch.setattr(cuda, "stream", _stream)
    monkeypatch.setattr(cuda, "graph", _graph)
    monkeypatch.setattr(cuda, "CUDAGraph", FakeCUDAGraph)
    monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)


# --------------------------------------------------------------------------------------------- Polygraphy loaders


def _checked_call(real: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Bind the call to the real Polygraphy signature (following ``**kwargs`` into the base class's ``__init__``, as
    ``CreateConfig`` forwards them): a wrong keyword or argument count fails as it would there. Returns the bound
    arguments by name."""
    targets = [vars(c)["__init__"] for c in real.__mro__ if "__init__" in vars(c)] if inspect.isclass(real) else [real]
    out: dict[str, Any] = {}
    for i, target in enumerate(targets):
        sig = inspect.signature(target)
        try:
            bound = sig.bind(*((None,) if inspect.isclass(real) else ()), *args, **kwargs)
        except TypeError as e:
            raise ContractViolation(f"{real.__name__}(*{args}, **{kwargs}): {e}") from e
        var_kw = [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
        rest = bound.arguments.pop(var_kw[0], {}) if var_kw else {}
        out.update({k: v for k, v in bound.arguments.items() if k != "self"})
        if not rest:
            break
        if i + 1 == len(targets):
            raise ContractViolation(f"{real.__name__}: unexpected keyword arguments {sorted(rest)}")
        args, kwargs = (), rest
    return out


@dataclass
class _Network:
    path: Path
    flags: list[int]
    strongly_typed: bool


_REAL: dict[str, Any] = {}


def install_polygraphy(monkeypatch: Any) -> None:
    """Replace the Polygraphy TensorRT loaders used at build time with recording fakes (``polygraphy.backend.trt``
    attributes, so ``from polygraphy.backend.trt import X`` inside a function gets the fake)."""
    import polygraphy.backend.trt as ptrt

    if not _REAL:  # the real loaders, taken before any patching (a second install must not wrap the fakes)
        _REAL.update({n: getattr(ptrt, n) for n in ("NetworkFromOnnxPath", "CreateConfig", "EngineBytesFromNetwork",
                                                     "save_engine")})
    real = _REAL

    class NetworkFromOnnxPath:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            b = _checked_call(real["NetworkFromOnnxPath"], args, kwargs)
            self.network = _Network(Path(b["path"]), [int(f) for f in b.get("flags") or []],
                                    bool(b.get("strongly_typed")))
            if self.network.strongly_typed and int(STATE.version.split(".")[0]) >= 11:
                warnings.warn("STRONGLY_TYPED is deprecated in TensorRT 11 and ignored", DeprecationWarning,
                              stacklevel=2)
            onnx.checker.check_model(str(self.network.path))  # the parser needs a valid graph at that path

        def __call__(self) -> tuple[Any, _Network, Any]:
            return None, self.network, None

    class CreateConfig:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args = _checked_call(real["CreateConfig"], args, kwargs)

    class EngineBytesFromNetwork:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            b = _checked_call(real["EngineBytesFromNetwork"], args, kwargs)
            self.network, self.config, self.cache = b["network"], b.get("config"), b.get("save_timing_cache")

        def __call__(self) -> bytes:
            net = self.network()[1] if callable(self.network) else self.network[1]
            cfg = self.config.args if self.config is not None else {}
            if cfg.get("fp16") and (net.strongly_typed or int(STATE.version.split(".")[0]) >= 11):
                raise ContractViolation("the FP16 builder flag is not allowed with strongly typed networks")
            model = onnx.load(str(net.path), load_external_data=False)
            (profile,) = cfg.get("profiles") or [None]
            if profile is None:
                raise ContractViolation(f"{net.path.name}: dynamic inputs need an optimisation profile")
            prof = {name: (tuple(s.min), tuple(s.opt), tuple(s.max)) for name, s in profile.items()}
            for inp in model.graph.input:
                if inp.name not in prof:
                    raise ContractViolation(f"{net.path.name}: no profile for input {inp.name!r}")
                mn, opt, mx = prof[inp.name]
                if not len(mn) == len(opt) == len(mx) == len(inp.type.tensor_type.shape.dim):
                    raise ContractViolation(f"{net.path.name}: profile rank of {inp.name!r} differs from the graph")
                if not all(a <= b <= c for a, b, c in zip(mn, opt, mx, strict=True)):
                    raise ContractViolation(f"{net.path.name}: profile of {inp.name!r} is not min <= opt <= max")
            load = cfg.get("load_timing_cache")
            if load:
                STATE.loaded_caches.append(Path(load).name)
                cached = json.loads(Path(load).read_text())
                if (cached["version"], cached["gpu"]) != (STATE.version, STATE.gpu):
                    raise ContractViolation(f"timing cache {load} of TensorRT {cached['version']} on "
                                            f"{cached['gpu']} loaded by TensorRT {STATE.version} on {STATE.gpu}")
            if self.cache:
                Path(self.cache).write_text(json.dumps({"version": STATE.version, "gpu": STATE.gpu}))
            STATE.builds.append({"onnx": net.path.name, "flags": net.flags, "strongly_typed": net.strongly_typed,
                                 "config": {k: v for k, v in cfg.items() if k != "profiles"}, "profile": prof,
                                 "timing_cache": self.cache})
            return json.dumps({"version": STATE.version, "onnx": str(net.path),
                               "profile": {k: [list(s) for s in v] for k, v in prof.items()}}).encode()

    class EngineFromNetwork(EngineBytesFromNetwork):
        def __call__(self) -> Any:  # type: ignore[override]
            return Runtime(Logger()).deserialize_cuda_engine(super().__call__())

    def save_engine(engine: Any, path: str) -> Any:
        _checked_call(real["save_engine"], (engine,), {"path": path})
        Path(path).write_text(json.dumps({"version": STATE.version, "onnx": str(engine.onnx),
                                          "profile": {k: [list(s) for s in v] for k, v in engine.profile.items()}}))
        return engine

    fakes = {"NetworkFromOnnxPath": NetworkFromOnnxPath, "CreateConfig": CreateConfig,
             "EngineBytesFromNetwork": EngineBytesFromNetwork, "EngineFromNetwork": EngineFromNetwork,
             "network_from_onnx_path": lambda *a, **k: NetworkFromOnnxPath(*a, **k)(),
             "engine_from_network": lambda *a, **k: EngineFromNetwork(*a, **k)(),
             "engine_bytes_from_network": lambda *a, **k: EngineBytesFromNetwork(*a, **k)(),
             "save_engine": save_engine}
    for name, fake in fakes.items():
        monkeypatch.setattr(ptrt, name, fake)


def install(monkeypatch: Any, version: str = "10.13.0.35", gpu: str = "NVIDIA GeForce RTX 3090") -> FakeState:
    """TensorRT ``version`` on ``gpu``: the ``tensorrt`` module, ``torch.cuda`` and the Polygraphy loaders."""
    global STATE
    STATE = FakeState(version=version, gpu=gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", tensorrt_module())
    install_cuda(monkeypatch)
    install_polygraphy(monkeypatch)
    return STATE
