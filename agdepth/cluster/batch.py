"""``depth-run``'s job on Ray Data: the same inputs, outputs, ledger and seeds, predicted by a pool of actors.

The run is planned as ``depth-run`` plans it (:mod:`agdepth.runtime.outputs`): input discovery, input protection,
the ledger, resume (images whose outputs are complete are skipped). The images to predict are cut into the groups
``depth-run`` would form (``--batch-size`` rows over the ensemble members, consecutive in the input list), and each
group is one Ray Data row: an actor (:class:`BatchWriter`, one :class:`~agdepth.cluster.predictor.DepthPredictor`
each) reads its images, predicts them in one pipeline call with each image's seed (seed + its index in the run) and
writes its outputs atomically. So every output is the same bytes ``depth-run`` writes. An actor that dies is
restarted and its group redone (the same files, rewritten whole); failed images (unreadable, a size the engines do
not take, a write error) are listed with their reasons in :data:`REPORT` in the output folder, and a rerun retries
them. Inputs must be paths every node can read (a local folder, or a shared file system mounted on every node).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agdepth.cluster.predictor import DepthPredictor, ModelSpec
from agdepth.cluster.ray_env import init_ray
from agdepth.imageio import ImageReadError, read_image, write_bytes_atomic, write_outputs
from agdepth.runtime.outputs import Job, plan_outputs

REPORT = "depth-batch-report.json"
REPORT_FORMAT = "agdepth-batch-report/1"
ACTOR_RESTARTS = 3  # an actor that dies (a node lost, a crash) is restarted this many times, its group redone


class BatchWriter:
    """A Ray Data actor: one predictor; each row is a group of images to read, predict and write."""

    def __init__(self, spec: ModelSpec) -> None:
        self.predictor = DepthPredictor(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[str]]:
        sources: list[str] = []
        status: list[str] = []
        reasons: list[str] = []
        for group in batch["group"]:
            for source, ok, reason in self.run_group(json.loads(str(group))):
                sources.append(source)
                status.append("ok" if ok else "failed")
                reasons.append(reason)
        return {"source": sources, "status": status, "reason": reasons}

    def run_group(self, group: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
        """One ``depth-run`` chunk: its readable images in one pipeline call (one by one after a ValueError, so
        only the image the engines refuse fails), then their outputs. (source, ok, reason) per image."""
        done: dict[str, tuple[bool, str]] = {}
        readable: list[tuple[dict[str, Any], np.ndarray]] = []
        for job in group:
            try:
                readable.append((job, read_image(job["source"])))
            except ImageReadError as e:
                done[job["source"]] = (False, str(e))
        results: list[tuple[dict[str, Any], np.ndarray]] = []
        if readable:
            try:
                depths = self.predictor.predict([img for _, img in readable], [j["index"] for j, _ in readable])
                results = [(j, d) for (j, _), d in zip(readable, depths, strict=True)]
            except ValueError:
                for j, img in readable:
                    try:
                        results.append((j, self.predictor.predict([img], [j["index"]])[0]))
                    except ValueError as e:
                        done[j["source"]] = (False, f"{j['source']}: {e}")
        for j, depth in results:
            try:
                write_outputs(j["paths"], depth)
                done[j["source"]] = (True, "")
            except (OSError, ValueError) as e:
                done[j["source"]] = (False, f"could not write the outputs of {j['source']}: {e}")
        return [(job["source"], *done[job["source"]]) for job in group]


@dataclass
class BatchResult:
    done: int  # images predicted and written by this run
    skipped: int  # complete from an earlier run
    failed: list[dict[str, str]] = field(default_factory=list)  # {"source", "reason"}
    seconds: float = 0.0


def groups_of(jobs: list[Job], per_call: int) -> list[list[dict[str, Any]]]:
    """The chunks ``depth-run`` forms: consecutive slices of ``per_call`` images of the jobs to run."""
    rows = [{"source": str(j.source), "index": j.index, "paths": {k: str(p) for k, p in j.paths.items()}}
            for j in jobs]
    return [rows[k:k + per_call] for k in range(0, len(rows), per_call)]


def resolve_settings(spec: ModelSpec, num_cpus: float, num_gpus: float) -> tuple[dict[str, Any], int]:
    """The settings the actors will use and their images per call, resolved where an actor would run (the model
    may need that node's GPU)."""
    ray = init_ray()

    @ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)
    def settings() -> tuple[dict[str, Any], int]:
        p = DepthPredictor(spec)
        return p.settings(), p.images_per_call

    return ray.get(settings.remote())


def _restartable() -> dict[str, Any]:
    return {"max_restarts": ACTOR_RESTARTS, "max_task_retries": ACTOR_RESTARTS}


def run_batch(jobs: list[Job], out: Path, spec: ModelSpec, overwrite: bool = False, actors: int = 2,
              num_cpus: float = 0.5, num_gpus: float = 0.0, actor_cls: type[BatchWriter] = BatchWriter,
              progress: Callable[[int], None] | None = None) -> BatchResult:
    """Plan (resume unless ``overwrite``), predict and write ``jobs`` on ``actors`` Ray actors of ``num_cpus`` /
    ``num_gpus`` each, and write :data:`REPORT`. Ray must be initialised (:func:`agdepth.cluster.ray_env.init_ray`).
    ``progress`` is called with the number of images each finished group had. With nothing to predict, nothing is
    written (the ledger aside). Raises
    :class:`agdepth.runtime.outputs.OutputPlanError` when the plan is refused (foreign files, other settings)."""
    import ray.data

    t0 = time.perf_counter()
    settings, per_call = resolve_settings(spec, num_cpus, num_gpus)
    plan = plan_outputs(jobs, out, settings, overwrite)
    result = BatchResult(done=0, skipped=len(plan.done))
    if plan.jobs:
        groups = groups_of(plan.jobs, per_call)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows one bar, in images
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ds = ray.data.from_items([{"group": json.dumps(g)} for g in groups], override_num_blocks=len(groups))
        ds = ds.map_batches(actor_cls, fn_constructor_args=(spec,), batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus, num_gpus=num_gpus,
                            ray_remote_args_fn=_restartable)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for source, status, reason in zip(batch["source"], batch["status"], batch["reason"], strict=True):
                if status == "ok":
                    result.done += 1
                else:
                    result.failed.append({"source": str(source), "reason": str(reason)})
            if progress:
                progress(len(batch["source"]))
    result.seconds = time.perf_counter() - t0
    if not plan.jobs:  # nothing to do: the earlier run's report stays as it was
        return result
    report = {"format": REPORT_FORMAT, "settings": settings, "predicted": result.done, "skipped": result.skipped,
              "failed": result.failed, "seconds": round(result.seconds, 3)}
    write_bytes_atomic(out / REPORT, (json.dumps(report, indent=1) + "\n").encode())
    return result


__all__ = ["ACTOR_RESTARTS", "REPORT", "BatchResult", "BatchWriter", "groups_of", "run_batch"]
