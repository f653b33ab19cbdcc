"""Writing outputs on a worker thread, so encoding one chunk's files overlaps the next chunk's inference.

PNG encoding (zlib) and file writes release the GIL, so one worker overlaps them with the networks; on a GPU,
writing a large 16-bit PNG can take as long as the networks themselves.
"""

from __future__ import annotations

import errno
import re
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from agdepth.imageio import PathLike, write_outputs


def disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, or numpy's short write ("76800 requested and 56288 written"), which carries no errno."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return bool(re.search(r"\d+ requested and \d+ written", str(err)))


class OutputWriteError(RuntimeError):
    """A background write failed; the message names the input whose outputs could not be written."""


class BackgroundWriter:
    """``write_outputs`` on one worker thread, with at most ``max_pending`` images queued.

    ``submit`` blocks while the queue is full and re-raises the first failed write as :class:`OutputWriteError`
    (naming the input), so a full disk stops the run at the next image instead of at the end. ``close`` waits for
    every queued write.
    """

    def __init__(self, max_pending: int = 8) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agdepth-writer")
        self._pending: deque[tuple[str, Future[None]]] = deque()

    def submit(self, source: str, paths: Mapping[str, PathLike], depth: Any, uncertainty: Any = None) -> None:
        while len(self._pending) >= self.max_pending:
            self._wait_oldest()
        self._pending.append((source, self._pool.submit(write_outputs, paths, depth, uncertainty)))

    def _wait_oldest(self) -> None:
        source, fut = self._pending.popleft()
        try:
            fut.result()
        except (OSError, ValueError) as e:
            if disk_full(e):
                raise OutputWriteError(f"no space left on device while writing the outputs of {source}: free some "
                                       "space and run the same command again (finished images are kept and skipped)"
                                       ) from e
            raise OutputWriteError(f"could not write the outputs of {source}: {e}") from e

    def close(self) -> None:
        """Wait for every queued write. The first failure is raised; the writes queued after it still run."""
        try:
            while self._pending:
                self._wait_oldest()
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """After a failure: let queued writes finish, without reporting theirs."""
        self._pending.clear()
        self._pool.shutdown(wait=True)
