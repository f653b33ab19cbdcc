#!/usr/bin/env bash
# Static check of the TensorRT code paths in an environment of its own (.venv-types): TensorRT itself cannot be
# installed here, so mypy against tensorrt-stubs, Polygraphy's sources and torch's annotations is what checks every
# TensorRT, Polygraphy and torch call those files make. scripts/typecheck_negative.py proves the calls are typed:
# each of its deliberate misuses must be rejected.
#   scripts/typecheck_tensorrt.sh [VENV_DIR]        (make typecheck)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-types}"
py="${PY:-python3}"
files=(agdepth/artifacts/tensorrt.py agdepth/export/tensorrt_build.py agdepth/runtime/backends/tensorrt_backend.py
       agdepth/bench/parity.py
       tests/fake_tensorrt.py)
negative=scripts/typecheck_negative.py

# Bump the stamp's name when the list changes: an older .venv-types then gets the new packages.
stamp="$venv/.deps-2"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "mypy>=1.10,<2" "numpy>=1.24,<3" "polygraphy>=0.53,<0.60" typing_extensions
  # torch ships py.typed; --no-deps keeps a CUDA build's nvidia-* wheels out (only its annotations are needed), and
  # torch==2.13.0 is the CPU build on this project's machines
  "$venv/bin/python" -m pip install -q --no-deps "torch==2.13.0"
  # --no-deps: the stubs depend on the tensorrt wheels, which are download stubs here
  "$venv/bin/python" -m pip install -q --no-deps "tensorrt-stubs>=10.13,<11"
  touch "$stamp"
fi
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Polygraphy is annotated in places but ships no py.typed marker, so mypy would type all of it Any. Its loaders are
# classes (NetworkFromOnnxPath, CreateConfig, EngineBytesFromNetwork, Profile), whose signatures mypy reads from the
# sources; the lowercase functions (network_from_onnx_path, ...) are made at import time, invisible to mypy.
touch "$site/polygraphy/py.typed"
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

# One run over both: errors in the checked files fail the check; the negative file must have an error on each line
# marked expect-error.
status=0
out=$(MYPYPATH="$stubs" "$venv/bin/mypy" --config-file scripts/mypy-tensorrt.ini --cache-dir "$venv/mypy-cache" \
  "${files[@]}" "$negative" 2>&1) || status=$?
if [ "$status" -gt 1 ]; then
  printf '%s\n' "$out"
  echo "typecheck: mypy failed to run (exit $status)" >&2
  exit "$status"
fi
ours=$(printf '%s\n' "$out" | grep -v -e "^$negative:" -e '^Found [0-9]* error' -e '^Success:' || true)
accepted=()
while IFS=: read -r line _; do
  grep -q "^$negative:$line: error" <<<"$out" || accepted+=("$negative:$line: $(sed -n "${line}p" "$negative")")
done < <(grep -n "# expect-error" "$negative")
if [ -n "$ours" ]; then
  printf '%s\n' "$ours"
fi
if [ "${#accepted[@]}" -gt 0 ]; then
  echo "typecheck: mypy ACCEPTED deliberate misuse, so these calls are typed Any in $venv and the check proves" \
    "nothing about them:" >&2
  printf '  %s\n' "${accepted[@]}" >&2
  exit 1
fi
if [ -n "$ours" ]; then
  echo "typecheck: mypy found the errors above in the checked files" >&2
  exit 1
fi
# the contract tests' fake TensorRT must speak TensorRT's API: its classes, methods, parameter names and constants
"$venv/bin/python" scripts/check_fake_tensorrt.py "$stubs/tensorrt_bindings/tensorrt.pyi" tests/fake_tensorrt.py
echo "typecheck: ${#files[@]} files clean against tensorrt-stubs, Polygraphy and torch;" \
  "$(grep -c '# expect-error' "$negative") deliberate misuses in $negative rejected"
