#!/usr/bin/env bash
# Static check of the TensorRT code paths against tensorrt-stubs, in an environment of its own: TensorRT itself cannot
# be installed here, so mypy against its published stubs is what checks every TensorRT call we make.
#   scripts/typecheck_tensorrt.sh [VENV_DIR]        (make typecheck)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-types}"
py="${PY:-python3}"
if [ ! -x "$venv/bin/mypy" ]; then
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "mypy>=1.10,<2" "numpy>=1.24,<3"
  # --no-deps: the stubs depend on the tensorrt wheels, which are download stubs here
  "$venv/bin/python" -m pip install -q --no-deps "tensorrt-stubs>=10.13,<11"
fi
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
stubs="$venv/stubs"
if [ ! -d "$stubs/tensorrt_bindings" ]; then
  # tensorrt-stubs 10.13 as published: no py.typed marker (mypy skips it from site-packages, so it is served through
  # MYPYPATH), a parameter named `in` (a syntax error), one non-default parameter after defaults, and an import of
  # the tensorrt_libs wheel. Mend those in a copy; the API surface is untouched.
  mkdir -p "$stubs"
  cp -r "$site/tensorrt" "$site/tensorrt_bindings" "$stubs/"
  sed -i -E 's/([(,] *)in:/\1in_:/g; s/(power: Weights = None, channel_axis: int)\)/\1 = ...)/' \
    "$stubs/tensorrt_bindings/tensorrt.pyi"
  sed -i -E '/^(import|from) tensorrt_libs/d' "$stubs/tensorrt/__init__.pyi"
fi
MYPYPATH="$stubs" "$venv/bin/mypy" --config-file scripts/mypy-tensorrt.ini agdepth/export/tensorrt_build.py \
  agdepth/runtime/backends/tensorrt_backend.py agdepth/bench/parity.py
