"""Starting or joining Ray the way this project needs it.

``address`` None or ``"local"`` starts a private Ray on this machine bound to the loopback interface only (its node
address is 127.0.0.1, checked; no dashboard; usage stats off; token auth off, since nothing outside the machine can
reach it), with its session files under ``temp_dir`` when given (Ray's default is ``/tmp/ray``) and a capped object
store. Any other address joins that cluster (``ray start --head`` prints it; ``auto`` reads ``RAY_ADDRESS``) with the
cluster's own settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LOCAL = "local"
LOOPBACK = "127.0.0.1"
LOCAL_OBJECT_STORE_MB = 512  # a local Ray on a small machine must not reserve a third of its memory for objects


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("this command needs Ray: pip install 'agdepth[cluster]' (ray[data,serve])") from exc
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None, temp_dir: str | Path | None = None,
             object_store_mb: int = LOCAL_OBJECT_STORE_MB) -> Any:
    """Start (local) or join (an address) Ray unless this process has already; returns the ``ray`` module. A local
    Ray that would listen on anything but 127.0.0.1 is shut down again with a RuntimeError."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    local = address in (None, LOCAL)
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray takes the loopback address for a local node only where it does not expect clusters (it reads this at
        # import; `_node_ip_address` does not reach every component)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if not local:
        ray.init(address=address, log_to_driver=False)
        return ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before the variable was set
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb * 1024**2,
             log_to_driver=False, _temp_dir=None if temp_dir is None else str(Path(temp_dir).resolve()))
    bound = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
    if bound != [LOOPBACK]:
        ray.shutdown()
        raise RuntimeError(f"the local Ray bound {', '.join(bound)} instead of {LOOPBACK} only")
    return ray


__all__ = ["LOCAL", "LOOPBACK", "import_ray", "init_ray"]
