"""The training loop shared by every stage: data, optimisation, logging, validation, checkpoints, resume, DDP.

Reproducibility by construction: the data order is a function of (seed, epoch, position) and every random draw of a
micro-step (noise, timesteps, posterior samples) comes from a generator seeded with (seed, micro-step, rank). Resume
therefore needs only the weights, the optimiser state and the step counter — all stored as safetensors + JSON — and
continues bit-exactly.

Multi-process training runs under ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on GPU): each rank reads
its own shard of every batch stream, gradients are averaged, rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.utils.data import ConcatDataset, DataLoader
from tqdm.auto import tqdm

from agdepth.artifacts.checkpoint import atomic_dir
from agdepth.data.base import SkipCorrupt, collate_skip_corrupt
from agdepth.data.folder import (
    DepthEncoding,
    FolderTrainDataset,
    Pair,
    discover_pairs,
    missing_partners,
    split_pairs,
    write_pair_list,
)
from agdepth.data.mixing import MixedBatchSampler
from agdepth.data.procedural import DEFAULT_SOURCE_DOMAINS, ProceduralDataset
from agdepth.training.config import SourceConfig, StageConfig, TrainConfig
from agdepth.training.stages import LossModule, Stage, make_stage

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """A loss became NaN/Inf: the run stops before the optimiser step, with the last good weights saved."""


class TooManyCorruptSamplesError(RuntimeError):
    """More unreadable samples than ``data.max_corrupt``."""


# ----------------------------------------------------------------------------------------------- distributed


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE/RANK/LOCAL_RANK), or run single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_name, info.local_rank)
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def _all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """All randomness of one micro-step: independent of how the run was split into resumed pieces."""
    state = np.random.SeedSequence([seed, micro_step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# ------------------------------------------------------------------------------------------------------- data


class ImageFolderDataset(torch.utils.data.Dataset):
    """A folder of RGB images (recursive), label-free: ``{"rgb", "name", "domain"}`` samples, no depth.

    Each image is resized (antialiased) so that it covers ``size``, then centre-cropped to it; horizontal flips are a
    pure function of (seed, epoch, index), as in :class:`agdepth.data.base.DepthDataset`. Unreadable files raise
    :class:`agdepth.data.base.SampleReadError`, so they are skipped and counted like corrupt samples of any source.
    """

    domain = "images"

    def __init__(self, root: str | Path, size: tuple[int, int], hflip: bool = False, seed: int = 0) -> None:
        from agdepth.imageio import collect_inputs

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} not found")
        self.files = [(path, stem.as_posix() + path.suffix) for path, stem in collect_inputs([self.root],
                                                                                          recursive=True)]
        self.size, self.hflip, self.seed, self.epoch = tuple(size), hflip, seed, 0

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from agdepth.data.base import SampleReadError
        from agdepth.imageio import ImageReadError, read_image

        path, name = self.files[index]
        try:
            img = read_image(path)
        except ImageReadError as e:
            raise SampleReadError(path, str(e)) from e
        x = torch.from_numpy(img.astype(np.float32) / float(np.iinfo(img.dtype).max)).permute(2, 0, 1)[None]
        h, w = self.size
        scale = max(h / x.shape[-2], w / x.shape[-1])
        rh, rw = max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale))
        if (rh, rw) != tuple(x.shape[-2:]):
            x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True,
                                                align_corners=False)
        top, left = (rh - h) // 2, (rw - w) // 2
        x = x[0, :, top : top + h, left : left + w].clamp(0, 1)
        if self.hflip:
            state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
            if state & 1:
                x = x.flip(-1)
        return {"rgb": (x * 2 - 1).contiguous(), "name": name, "domain": self.domain}


def build_source(src: SourceConfig, cfg: TrainConfig, size: tuple[int, int], split: FolderSplit | None = None
                 ) -> torch.utils.data.Dataset:
    """One training source's dataset (``split``: a folder source's pairs, when already discovered)."""
    if src.type == "images":
        if not src.root:
            raise ValueError("the images source needs a root folder (--images DIR or --set data.sources.N.root=DIR)")
        return ImageFolderDataset(src.root, size, hflip=cfg.data.hflip, seed=cfg.seed)
    if src.type == "procedural":
        domains = src.domains or list(DEFAULT_SOURCE_DOMAINS)
        return ProceduralDataset(domains, src.length, size=size, split="train", hflip=cfg.data.hflip, seed=cfg.seed,
                                 cache=cfg.data.cache, camera=src.camera)
    if src.type in ("hypersim", "vkitti"):
        if not src.root:
            raise ValueError(f"data source {src.type!r} needs a root directory (--set data.sources.N.root=DIR)")
        if src.type == "hypersim":
            from agdepth.data.hypersim import HypersimDataset

            if not src.filename_list:
                raise ValueError("the hypersim source needs filename_list (Marigold's data_split list)")
            flist = Path(src.filename_list)
            if not flist.is_absolute() and not flist.is_file():
                flist = Path(src.root) / flist
            return HypersimDataset(src.root, flist, hflip=cfg.data.hflip, seed=cfg.seed, resize=src.resize)
        from agdepth.data.vkitti import VirtualKITTIDataset

        return VirtualKITTIDataset(src.root, src.filename_list, hflip=cfg.data.hflip, seed=cfg.seed)
    if src.type == "folder":
        split = split or folder_split(src, cfg)
        return FolderTrainDataset(split.root, split.train, size, encoding=split.encoding,
                                  depth_range=tuple(src.depth_range), domain=split.name, hflip=cfg.data.hflip,
                                  seed=cfg.seed)
    raise ValueError(f"unknown data source type {src.type!r}; use procedural, hypersim, vkitti, folder or images")


@dataclass
class FolderSplit:
    """A folder source's pairs: trained on, held out (validation), and missing a depth partner (skipped)."""

    name: str
    root: Path
    encoding: DepthEncoding
    train: list[Pair]
    heldout: list[Pair]
    missing: list[str]
    total: int  # pairs found, missing ones included


