"""The benchmark protocol: score one dataset's predictions sample by sample, resumably, into CSV + JSON + markdown.

Per sample (Marigold's ``eval.py``): the prediction is resized to the ground truth's size if needed (bilinear),
aligned to it by least squares (depth space; disparity space as an option) on the scored pixels, clipped to the
dataset's depth range, and measured with :mod:`agdepth.metrics`; dense ground truth also gets the boundary F1. The
summary averages per image. A sample that cannot be read, has no prediction, or has no scored pixel is listed with
its reason and counted: it is never dropped silently.

Output folder:
    settings.json    what the scores depend on; a resumed run must match it
    per_sample.csv   one row per sample: name, status (ok / missing / corrupt / empty), reason, metrics
    summary.json     counts, failures, mean metrics, command, machine, versions
    row.md           the markdown table row of this result
    predictions/     (--save-predictions) the raw predictions as <name>.npy, re-scorable with --predictions
"""

from __future__ import annotations

import csv
import datetime
import errno
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from agdepth.data.base import SampleReadError
from agdepth.evaluation.datasets import EvalDataset, EvalSample
from agdepth.machine import machine_info, package_versions
from agdepth.metrics import METRIC_NAMES, Alignment, aligned_depth, boundary_f1, compute_metrics, mean_metrics

BOUNDARY_NAMES: tuple[str, ...] = ("edge_precision", "edge_recall", "edge_f1")
STATUSES: tuple[str, ...] = ("ok", "missing", "corrupt", "empty")
Predictor = Callable[[EvalSample], np.ndarray]  # a sample -> affine-invariant depth (or disparity) map


def score(pred: np.ndarray, sample: EvalSample, depth_range: tuple[float, float], alignment: Alignment,
          dense: bool, alignment_max_res: int | None = None) -> dict[str, float]:
    """One sample's metrics: align (fitted at most ``alignment_max_res`` px, as Marigold does for ETH3D), clip to
    ``depth_range``, :func:`compute_metrics`; plus the boundary F1 when the ground truth is ``dense``. Raises
    ValueError when the sample has fewer than 2 scored pixels."""
    pred = resize_to(np.asarray(pred, np.float64), sample.depth.shape)
    aligned = aligned_depth(pred, sample.depth, sample.mask, depth_range, alignment, alignment_max_res)
    metrics = compute_metrics(aligned, sample.depth, sample.mask)
    if dense:
        metrics.update(boundary_f1(aligned, sample.depth, sample.mask))
    return metrics


def resize_to(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``pred`` [H', W'] bilinearly resized to ``shape`` [H, W] (no-op when equal), as Marigold resizes predictions
    to the ground truth."""
    while pred.ndim > 2 and 1 in (pred.shape[0], pred.shape[-1]):  # [1,H,W], [1,1,H,W], [H,W,1]
        pred = pred[0] if pred.shape[0] == 1 else pred[..., 0]
    if pred.ndim != 2:
        raise ValueError(f"a prediction must be one [H, W] map, got shape {pred.shape}")
    if pred.shape == tuple(shape):
        return pred
    t = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    return F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def weights_fingerprint(source: str | Path) -> str:
    """A short hash of the names, sizes and modification times of a model's files (a checkpoint directory, or the
    engines directory of an ``.onnx``/``.plan`` file): retrained or re-exported weights at the same path change it, so
    a results folder of the old weights is not resumed with the new ones."""
    import hashlib

    root = Path(source)
    root = root if root.is_dir() else root.parent
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in MODEL_SUFFIXES):
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


MODEL_SUFFIXES = (".safetensors", ".json", ".onnx", ".data", ".plan", ".npy")


class PredictionsDir:
    """Saved predictions as ``DIR/<sample name with .npy suffix>`` (the layout ``--save-predictions`` writes)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(errno.ENOENT, "predictions directory not found", str(self.root))

    def path(self, name: str) -> Path:
        return self.root / Path(name).with_suffix(".npy")

    def __call__(self, sample: EvalSample) -> np.ndarray:
        path = self.path(sample.name)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no prediction for this sample", str(path))
        try:
            return np.load(path)
        except Exception as e:  # a truncated/garbled .npy is a bad sample, not a crash
            raise SampleReadError(path, f"{type(e).__name__}: {e}") from e


def _fieldnames(dense: bool) -> list[str]:
    return ["name", "status", "reason", *METRIC_NAMES, *(BOUNDARY_NAMES if dense else ())]


