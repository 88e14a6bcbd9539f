"""The per-file work of ``birdclef analyze`` as Dask tasks (``--engine dask``; the optional ``dask`` extra).

One task per recording, submitted with ``retries=2`` (a worker that dies takes its task elsewhere). Each
worker builds the models once and keeps them on the worker (:func:`scorer_on_worker`); tasks write their
tables straight into the results folder, so every worker must see the archive and ``--out`` at the same
paths (one machine, or a shared filesystem). This process keeps the journal: it appends a task's record as
the task completes, so a killed driver loses only the tasks in flight. A task that still fails after its
retries (not a broken file: that is a normal ``skipped`` record) is recorded as skipped with the error.

``scheduler="local"`` starts a ``distributed.LocalCluster`` of `workers` single-threaded processes; any other
value is the address of a running scheduler (e.g. one that dask-jobqueue started on a SLURM cluster).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from contextlib import ExitStack

from birdclef.archive.manifest import Entry, Record
from birdclef.errors import BirdclefError

CONNECT_TIMEOUT_S = 10
"""How long to wait for a scheduler at ``--scheduler ADDRESS`` to answer."""
_START_HINT = ("start one with `dask scheduler` (it prints its address, tcp://HOST:8786) and workers with "
               "`dask worker tcp://HOST:8786`, or use --scheduler local")
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d+))?/?$")

_CACHE = "_birdclef_scorer"
"""Attribute of the distributed Worker that holds (settings key, scorer)."""


def check_scheduler(address: str) -> None:
    """Refuse a ``--scheduler`` value that is neither ``local`` nor a scheduler address (before any work).

    Raises:
        BirdclefError: naming the value and the expected form.
    """
    if address == "local":
        return
    match = _ADDRESS.match(address)
    if match is None or (match.group(2) is not None and not 0 < int(match.group(2)) < 65_536):
        raise BirdclefError(f"--scheduler {address!r}: not a Dask scheduler address; expected local, or "
                            f"[tcp://]HOST[:PORT] such as tcp://10.0.0.5:8786")


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A distributed Client of the scheduler at `address`, or a one-line error when none answers.

    Raises:
        BirdclefError: a malformed address, or no scheduler answered within `timeout_s`.
    """
    from distributed import Client

    check_scheduler(address)
    try:
        return Client(address, timeout=f"{timeout_s}s")
    except ValueError as exc:
        raise BirdclefError(f"--scheduler {address!r}: not a Dask scheduler address ({exc})") from None
    except (OSError, TimeoutError) as exc:
        raise BirdclefError(f"--scheduler {address}: no Dask scheduler answered within {timeout_s:g} s "
                            f"({type(exc).__name__}); {_START_HINT}") from None


def probe_scheduler(address: str) -> None:
    """Check that `address` is ``local`` or a scheduler that answers (connect, then close): before models load.

    Raises:
        BirdclefError: as :func:`connect`, or dask.distributed is not installed.
    """
    check_scheduler(address)
    if address == "local":
        return
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise BirdclefError("--engine dask needs dask.distributed: pip install 'birdclef[dask]'") from None
    connect(address).close()


def scorer_on_worker(build: Callable[[], object], key: str) -> object:
    """The scorer of settings `key` on this worker, built by `build` on first use (one per worker)."""
    from distributed import get_worker

    worker = get_worker()
    cached = getattr(worker, _CACHE, None)
    if cached is None or cached[0] != key:
        cached = (key, build())
        setattr(worker, _CACHE, cached)
    return cached[1]


def analyze_task(work: Callable[[object, object, Entry], Record], build: Callable[[], object], key: str, job,
                 entry: Entry) -> Record:
    """One recording on a worker: ``work(scorer, job, entry)`` with this worker's scorer."""
    return work(scorer_on_worker(build, key), job, entry)


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
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise BirdclefError("--engine dask needs dask.distributed: pip install 'birdclef[dask]'") from None
    if workers < 1:
        raise BirdclefError(f"--workers must be at least 1, got {workers}")
    with ExitStack() as stack:
        if scheduler == "local":
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(connect(scheduler))
        futures = {client.submit(analyze_task, work, build, key, job, entry, key=_task_key(key, entry), retries=2,
                                 pure=False): entry for entry in todo}
        for future in as_completed(futures):
            entry = futures[future]
            if future.status == "error":
                reason = f"task failed after 2 retries: {type(future.exception()).__name__}: {future.exception()}"
                record(Record(entry.path, entry.size, entry.mtime_ns, "skipped", reason=reason))
            else:
                record(future.result())
