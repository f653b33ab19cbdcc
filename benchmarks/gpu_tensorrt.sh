#!/bin/bash
# TensorRT on a lent GPU machine, as a user would do it (docs/tensorrt.md): the documented install, depth-doctor, the
# bundled model's fp16 export and engines, then depth-bench parity and latency with TensorRT rows. Every step's output
# goes to OUT/<step>.log and its exit status to OUT/steps.log; a failing step (e.g. no package index reachable for the
# install) is recorded and the next steps still run with what is there.
#
#   OUT=out bash benchmarks/gpu_tensorrt.sh
set -u
OUT=${OUT:?set OUT to a results folder}
mkdir -p "$OUT"
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" >> "$OUT/steps.log"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc" >> "$OUT/steps.log"
  tail -3 "$OUT/$name.log" | sed "s/^/   $name| /" >> "$OUT/steps.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1
step install 240 make install EXTRAS=
[ -x .venv/bin/depth-doctor ] && export PATH=$PWD/.venv/bin:$PATH
step doctor 60 depth-doctor
step export 240 depth-export --out engines --fp16 --overwrite
step parity 120 depth-bench parity --engine engines --count 3 --json "$OUT/parity_gpu.json" --md "$OUT/parity_gpu.md"
step latency 120 depth-bench latency --engine engines --device cuda --backends torch,onnx-fp16,tensorrt,torch-fp16 \
  --json "$OUT/bench_latency_trt.json" --md "$OUT/bench_latency_trt.md"
cat "$OUT/steps.log"
