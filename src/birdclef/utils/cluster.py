"""Work spread over a Dask cluster: a client of a LocalCluster or a running scheduler, one task per item, and a
model built once per worker (the optional ``dask`` extra; every import of ``distributed`` is inside a function).

Used by ``birdclef analyze --engine dask`` (:mod:`birdclef.archive.dask_engine`), ``birdclef embed --engine dask``
(:mod:`birdclef.birdnet.embed`) and a head's embedding stage (``train.embed_engine: dask``,
:mod:`birdclef.birdnet.head_embed`). Tasks write their results straight into an output folder, so every worker
must see the inputs and outputs at the same paths (one machine, or a shared filesystem).

``scheduler="local"`` starts a ``distributed.LocalCluster`` of `workers` single-threaded processes; any other value
is the address of a running scheduler (e.g. one that dask-jobqueue started on a SLURM cluster).

Example:
    >>> with open_client("local", workers=2) as client:
    ...     for i, result, error in map_on_workers(client, work, build, key, calls, names):
    ...         ...   # work(model, *calls[i]) ran on a worker whose model build() made once
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

from birdclef.errors import BirdclefError

CONNECT_TIMEOUT_S = 10
"""How long to wait for a scheduler at ``--scheduler ADDRESS`` to answer."""
_START_HINT = ("start one with `dask scheduler` (it prints its address, tcp://HOST:8786) and workers with "
               "`dask worker tcp://HOST:8786`, or use --scheduler local")
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d+))?/?$")

_CACHE = "_birdclef_models"
"""Attribute of the distributed Worker that holds {thread id: (settings key, model)}."""

def check_scheduler(address: str, name: str = "--scheduler") -> None:
    """Refuse a ``--scheduler`` value that is neither ``local`` nor a scheduler address (before any work).

    Raises:
        BirdclefError: naming the value (as `name`: the flag or config key) and the expected form.
    """
    if address == "local":
        return
    match = _ADDRESS.match(address)
    if match is None or (match.group(2) is not None and not 0 < int(match.group(2)) < 65_536):
        raise BirdclefError(f"{name} {address!r}: not a Dask scheduler address; expected local, or "
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


def model_on_worker(build: Callable[[], object], key: str) -> object:
    """The model (scorer, embedder) of settings `key` on this worker thread, built by `build` on first use.

    One per worker thread, not per worker: a worker started with ``--nthreads N`` runs N tasks at once, and a
    model is not shared by two of them (a LiteRT interpreter holds its tensors between calls). LocalCluster
    workers have one thread: one model per worker process.
    """
    from distributed import get_worker

    worker = get_worker()
    models = getattr(worker, _CACHE, None)
    if models is None:
        models = {}
        setattr(worker, _CACHE, models)
    thread = threading.get_ident()
    if thread not in models or models[thread][0] != key:
        models[thread] = (key, build())
    return models[thread][1]

def worker_task(work: Callable[..., object], build: Callable[[], object], key: str, *args: object) -> object:
    """One task on a worker: ``work(model, *args)`` with this worker's model (:func:`model_on_worker`)."""
    return work(model_on_worker(build, key), *args)


@contextmanager
def open_client(scheduler: str = "local", workers: int = 2) -> Iterator:
    """A distributed Client: of a LocalCluster of `workers` single-threaded processes (``local``), else of the
    scheduler at `scheduler`; closed (and the LocalCluster stopped) on exit.

    Raises:
        BirdclefError: dask.distributed is not installed, `workers` < 1, or no scheduler at `scheduler`.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BirdclefError("--engine dask needs dask.distributed: pip install 'birdclef[dask]'") from None
    if workers < 1:
        raise BirdclefError(f"--workers must be at least 1, got {workers}")
    with ExitStack() as stack:
        if scheduler == "local":
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            yield stack.enter_context(Client(cluster))
        else:
            yield stack.enter_context(connect(scheduler))


def map_on_workers(client, work: Callable[..., object], build: Callable[[], object], key: str,
                   calls: Sequence[tuple], names: Sequence[str],
                   shared: Sequence[object] = ()) -> Iterator[tuple[int, object, BaseException | None]]:
    """Run ``work(model, *shared, *calls[i])`` as one task per call (``retries=2``; task key ``names[i]``, unique
    per settings and item) and yield ``(i, result, None)``, or ``(i, None, error)`` for a task that failed on
    every try, as the tasks complete. `build` makes the model once per worker (:func:`model_on_worker`);
    `shared` (large arguments every task takes: a background bank) is scattered to the workers once."""
    from distributed import as_completed

    common = [client.scatter(item, broadcast=True) if item is not None else None for item in shared]
    futures = {client.submit(worker_task, work, build, key, *common, *call, key=name, retries=2, pure=False): i
               for i, (call, name) in enumerate(zip(calls, names))}
    for future in as_completed(futures):
        if future.status == "error":
            yield futures[future], None, future.exception()
        else:
            yield futures[future], future.result(), None
