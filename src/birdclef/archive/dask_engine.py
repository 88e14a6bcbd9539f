"""The per-file work of ``birdclef analyze`` as Dask tasks (``--engine dask``; the optional ``dask`` extra), on the
cluster helpers of :mod:`birdclef.utils.cluster`.

One task per recording, submitted with ``retries=2`` (a worker that dies takes its task elsewhere). Each
worker builds the models once and keeps them (:func:`~birdclef.utils.cluster.model_on_worker`); tasks write their
tables straight into the results folder, so every worker must see the archive and ``--out`` at the same
paths (one machine, or a shared filesystem). This process keeps the journal: it appends a task's record as
the task completes, so a killed driver loses only the tasks in flight. A task that still fails after its
retries (not a broken file: that is a normal ``skipped`` record) is recorded as skipped with the error.

``scheduler="local"`` starts a ``distributed.LocalCluster`` of `workers` single-threaded processes; any other
value is the address of a running scheduler (e.g. one that dask-jobqueue started on a SLURM cluster).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from birdclef.archive.manifest import Entry, Record
from birdclef.utils.cluster import (CONNECT_TIMEOUT_S, check_scheduler, connect, map_on_workers,  # noqa: F401
                                    open_client, probe_scheduler)


def _task_key(key: str, entry: Entry) -> str:
    """Unique per settings and recording: drivers of different shards may share one scheduler."""
    return f"analyze-{key}-{hashlib.sha1(entry.path.encode()).hexdigest()[:16]}"


def run_dask(todo: list[Entry], work: Callable[[object, object, Entry], Record], build: Callable[[], object], key: str,
             job, record: Callable[[Record], None], scheduler: str = "local", workers: int = 2) -> None:
    """Run ``work(scorer, job, entry)`` for each entry of `todo` as a task and pass each task's :class:`Record` to
    `record` as it completes. `work` is the per-file function (``birdclef analyze``'s
    :func:`~birdclef.archive.analyze.process_entry`); `build` makes the scorer once per worker.

    Raises:
        BirdclefError: dask.distributed is not installed, `workers` < 1, or no scheduler at `scheduler`.
    """
    if not todo:
        return
    with open_client(scheduler, workers) as client:
        calls, names = [(job, entry) for entry in todo], [_task_key(key, entry) for entry in todo]
        for i, result, error in map_on_workers(client, work, build, key, calls, names):
            entry = todo[i]
            if error is not None:
                reason = f"task failed after 2 retries: {type(error).__name__}: {error}"
                record(Record(entry.path, entry.size, entry.mtime_ns, "skipped", reason=reason))
            else:
                record(result)
