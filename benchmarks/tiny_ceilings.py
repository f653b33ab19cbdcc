"""How far below the trivial predictor can a prediction of a given kind get on the unseen procedural domains?

    python benchmarks/tiny_ceilings.py --count 50 \
        --json benchmarks/results/tiny_ceilings.json --md benchmarks/results/tiny_ceilings.md

Oracles built from the ground truth, each scored by the depth-eval protocol (``protocol.score``: per-image least
squares, clip to the domain's range, AbsRel) in depth space and, with the target taken as disparity, in disparity
space:

- ``target``: the training target itself (the 2 %/98 % quantile-normalised map, clipped): the best any model
  trained on that target can do;
- ``target@64``: the target at the bundled model's 64 px processing resolution, resized back;
- ``target, blur σ``: the target blurred by a Gaussian of σ px (a smooth prediction with the right layout);
- ``best plane``: per image, the least-squares plane a + b·y + c·x through the valid ground truth (depth, or
  disparity): a predictor that knows the layout perfectly and nothing else.

The trivial predictor (mean training depth; its reciprocal in disparity space) and a checkpoint at its default
setting are scored the same way, so each row reads against the issue's bar (half the trivial predictor's AbsRel).

A second table asks whether the checkpoint has learnt its training domains: the same three predictors (checkpoint,
best plane, trivial) in depth space on the first ``--count`` scenes of each training source's pool (train split,
the source's camera settings: scenes the model was trained on) and on as many unseen test scenes of that domain.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from agdepth import default_checkpoint
from agdepth.bench.report import publish_report, report_meta
from agdepth.data.procedural import DEFAULT_SOURCE_DOMAINS, DEPTH_RANGES, EVAL_DOMAINS, camera_overrides, render_scene
from agdepth.depth_norm import normalize_depth
from agdepth.evaluation.datasets import EvalSample, ProceduralEvalDataset
from agdepth.evaluation.protocol import resize_to, score
from agdepth.runtime import DepthPipeline
from agdepth.training.baseline import mean_train_depth
from agdepth.training.config import load_config

SPACES = {"depth": "least_squares", "disparity": "least_squares_disparity"}


def _target(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The training target of a depth-like map: quantile-normalised to [0, 1] (``depth_norm.normalize_depth``)."""
    n = normalize_depth(torch.from_numpy(x.astype(np.float32))[None], torch.from_numpy(mask)[None])[0].numpy()
    return (n + 1) / 2


def _plane(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:x.shape[0], 0:x.shape[1]].astype(np.float64) / max(x.shape)
    a = np.stack([np.ones(mask.sum()), yy[mask], xx[mask]], 1)
    c = np.linalg.lstsq(a, x[mask].astype(np.float64), rcond=None)[0]
    return c[0] + c[1] * yy + c[2] * xx


def oracles(proc_res: int) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """name -> f(depth-like GT map in this space, mask) -> prediction in the same space."""
    def at_res(x: np.ndarray, m: np.ndarray) -> np.ndarray:
        return resize_to(resize_to(_target(x, m), (proc_res, proc_res)), x.shape)

    return {"target": _target, f"target@{proc_res}": at_res,
            "target, blur σ=2 px": lambda x, m: gaussian_filter(_target(x, m), 2),
            "target, blur σ=4 px": lambda x, m: gaussian_filter(_target(x, m), 4),
            "best plane": _plane}


def _predict(pipe: DepthPipeline, samples: list[EvalSample]) -> np.ndarray:
    """The checkpoint's default setting, in eval_tiny.py's batches of 8 (the noise is drawn per batch)."""
    return np.concatenate([pipe([s.rgb for s in samples[i:i + 8]], seed=0).depth for i in range(0, len(samples), 8)])


