"""Host work on worker threads beside the networks: inputs read ahead, outputs written behind.

``depth-run`` is a three-stage pipeline. :class:`ReadAhead` decodes the next images on a small pool while the
networks run on the current ones (results in input order, each image's error kept with it); the networks run on
the main thread; :class:`BackgroundWriter` encodes and writes finished images on a pool sized to the machine. Image
decoding, PNG encoding (zlib) and file writes release the GIL, so the pools overlap them with the networks; on a GPU,
writing a large 16-bit PNG can take as long as the networks themselves.
"""

from __future__ import annotations

import errno
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from agdepth.imageio import PathLike, write_outputs

S = TypeVar("S")
T = TypeVar("T")

MAX_WRITERS = 8  # beyond this, more threads mostly contend for the GIL and the disk
MAX_READERS = 4


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_writers() -> int:
    """Writer threads for this machine: one per usable CPU, at most :data:`MAX_WRITERS`."""
    return min(MAX_WRITERS, usable_cpus())


def default_readers() -> int:
    """Reader threads for this machine: one per usable CPU, at most :data:`MAX_READERS` (decoding one chunk ahead
    needs few)."""
    return min(MAX_READERS, usable_cpus())


def disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, or numpy's short write ("76800 requested and 56288 written"), which carries no errno."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    return bool(re.search(r"\d+ requested and \d+ written", str(err)))


def network_threads() -> int:
    """CPU threads for the networks while the reader and writer pools work beside them: half the usable CPUs, at
    least one. On a CPU, decoding and PNG-encoding an image costs about what the networks do at the default setting;
    and a network that spreads each operator over every core stalls at each one until the pools give a core back."""
    return max(1, usable_cpus() // 2)


class OutputWriteError(RuntimeError):
    """A background write failed; the message names the input whose outputs could not be written."""


class BackgroundWriter:
    """``write_outputs`` on ``workers`` threads (None: :func:`default_writers`), at most ``max_pending`` images queued.

    ``submit`` blocks while the queue is full and re-raises the first failed write, in submission order, as
    :class:`OutputWriteError` (naming the input), so a full disk stops the run within a few images instead of at the
    end. ``close`` waits for every queued write. Each image's files are written by one worker, each file atomically
    (:func:`agdepth.imageio.write_outputs`); different images never share a file, so the workers never race.
    """

    def __init__(self, max_pending: int = 8, workers: int | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.workers = default_writers() if workers is None else workers
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="agdepth-writer")
        self._pending: deque[tuple[str, Future[None]]] = deque()

    def submit(self, source: str, paths: Mapping[str, PathLike], depth: Any, uncertainty: Any = None) -> None:
        self.submit_call(source, write_outputs, paths, depth, uncertainty)

    def submit_call(self, source: str, write: Callable[..., Any], *args: Any) -> None:
        """Queue ``write(*args)``, the outputs of ``source``, with :meth:`submit`'s back-pressure and reporting."""
        while self._pending and self._pending[0][1].done():  # report a failure as soon as it is known
            self._wait_oldest()
        while len(self._pending) >= self.max_pending:
            self._wait_oldest()
        self._pending.append((source, self._pool.submit(write, *args)))

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
        """After a failure or an interrupt: let queued writes finish, without reporting theirs."""
        self._pending.clear()
        self._pool.shutdown(wait=True)


class ReadAhead(Generic[S, T]):
    """``read(item)`` for each of ``items`` on ``workers`` threads (None: :func:`default_readers`), at most ``depth``
    items ahead of the consumer.

    :meth:`take` hands back the results in the order of ``items``: the next item's value, or the exception its read
    raised (raised by ``take``, for that item alone: the reads after it go on). ``close`` drops the reads not yet
    started and waits for the running ones. Only the consumer's thread may call ``take`` and ``close``.
    """

    def __init__(self, items: Iterable[S], read: Callable[[S], T], depth: int, workers: int | None = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        workers = default_readers() if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.depth = depth
        self._read = read
        self._items: Iterator[S] = iter(items)
        self._pool = ThreadPoolExecutor(max_workers=min(workers, depth), thread_name_prefix="agdepth-reader")
        self._pending: deque[Future[T]] = deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self.depth:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._read, item))

    def take(self) -> T:
        """The next item's result (its read's exception is raised here). IndexError when every item was taken."""
        if not self._pending:
            raise IndexError("ReadAhead: every item was taken")
        fut = self._pending.popleft()
        self._fill()  # keep `depth` reads going while the consumer works on this one
        return fut.result()

    def close(self) -> None:
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ReadAhead[S, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
