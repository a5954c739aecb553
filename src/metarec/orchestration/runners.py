"""The task runner of the nightly scoring shards: threads here, Dask where the cluster is.

``thread``: Prefect's ThreadPoolTaskRunner (torch releases the GIL in its kernels, so shards
overlap on a multi-core machine). ``dask``: prefect-dask's DaskTaskRunner, connected to
``address`` (a running scheduler, e.g. ``tcp://scheduler:8786``) or, with no address, a
LocalCluster of ``workers`` one-thread processes started for the run and closed after it.
Workers must see the project's files at the same paths (shared filesystem) and have metarec
installed: tasks travel by reference to :mod:`metarec.orchestration.tasks`. A scheduler
``address`` belongs on a trusted network only: Dask sends pickled tasks over plain TCP, and
whoever can reach the scheduler can run code on its workers.
"""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

RunnerKind = Literal["thread", "dask"]


def make_task_runner(kind: RunnerKind, address: str | None = None, workers: int = 2,
                     threads: int | None = None) -> TaskRunner:
    """A fresh task runner of ``kind`` (one per flow run; runners are not reusable)."""
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=threads or workers)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if address:
            return DaskTaskRunner(address=address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    raise ValueError(f"task runner {kind!r}: expected thread or dask")
