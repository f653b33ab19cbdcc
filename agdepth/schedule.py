"""DDPM/DDIM/LCM noise-schedule math: the one place it lives in agdepth.

Training (noising, v-targets, x̂0 for the decoded-depth losses), the runtime (DDIM or LCM loop) and the tests all use
:class:`NoiseSchedule`. Every formula mirrors diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` / ``LCMScheduler``
operation for operation, so results match diffusers to float32 rounding (the tests check this against diffusers
itself), but no scheduler object or diffusers import is needed at runtime.

A schedule's ``kind`` says which sampler a checkpoint's scheduler config asks for ("ddim": ``DDIMScheduler``, "lcm":
``LCMScheduler``); the runtime's loop uses the kind-independent :meth:`NoiseSchedule.step_pairs` /
:meth:`NoiseSchedule.step`. Any other scheduler class is refused by :meth:`NoiseSchedule.from_config`, never run as
DDIM.

Notation: ``ᾱ_t = alphas_cumprod[t]``; ``z_t = √ᾱ·z0 + √(1−ᾱ)·ε``; ``v = √ᾱ·ε − √(1−ᾱ)·z0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear")
PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
SCHEDULE_KINDS = ("ddim", "lcm")
# diffusers scheduler class (a config's "_class_name") -> the kind of schedule agdepth runs for it
SCHEDULER_CLASSES = {"DDIMScheduler": "ddim", "LCMScheduler": "lcm"}
_CLASS_OF_KIND = {kind: name for name, kind in SCHEDULER_CLASSES.items()}
# LCMScheduler's config keys that DDIMScheduler does not have (left out of a DDIM config, ignored when reading one)
_LCM_ONLY_FIELDS = ("original_inference_steps", "timestep_scaling")
LCM_SIGMA_DATA = 0.5  # LCMScheduler.get_scalings_for_boundary_condition_discrete's sigma_data

Timestep = int | torch.Tensor

# diffusers config keys whose non-default values would change the math; from_config refuses them rather than
# silently computing something else.
_UNSUPPORTED_IF_SET = {"trained_betas": None, "thresholding": False}


def schedule_kind(config: dict[str, Any]) -> str:
    """The kind ("ddim" | "lcm") a diffusers scheduler config asks for, from its ``_class_name``.

    No ``_class_name`` (old manifests and configs) means DDIM; a class agdepth does not implement raises ValueError
    naming it.
    """
    name = config.get("_class_name")
    if name is None:
        return "ddim"
    if isinstance(name, str) and name in SCHEDULER_CLASSES:
        return SCHEDULER_CLASSES[name]
    supported = " and ".join(SCHEDULER_CLASSES)
    shown = name if isinstance(name, str) else repr(name)
    raise ValueError(f"scheduler {shown} is not supported (agdepth runs {supported})")


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2023, Algorithm 1 (same ops as diffusers' ``rescale_zero_terminal_snr``)."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt -= last
    alphas_bar_sqrt *= first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """Discrete diffusion schedule (defaults: SD2 / Marigold training schedule, v-prediction, DDIM sampling).

    Fields mirror the diffusers scheduler config keys of the same names. ``timestep_spacing`` and ``steps_offset``
    are only defaults for :meth:`ddim_timesteps`; ``set_alpha_to_one`` and ``clip_sample`` only affect the sampler
    steps. Marigold's checkpoints use ``set_alpha_to_one=False, steps_offset=1, clip_sample=False``.

    ``kind`` is the sampler the loop API (:meth:`inference_timesteps`, :meth:`step_pairs`, :meth:`step`,
    :meth:`step_needs_noise`) runs: "ddim" (``DDIMScheduler``, eta 0) or "lcm" (``LCMScheduler``: its timesteps
    come from ``original_inference_steps``, ignoring ``timestep_spacing`` and ``steps_offset``; its boundary
    conditions use ``timestep_scaling``). The training-side methods and the ``ddim_*`` methods do not depend on it.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "v_prediction"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    timestep_spacing: str = "leading"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False
    kind: str = "ddim"
    original_inference_steps: int = 50  # LCM only
    timestep_scaling: float = 10.0  # LCM only

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {self.timestep_spacing!r}")
        if self.num_train_timesteps < 1:
            raise ValueError("num_train_timesteps must be >= 1")
        if not 1 <= self.original_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"original_inference_steps must be in [1, {self.num_train_timesteps}], "
                             f"got {self.original_inference_steps}")

    # ------------------------------------------------------------------ config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config dict (``scheduler/scheduler_config.json``).

        ``_class_name`` gives the kind: absent -> "ddim" (old configs and manifests), "DDIMScheduler" -> "ddim",
        "LCMScheduler" -> "lcm"; any other class raises ``ValueError`` naming it. Other unknown keys
        (``skip_prk_steps``…) are ignored, and so are the LCM-only keys in a DDIM config; keys missing from the dict
        take this class's defaults (not diffusers' — saved diffusers configs always list every key). Settings that
        would change the math but are not implemented (``trained_betas``, ``thresholding``) raise ``ValueError``.
        """
        kind = schedule_kind(config)
        for key, default in _UNSUPPORTED_IF_SET.items():
            if config.get(key, default) not in (default, None):
                raise ValueError(f"unsupported scheduler setting {key}={config[key]!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"kind"}
        if kind != "lcm":
            names -= set(_LCM_ONLY_FIELDS)
        return cls(kind=kind, **{k: v for k, v in config.items() if k in names})

    def to_diffusers_config(self) -> dict[str, Any]:
        """Config dict with ``_class_name`` ("DDIMScheduler" or "LCMScheduler" per ``kind``), loadable by that
        class's ``from_config`` (a DDIM one also by ``DDPMScheduler.from_config``); :meth:`from_config` reads it
        back to an equal schedule (a DDIM schedule's LCM-only fields are not written)."""
        cfg: dict[str, Any] = {"_class_name": _CLASS_OF_KIND[self.kind], **dataclasses.asdict(self)}
        del cfg["kind"]
        if self.kind != "lcm":
            for key in _LCM_ONLY_FIELDS:
                del cfg[key]
        cfg.update(trained_betas=None, thresholding=False)
        return cfg

    # ------------------------------------------------------------------ tables

    @cached_property
    def _betas(self) -> torch.Tensor:
        n, b0, b1 = self.num_train_timesteps, self.beta_start, self.beta_end
        if self.beta_schedule == "linear":
            betas = torch.linspace(b0, b1, n, dtype=torch.float32)
        else:  # scaled_linear: linear in sqrt(beta), squared in float32 exactly as diffusers does
            betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
        if self.rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)
        return betas

    @cached_property
    def _alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(1.0 - self._betas, dim=0)

    @cached_property
    def _device_cache(self) -> dict[tuple[torch.device, torch.dtype], torch.Tensor]:
        # ᾱ per (device, dtype): avoids a host->device copy on every call inside training/DDIM loops.
        return {}

    @property
    def betas(self) -> torch.Tensor:
        """float32 CPU tensor [T] (a copy)."""
        return self._betas.clone()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """float32 CPU tensor [T] of ᾱ_t (a copy)."""
        return self._alphas_cumprod.clone()

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ used when DDIM steps past t=0: 1.0 if ``set_alpha_to_one`` else ᾱ_0 (diffusers semantics)."""
        return torch.tensor(1.0) if self.set_alpha_to_one else self._alphas_cumprod[0].clone()

    def _ac(self, ref: torch.Tensor) -> torch.Tensor:
        key = (ref.device, ref.dtype)
        table = self._device_cache.get(key)
        if table is None:
            # Cast from the float32 table like diffusers (ᾱ are float32 numbers; fp16 inputs get fp16 ᾱ).
            table = self._device_cache[key] = self._alphas_cumprod.to(device=ref.device, dtype=ref.dtype)
        return table

    def _gather(self, t: Timestep, ref: torch.Tensor, allow_final: bool = False) -> torch.Tensor:
        """ᾱ_t in ref's dtype/device, shaped to broadcast over ref ([B] -> [B,1,1,...]; scalar -> 0-dim)."""
        table = self._ac(ref)
        if not allow_final and not (isinstance(t, torch.Tensor) and t.is_cuda):  # no host sync on GPU tensors
            t_min, t_max = (int(t.min()), int(t.max())) if isinstance(t, torch.Tensor) else (int(t), int(t))
            if t_min < 0 or t_max >= self.num_train_timesteps:
                raise IndexError(f"timestep out of range [0, {self.num_train_timesteps}): {t_min}..{t_max}")
        t = torch.as_tensor(t, device=ref.device).long()
        if allow_final:
            final = self.final_alpha_cumprod.to(device=ref.device, dtype=ref.dtype)
            a = torch.where(t >= 0, table[t.clamp(min=0)], final)
        else:
            a = table[t]
        if a.dim() == 0:
            return a
        a = a.flatten()
        return a.reshape(a.shape[0], *([1] * (ref.dim() - 1)))

    # ------------------------------------------------------------------ conversions

    def add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """Forward process z_t = √ᾱ·z0 + √(1−ᾱ)·ε (== ``DDPMScheduler.add_noise``)."""
        a = self._gather(t, z0)
        return a**0.5 * z0 + (1 - a) ** 0.5 * noise

    def velocity(self, z0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """v-target v = √ᾱ·ε − √(1−ᾱ)·z0 (== ``DDPMScheduler.get_velocity``)."""
        a = self._gather(t, z0)
        return a**0.5 * noise - (1 - a) ** 0.5 * z0

    def x0_from_v(self, z_t: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
        """x̂0 = √ᾱ·z_t − √(1−ᾱ)·v̂."""
        a = self._gather(t, z_t)
        return a**0.5 * z_t - (1 - a) ** 0.5 * v

    def eps_from_v(self, z_t: torch.Tensor, v: torch.Tensor, t: Timestep) -> torch.Tensor:
        """ε̂ = √ᾱ·v̂ + √(1−ᾱ)·z_t."""
        a = self._gather(t, z_t)
        return a**0.5 * v + (1 - a) ** 0.5 * z_t

    def x0_from_eps(self, z_t: torch.Tensor, eps: torch.Tensor, t: Timestep) -> torch.Tensor:
        """x̂0 = (z_t − √(1−ᾱ)·ε̂) / √ᾱ."""
        a = self._gather(t, z_t)
        return (z_t - (1 - a) ** 0.5 * eps) / a**0.5

    def eps_from_x0(self, z_t: torch.Tensor, x0: torch.Tensor, t: Timestep) -> torch.Tensor:
        """ε̂ = (z_t − √ᾱ·x̂0) / √(1−ᾱ)."""
        a = self._gather(t, z_t)
        return (z_t - a**0.5 * x0) / (1 - a) ** 0.5

    def training_target(self, z0: torch.Tensor, noise: torch.Tensor, t: Timestep) -> torch.Tensor:
        """What the network regresses for this ``prediction_type`` (v, ε or z0)."""
        if self.prediction_type == "v_prediction":
            return self.velocity(z0, noise, t)
        return noise if self.prediction_type == "epsilon" else z0

    def pred_x0_eps(
        self, model_output: torch.Tensor, z_t: torch.Tensor, t: Timestep
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) from a raw network output, interpreted per ``prediction_type``."""
        if self.prediction_type == "v_prediction":
            return self.x0_from_v(z_t, model_output, t), self.eps_from_v(z_t, model_output, t)
        if self.prediction_type == "epsilon":
            return self.x0_from_eps(z_t, model_output, t), model_output
        return model_output, self.eps_from_x0(z_t, model_output, t)

    # ------------------------------------------------------------------ DDIM

    def ddim_timesteps(
        self, num_inference_steps: int, spacing: str | None = None, steps_offset: int | None = None,
        strength: float = 1.0,
    ) -> np.ndarray:
        """Descending int64 timesteps, identical to ``DDIMScheduler.set_timesteps(n).timesteps``.

        ``spacing``/``steps_offset`` default to the schedule's fields. ``steps_offset`` only applies to "leading"
        (as in diffusers). Use "trailing" for few-step inference: "leading" with n=1 runs the single step at t=0+offset.
        ``strength`` < 1 (a warm start from a noised earlier sample) lays the same grid over the first
        :meth:`start_timestep` + 1 timesteps instead of all T: the run starts at that timestep, not at T − 1.
        """
        spacing = self.timestep_spacing if spacing is None else spacing
        offset = self.steps_offset if steps_offset is None else steps_offset
        n, T = int(num_inference_steps), self.start_timestep(strength) + 1
        if not 1 <= n <= T:
            raise ValueError(f"num_inference_steps must be in [1, {T}], got {n}")
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64)
            ts += offset
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        else:
            raise ValueError(f"spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
        return ts

    def start_timestep(self, strength: float = 1.0) -> int:
        """The timestep a run of ``strength`` in (0, 1] starts from: round(strength · T) − 1 (T − 1 at strength 1,
        diffusers' trailing start; lower values keep more of the sample the run starts from)."""
        T = self.num_train_timesteps
        if not 0.0 < float(strength) <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        t = round(float(strength) * T) - 1
        if t < 0:
            raise ValueError(f"strength {strength} starts below timestep 0: the least is 1/{T}")
        return t

    def ddim_step_pairs(
        self, num_inference_steps: int, spacing: str | None = None, steps_offset: int | None = None,
        strength: float = 1.0,
    ) -> list[tuple[int, int]]:
        """[(t, prev_t), ...] for a DDIM loop, with prev_t exactly as ``DDIMScheduler.step`` derives it.

        diffusers uses ``prev_t = t − T // n`` rather than the next entry of the timestep list; the two differ when
        n does not divide T with "trailing"/"linspace" spacing, so we reproduce diffusers. prev_t < 0 means "final".
        With ``strength`` < 1, T is the shortened horizon of :meth:`ddim_timesteps`.
        """
        ts = self.ddim_timesteps(num_inference_steps, spacing, steps_offset, strength)
        stride = (self.start_timestep(strength) + 1) // int(num_inference_steps)
        return [(int(t), int(t) - stride) for t in ts]

    def ddim_step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        prev_t: Timestep,
        sample: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM update z_t -> z_prev (DDIM eq. 12), same operations as ``DDIMScheduler.step``.

        ``t``/``prev_t`` are ints or per-sample LongTensors [B]; prev_t < 0 uses :attr:`final_alpha_cumprod`.
        With eta > 0 the stochastic term uses ``noise`` (or fresh ``randn`` from ``generator``).
        Returns ``(prev_sample, pred_original_sample)``.
        """
        a_t = self._gather(t, sample)
        a_prev = self._gather(prev_t, sample, allow_final=True)
        b_t = 1 - a_t
        if self.prediction_type == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        elif self.prediction_type == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        else:
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        if eta > 0:
            variance = ((1 - a_prev) / b_t) * (1 - a_t / a_prev)
            std = eta * variance**0.5
        else:
            std = torch.zeros_like(a_t)
        prev_sample = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            prev_sample = prev_sample + std * noise
        return prev_sample, x0

    # ------------------------------------------------------------------ LCM

    def lcm_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Descending int64 timesteps, identical to ``LCMScheduler.set_timesteps(n).timesteps`` (strength 1).

        Every ``T // original_inference_steps``-th training timestep forms LCM's distillation schedule; n of them are
        taken at evenly spaced indices. ``timestep_spacing`` and ``steps_offset`` play no part (as in diffusers).
        """
        n, T, orig = int(num_inference_steps), self.num_train_timesteps, self.original_inference_steps
        if not 1 <= n <= orig:
            raise ValueError(f"num_inference_steps must be in [1, {orig}] (the LCM schedule's "
                             f"original_inference_steps), got {n}")
        k = T // orig
        origin = (np.asarray(list(range(1, orig + 1)), dtype=np.int64) * k - 1)[::-1].copy()
        indices = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        return origin[indices].astype(np.int64)

    def lcm_boundary_scalings(self, t: Timestep) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) of the consistency-model boundary condition at discrete timestep ``t``: float32 0-dim
        tensors computed as ``LCMScheduler.get_scalings_for_boundary_condition_discrete`` does for the int64 tensor
        timesteps diffusers' pipelines pass it."""
        scaled = torch.as_tensor(t, dtype=torch.int64).cpu() * self.timestep_scaling
        c_skip = LCM_SIGMA_DATA**2 / (scaled**2 + LCM_SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_skip, c_out

    def lcm_step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        prev_t: Timestep,
        sample: torch.Tensor,
        last: bool,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One LCM update, same operations as ``LCMScheduler.step``. Returns ``(prev_sample, denoised)``.

        ``t``/``prev_t`` are one timestep for the whole batch (an int or a one-element tensor); prev_t < 0 uses
        :attr:`final_alpha_cumprod`. ``denoised = c_out·x̂0 + c_skip·sample``; unless ``last``, the next sample
        re-noises it to prev_t with ``noise`` (required: diffusers draws it with ``randn_tensor``), else it is
        ``denoised`` itself. The ᾱ and c coefficients are float32 scalars, as in diffusers.
        """
        for name, value in (("t", t), ("prev_t", prev_t)):
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(f"an LCM step takes one timestep for the whole batch, got {name} of shape "
                                 f"{tuple(value.shape)}")
        t, prev_t = int(t), int(prev_t)
        if not 0 <= t < self.num_train_timesteps or prev_t >= self.num_train_timesteps:
            raise IndexError(f"timestep out of range [0, {self.num_train_timesteps}): t={t}, prev_t={prev_t}")
        if not last and noise is None:
            raise ValueError("an LCM step that is not the last needs `noise` (see step_needs_noise)")
        table = self._alphas_cumprod
        a_t = table[t]
        a_prev = table[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = 1 - a_t, 1 - a_prev
        c_skip, c_out = self.lcm_boundary_scalings(t)
        if self.prediction_type == "epsilon":
            x0 = (sample - b_t.sqrt() * model_output) / a_t.sqrt()
        elif self.prediction_type == "sample":
            x0 = model_output
        else:  # v_prediction
            x0 = a_t.sqrt() * sample - b_t.sqrt() * model_output
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        denoised = c_out * x0 + c_skip * sample
        if last:
            return denoised, denoised
        return a_prev.sqrt() * denoised + b_prev.sqrt() * noise, denoised

    # ------------------------------------------------------------------ the sampler loop, whatever the kind

    def inference_timesteps(self, num_inference_steps: int, spacing: str | None = None) -> np.ndarray:
        """Descending int64 timesteps of an n-step run: :meth:`ddim_timesteps` (``spacing`` None: the schedule's) or
        :meth:`lcm_timesteps` (a known ``spacing`` is accepted and ignored, as LCMScheduler ignores it)."""
        if self.kind == "lcm":
            _check_spacing(spacing)
            return self.lcm_timesteps(num_inference_steps)
        return self.ddim_timesteps(num_inference_steps, spacing)

    def step_pairs(self, num_inference_steps: int, spacing: str | None = None,
                   strength: float = 1.0) -> list[tuple[int, int]]:
        """[(t, prev_t), ...] for the sampler loop, prev_t exactly as the diffusers scheduler's ``step`` derives it.

        DDIM: :meth:`ddim_step_pairs` (``strength`` < 1: a warm start, see :meth:`ddim_timesteps`). LCM: prev_t is
        the next timestep of :meth:`inference_timesteps`; on the last step diffusers uses t itself (the last step
        returns the denoised sample, so prev_t is unused there); LCM has its own timesteps, so no ``strength`` < 1.
        """
        if self.kind == "lcm":
            if strength != 1.0:
                raise ValueError(f"strength={strength}: a warm start needs a DDIM schedule (LCM has its own "
                                 "timesteps)")
            ts = [int(t) for t in self.inference_timesteps(num_inference_steps, spacing)]
            return list(zip(ts, [*ts[1:], ts[-1]], strict=True))
        return self.ddim_step_pairs(num_inference_steps, spacing, strength=strength)

    def step_needs_noise(self, index: int, num_inference_steps: int) -> bool:
        """Whether step ``index`` (0-based) of an n-step run takes fresh noise: LCM steps but the last. The caller
        draws it as diffusers does: ``randn_tensor(model_output.shape, generator=..., device=..., dtype=...)``."""
        if not 0 <= index < num_inference_steps:
            raise IndexError(f"step index {index} out of range for {num_inference_steps} steps")
        return self.kind == "lcm" and index != num_inference_steps - 1

    def step(
        self,
        model_output: torch.Tensor,
        t: Timestep,
        prev_t: Timestep,
        sample: torch.Tensor,
        *,
        last: bool,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sampler step from a (t, prev_t) pair of :meth:`step_pairs`: returns ``(prev_sample, x0)``.

        DDIM: :meth:`ddim_step` with eta 0 (``last`` and ``noise`` unused; x0 = x̂0). LCM: :meth:`lcm_step` (x0 = its
        ``denoised``); ``noise`` is required where :meth:`step_needs_noise` says so.
        """
        if self.kind == "lcm":
            return self.lcm_step(model_output, t, prev_t, sample, last, noise)
        return self.ddim_step(model_output, t, prev_t, sample)


def _check_spacing(spacing: str | None) -> None:
    if spacing is not None and spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
