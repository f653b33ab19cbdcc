"""The machine extra of agdepth (cpu, gpu or gpu-cu13) for the Makefile; run with the venv's Python.

    python scripts/hw_extra.py pick              prints the extra matching the installed torch build
    python scripts/hw_extra.py clear EXTRA       uninstalls distributions that share a module folder with EXTRA's

onnxruntime and onnxruntime-gpu both install the `onnxruntime` module, and tensorrt-cu12 / tensorrt-cu13 both install
`tensorrt`, `tensorrt_bindings` and `tensorrt_libs`: installing one over the other leaves a mix of files, and
uninstalling one afterwards deletes the other's. So when a module has an owner other than the one EXTRA wants, every
owner of that module is uninstalled, and the following `pip install` puts the wanted one back whole.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from importlib import metadata


def _tensorrt(cuda: int) -> dict[str, str]:
    """TensorRT's module -> distribution for one CUDA major: tensorrt-cuXX, -bindings, -libs."""
    return {"tensorrt": f"tensorrt-cu{cuda}", "tensorrt_bindings": f"tensorrt-cu{cuda}-bindings",
            "tensorrt_libs": f"tensorrt-cu{cuda}-libs"}


# extra -> module -> the distribution that should own it
OWNERS: dict[str, dict[str, str]] = {
    "cpu": {"onnxruntime": "onnxruntime"},
    "gpu": {"onnxruntime": "onnxruntime-gpu", **_tensorrt(12)},
    "gpu-cu13": {"onnxruntime": "onnxruntime-gpu", **_tensorrt(13)},
}
CUDA_EXTRAS = {12: "gpu", 13: "gpu-cu13"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pick() -> int:
    with warnings.catch_warnings():  # torch warns when numpy is not installed yet
        warnings.simplefilter("ignore")
        import torch

    cuda = torch.version.cuda
    if not cuda:
        if shutil.which("nvidia-smi"):
            print(f"note: an NVIDIA driver is installed but torch {torch.__version__} is a CPU build: installing "
                  "agdepth[cpu]", file=sys.stderr)
        print("cpu")
        return 0
    extra = CUDA_EXTRAS.get(int(cuda.split(".")[0]))
    if extra is None:
        print(f"error: torch {torch.__version__} is built for CUDA {cuda}; agdepth's GPU extras cover CUDA 12 (gpu) "
              "and CUDA 13 (gpu-cu13). Install a CUDA 12 or 13 build of torch (make install TORCH_CUDA=...), or "
              "choose the CPU runtimes with make install HW_EXTRA=cpu", file=sys.stderr)
        return 1
    print(extra)
    return 0


def owners(module: str) -> set[str]:
    """Installed distributions whose files include ``module/__init__.py``."""
    found = set()
    for dist in metadata.distributions():
        if any(str(f).replace("\\", "/") == f"{module}/__init__.py" for f in dist.files or ()):
            found.add(_canonical(dist.metadata["Name"]))
    return found


def clear(extra: str) -> int:
    if extra not in OWNERS:
        print(f"error: unknown machine extra {extra!r} (expected one of {', '.join(OWNERS)})", file=sys.stderr)
        return 1
    remove: set[str] = set()
    for module, wanted in OWNERS[extra].items():
        present = owners(module)
        if present - {wanted}:
            remove |= present
    if remove:
        names = sorted(remove)
        print(f"switching to agdepth[{extra}]: uninstalling {', '.join(names)} (they share module folders)")
        return subprocess.call([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *names])
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["pick"] and len(argv) == 1:
        return pick()
    if argv[:1] == ["clear"] and len(argv) == 2:
        return clear(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