def _prepare_out(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Create/validate the output folder; return the rows already scored (status ok) for resuming."""
    out.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps(settings))  # as stored (tuples become lists), so a resume compares like with like
    settings_file, csv_file = out / "settings.json", out / "per_sample.csv"
    if overwrite:
        for f in (settings_file, csv_file, out / "summary.json", out / "row.md"):
            f.unlink(missing_ok=True)
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ValueError(f"{out} holds results of other settings ({diffs}); use another --out or --overwrite")
    settings_file.write_text(json.dumps(settings, indent=2) + "\n")
    done: dict[str, dict[str, Any]] = {}
    if csv_file.is_file():
        with csv_file.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if row.get("status") == "ok":
                    done[row["name"]] = row
    return done


def evaluate_dataset(
    dataset: EvalDataset,
    predict: Predictor,
    out: str | Path,
    settings: dict[str, Any],
    *,
    alignment: Alignment | None = None,
    depth_range: tuple[float, float] | None = None,
    label: str = "model",
    save_predictions: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Score every sample of ``dataset`` with ``predict`` into ``out``; returns the summary (also summary.json).

    ``settings`` (model source, inference settings) joins the protocol's own settings in settings.json: a folder
    is resumed only under identical settings, and then samples already scored ``ok`` are skipped (failed ones are
    retried). ``alignment``/``depth_range`` default to the dataset's.
    """
    out = Path(out)
    alignment = dataset.alignment if alignment is None else alignment
    lo, hi = dataset.depth_range if depth_range is None else depth_range
    if not 0 <= lo < hi:
        raise ValueError(f"depth range must satisfy 0 <= min < max, got ({lo}, {hi})")
    names = dataset.names()
    all_settings = {**settings, "dataset": dataset.name, "alignment": alignment, "depth_range": [lo, hi],
                    "alignment_max_res": dataset.alignment_max_res, "samples": len(names)}
    done = _prepare_out(out, all_settings, overwrite)
    fields = _fieldnames(dataset.dense)
    rows: dict[str, dict[str, Any]] = {n: done[n] for n in names if n in done}
    pred_dir = out / "predictions"
    with (out / "per_sample.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for n in names:  # rows kept from an earlier run come first, in dataset order
            if n in rows:
                writer.writerow(rows[n])
        f.flush()
        todo = [i for i, n in enumerate(names) if n not in rows]
        bar = tqdm(todo, desc=f"eval {dataset.name}", unit="img", disable=not progress)
        if len(todo) < len(names):
            bar.write(f"resuming: {len(names) - len(todo)} of {len(names)} samples already scored in {out}")
        for i in bar:
            row: dict[str, Any] = {"name": names[i], "status": "ok", "reason": ""}
            try:
                sample = dataset.load(i)
                pred = predict(sample)
                if save_predictions:
                    target = pred_dir / Path(sample.name).with_suffix(".npy")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    np.save(target, np.asarray(pred, np.float32))
                row.update(score(pred, sample, (lo, hi), alignment, dataset.dense, dataset.alignment_max_res))
            except FileNotFoundError as e:
                row.update(status="missing", reason=f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
            except SampleReadError as e:
                row.update(status="missing" if isinstance(e.__cause__, FileNotFoundError) else "corrupt",
                           reason=str(e))
            except ValueError as e:  # no scored pixel (e.g. an all-invalid ground truth)
                row.update(status="empty", reason=str(e))
            if row["status"] != "ok":
                bar.write(f"{names[i]}: {row['status']}: {row['reason']}")
            rows[names[i]] = row
            writer.writerow(row)
            f.flush()
    ordered = [rows[n] for n in names]
    summary = summarize(ordered, dataset, label, all_settings, command)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "row.md").write_text(markdown_row(summary) + "\n")
    return summary


def average(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Per-image mean of each metric; the boundary scores are NaN on an image without depth edges, so those are
    averaged over the images that have them."""
    edge = [k for k in BOUNDARY_NAMES if k in per_image[0]]
    out = mean_metrics([{k: v for k, v in m.items() if k not in edge} for m in per_image])
    for k in edge:
        vals = [m[k] for m in per_image if not math.isnan(m[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


def summarize(rows: list[dict[str, Any]], dataset: EvalDataset, label: str, settings: dict[str, Any],
              command: str = "") -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    keys = [k for k in (*METRIC_NAMES, *BOUNDARY_NAMES) if ok and k in ok[0]]
    metrics = average([{k: float(r[k]) for k in keys} for r in ok]) if ok else {}
    notes = [n for n in (dataset.count_note(),) if n]
    return {
        "label": label,
        "dataset": dataset.name,
        "settings": settings,
        "count": {"total": len(rows), "scored": len(ok), "failed": len(rows) - len(ok),
                  **{s: sum(r["status"] == s for r in rows) for s in STATUSES if s != "ok"}},
        "failed": [{"name": r["name"], "status": r["status"], "reason": r["reason"]} for r in rows
                   if r["status"] != "ok"],
        "notes": notes,
        "metrics": metrics,
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": package_versions(("torch", "numpy", "diffusers", "onnxruntime")),
    }


def markdown_row(summary: dict[str, Any]) -> str:
    """``| label | dataset | AbsRel | δ1 | δ2 | δ3 | edge F1 | scored/total |`` (percent, as in the paper)."""
    m, c = summary["metrics"], summary["count"]

    def pct(k: str) -> str:
        return f"{100 * m[k]:.1f}" if k in m else "-"

    edge = f"{m['edge_f1']:.3f}" if "edge_f1" in m and not math.isnan(m["edge_f1"]) else "-"
    return (f"| {summary['label']} | {summary['dataset']} | {pct('abs_rel')} | {pct('delta1')} | {pct('delta2')} | "
            f"{pct('delta3')} | {edge} | {c['scored']}/{c['total']} |")