def folder_split(src: SourceConfig, cfg: TrainConfig) -> FolderSplit:
    """Discover a folder source's pairs and split them; a pair whose depth file is missing is left out and named.

    Raises ValueError naming the missing files when they are more than ``data.max_corrupt_share`` of the pairs."""
    if not src.root:
        raise ValueError("the folder source needs a root directory (--data DIR or --set data.sources.N.root=DIR)")
    root = Path(src.root)
    flist = None
    if src.filename_list:
        flist = Path(src.filename_list)
        if not flist.is_absolute() and not flist.is_file():
            flist = root / flist
    pairs = discover_pairs(root, flist)
    train, held = split_pairs(pairs, src.holdout, seed=cfg.seed)
    missing = missing_partners(root, pairs)
    if len(missing) > cfg.data.max_corrupt_share * len(pairs):
        raise ValueError(f"folder source {root}: {len(missing)} of {len(pairs)} images have no depth file (more than "
                         f"data.max_corrupt_share={cfg.data.max_corrupt_share:g}): "
                         + ", ".join(str(root / m) for m in missing[:20]) + (" …" if len(missing) > 20 else ""))
    if missing:
        logger.warning("folder source %s: %d image(s) without a depth file, skipped: %s", root, len(missing),
                       ", ".join(str(root / m) for m in missing[:20]) + (" …" if len(missing) > 20 else ""))
    gone = set(missing)
    train = [p for p in train if p[1] not in gone]
    held = [p for p in held if p[1] not in gone]
    if not train:
        raise ValueError(f"folder source {root}: no pair left to train on ({len(held)} held out)")
    encoding = DepthEncoding(float(src.depth_scale), bool(src.disparity))
    return FolderSplit(src.name or root.resolve().name, root, encoding, train, held, [str(root / m) for m in missing],
                       len(pairs))


def folder_splits(cfg: TrainConfig) -> dict[int, FolderSplit]:
    """The folder sources' splits, by their index in ``data.sources``."""
    return {i: folder_split(s, cfg) for i, s in enumerate(cfg.data.sources) if s.type == "folder"}


