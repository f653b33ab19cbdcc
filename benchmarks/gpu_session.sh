#!/bin/bash
# One lent-GPU session (2026-11-26, NVIDIA H200): CUDA latency of the bundled model and of the SD2 architecture, then
# a U-Net scaling screen on the tiny recipe. Results: benchmarks/results/bench_latency{,_sd2}_h200.md and
# benchmarks/results/recipe_scale_screen_h200.md.
#
#   BASE=runs/b3 OUT=out bash benchmarks/gpu_session.sh
#
# BASE: a tiny-recipe run whose vae/ and depth_autoencoder/ the screen reuses (the bundle's run, runs/b3).
# OUT: where the reports go. The session had 15 minutes of device time in all, hence the hard time limits: training
# stops after TRAIN_S seconds, and each variant's last saved state (every 250 updates) is exported and scored.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-}:$PWD
BASE=${BASE:-runs/b3}
T0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
B="python3 -m agdepth.bench.cli latency --device cuda"
timeout 100 $B --backends torch,torch-fp16 --compile reduce-overhead --work-dir /tmp/bench \
  --json "$OUT/bench_latency_h200.json" --md "$OUT/bench_latency_h200.md" > "$OUT/bench.log" 2>&1
timeout 130 $B --random-weights sd2 --backends torch,torch-fp16 --processing-res 768 --warmup 2 --repeats 5 \
  --work-dir /tmp/bench --json "$OUT/bench_latency_sd2_h200.json" --md "$OUT/bench_latency_sd2_h200.md" \
  >> "$OUT/bench.log" 2>&1

# Scaling screen: the U-Net stage only, 3 variants side by side (5 CPU threads each), on BASE's VAE and autoencoder.
declare -A V
V[b32]="--set stages.unet.batch_size=32"
V[b32w]="--set stages.unet.batch_size=32 --set model.unet_block_out_channels=[64,128,256]"
V[b64w2]="--set stages.unet.batch_size=64 --set model.unet_block_out_channels=[64,128,256] --set model.unet_layers_per_block=2"
TRAIN_S=$(( 440 - ($(date +%s) - T0) ))
[ $TRAIN_S -gt 330 ] && TRAIN_S=330
for v in "${!V[@]}"; do
  mkdir -p runs/g/$v && cp -r "$BASE/vae" "$BASE/depth_autoencoder" runs/g/$v/
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=5 timeout $TRAIN_S python3 -m agdepth.training.cli unet --config tiny --out runs/g/$v --no-progress \
    --set stages.unet.ckpt_every=250 --set stages.unet.val_every=500 ${V[$v]} > runs/g/$v.log 2>&1 &
done
wait
for v in "${!V[@]}"; do
  s=$(python3 -c "import json; print(json.load(open('runs/g/$v/train_state/unet/trainer.json'))['step'])")
  # resuming at iterations = the saved step exports that state as a checkpoint without training further
  # shellcheck disable=SC2086
  ( OMP_NUM_THREADS=5 python3 -m agdepth.training.cli unet --config tiny --out runs/g/$v --no-progress --resume \
      --set stages.unet.iterations=$s ${V[$v]} >> runs/g/$v.log 2>&1 && \
    OMP_NUM_THREADS=5 python3 benchmarks/eval_tiny.py --checkpoint "$v@$s=runs/g/$v/checkpoint" \
      --settings 1x1:trailing --count 50 --no-baseline --json "$OUT/eval_$v.json" >> runs/g/$v.log 2>&1 ) &
done
wait
for v in "${!V[@]}"; do cp runs/g/$v/logs/unet.jsonl "$OUT/$v.unet.jsonl"; done
