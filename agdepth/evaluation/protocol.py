"""The benchmark protocol: score one dataset's predictions sample by sample, resumably, into CSV + JSON + markdown.

Per sample (Marigold's ``eval.py``): the prediction is resized to the ground truth's size if needed (bilinear),
aligned to it by least squares (depth space; disparity space as an option) on the scored pixels, clipped to the
dataset's depth range, and measured with :mod:`agdepth.metrics`; dense ground truth also gets the boundary F1. The
summary averages per image. A sample that cannot be read, has no prediction, has an unusable prediction, or has no
scored pixel is listed with its reason and counted: it is never dropped silently, and it never changes the means.

Scored pixels are the dataset's mask where the ground truth is finite and > 0: NaN/inf ground truth never enters the
alignment or the metrics.

Unusable predictions (status ``invalid``), from any source (saved ``.npy`` maps, or a model on any backend):
    * not one [H, W] map of real numbers (after dropping singleton batch/channel axes), or empty;
    * any non-finite value (NaN, +inf, -inf) at a scored pixel, counted after the resize to the ground truth: the
      whole sample fails, with a reason naming the file (or the model) and the count of non-finite pixels. It is
      not scored on its finite pixels: a metric must not silently change with a few broken pixels. Non-finite
      values at pixels that are not scored (e.g. sky) are allowed when the map has the ground truth's size; a map of
      another size spreads them by interpolation, so they then count where they land;
    * finite values so extreme that the alignment or a metric overflows (a non-finite metric).

Output folder:
    settings.json    what the scores depend on; a resumed run must match it
    per_sample.csv   one row per sample: name, status (ok / missing / corrupt / invalid / empty), reason, metrics
    summary.json     counts (total, scored, failed, per status), failures, mean metrics (empty when nothing was
                     scored; null for a boundary score no scored image defines), notes, command, machine, versions
    row.md           the markdown table row of this result
    predictions/     (--save-predictions) the raw predictions as <name>.npy, re-scorable with --predictions

A resumed run keeps the rows scored ``ok`` with finite metrics and retries every other sample.
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
STATUSES: tuple[str, ...] = ("ok", "missing", "corrupt", "invalid", "empty")
# a sample -> affine-invariant depth (or disparity) map. A predictor may also have ``origin(sample) -> str`` naming
# where its map comes from (a file); the reason of an invalid prediction starts with it.
Predictor = Callable[[EvalSample], np.ndarray]

NO_ALIGNMENT = "none"  # evaluate_dataset(alignment=...): score metric predictions as they are


class PredictionError(ValueError):
    """A prediction that cannot be scored (see the module docstring); its sample's status is ``invalid``."""


def scored_mask(sample: EvalSample) -> np.ndarray:
    """The pixels that are scored: the sample's mask where the ground truth is finite and > 0 (as
    :mod:`agdepth.metrics` restricts every mask)."""
    gt = np.asarray(sample.depth, np.float64)
    with np.errstate(invalid="ignore"):
        return np.asarray(sample.mask, bool) & np.isfinite(gt) & (gt > 0)


def as_depth_map(pred: Any, origin: str = "prediction") -> np.ndarray:
    """``pred`` as one float64 [H, W] map (singleton batch/channel axes dropped); PredictionError naming ``origin``
    when it is not a non-empty real-valued map of that shape."""
    if isinstance(pred, torch.Tensor):
        pred = pred.detach().cpu().numpy()
    try:
        a = np.asarray(pred)
    except (ValueError, TypeError) as e:  # e.g. a ragged list
        raise PredictionError(f"{origin}: not an array ({e})") from e
    if a.dtype.kind not in "biuf":
        raise PredictionError(f"{origin}: dtype {a.dtype} is not a real-valued depth map")
    if a.size == 0:
        raise PredictionError(f"{origin}: empty prediction (shape {a.shape})")
    shape = a.shape
    while a.ndim > 2 and 1 in (a.shape[0], a.shape[-1]):  # [1,H,W], [1,1,H,W], [H,W,1]
        a = a[0] if a.shape[0] == 1 else a[..., 0]
    if a.ndim != 2:
        raise PredictionError(f"{origin}: a prediction must be one [H, W] map, got shape {shape}")
    return a.astype(np.float64)


