#!/bin/bash
# The light VAE's GPU measurements for a lent CUDA machine (about 8 minutes of device time):
#  1. one 1-step 768² prediction of SD2's architecture (random weights, the sd2 config's light VAE), PyTorch fp32 and
#     fp16 with torch.compile (reduce-overhead), full against light VAE: bench_latency_sd2_{full,light}_gpu.md;
#  2. depth-run on 96 procedural 480×640 images with the bundled model on PyTorch CUDA at its defaults (light VAE)
#     and with --vae full, images/s from depth-run's own `done:` line: depth_run_480x640_gpu.txt. The recorded
#     earlier figure on the same GPU model is benchmarks/results/overlap_writes_h200.md (about 30 images/s).
#
#   OUT=out bash benchmarks/gpu_light_vae.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
OUT=${OUT:-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
for vae in full light; do
  timeout 150 python3 -m agdepth.bench.cli latency --device cuda --random-weights sd2 --backends torch,torch-fp16 \
    --compile reduce-overhead --processing-res 768 --vae "$vae" --warmup 2 --repeats 5 --work-dir /tmp/bench \
    --json "$OUT/bench_latency_sd2_${vae}_gpu.json" --md "$OUT/bench_latency_sd2_${vae}_gpu.md" \
    >> "$OUT/bench.log" 2>&1
done
python3 - <<'PY'
from pathlib import Path

from PIL import Image

from agdepth.data.procedural import EVAL_DOMAINS, render_scene

out = Path("/tmp/gpu_images")
out.mkdir(exist_ok=True)
for i in range(96):
    scene = render_scene(EVAL_DOMAINS[i % len(EVAL_DOMAINS)], i // len(EVAL_DOMAINS), size=(480, 640), split="test")
    Image.fromarray(scene.rgb).save(out / f"{i:03d}.jpg", quality=95)
PY
RUN='from agdepth.launch import depth_run; depth_run()'  # what the depth-run console script runs
for round in 1 2 3; do
  for vae in light full; do
    rm -rf "/tmp/gpu_out_$vae"
    echo "round $round, --vae $vae: $(timeout 60 python3 -c "$RUN" /tmp/gpu_images --device cuda --vae "$vae" \
      --out "/tmp/gpu_out_$vae" 2>&1 | grep 'done:')" | tee -a "$OUT/depth_run_480x640_gpu.txt"
  done
done
