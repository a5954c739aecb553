"""Independent jobs on worker processes, each with a fixed number of torch threads.

Why processes and not threads: the train and evaluate stages run thousands of small tensor
operations (a meta-batch of 32 tasks, a catalogue of ~10^3 items). On two cores one intra-op
thread per process beats two threads in one process, and several intra-op threads per
process collapse (10x slower, measured) as soon as another process wants the same cores: each
operation waits for a descheduled thread. So a stage gives its independent jobs (one fit, one
model's evaluation) to ``workers`` processes with ``threads`` intra-op threads each.

The thread count is part of the result (a matrix product splits its sums by thread), so every
job runs under it whether it runs here (``workers`` 1) or in a worker process: the same
inputs, params and ``threads`` give the same bytes for any number of workers (tested).

Workers are started with ``spawn`` (no forked copy of the parent's thread pools and locks),
receive the stage's read-only inputs once (``shared``), and send their log records to the
parent's handlers. Results come back in job order, whatever order the jobs finish in, as
plain pickled bytes (copies, not file descriptors: any number of result tensors).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import torch

from metarec.errors import WorkerLost

_SHARED: Any = None   # a worker process's copy of the stage's read-only inputs
_THREADS = 1          # and its intra-op threads per job


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads and deterministic algorithms (what Lightning's
    ``deterministic=True`` leaves on after a process's first fit, so that no job depends on
    what ran before it in its process), then restore both."""
    old, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old)
        torch.use_deterministic_algorithms(det)


def _orphan_watch(parent: int, every: float = 1.0) -> None:
    """End this worker once the stage's process is gone (killed past its cleanup): a pool's
    worker would otherwise finish its job, tens of minutes on a large log, on the cores of
    whatever runs next (seen: two workers of a killed evaluate ran on for half an hour)."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _start(shared: Any, threads: int, logs: Any, level: int, parent: int) -> None:
    """Worker initialiser: keep the inputs, fix the threads, forward log records, and end
    with the parent process (:func:`_orphan_watch`)."""
    global _SHARED, _THREADS
    _SHARED, _THREADS = shared, threads
    threading.Thread(target=_orphan_watch, args=(parent,), daemon=True).start()
    # the record's message alone: the parent's handlers add level and name (basicConfig's
    # default format would put "INFO:metarec.progress:" inside the message)
    handler = QueueHandler(logs)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)    # a warning is one record too, not two stray lines
    for noisy in ("lightning", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    """``fn(shared, *args)`` in a worker, pickled here with the plain pickler: the process
    pool's own pickler (torch's) would share each tensor's memory through an open file
    descriptor, and an evaluation's thousands of result tensors exhaust the descriptors
    (``received 0 items of ancdata``, a broken pool)."""
    with torch_threads(_THREADS):
        return pickle.dumps(fn(_SHARED, *args), protocol=pickle.HIGHEST_PROTOCOL)


class Workers:
    """``with Workers(shared, workers, threads) as pool: pool.map(fn, jobs)`` calls
    ``fn(shared, *job)`` for every job: in this process when ``workers`` is 1, else on that
    many spawned processes (started on the first ``map``, reused by later ones). Inside the
    ``with`` block this process, too, computes with ``threads`` torch threads."""

    def __init__(self, shared: Any, workers: int, threads: int, name: str = "stage") -> None:
        if workers < 1 or threads < 1:
            raise ValueError(f"workers ({workers}) and threads ({threads}) must be >= 1")
        self.shared, self.workers, self.threads = shared, workers, threads
        self.name = name          # the stage whose params hold ``workers`` (messages)
        self._pool: ProcessPoolExecutor | None = None
        self._listener: QueueListener | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Workers:
        # this process computes under the same threads (what it does itself, and a job here)
        self._stack.enter_context(torch_threads(self.threads))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _processes(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = mp.get_context("spawn")
            logs = ctx.Queue()
            root = logging.getLogger()
            self._listener = QueueListener(logs, *root.handlers, respect_handler_level=True)
            self._listener.start()
            self._stack.callback(self._listener.stop)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_start,
                                             initargs=(self.shared, self.threads, logs,
                                                       root.getEffectiveLevel(), os.getpid()))
            self._stack.callback(self._pool.shutdown, cancel_futures=True)
        return self._pool

    def map(self, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]],
            done: Callable[[], None] | None = None) -> list[Any]:
        """``[fn(shared, *job) for job in jobs]``, the jobs spread over the workers;
        ``done()`` is called as each job ends (progress)."""
        return self.run([(fn, tuple(job)) for job in jobs], done)

    def run(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
            done: Callable[[], None] | None = None) -> list[Any]:
        """``[fn(shared, *args) for fn, args in calls]``: :meth:`map` of different jobs."""
        # (a daemonic process, e.g. a Dask worker, may not start processes: same bytes here)
        if self.workers == 1 or len(calls) <= 1 or mp.current_process().daemon:
            out = []
            for fn, args in calls:
                out.append(fn(self.shared, *args))
                if done is not None:
                    done()
            return out
        pool = self._processes()
        futures = [pool.submit(_call, fn, args) for fn, args in calls]
        for finished, future in enumerate(as_completed(futures)):
            exc = future.exception()
            if exc is not None:
                # fail fast: a diverged fit or a bad input ends the stage now, not after the
                # other workers' jobs (tens of minutes on a large log) ran for nothing
                self._abort(futures)
                if isinstance(exc, BrokenProcessPool):   # a process killed: every job still
                    # running fails with it, in no set order, so no one job is to blame
                    names = sorted({fn.__name__ for fn, _ in calls})
                    raise WorkerLost(self.name, f"{' / '.join(names)} jobs ({finished} of "
                                     f"{len(calls)} done)", self.workers) from exc
                future.result()
            if done is not None:
                done()
        return [pickle.loads(f.result()) for f in futures]

    def _abort(self, futures: Sequence[Any]) -> None:
        """Cancel the jobs not started and stop the worker processes mid-job; the next
        :meth:`run` starts new ones."""
        for future in futures:
            future.cancel()
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # the executor has no public way to stop running jobs: end its processes, then let
        # it go without waiting (its manager thread may never see a killed worker's result)
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)
