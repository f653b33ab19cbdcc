"""ONNX Runtime backend: the graphs of an engines directory (``depth-export``), one session each.

Every graph the manifest lists is checked when the backend opens; the U-Net's and the default VAE's sessions open
with it, the other VAE's (the full or the light one) on first use.

The CUDA execution provider is used when onnxruntime-gpu provides it, else the CPU provider. Inputs outside the
manifest's shape range are refused before any work (:meth:`OnnxBackend.check_shapes`). Each graph is checked before
use: its sha256 against the manifest's (:meth:`agdepth.artifacts.manifest.Manifest.verify`), then its session's
input and output names and ranks against the network's description; a damaged file is one ValueError naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.artifacts.manifest import Manifest
from agdepth.artifacts.sessions import check_session_io, onnx_session
from agdepth.networks import (
    NetworkSpec,
    ShapeRange,
    describe_light_networks,
    describe_networks,
    vae_networks,
    vae_variants,
)
from agdepth.runtime.backends import BackendBase, NonFiniteOutputError


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxBackend(BackendBase):
    """:class:`agdepth.runtime.backends.DepthBackend` over ONNX Runtime sessions (float32 I/O on the CPU side)."""

    def __init__(self, manifest: Manifest | str | Path, precision: str = "fp32", providers: list[str] | None = None,
                 threads: int = 0, check_finite: bool = False, fp32_decoder_fallback: bool = True) -> None:
        """``check_finite``: test every output for NaN/Inf (fp16 overflow). On a non-finite fp16 VAE decoder output
        the call is redone with the fp32 decoder graph when ``fp32_decoder_fallback`` (the decoder is where SD's VAE
        overflows in fp16), else :class:`NonFiniteOutputError` names the network."""

        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
        m = self.manifest
        if precision not in m.precisions:
            raise ValueError(f"{m.root}: no {precision} networks (exported: {m.precisions}; fp16 needs --fp16)")
        self.precision = precision
        self.providers = providers or default_providers()
        emb = m.embedding()
        self._f = int(m.data["vae_scale_factor"])
        self.specs: dict[str, NetworkSpec] = describe_networks(self._f, emb.shape[1], emb.shape[2])
        listed = m.data["networks"][precision]
        self.specs.update({n: s for n, s in describe_light_networks(self._f).items() if n in listed})
        self._check_manifest_io()
        self._threads = threads
        self._defaults = RuntimeDefaults(**m.data["defaults"])
        self._vae_variants = vae_variants(self.specs)
        for name in self.specs:  # every listed file present and unchanged now, whichever VAE a call will choose
            self._verified(name, precision)
        eager = ["unet", *(vae_networks(self._defaults.vae) if self._defaults.vae in self._vae_variants else ())]
        self.sessions = {name: self._session(name, precision) for name in dict.fromkeys(eager)}
        self.check_finite, self.fp32_decoder_fallback = check_finite, fp32_decoder_fallback
        self.fallbacks = 0  # decoder calls redone in fp32
        self._emb = torch.from_numpy(emb).float()
        self._schedule = m.schedule()
        self._shapes: ShapeRange = m.shapes
        self._device, self._dtype = torch.device("cpu"), torch.float32  # host arrays; CUDA EP copies them

    def _check_manifest_io(self) -> None:
        """The graphs must have the inputs and outputs this version of agdepth feeds and reads."""
        for name, spec in self.specs.items():
            entry = self.manifest.network(name, self.precision)
            listed = [(t["name"], list(t["dims"])) for t in entry["inputs"] + entry["outputs"]]
            expected = [(t.name, list(t.dims)) for t in (*spec.inputs, *spec.outputs)]
            if listed != expected:
                raise ValueError(
                    f"{self.manifest.root / 'manifest.json'}: {name} I/O {listed} does not match what this runtime "
                    f"expects {expected}; re-export with this version of depth-export"
                )

    # ------------------------------------------------------------------ DepthBackend (settings: BackendBase)

    def _verified(self, name: str, precision: str) -> Path:
        """The graph's path, after checking it and its external data against the manifest (hashes are cached)."""
        m, entry = self.manifest, self.manifest.network(name, precision)
        path = m.verify(entry["file"], entry.get("sha256"))
        if entry.get("external_data"):
            m.verify(entry["external_data"]["file"], entry["external_data"].get("sha256"))
        return path

    def _session(self, name: str, precision: str):  # -> onnxruntime.InferenceSession
        path = self._verified(name, precision)
        session = onnx_session(path, self.providers, self._threads)
        check_session_io(session, self.specs[name], path)
        return session

    def _run(self, name: str, *inputs: torch.Tensor) -> torch.Tensor:
        spec = self.specs.get(name)
        if spec is None:
            raise ValueError(f"{self.manifest.root / 'manifest.json'} lists no {self.precision} {name!r} network "
                             f"(VAE choices here: {', '.join(self._vae_variants)})")
        session = self.sessions.get(name)
        if session is None:  # a network the default settings do not use: opened on first use
            session = self.sessions[name] = self._session(name, self.precision)
        feeds = {n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(spec.input_names, inputs,
                                                                                 strict=True)}
        out = session.run(spec.output_names, feeds)[0]
        if self.check_finite and not np.isfinite(out).all():
            if name.startswith("vae_decoder") and self.precision != "fp32" and self.fp32_decoder_fallback:
                fallback = f"{name}_fp32"
                if fallback not in self.sessions:
                    self.sessions[fallback] = self._session(name, "fp32")
                self.fallbacks += 1
                out = self.sessions[fallback].run(spec.output_names, feeds)[0]
            else:
                raise NonFiniteOutputError(f"{name} ({self.precision}) returned NaN/Inf for input shapes "
                                           f"{[tuple(v.shape) for v in feeds.values()]}")
        return torch.from_numpy(out)

    def encode(self, rgb: torch.Tensor, network: str = "vae_encoder") -> torch.Tensor:
        return self._run(network, rgb.float())

    def denoise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self._run("unet", sample.float(), timestep.long(), encoder_hidden_states.float())

    def decode(self, latent: torch.Tensor, network: str = "vae_decoder") -> torch.Tensor:
        return self._run(network, latent.float())