def training_domains(pipe: DepthPipeline, trivial: np.ndarray, count: int, size: tuple[int, int],
                     config: str = "tiny") -> dict[str, dict[str, float]]:
    """'domain (split)' -> predictor -> mean depth-space AbsRel, on training-pool and unseen scenes of each source."""
    out: dict[str, dict[str, float]] = {}
    for src in load_config(config).data.sources:
        for dom in src.domains or DEFAULT_SOURCE_DOMAINS:
            for split in ("train", "test"):
                scenes = [render_scene(dom, i, size, split, camera=camera_overrides(src.camera)) for i in range(count)]
                samples = [EvalSample(str(i), sc.rgb, np.where(sc.valid, sc.depth, 0).astype(np.float32), sc.valid)
                           for i, sc in enumerate(scenes)]
                preds = {"checkpoint": list(_predict(pipe, samples)), "best plane": [_plane(s.depth, s.mask)
                                                                                     for s in samples],
                         "trivial": [trivial] * count}
                out[f"{dom} ({'training pool' if split == 'train' else 'unseen scenes'})"] = {
                    k: float(np.mean([score(p, s, DEPTH_RANGES[dom], "least_squares", dense=False)["abs_rel"]
                                      for p, s in zip(v, samples, strict=True)])) for k, v in preds.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="default: the bundled model")
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--md", type=Path)
    args = ap.parse_args()
    meta = report_meta("python benchmarks/tiny_ceilings.py " + shlex.join(sys.argv[1:]),
                      ("torch", "diffusers", "numpy", "scipy"))
    size = (args.size, args.size)
    pipe = DepthPipeline.from_checkpoint(args.checkpoint or default_checkpoint())
    proc_res = pipe.backend.defaults.processing_resolution
    trivial = mean_train_depth(size)
    table: dict[str, dict[str, dict[str, float]]] = {}  # row -> domain -> space -> AbsRel

    def put(row: str, dom: str, space: str, values: list[float]) -> None:
        table.setdefault(row, {}).setdefault(dom, {})[space] = float(np.mean(values))

    for dom in EVAL_DOMAINS:
        ds = ProceduralEvalDataset(dom, args.count, size)
        samples: list[EvalSample] = [ds.load(i) for i in range(args.count)]
        model = _predict(pipe, samples)

        def abs_rel(pred: np.ndarray, s: EvalSample, space: str, rng: tuple[float, float] = ds.depth_range) -> float:
            return score(pred, s, rng, SPACES[space], dense=False)["abs_rel"]

        put("trivial (mean training depth)", dom, "depth", [abs_rel(trivial, s, "depth") for s in samples])
        put("trivial (mean training depth)", dom, "disparity",
            [abs_rel(1 / trivial, s, "disparity") for s in samples])
        put("bundled model, its default setting", dom, "depth",
            [abs_rel(p, s, "depth") for p, s in zip(model, samples, strict=True)])
        for name, f in oracles(proc_res).items():
            put(name, dom, "depth", [abs_rel(f(s.depth, s.mask), s, "depth") for s in samples])
            put(name, dom, "disparity", [abs_rel(f(np.where(s.mask, 1 / np.maximum(s.depth, 1e-6), 0), s.mask),
                                                 s, "disparity") for s in samples])

    own = training_domains(pipe, trivial, args.count, size)
    report = {
        **meta,
        "count_per_domain": args.count, "size": list(size), "processing_resolution": proc_res,
        "abs_rel": table,
        "training_domains_abs_rel": own,
    }
    head = " | ".join(f"{d} ({sp})" for d in EVAL_DOMAINS for sp in SPACES)
    lines = ["AbsRel in % after the per-image least-squares fit in the named space (`protocol.score`); '-' where a "
             "row has no prediction in that space. The bar is half the trivial predictor's AbsRel.", "",
             f"| prediction | {head} |", "|---|" + "---|" * (len(EVAL_DOMAINS) * len(SPACES))]
    bar = {d: {sp: v / 2 for sp, v in table["trivial (mean training depth)"][d].items()} for d in EVAL_DOMAINS}
    for row, per_dom in [*table.items(), ("**bar** (half the trivial predictor's)", bar)]:
        cells = [f"{100 * per_dom[d][sp]:.1f}" if sp in per_dom[d] else "-" for d in EVAL_DOMAINS for sp in SPACES]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", f"## Training domains: scenes the checkpoint was trained on, and unseen ones ({args.count} each)", "",
              "Depth-space AbsRel in %. `shapes` spans 0.05–80 m within one image, so its depth-space AbsRel is "
              "dominated by the nearest pixels for every predictor.", "",
              "| scenes | checkpoint | best plane | trivial |", "|---|---|---|---|"]
    lines += [f"| {k} | {100 * v['checkpoint']:.1f} | {100 * v['best plane']:.1f} | {100 * v['trivial']:.1f} |"
              for k, v in own.items()]
    text = publish_report(f"Ceilings on the unseen procedural domains ({args.count} test scenes each, "
                          f"{size[0]}×{size[1]})", report, "\n".join(lines), args.json, args.md)
    print(text)


if __name__ == "__main__":
    main()
