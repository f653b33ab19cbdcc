"""Console entry points that set process-wide settings before any library reads them."""

from __future__ import annotations

import os


def depth_run() -> None:
    """``depth-run``: OpenMP threads that sleep as soon as they are idle (``OMP_WAIT_POLICY=PASSIVE``, unless the
    environment already sets a policy). The reader and writer threads share the CPU with the networks, and PyTorch's
    OpenMP threads, idle between the pipeline's few tensor operations, would otherwise spin on it. OpenMP reads the
    policy once, when PyTorch loads: hence here, before anything imports it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agdepth.runtime.cli import main

    main()


__all__ = ["depth_run"]