def checked_prediction(pred: Any, sample: EvalSample, origin: str = "prediction") -> np.ndarray:
    """``pred`` as it is scored: one float64 map at the ground truth's size (:func:`as_depth_map`, :func:`resize_to`),
    finite at every scored pixel. PredictionError (naming ``origin`` and counting the non-finite scored pixels)
    otherwise."""
    a = pred if isinstance(pred, np.ndarray) and pred.dtype == np.float64 and pred.ndim == 2 else as_depth_map(
        pred, origin)
    p = resize_to(a, sample.depth.shape)
    scored = scored_mask(sample)
    bad = scored & ~np.isfinite(p)
    n = int(bad.sum())
    if n:
        v = p[bad]
        kinds = ", ".join(f"{k} {what}" for k, what in ((int(np.isnan(v).sum()), "NaN"),
                                                         (int(np.isposinf(v).sum()), "+inf"),
                                                         (int(np.isneginf(v).sum()), "-inf")) if k)
        resized = (f" after resizing the {a.shape[0]}x{a.shape[1]} map to the ground truth's "
                   f"{p.shape[0]}x{p.shape[1]}" if a.shape != p.shape else "")
        raise PredictionError(f"{origin}: {n} of {int(scored.sum())} scored pixels are not finite ({kinds}){resized}")
    return p


def score_checked(pred: Any, sample: EvalSample, depth_range: tuple[float, float], alignment: Alignment,
                  dense: bool, alignment_max_res: int | None = None, origin: str = "prediction") -> dict[str, float]:
    """:func:`score` of a :func:`checked_prediction`, and PredictionError when a metric is still not finite (finite
    values so extreme that the alignment overflows). Boundary scores may be NaN: undefined without depth edges."""
    p = checked_prediction(pred, sample, origin)
    metrics = score(p, sample, depth_range, alignment, dense, alignment_max_res)
    bad = [k for k in METRIC_NAMES if not math.isfinite(metrics[k])]
    if bad:
        v = p[scored_mask(sample)]
        raise PredictionError(f"{origin}: scoring gave non-finite {', '.join(bad)} (prediction values "
                              f"{v.min():.3g} to {v.max():.3g} at the scored pixels)")
    return metrics


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

    def origin(self, sample: EvalSample) -> str:
        return str(self.path(sample.name))

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


def _scored_row(row: dict[str, Any]) -> bool:
    """A per_sample.csv row that a resumed run keeps: status ok and every metric a finite number (a row written by
    an older version from a non-finite prediction is scored again)."""
    if row.get("status") != "ok":
        return False
    try:
        return all(math.isfinite(float(row[k])) for k in METRIC_NAMES)
    except (KeyError, TypeError, ValueError):
        return False


def _prepare_out(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, dict[str, Any]]:
    """Create/validate the output folder; return the rows already scored (status ok, finite metrics) for resuming."""
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
                if _scored_row(row):
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
    retried). ``alignment``/``depth_range`` default to the dataset's; ``alignment="none"`` scores the predictions
    as they are (metric predictions). A prediction is checked by
    :func:`score_checked` whatever ``predict`` is; an unusable one fails its sample (status ``invalid``).
    """
    out = Path(out)
    alignment = dataset.alignment if alignment is None else alignment
    if alignment == NO_ALIGNMENT:  # the predictions are metric already (e.g. fitted to anchors)
        alignment = None
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
    origin_of: Callable[[EvalSample], str] | None = getattr(predict, "origin", None)
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
                origin = origin_of(sample) if origin_of is not None else f"prediction of {label}"
                pred = as_depth_map(pred, origin)
                if save_predictions:  # before the finiteness check: a broken map is kept to be looked at
                    target = pred_dir / Path(sample.name).with_suffix(".npy")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    np.save(target, pred.astype(np.float32))
                    origin = f"{origin} (saved as {target})"
                row.update(score_checked(pred, sample, (lo, hi), alignment, dataset.dense, dataset.alignment_max_res,
                                         origin))
            except FileNotFoundError as e:
                row.update(status="missing", reason=f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
            except SampleReadError as e:
                row.update(status="missing" if isinstance(e.__cause__, FileNotFoundError) else "corrupt",
                           reason=str(e))
            except PredictionError as e:
                row.update(status="invalid", reason=str(e))
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
    metrics: dict[str, float | None] = {}
    metrics.update(average([{k: float(r[k]) for k in keys} for r in ok]) if ok else {})
    notes = [n for n in (dataset.count_note(),) if n]
    if not ok:
        notes.append(f"no sample scored (0 of {len(rows)}): no mean metrics")
    undefined = [k for k, v in metrics.items() if v is None or math.isnan(v)]
    for k in undefined:  # only boundary scores can be NaN here (no depth edges); a JSON null, never a NaN
        metrics[k] = None
    if undefined:
        notes.append(f"{', '.join(undefined)}: undefined on every scored sample (no depth edges), written as null")
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

    def defined(k: str) -> bool:
        return m.get(k) is not None and math.isfinite(m[k])

    def pct(k: str) -> str:
        return f"{100 * m[k]:.1f}" if defined(k) else "-"

    edge = f"{m['edge_f1']:.3f}" if defined("edge_f1") else "-"
    return (f"| {summary['label']} | {summary['dataset']} | {pct('abs_rel')} | {pct('delta1')} | {pct('delta2')} | "
            f"{pct('delta3')} | {edge} | {c['scored']}/{c['total']} |")
