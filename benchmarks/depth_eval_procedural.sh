#!/usr/bin/env bash
# depth-eval on the procedural unseen domains: the bundled model and the three ablation checkpoints of
# benchmarks/results/ablation_tiny.md (trained by benchmarks/ablation_tiny.py into runs/ablation_b3/), then Table 3.
#   bash benchmarks/depth_eval_procedural.sh [RESULTS_MD]
# Each model runs at its checkpoint's defaults (1 step, 1 member, trailing) on 50 test scenes per domain at 128x128.
set -euo pipefail
md=${1:-benchmarks/results/depth_eval_procedural.md}
out=eval/procedural
rm -rf "$out"  # from scratch: the trivial predictions below are rewritten in place, which resuming cannot detect
declare -A models=(
  ["L_v"]=runs/ablation_b3/baseline/checkpoint
  ["L_v + L_depth"]=runs/ablation_b3/depth_loss/checkpoint
  ["L_v + L_depth + L_feature"]=runs/ablation_b3/full/checkpoint
  ["bundled (agdepth/weights/tiny)"]=agdepth/weights/tiny
)
order=("L_v" "L_v + L_depth" "L_v + L_depth + L_feature" "bundled (agdepth/weights/tiny)")
# the trivial predictor (the mean training depth map of the recipe) as saved predictions, scored like any method's
python -c "
import numpy as np
from pathlib import Path
from agdepth.evaluation.datasets import ProceduralEvalDataset
from agdepth.training.baseline import mean_train_depth
for d in ('forest', 'tabletop'):
    for name in ProceduralEvalDataset(d, 50).names():
        p = Path('$out/trivial_predictions') / name
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p.with_suffix('.npy'), mean_train_depth((128, 128)))"
folders=()
for domain in forest tabletop; do
  depth-eval --dataset "procedural-$domain" --predictions "$out/trivial_predictions" \
    --label "mean training depth (trivial)" --out "$out/trivial/$domain" --no-progress
done
folders+=("$out/trivial")
for label in "${order[@]}"; do
  slug=$(echo "$label" | tr -c 'A-Za-z0-9\n' '_')
  for domain in forest tabletop; do
    depth-eval --dataset "procedural-$domain" --checkpoint "${models[$label]}" --label "$label" \
      --out "$out/$slug/$domain" --no-progress
  done
  folders+=("$out/$slug")
done
{
  echo "# depth-eval on the procedural unseen domains"
  echo
  echo "Command: \`bash benchmarks/depth_eval_procedural.sh\` (one \`depth-eval --dataset procedural-DOMAIN"
  echo "--checkpoint CKPT --label LABEL\` per model and domain, the trivial predictor's maps scored with"
  echo "\`--predictions\`, then \`depth-eval table 3 ${folders[*]}\`)  "
  python -c "
import datetime, platform
from agdepth.machine import cpu_model, package_versions
v = package_versions(('torch', 'diffusers', 'numpy'))
print('Date (UTC):', datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'), ' ')
print('Machine:', cpu_model(), platform.platform(), ' ')
print('Versions:', ', '.join(f'{k} {x}' for k, x in v.items()))"
  echo
  echo "50 test scenes per domain at 128×128; each checkpoint at its own defaults (1 step, 1 member, trailing; the"
  echo "ablation checkpoints process at 64 px, the bundled model at its configured resolution). AbsRel and δ1 in %;"
  echo "edge F1: \`agdepth.metrics.boundary_f1\` (10 % relative depth jumps, 1 px tolerance), averaged over images"
  echo "with depth edges. Per-sample CSVs and summaries: \`$out/\` (not committed; rerun the command)."
  echo
  depth-eval table 3 "${folders[@]}"
} > "$md"
cat "$md"
