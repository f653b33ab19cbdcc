"""What a ``depth-run`` writes, decided before any work: input protection, resume and the output ledger.

- An output never replaces an input of the same run (refused whatever ``--overwrite`` says, naming both files).
- The output folder keeps a ledger (:data:`agdepth.imageio.OUTPUT_LEDGER`): every output the run plans, recorded
  before the first is written, and the settings that make them. Input discovery skips listed files, so reruns never
  read their own outputs; and a rerun resumes: images whose complete output set exists are skipped, an incomplete
  set (an interrupted run, a full disk) is redone.
- Existing files the ledger does not list are someone else's: without ``--overwrite`` the run refuses to start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agdepth.imageio import OUTPUT_LEDGER, output_paths, read_ledger, write_bytes_atomic

LEDGER_FORMAT = "agdepth-run-outputs/1"


class OutputPlanError(ValueError):
    """The run cannot start as asked; the message names the files or setting and what to do."""


@dataclass
class Job:
    source: Path
    paths: dict[str, Path]
    index: int  # position in the run's full input list: the image's seed offset, stable across resumed runs


@dataclass
class OutputPlan:
    out: Path
    jobs: list[Job]  # to predict
    done: list[Job] = field(default_factory=list)  # complete from an earlier run with the same settings: skipped


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))


def protected_jobs(items: list[tuple[Path, Path]], out: Path, formats: str, uncertainty: bool) -> list[Job]:
    """One job per input, refusing any output path that is an input of this run."""
    jobs = [Job(src, output_paths(out, stem, formats, uncertainty), i) for i, (src, stem) in enumerate(items)]
    inputs = {_key(src): src for src, _ in items}
    for job in jobs:
        for path in job.paths.values():
            victim = inputs.get(_key(path))
            if victim is not None:
                raise OutputPlanError(f"the output {path} of {job.source} would replace the input {victim} of this "
                                      "run: choose another --out (inputs are never overwritten)")
    return jobs


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def plan_outputs(jobs: list[Job], out: Path, settings: dict[str, Any], overwrite: bool) -> OutputPlan:
    """Decide which jobs run (resume unless ``overwrite``) and record them in the ledger before any is written."""
    ledger = read_ledger(out)
    ours = {_key(out / rel) for rel in ledger.get("outputs", []) if isinstance(rel, str)}
    plan = OutputPlan(out, [], [])
    if overwrite:
        plan.jobs = list(jobs)
    else:
        foreign = [p for j in jobs for p in j.paths.values() if os.path.lexists(p) and _key(p) not in ours]
        if foreign:
            raise OutputPlanError(f"{len(foreign)} output file(s) exist already that depth-run did not write, e.g. "
                                  f"{foreign[0]}: pass --overwrite to replace them, or choose another --out")
        for j in jobs:
            complete = all(os.path.lexists(p) for p in j.paths.values())
            (plan.done if complete else plan.jobs).append(j)
        changed = _differences(ledger.get("settings") or {}, settings)
        if plan.done and changed:
            raise OutputPlanError(f"{out} holds outputs of {len(plan.done)} of these images made with other settings "
                                  f"({'; '.join(changed)}): pass --overwrite to redo them, or choose another --out")
    planned = {p.relative_to(out).as_posix() for j in plan.jobs for p in j.paths.values()}
    listed = set(ledger.get("outputs", [])) | planned
    record = {"format": LEDGER_FORMAT, "settings": settings, "outputs": sorted(listed)}
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / OUTPUT_LEDGER, (json.dumps(record, indent=1) + "\n").encode())
    return plan


__all__ = ["Job", "OutputPlan", "OutputPlanError", "plan_outputs", "protected_jobs"]
