"""The console entry point of depth-run sets OpenMP's wait policy before PyTorch loads (the only time OpenMP reads
it), and keeps a policy the environment already sets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import os, sys
import agdepth.launch
assert "torch" not in sys.modules  # nothing has loaded PyTorch (and OpenMP) yet
sys.argv = ["depth-run", "--help"]
try:
    agdepth.launch.depth_run()
except SystemExit:
    pass
print("policy", os.environ.get("OMP_WAIT_POLICY"), "torch loaded", "torch" in sys.modules)
"""


def _probe(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_depth_run_sets_a_passive_wait_policy_before_pytorch_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _probe(env) == "policy PASSIVE torch loaded True"
    assert _probe({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "policy ACTIVE torch loaded True"  # the user's wins


def test_the_console_script_is_the_launcher() -> None:
    scripts = dict(re.findall(r'"(depth-[a-z]+)=([\w.:]+)"', (ROOT / "setup.py").read_text()))
    assert scripts["depth-run"] == "agdepth.launch:depth_run"
