"""Per-batch dataset mixing (Marigold: each batch comes from ONE dataset, e.g. Hypersim 90% / vKITTI 10%).

Drawing whole batches from a single source keeps image sizes uniform within a batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from agdepth.data.base import SkipCorrupt, collate_skip_corrupt


class MixedBatchSampler(Sampler[list[int]]):
    """Yields batches of ConcatDataset indices; each batch is drawn from one sub-dataset chosen with
    ``probabilities``.

    * Deterministic given (seed, epoch): all randomness comes from generators seeded with them.
    * Each sub-dataset is reshuffled every epoch; a sub-dataset that runs out mid-epoch starts a fresh,
      reshuffled pass (like Marigold), so samples can repeat within an epoch but not within a pass.
    * Distributed: every rank draws the same source sequence and the same permutations, then takes the
      disjoint shard ``perm[rank::num_replicas]``. Ranks therefore stay in lock-step (same length, same
      source per step) and read different samples within each pass.
    * Epoch length defaults to the total number of per-rank batches over all sources with p > 0 (Marigold's
      definition); override with ``batches_per_epoch``.
    * ``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches without reading them, for
      bit-exact mid-epoch resume; ``__len__`` is the number of batches the next iteration yields.
    """

    def __init__(
        self,
        dataset_lengths: Sequence[int],
        batch_size: int,
        probabilities: Sequence[float],
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.lengths = [int(n) for n in dataset_lengths]
        if len(self.lengths) != len(probabilities) or not self.lengths:
            raise ValueError("dataset_lengths and probabilities must be non-empty and of equal length")
        p = np.asarray(probabilities, dtype=np.float64)
        if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError(f"invalid probabilities {list(probabilities)}")
        if batch_size < 1 or num_replicas < 1 or not 0 <= rank < num_replicas or seed < 0:
            raise ValueError("need batch_size >= 1, num_replicas >= 1, 0 <= rank < num_replicas, seed >= 0")
        self.probabilities = p / p.sum()
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        # drop_last: every rank gets floor(n/R) samples (remainder dropped); else pad cyclically to ceil(n/R)
        # like DistributedSampler. Either way all ranks see the same count, so they stay in lock-step.
        rnd = math.floor if drop_last else math.ceil
        self.per_rank = [rnd(n / num_replicas) for n in self.lengths]
        self.batches_per_pass = [rnd(m / batch_size) for m in self.per_rank]
        for n, nb, pk in zip(self.lengths, self.batches_per_pass, self.probabilities, strict=True):
            if pk > 0 and nb == 0:
                raise ValueError(f"dataset of length {n} yields no batch of {batch_size} on {num_replicas} rank(s)")
        self.num_batches = (
            int(batches_per_epoch)
            if batches_per_epoch is not None
            else sum(nb for nb, pk in zip(self.batches_per_pass, self.probabilities, strict=True) if pk > 0)
        )
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if epoch < 0 or not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"bad epoch/start_batch: {epoch}/{start_batch}")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def _one_pass(self, k: int, rng: np.random.Generator) -> list[list[int]]:
        """A fresh shuffled pass over sub-dataset k: this rank's shard split into batches (global indices)."""
        perm = rng.permutation(self.lengths[k])
        perm = np.resize(perm, self.per_rank[k] * self.num_replicas)  # truncates, or pads by cycling
        shard = perm[self.rank :: self.num_replicas] + self.offsets[k]
        batches = [shard[i : i + self.batch_size].tolist() for i in range(0, len(shard), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def epoch_batches(self) -> list[list[int]]:
        """All batches of the current epoch for this rank (ignores ``start_batch``)."""
        # Separate streams per purpose so one source's reshuffles never perturb the others.
        choice_rng = np.random.default_rng([self.seed, self.epoch, 0])
        ds_rngs = [np.random.default_rng([self.seed, self.epoch, 1 + k]) for k in range(len(self.lengths))]
        sources = choice_rng.choice(len(self.lengths), size=self.num_batches, p=self.probabilities)
        passes: list[list[list[int]]] = [[] for _ in self.lengths]
        pos = [0] * len(self.lengths)
        out = []
        for k in sources.tolist():
            if pos[k] >= len(passes[k]):
                passes[k], pos[k] = self._one_pass(k, ds_rngs[k]), 0
            out.append(passes[k][pos[k]])
            pos[k] += 1
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.start_batch :]

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


def build_mixed_loader(
    datasets: Sequence[Dataset],
    probabilities: Sequence[float],
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    num_replicas: int = 1,
    rank: int = 0,
    drop_last: bool = True,
    batches_per_epoch: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader over ``ConcatDataset([SkipCorrupt(d) ...])`` with a MixedBatchSampler and
    ``collate_skip_corrupt`` (batches carry ``"corrupt"``; all-corrupt batches have no ``"rgb"``).

    Call ``set_loader_epoch(loader, epoch)`` before iterating each epoch. Workers are not persistent so the
    epoch set on the datasets reaches them when each epoch's iterator is created.
    """
    concat = ConcatDataset([SkipCorrupt(d) for d in datasets])
    sampler = MixedBatchSampler(
        [len(d) for d in datasets],  # type: ignore[arg-type]
        batch_size,
        probabilities,
        seed=seed,
        drop_last=drop_last,
        num_replicas=num_replicas,
        rank=rank,
        batches_per_epoch=batches_per_epoch,
    )
    return DataLoader(
        concat,
        batch_sampler=sampler,
        collate_fn=collate_skip_corrupt,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def _set_dataset_epoch(ds: Dataset, epoch: int) -> None:
    if isinstance(ds, ConcatDataset):
        for sub in ds.datasets:
            _set_dataset_epoch(sub, epoch)
    elif hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)


def set_loader_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    """Set the epoch on the loader's batch sampler (optionally resuming at ``start_batch``) and datasets."""
    if hasattr(loader.batch_sampler, "set_epoch"):
        loader.batch_sampler.set_epoch(epoch, start_batch)  # type: ignore[union-attr]
    _set_dataset_epoch(loader.dataset, epoch)