class BatchStream:
    """Micro-batch number m → the same batch on every run: epoch = m // batches_per_epoch, then position."""

    def __init__(self, cfg: TrainConfig, scfg: StageConfig, info: DistInfo,
                 splits: dict[int, FolderSplit] | None = None) -> None:
        size = scfg.size or cfg.data.size
        sources = cfg.data.sources or [SourceConfig(type="procedural", domains=list(DEFAULT_SOURCE_DOMAINS))]
        splits = splits or {}
        datasets = [build_source(s, cfg, tuple(size), splits.get(i)) for i, s in enumerate(sources)]
        # the folder sources: data.max_corrupt_share is of their pairs
        self.folder_roots = tuple(str(split.root) for split in splits.values())
        self.folder_pairs = sum(split.total for split in splits.values())
        self.dataset = ConcatDataset([SkipCorrupt(d) for d in datasets])
        self.sampler = MixedBatchSampler(
            [len(d) for d in datasets],  # type: ignore[arg-type]
            scfg.batch_size,
            [s.probability for s in sources],
            seed=cfg.seed,
            drop_last=True,
            num_replicas=info.world_size,
            rank=info.rank,
        )
        self.per_epoch = self.sampler.num_batches
        self.num_workers = cfg.data.num_workers

    def _set_epoch(self, epoch: int) -> None:
        for d in self.dataset.datasets:
            if hasattr(d, "set_epoch"):
                d.set_epoch(epoch)

    def iterate(self, start: int) -> Iterator[dict[str, Any]]:
        epoch, pos = divmod(start, self.per_epoch)
        while True:
            self._set_epoch(epoch)
            self.sampler.set_epoch(epoch, start_batch=pos)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate_skip_corrupt,
                                num_workers=self.num_workers)
            yield from loader
            epoch, pos = epoch + 1, 0


def validation_batches(cfg: TrainConfig, size: tuple[int, int], batch_size: int,
                       splits: dict[int, FolderSplit] | None = None) -> list[dict[str, Any]]:
    """The held-out procedural domains (test split: seeds disjoint from training) and the first ``data.val_count``
    held-out pairs of each folder source; unreadable held-out pairs are skipped with a warning naming them."""
    if cfg.data.val_count <= 0:
        return []
    out: list[dict[str, Any]] = []
    for dom in cfg.data.val_domains:
        ds = ProceduralDataset([dom], cfg.data.val_count, size=size, split="test", hflip=False, seed=cfg.seed)
        out.extend(DataLoader(ds, batch_size=batch_size))
    for split in (folder_splits(cfg) if splits is None else splits).values():
        if not split.heldout:
            continue
        ds = SkipCorrupt(FolderTrainDataset(split.root, split.heldout[: cfg.data.val_count], size,
                                            encoding=split.encoding, domain=split.name))
        out.extend(b for b in DataLoader(ds, batch_size=batch_size, collate_fn=collate_skip_corrupt) if "rgb" in b)
    return out


def write_split_lists(splits: dict[int, FolderSplit], out_dir: Path) -> None:
    """Each folder source's split as filename lists: OUT/data_split/<name>/{train,heldout}.txt (paths relative to the
    source's root, for ``depth-eval --dataset folder --data-root ROOT --filename-list``)."""
    for split in splits.values():
        for side, pairs in (("train", split.train), ("heldout", split.heldout)):
            write_pair_list(out_dir / "data_split" / split.name / f"{side}.txt", pairs)


# ------------------------------------------------------------------------------------------ resumable state


