# make demo | make test | make install | make lint | make bench-procedural | make clean
# The venv lives in .venv. PyTorch is chosen before the package: a CUDA build where an NVIDIA driver answers,
# otherwise the CPU build (TORCH_CPU). Override either, e.g. make install TORCH_CPU="torch==2.13.0 --index-url URL".
# The package is then installed with EXTRAS plus the machine extra (HW_EXTRA), picked from the torch build:
# cpu (onnxruntime), gpu (CUDA 12: onnxruntime-gpu, tensorrt-cu12) or gpu-cu13 (CUDA 13: onnxruntime-gpu, tensorrt-cu13).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
comma := ,
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch>=2.1
EXTRAS ?= train,dev,video,cluster,exr
HW_EXTRA ?=

.PHONY: install demo test test-fast lint typecheck bench-procedural clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing a CUDA build of PyTorch ($(TORCH_CUDA))"; \
		$(BIN)/python -m pip install -q "$(TORCH_CUDA)"; \
	else \
		echo "no CUDA device: installing the CPU build of PyTorch ($(TORCH_CPU))"; \
		$(BIN)/python -m pip install -q $(TORCH_CPU); \
	fi
	@touch $@

# The machine extra installed is recorded in $(VENV)/.hw-extra. Distributions of the other extra that share its module folders
# (onnxruntime vs onnxruntime-gpu, tensorrt-cu12 vs tensorrt-cu13) are uninstalled first, see scripts/hw_extra.py.
$(VENV)/.installed: setup.py $(VENV)/.torch
	@hw="$(HW_EXTRA)"; \
	if [ -z "$$hw" ]; then hw=$$($(BIN)/python scripts/hw_extra.py pick) || exit 1; fi; \
	$(BIN)/python scripts/hw_extra.py clear "$$hw" || exit 1; \
	echo "installing agdepth[$$hw$(if $(EXTRAS),$(comma)$(EXTRAS))]"; \
	$(BIN)/python -m pip install -q -e ".[$$hw$(if $(EXTRAS),$(comma)$(EXTRAS))]" && echo "$$hw" > $(VENV)/.hw-extra
	@touch $@

install: $(VENV)/.installed

# export the bundled model to ONNX, then depth maps (16-bit PNG, npy, coloured PNG) for examples/ in outputs/
demo: install
	$(BIN)/depth-export --out engines --overwrite
	$(BIN)/depth-run examples --engine engines/unet.onnx --out outputs --overwrite

# ruff, and the package's layers (.importlinter: nothing imports upward; the runtime never imports the export)
lint: install
	$(BIN)/ruff check agdepth tests benchmarks scripts setup.py
	$(BIN)/lint-imports

# The TensorRT code's TensorRT, Polygraphy and torch calls, checked by mypy in a venv of its own (.venv-types)
typecheck:
	PY=$(PY) scripts/typecheck_tensorrt.sh

# everything (CI); test-fast leaves out the tests marked slow (pytest.ini), for a quick check while working
test: install lint typecheck
	$(BIN)/python -m pytest -q tests

test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow" tests

bench-procedural: install
	$(BIN)/python benchmarks/bench_procedural.py --json benchmarks/results/procedural_speed.json \
		--md benchmarks/results/procedural_speed.md

clean:
	rm -rf $(VENV) .venv-types build *.egg-info .pytest_cache .ruff_cache engines outputs
