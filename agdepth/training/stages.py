"""The training stages: what each one trains, its loss, its validation and what it exports.

- ``vae``: the tiny preset's AutoencoderKL on procedural RGB and 3-channel normalised depth (SD2 brings its own).
- ``autoencoder``: the paper's depth autoencoder, reconstructing normalised ground-truth depth (Fig. 1).
- ``unet``: the depth U-Net with eq. 8, L_v + L_BerHu + L_GM + L_feature, each term weighted from the config.
- ``distill_vae``: a light VAE (:mod:`agdepth.light_vae`) distilled from a finished checkpoint's frozen VAE, on the
  latents the checkpoint's U-Net produces; exports the checkpoint with ``vae_light/`` added.

The generic loop in :mod:`agdepth.training.trainer` drives any of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from agdepth.artifacts.checkpoint import (
    atomic_dir,
    checkpoint_schedule,
    load_checkpoint,
    marigold_schedule,
    save_checkpoint,
    save_light_checkpoint,
)
from agdepth.artifacts.defaults import RuntimeDefaults
from agdepth.depth_autoencoder import DepthAutoencoder
from agdepth.depth_norm import latent_valid_mask, mean_of_channels, normalize_depth, stack_to_rgb
from agdepth.light_vae import build_light_vae, init_from_taesd, light_vae_scale_factor
from agdepth.metrics import evaluate
from agdepth.models import (
    TinyModelConfig,
    build_sd2_random,
    build_tiny_unet,
    build_tiny_vae,
    load_sd2,
    tiny_empty_text_embedding,
)
from agdepth.networks import (
    LightDecoderWrapper,
    LightEncoderWrapper,
    VAEDecoderWrapper,
    VAEEncoderWrapper,
    vae_scale_factor,
)
from agdepth.training.augment import random_zoom_crop
from agdepth.training.config import StageConfig, TrainConfig
from agdepth.training.losses import (
    autoencoder_loss,
    berhu_loss,
    combine_losses,
    feature_loss,
    gradient_matching_loss,
    v_loss,
)

logger = logging.getLogger(__name__)

Terms = dict[str, torch.Tensor]


def _freeze(m: nn.Module) -> nn.Module:
    m.eval()
    m.requires_grad_(False)
    return m


class Stage:
    """One training stage. ``trainable`` is the only module the optimiser sees (and DDP wraps)."""

    name: str
    trainable: nn.Module

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        self.cfg, self.out_dir, self.device = cfg, Path(out_dir), device
        self.scfg: StageConfig = cfg.stage(self.name)

    def forward_loss(self, net: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        """Total loss and its logged terms for one micro-batch; ``gen`` seeds all of the step's randomness."""
        raise NotImplementedError

    @torch.no_grad()
    def validate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def export(self, step: int) -> Path:
        raise NotImplementedError


def _depth_target(batch: dict[str, Any]) -> torch.Tensor:
    return normalize_depth(batch["depth"], batch["valid"])