def _save_state(state_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Weights, Adam moments and counters, without pickle: tensors in safetensors, the rest in JSON."""
    opt_sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in opt_sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    with atomic_dir(state_dir) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        if tensors:
            save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "optimizer.json").write_text(json.dumps({"param_groups": opt_sd["param_groups"], "scalars": scalars}))
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=2))


def _load_state(state_dir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    for f in ("model.safetensors", "optimizer.json", "trainer.json"):
        if not (state_dir / f).is_file():
            raise FileNotFoundError(f"cannot resume: {state_dir / f} is missing")
    net.load_state_dict(load_file(state_dir / "model.safetensors"))
    oj = json.loads((state_dir / "optimizer.json").read_text())
    tensors = load_file(state_dir / "optimizer.safetensors") if (state_dir / "optimizer.safetensors").is_file() else {}
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(oj["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": oj["param_groups"]})
    return json.loads((state_dir / "trainer.json").read_text())


def weights_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# -------------------------------------------------------------------------------------------------- the loop


class JsonlLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def learning_rate(scfg: StageConfig, step: int) -> float:
    """The rate of update ``step`` (0-based): a pure function of the step, so resuming needs no scheduler state."""
    if scfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be constant or cosine, got {scfg.lr_schedule!r}")
    if step < scfg.warmup:
        return scfg.lr * (step + 1) / scfg.warmup
    if scfg.lr_schedule == "cosine":
        span = max(scfg.iterations - scfg.warmup, 1)
        return scfg.lr * 0.5 * (1 + math.cos(math.pi * (step - scfg.warmup) / span))
    return scfg.lr


def _autocast(device: torch.device, mode: str) -> Any:
    if mode == "fp32":
        return nullcontext()
    if mode not in ("fp16", "bf16"):
        raise ValueError(f"mixed_precision must be fp32, fp16 or bf16, got {mode!r}")
    return torch.autocast(device.type, dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


def train_stage(
    stage_name: str,
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Run one stage to ``iterations`` updates; returns what the stage exported (a model directory)."""
    out_dir = Path(out_dir)
    info, device = init_distributed(cfg.device)
    scfg = cfg.stage(stage_name)
    state_dir = out_dir / "train_state" / stage_name
    log_path = out_dir / "logs" / f"{stage_name}.jsonl"
    if state_dir.exists() and not resume:
        if not overwrite:
            raise FileExistsError(f"{state_dir} exists: pass --resume to continue that run or --overwrite to restart")
        if info.is_main:
            shutil.rmtree(state_dir)
            log_path.unlink(missing_ok=True)
    if info.enabled:
        dist.barrier()

    stage: Stage = make_stage(stage_name, cfg, out_dir, device)
    net = stage.trainable
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=scfg.lr, betas=tuple(scfg.betas), weight_decay=scfg.weight_decay)
    start = 0
    corrupt: list[str] = []
    if resume:
        if not state_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: no saved state in {state_dir}")
        meta = _load_state(state_dir, net, opt)
        start, corrupt = int(meta["step"]), list(meta.get("corrupt", []))
    scaler = torch.amp.GradScaler(device.type, enabled=scfg.mixed_precision == "fp16")

    loss_module: torch.nn.Module = LossModule(stage)
    if info.enabled:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    splits = folder_splits(cfg)
    stream = BatchStream(cfg, scfg, info, splits)
    size = tuple(scfg.size or cfg.data.size)
    val_batches = validation_batches(cfg, size, scfg.batch_size, splits) if info.is_main else []
    if not resume:  # a folder's images without a depth file: skipped, and counted like unreadable samples
        corrupt.extend(m for split in splits.values() for m in split.missing)
    if info.is_main and splits:
        write_split_lists(splits, out_dir)
    log = JsonlLog(log_path if info.is_main else None)
    sample_log = JsonlLog(out_dir / "logs" / f"{stage_name}.samples.rank{info.rank}.jsonl") \
        if cfg.data.log_samples else JsonlLog(None)
    if info.is_main:
        log.write({"event": "start", "stage": stage_name, "step": start, "time": time.time(),
                   "world_size": info.world_size,
                   "device": str(device), "config": cfg.to_dict()})

    def save(step: int) -> None:
        if info.is_main:
            _save_state(state_dir, net, opt, {"step": step, "stage": stage_name, "corrupt": corrupt})
            stage.export(step)
        if info.enabled:
            dist.barrier()

    def validate(step: int) -> None:
        if info.is_main and val_batches:
            metrics = stage.validate(val_batches)
            log.write({"event": "val", "stage": stage_name, "step": step, **metrics})
            tqdm.write(f"[{stage_name}] step {step} validation: " +
                       ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        if info.enabled:
            dist.barrier()

    batches = stream.iterate(start * scfg.grad_accum)
    bar = tqdm(total=scfg.iterations, initial=start, desc=stage_name, disable=not (progress and info.is_main),
               dynamic_ncols=True)
    t_last, n_last = time.perf_counter(), start
    for step in range(start, scfg.iterations):
        for group in opt.param_groups:
            group["lr"] = learning_rate(scfg, step)
        opt.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for micro in range(scfg.grad_accum):
            m = step * scfg.grad_accum + micro
            batch = next(batches)
            if batch.get("corrupt"):
                corrupt.extend(batch["corrupt"])
                in_folders = {c for c in corrupt if c.startswith(stream.folder_roots)} if stream.folder_roots else set()
                if len(corrupt) > cfg.data.max_corrupt:
                    raise TooManyCorruptSamplesError(
                        f"{len(corrupt)} unreadable samples (data.max_corrupt={cfg.data.max_corrupt}): "
                        + ", ".join(corrupt[:20]) + (" …" if len(corrupt) > 20 else ""))
                if len(in_folders) > cfg.data.max_corrupt_share * stream.folder_pairs:
                    raise TooManyCorruptSamplesError(
                        f"{len(in_folders)} of the folder sources' {stream.folder_pairs} pairs missing or unreadable "
                        f"(data.max_corrupt_share={cfg.data.max_corrupt_share:g}): "
                        + ", ".join(sorted(in_folders)[:20]) + (" …" if len(in_folders) > 20 else ""))
            has_data = "rgb" in batch
            if cfg.data.log_samples:
                sample_log.write({"step": step, "micro": micro, "names": list(batch.get("name", []))})
            if has_data:
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            sync = nullcontext()
            if info.enabled and micro < scfg.grad_accum - 1:
                sync = loss_module.no_sync()  # type: ignore[operator]
            with sync:
                if has_data:
                    with _autocast(device, scfg.mixed_precision):
                        total, terms = loss_module(batch, step_generator(cfg.seed, m, info.rank))
                    finite = bool(torch.isfinite(total).item())
                else:  # every sample of this micro-batch was unreadable: contribute nothing
                    total, terms, finite = None, {}, True
                if not _all_true(finite, info, device):
                    save(step)
                    raise TrainingDivergedError(
                        f"non-finite loss at {stage_name} step {step} (micro-batch {micro}): "
                        + ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                        + f". Training stopped; the last good weights (before this step) are in {state_dir} and "
                        f"the exported model. Lower the learning rate or check the data, then --resume.")
                if total is not None:
                    scaler.scale(total / scfg.grad_accum).backward()
                    for k, v in terms.items():
                        acc[k] = acc.get(k, 0.0) + float(v.detach()) / scfg.grad_accum
        if scfg.max_grad_norm:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), scfg.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        done = step + 1
        bar.update(1)
        if acc:
            bar.set_postfix({k: f"{v:.4f}" for k, v in acc.items()}, refresh=False)
        if info.is_main and (done % scfg.log_every == 0 or done == scfg.iterations):
            now = time.perf_counter()
            log.write({"event": "train", "stage": stage_name, "step": done, "loss": sum(acc.values()) if acc else None,
                       **acc, "lr": opt.param_groups[0]["lr"], "it_s": (done - n_last) / max(now - t_last, 1e-9),
                       "corrupt": len(corrupt), "time": time.time()})
            t_last, n_last = now, done
        if done % scfg.ckpt_every == 0 or done == scfg.iterations:
            save(done)
        if (scfg.val_every and done % scfg.val_every == 0) or done == scfg.iterations:
            validate(done)
    bar.close()
    if start >= scfg.iterations:
        logger.info("%s: already at %d/%d updates, nothing to do", stage_name, start, scfg.iterations)
    if cfg.data.log_samples:
        JsonlLog(out_dir / "logs" / f"{stage_name}.final.rank{info.rank}.jsonl").write(
            {"digest": weights_digest(net), "step": scfg.iterations})
    if info.is_main:
        log.write({"event": "end", "stage": stage_name, "step": scfg.iterations, "time": time.time(),
                   "corrupt": len(corrupt),
                   "corrupt_files": corrupt[:100]})
    return out_dir / {"vae": "vae", "autoencoder": "depth_autoencoder", "unet": "checkpoint",
                      "distill_vae": "checkpoint"}[stage_name]