class VAEStage(Stage):
    name = "vae"

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        super().__init__(cfg, out_dir, device)
        if cfg.preset != "tiny":
            raise ValueError("the vae stage exists for the tiny preset only: sd2 uses SD2's pretrained VAE")
        torch.manual_seed(cfg.seed)
        self.trainable = build_tiny_vae(TinyModelConfig.from_dict(cfg.model)).to(device)
        self._latent_moments: deque[tuple[int, float, float]] = deque(maxlen=32)  # (n, Σz, Σz²) per micro-batch
        if self.scfg.gradient_checkpointing:
            self.trainable.enable_gradient_checkpointing()

    def forward_loss(self, vae: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        rgb, valid = batch["rgb"], batch["valid"]
        depth = stack_to_rgb(_depth_target(batch))
        x = torch.cat([rgb, depth])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean
        if self.scfg.calibrate_scaling_factor:  # two host syncs per step: only when the factor is wanted
            zd = z.detach().double()
            self._latent_moments.append((zd.numel(), zd.sum().item(), (zd**2).sum().item()))
        if self.scfg.sample_posterior:
            z = z + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(x)
        recon = vae.decode(z).sample
        n = rgb.shape[0]
        d_rec, d_tgt = mean_of_channels(recon[n:]), mean_of_channels(depth)
        terms = {
            "rgb_l1": (recon[:n] - rgb).abs().mean(),
            # depth maps must decode well where they are defined; invalid pixels (sky) carry no target
            "depth_l1": (d_rec - d_tgt).abs()[valid].mean() if valid.any() else d_rec.sum() * 0,
            # edges survive the 8x compression only if the decoder is pushed to keep them
            "depth_gm": gradient_matching_loss(d_rec, d_tgt, valid),
            "kl": posterior.kl().mean() * self.scfg.kl_weight,
        }
        return sum(terms.values()), terms  # type: ignore[return-value]

    @torch.no_grad()
    def validate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        vae = self.trainable.eval()
        rgb_err, depth_err = [], []
        for b in batches:
            rgb, valid = b["rgb"].to(self.device), b["valid"].to(self.device)
            depth = stack_to_rgb(normalize_depth(b["depth"].to(self.device), valid))
            rec = vae.decode(vae.encode(torch.cat([rgb, depth])).latent_dist.mean).sample
            n = rgb.shape[0]
            rgb_err.append((rec[:n] - rgb).abs().mean().item())
            depth_err.append((mean_of_channels(rec[n:]) - mean_of_channels(depth)).abs()[valid].mean().item())
        vae.train()
        return {"rgb_l1": float(np.mean(rgb_err)), "depth_l1": float(np.mean(depth_err))}

    def scaling_factor(self) -> float | None:
        """SD's rule: 1 / std of the latents (here of the last training batches, RGB and depth alike, since both are
        denoised in this latent space), so scaled latents have the unit variance the diffusion noise assumes."""
        if not self._latent_moments:
            return None
        m = torch.tensor(list(self._latent_moments), dtype=torch.float64).sum(0)
        mean = m[1] / m[0]
        return float(1.0 / torch.sqrt(m[2] / m[0] - mean**2))

    def export(self, step: int) -> Path:
        if self.scfg.calibrate_scaling_factor and (scale := self.scaling_factor()) is not None:
            self.trainable.register_to_config(scaling_factor=scale)
        with atomic_dir(self.out_dir / "vae") as tmp:
            self.trainable.save_pretrained(tmp, safe_serialization=True)
        return self.out_dir / "vae"


class AutoencoderStage(Stage):
    name = "autoencoder"

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        super().__init__(cfg, out_dir, device)
        torch.manual_seed(cfg.seed)
        self.trainable = DepthAutoencoder(**cfg.autoencoder).to(device)

    def forward_loss(self, ae: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        target = _depth_target(batch)
        loss = autoencoder_loss(ae(target), target, batch["valid"])
        return loss, {"recon": loss}

    @torch.no_grad()
    def validate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        ae = self.trainable.eval()
        errs = []
        for b in batches:
            valid = b["valid"].to(self.device)
            target = normalize_depth(b["depth"].to(self.device), valid)
            errs.append((ae(target) - target).abs()[valid].mean().item())
        ae.train()
        return {"depth_l1": float(np.mean(errs))}

    def export(self, step: int) -> Path:
        with atomic_dir(self.out_dir / "depth_autoencoder") as tmp:
            self.trainable.save_pretrained(tmp, safe_serialization=True)
        return self.out_dir / "depth_autoencoder"


class LatentMemo:
    """A frozen encoder's output per sample, keyed by the sample's bytes: a pure memo of ``encode``.

    Each miss is encoded on its own (batch of one), so a value never depends on which other samples shared its batch:
    a resumed run, with an empty memo, computes exactly the latents of a straight run.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], max_items: int = 100_000) -> None:
        self.encode, self.max_items = encode, max_items
        self.items: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for xi in x:
            key = hashlib.blake2b(xi.detach().cpu().numpy().tobytes(), digest_size=16).digest()
            z = self.items.get(key)
            if z is None:
                self.misses += 1
                z = self.encode(xi[None])[0]
                self.items[key] = z
                if len(self.items) > self.max_items:
                    self.items.popitem(last=False)
            else:
                self.hits += 1
            out.append(z)
        return torch.stack(out)


def _is_depth_checkpoint(path: Path) -> bool:
    """An agdepth or Marigold checkpoint (a U-Net taking the RGB and the depth latent), not an SD2 base directory."""
    try:
        return json.loads((path / "unet" / "config.json").read_text(encoding="utf-8")).get("in_channels") == 8
    except (OSError, ValueError):
        return True  # let load_checkpoint name what is wrong


class UNetStage(Stage):
    """Fine-tuning (sd2) or training (tiny) the depth U-Net with the paper's losses."""

    name = "unet"

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        super().__init__(cfg, out_dir, device)
        self.schedule = marigold_schedule()
        self.inference = cfg.inference
        self.source: Path | None = None
        w = self.scfg.losses
        ae: DepthAutoencoder | None = None
        if self.scfg.checkpoint and not _is_depth_checkpoint(Path(self.scfg.checkpoint)):
            # an SD2 base directory: its weights, as `pretrained`, with the depth schedule and the config's settings
            self.source = Path(self.scfg.checkpoint)
            models = load_sd2(self.source)
            unet, vae, emb = models.unet, models.vae, models.empty_text_embedding
        elif self.scfg.checkpoint:  # a depth checkpoint: all but the data and the optimiser comes from it
            self.source = Path(self.scfg.checkpoint)
            has_ae = (self.source / "depth_autoencoder" / "config.json").is_file()
            models = load_checkpoint(self.source, with_autoencoder=has_ae)
            unet, vae, emb = models.unet, models.vae, models.empty_text_embedding
            sched_cfg = models.extra.get("scheduler_config")
            self.schedule = checkpoint_schedule(sched_cfg, source=self.source / "scheduler" / "scheduler_config.json")
            # the export has no light VAE (one distilled for the old U-Net's latents): the full VAE decodes
            self.inference = dataclasses.replace(
                RuntimeDefaults.from_model_index(models.extra.get("model_index"), sched_cfg), vae="full")
            ae = models.extra.get("depth_autoencoder")
        elif cfg.preset == "sd2":
            if not cfg.pretrained:
                raise ValueError("the sd2 preset needs `pretrained`: a local SD2 or Marigold diffusers directory "
                                 "(--set pretrained=/path/to/stable-diffusion-2)")
            # "random": SD2's architecture untrained, for measuring memory and speed without the weights
            models = build_sd2_random(cfg.seed) if cfg.pretrained == "random" else load_sd2(cfg.pretrained)
            unet, vae, emb = models.unet, models.vae, models.empty_text_embedding
        else:
            vae_dir = self.out_dir / "vae"
            if not (vae_dir / "config.json").is_file():
                raise FileNotFoundError(f"{vae_dir} not found: train the tiny VAE first (depth-train vae --out "
                                        f"{self.out_dir})")
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True, low_cpu_mem_usage=False)
            tcfg = TinyModelConfig.from_dict(cfg.model)
            torch.manual_seed(cfg.seed)
            unet = build_tiny_unet(tcfg)
            emb = tiny_empty_text_embedding(tcfg, seed=cfg.seed)
        self.vae = _freeze(vae.to(device))
        self.latent_scale = float(self.vae.config.scaling_factor)  # as the runtime reads it: one source of truth
        self.embedding = emb.to(device)
        self.autoencoder: DepthAutoencoder | None = None
        ae_dir = self.out_dir / "depth_autoencoder"
        if ae is None and (w.feature > 0 or ae_dir.is_dir()):
            if not (ae_dir / "config.json").is_file():
                raise FileNotFoundError(f"{ae_dir} not found: the feature loss needs the pretrained depth "
                                        f"autoencoder (depth-train autoencoder --out {self.out_dir}), or set "
                                        "stages.unet.losses.feature=0")
            ae = DepthAutoencoder.from_pretrained(ae_dir, use_safetensors=True, low_cpu_mem_usage=False)
        if ae is not None:
            self.autoencoder = _freeze(ae.to(device))
        self.trainable = unet.to(device)
        if self.scfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            # the frozen decoder is differentiated through for the pixel losses: checkpoint it too
            self.vae.enable_gradient_checkpointing()
        self.pixel_losses = w.berhu > 0 or w.gm > 0 or w.feature > 0
        # random crops never repeat, so a memo would only hash, store and encode one sample at a time
        memo = self.scfg.cache_latents and self.scfg.random_crop is None
        self.rgb_memo = LatentMemo(self._encode) if memo else self._encode
        self.depth_memo = LatentMemo(self._encode_depth) if memo else self._encode_depth
        if self.scfg.mixed_precision == "bf16":
            # frozen networks need no fp32 master copy; bf16 keeps fp32's range, so SD's VAE does not overflow
            self.vae.to(torch.bfloat16)
            if self.autoencoder is not None:
                self.autoencoder.to(torch.bfloat16)

    @torch.no_grad()
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean * self.latent_scale

    @torch.no_grad()
    def _encode_depth(self, depth_valid: torch.Tensor) -> torch.Tensor:
        """[B,2,H,W] (metric depth, valid) -> the latent of the normalised 3-channel depth target."""
        return self._encode(stack_to_rgb(normalize_depth(depth_valid[:, :1], depth_valid[:, 1:].bool())))

    def forward_loss(self, unet: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        if self.scfg.random_crop is not None:
            batch = random_zoom_crop(batch, self.scfg.random_crop, gen)
        rgb, valid = batch["rgb"], batch["valid"]
        rgb_latent = self.rgb_memo(rgb)
        depth_latent = self.depth_memo(torch.cat([batch["depth"], valid.to(batch["depth"].dtype)], dim=1))
        b = rgb.shape[0]
        noise = torch.randn(depth_latent.shape, generator=gen).to(depth_latent)
        T = self.schedule.num_train_timesteps
        t = torch.randint(0, T, (b,), generator=gen)
        if self.scfg.final_timestep_prob > 0:
            t = torch.where(torch.rand(b, generator=gen) < self.scfg.final_timestep_prob, T - 1, t)
        t = t.to(rgb.device)
        z_t = self.schedule.add_noise(depth_latent, noise, t)
        v_target = self.schedule.velocity(depth_latent, noise, t)
        cond = self.embedding.expand(b, -1, -1).to(rgb_latent.dtype)
        v_pred = unet(torch.cat([rgb_latent, z_t], dim=1), t, encoder_hidden_states=cond).sample
        w = self.scfg.losses
        terms: Terms = {}
        if w.v > 0:
            factor = valid.shape[-1] // v_pred.shape[-1]  # the VAE's downsampling (8 for SD's)
            terms["v"] = v_loss(v_pred.float(), v_target.float(), latent_valid_mask(valid, factor))
        if self.pixel_losses:
            # x̂0 = √ᾱ z_t − √(1−ᾱ) v̂, decoded by the frozen VAE with gradients flowing back to the U-Net
            k = self.scfg.pixel_batch or b
            z0 = self.schedule.x0_from_v(z_t[:k], v_pred[:k], t[:k])
            d_hat = mean_of_channels(self.vae.decode((z0 / self.latent_scale).to(self.vae.dtype)).sample).float()
            valid = valid[:k]
            target = normalize_depth(batch["depth"][:k], valid)  # the pixel losses' target, as _depth_target
            if w.berhu > 0:
                terms["berhu"] = berhu_loss(d_hat, target, valid)
            if w.gm > 0:
                terms["gm"] = gradient_matching_loss(d_hat, target, valid)
            if w.feature > 0:
                assert self.autoencoder is not None
                # eq. 7 has no mask: invalid pixels take the target's value so they add no feature difference
                d_in = torch.where(valid, d_hat, target)
                with torch.no_grad():
                    f_target = self.autoencoder.encode_features(target)
                terms["feature"] = feature_loss(self.autoencoder.encode_features(d_in), f_target)
        total, _ = combine_losses(terms, w)
        return total, terms

    @torch.no_grad()
    def validate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """AbsRel/δ1 per held-out domain, predicted by the deployment runtime itself (trailing DDIM, 1 member)."""
        from agdepth.runtime.backends.torch_backend import TorchBackend
        from agdepth.runtime.pipeline import DepthPipeline

        was_training = self.trainable.training
        # the runtime runs in fp32 (the trainable U-Net is fp32 already; a bf16-frozen VAE is cast back below)
        pipe = DepthPipeline(TorchBackend(self.trainable, self.vae, self.embedding, self.schedule, device=self.device))
        per_domain: dict[str, list[dict[str, float]]] = {}
        for b in batches:
            images = [((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for x in b["rgb"]]
            pred = pipe(images, steps=self.scfg.val_steps, ensemble=1, processing_res=0, timestep_spacing="trailing",
                        seed=self.cfg.seed).depth
            for i in range(len(images)):
                m = evaluate(pred[i], b["depth"][i, 0].numpy(), b["valid"][i, 0].numpy())
                per_domain.setdefault(b["domain"][i], []).append(m)
        self.trainable.train(was_training)
        if self.scfg.mixed_precision == "bf16":
            self.vae.to(torch.bfloat16)
        out: dict[str, float] = {}
        for dom, ms in per_domain.items():
            out[f"{dom}/abs_rel"] = float(np.mean([m["abs_rel"] for m in ms]))
            out[f"{dom}/delta1"] = float(np.mean([m["delta1"] for m in ms]))
        return out

    def export(self, step: int) -> Path:
        target = self.out_dir / "checkpoint"
        save_checkpoint(
            target,
            self.trainable,
            self.vae,
            self.embedding,
            depth_autoencoder=self.autoencoder,
            inference=self.inference,
            schedule=self.schedule,
            info={"preset": self.cfg.preset, "trained_steps": step, "losses": vars(self.scfg.losses),
                  **({"fine_tuned_from": self.source.name} if self.source is not None else {})},
        )
        return target


class DistillVAEStage(Stage):
    """A light VAE distilled from a checkpoint's own frozen VAE, for the latents that checkpoint's frozen U-Net sees
    and produces.

    Per micro-batch: encoder loss MSE(light encoder(rgb), full encoder(rgb)) on the scaled latents; decoder loss
    (``decoder_loss``: L1 or MSE) between the light and the full decoder's depth (the full decoder's unclipped mean of
    3 channels) for (a) the full encoder's latent of the normalised ground-truth depth, where the batch has depth, and
    (b) the latent the U-Net's own prediction for the RGB ends with, by the checkpoint's default steps and spacing
    (``teacher_steps`` / ``teacher_spacing`` override them) from noise drawn from the step's generator, as the
    runtime's loop computes it. Label-free batches (an image folder) train (b) and the encoder only.
    """

    name = "distill_vae"

    def __init__(self, cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        super().__init__(cfg, out_dir, device)
        if not self.scfg.checkpoint:
            raise ValueError("the distill_vae stage needs the checkpoint to distil (depth-train distill-vae "
                             "--checkpoint DIR, or stages.distill_vae.checkpoint)")
        self.source = Path(self.scfg.checkpoint)
        models = load_checkpoint(self.source)
        sched_cfg = models.extra.get("scheduler_config")
        self.schedule = checkpoint_schedule(sched_cfg, source=self.source / "scheduler" / "scheduler_config.json")
        defaults = RuntimeDefaults.from_model_index(models.extra.get("model_index"), sched_cfg)
        self.teacher_steps = self.scfg.teacher_steps or defaults.steps
        self.teacher_spacing = self.scfg.teacher_spacing or defaults.timestep_spacing
        self.pairs = self.schedule.step_pairs(self.teacher_steps, self.teacher_spacing)
        self.vae = _freeze(models.vae.to(device))
        self.unet = _freeze(models.unet.to(device))
        self.embedding = models.empty_text_embedding.to(device)
        self.full_encoder, self.full_decoder = VAEEncoderWrapper(self.vae), VAEDecoderWrapper(self.vae)
        torch.manual_seed(cfg.seed)
        light = init_from_taesd(self.scfg.init) if self.scfg.init else build_light_vae(**cfg.light_vae.kwargs())
        f, lf = vae_scale_factor(self.vae), light_vae_scale_factor(light)
        if f != lf:
            raise ValueError(f"the light VAE downsamples {lf}x but {self.source}'s VAE {f}x: give light_vae "
                             f"{f.bit_length()} stages per side (num_encoder_blocks / num_decoder_blocks)")
        if self.scfg.gradient_checkpointing:
            light.enable_gradient_checkpointing()
            # diffusers' EncoderTiny skips its [-1,1] -> [0,1] input scaling when checkpointed: never the encoder
            light.encoder.gradient_checkpointing = False
        self.trainable = light.to(device)
        self._full_val: dict[int, np.ndarray] = {}  # the frozen teacher's validation predictions, computed once

    @torch.no_grad()
    def teacher_latent(self, rgb_latent: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The latent the runtime's sampler loop ends with (what it decodes), from noise drawn from ``gen``."""
        b, n = rgb_latent.shape[0], len(self.pairs)
        z = torch.randn(rgb_latent.shape, generator=gen).to(rgb_latent).float()
        text = self.embedding.expand(b, -1, -1).to(rgb_latent.dtype)
        for k, (t, prev_t) in enumerate(self.pairs):
            ts = torch.full((b,), t, dtype=torch.int64, device=rgb_latent.device)
            v = self.unet(torch.cat([rgb_latent, z.to(rgb_latent.dtype)], dim=1), ts,
                          encoder_hidden_states=text).sample
            noise = torch.randn(v.shape, generator=gen).to(v).float() if self.schedule.step_needs_noise(k, n) else None
            z = self.schedule.step(v.float(), t, prev_t, z, last=k == n - 1, noise=noise)[0]
        return z

    def forward_loss(self, light: nn.Module, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        rgb = batch["rgb"]
        with torch.no_grad():
            rgb_latent = self.full_encoder(rgb)
            latents = [self.teacher_latent(rgb_latent, gen).to(rgb_latent.dtype)]
            if "depth" in batch:  # (a) ground-truth depth latents, as the unet stage encodes its targets
                latents.insert(0, self.full_encoder(stack_to_rgb(_depth_target(batch))))
            z = torch.cat(latents)
            target = self.full_decoder(z)
        terms: Terms = {
            "encoder": self.scfg.encoder_weight * (LightEncoderWrapper(light)(rgb).float() - rgb_latent.float())
            .pow(2).mean(),
        }
        diff = LightDecoderWrapper(light)(z).float() - target.float()
        err = diff.abs() if self.scfg.decoder_loss == "l1" else diff.pow(2)
        terms["decoder"] = self.scfg.decoder_weight * err.mean()
        return terms["encoder"] + terms["decoder"], terms

    def _backend(self, light: nn.Module | None) -> Any:
        from agdepth.runtime.backends.torch_backend import TorchBackend

        backend = TorchBackend(self.unet, self.vae, self.embedding, self.schedule, device=self.device)
        if light is not None:  # the same U-Net loop with the light VAE's two networks swapped in
            backend.networks["vae_encoder"] = LightEncoderWrapper(light).eval()
            backend.networks["vae_decoder"] = LightDecoderWrapper(light).eval()
        return backend

    @torch.no_grad()
    def validate(self, batches: list[dict[str, Any]]) -> dict[str, float]:
        """AbsRel/δ1 per held-out domain of the runtime's prediction (checkpoint's teacher steps and spacing, one
        member) with the full and with the light VAE; the light encoder's latent MSE and the light decoder's L1 on
        the teacher's predicted latents."""
        from agdepth.runtime.pipeline import DepthPipeline

        light = self.trainable
        was_training = light.training
        light.eval()
        full_pipe, light_pipe = DepthPipeline(self._backend(None)), DepthPipeline(self._backend(light))
        kw = {"steps": self.teacher_steps, "ensemble": 1, "processing_res": 0,
              "timestep_spacing": self.teacher_spacing, "seed": self.cfg.seed}
        per_domain: dict[str, dict[str, list[float]]] = {}
        enc_err, dec_err = [], []
        for bi, b in enumerate(batches):
            images = [((x.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for x in b["rgb"]]
            if bi not in self._full_val:
                self._full_val[bi] = np.asarray(full_pipe(images, **kw).depth)
            preds = {"full": self._full_val[bi], "light": np.asarray(light_pipe(images, **kw).depth)}
            for i in range(len(images)):
                d = per_domain.setdefault(b["domain"][i], {})
                for which, pred in preds.items():
                    m = evaluate(pred[i], b["depth"][i, 0].numpy(), b["valid"][i, 0].numpy())
                    d.setdefault(f"abs_rel_{which}", []).append(m["abs_rel"])
                    d.setdefault(f"delta1_{which}", []).append(m["delta1"])
            rgb = b["rgb"].to(self.device)
            rgb_latent = self.full_encoder(rgb)
            enc_err.append((LightEncoderWrapper(light)(rgb) - rgb_latent).pow(2).mean().item())
            z = self.teacher_latent(rgb_latent, torch.Generator().manual_seed(self.cfg.seed + bi))
            dec_err.append((LightDecoderWrapper(light)(z) - self.full_decoder(z)).abs().mean().item())
        light.train(was_training)
        out: dict[str, float] = {"encoder_mse": float(np.mean(enc_err)), "decoder_l1": float(np.mean(dec_err))}
        for dom, d in per_domain.items():
            for k, v in d.items():
                out[f"{dom}/{k}"] = float(np.mean(v))
        if per_domain:  # mean light AbsRel over the domains' mean full AbsRel, minus 1
            full = np.mean([out[f"{dom}/abs_rel_full"] for dom in per_domain])
            light_mean = np.mean([out[f"{dom}/abs_rel_light"] for dom in per_domain])
            out["abs_rel_light_vs_full"] = float(light_mean / full - 1)
        return out

    def export(self, step: int) -> Path:
        info = {"distilled_steps": step, "teacher_steps": self.teacher_steps, "teacher_spacing": self.teacher_spacing}
        return save_light_checkpoint(self.source, self.out_dir / "checkpoint", self.trainable, info=info)


class LossModule(nn.Module):
    """Wraps a stage's trainable network so that DDP sees the whole loss computation as one forward()."""

    def __init__(self, stage: Stage) -> None:
        super().__init__()
        self.net = stage.trainable
        self._stage = [stage]  # a list keeps the stage (and its frozen networks) out of the module tree

    def forward(self, batch: dict[str, Any], gen: torch.Generator) -> tuple[torch.Tensor, Terms]:
        return self._stage[0].forward_loss(self.net, batch, gen)


STAGE_CLASSES: dict[str, type[Stage]] = {"vae": VAEStage, "autoencoder": AutoencoderStage, "unet": UNetStage,
                                         "distill_vae": DistillVAEStage}


def make_stage(name: str, cfg: TrainConfig, out_dir: Path, device: torch.device) -> Stage:
    if name not in STAGE_CLASSES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_CLASSES)}")
    return STAGE_CLASSES[name](cfg, out_dir, device)
