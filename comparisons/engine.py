"""Many independent tasks on Dask distributed, each result written to disk as it arrives.

The zoo's many-fit jobs (a calibration's replications, a sweep's cells) are lists of
:class:`Task`: a module-level function and plain keyword arguments, so that any Dask worker
can run it, on this machine or on a cluster. :func:`run_tasks` sends the tasks that have no
result yet to the cluster, and writes each result, as it comes back to the client, to a file
of its own in the job's folder (``<key>.json``, written to a temporary file and renamed, so a
result is on disk whole or not at all). Run the same job again after an interruption and the
finished tasks are read back, not rerun: the result is the one an uninterrupted run gives,
because every task draws its random numbers from its own seed. A task that raises is reported
with its error (``<key>.error.json``) and the others go on; it is run again by the next call.

By default the cluster is a ``LocalCluster`` of one single-thread worker process per core;
``scheduler="tcp://host:8786"`` sends the same tasks to a running Dask scheduler instead (its
workers need the zoo installed). Dask reruns the tasks of a worker that dies on another one.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zoo.errors import ZooInputError
from zoo.tensors import cores


@dataclass(frozen=True)
class Task:
    """One independent piece of a job: ``fn(**kwargs)`` returns a JSON-serializable dict.
    ``key`` names its result file (letters, digits, ``-``, ``_``, ``.``)."""

    key: str
    fn: Callable[..., Mapping[str, Any]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class JobRun:
    """What :func:`run_tasks` found and did: every finished task's result (this call's and
    earlier calls'), the failed ones' errors, and how the work was spread."""

    results: dict[str, dict[str, Any]]
    failed: dict[str, str]
    ran: int  # tasks finished in this call
    resumed: int  # tasks whose results were already on disk
    wall_s: float
    workers: int
    scheduler: str


def run_tasks(
    tasks: Sequence[Task],
    folder: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    label: str = "tasks",
    on_result: Callable[[Task, dict[str, Any]], dict[str, Any]] | None = None,
) -> JobRun:
    """Run every task of ``tasks`` whose result is not yet in ``folder``, on Dask.

    ``scheduler``: the address of a running Dask scheduler; None starts a ``LocalCluster``
    of ``workers`` single-thread worker processes (default: one per core). Results are
    written as they come back; ``progress`` shows a bar on stderr as tasks finish.
    ``on_result(task, result)``, where given, sees each result as it arrives on the client
    (to write files that came with it, say) and returns what is kept of it."""
    start = time.perf_counter()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    results = {}
    for task in tasks:
        found = _read(folder / f"{task.key}.json")
        if found is not None:
            results[task.key] = found
    pending = [t for t in tasks if t.key not in results]
    failed: dict[str, str] = {}
    resumed = len(results)
    used, where = 0, "none (every task had its result)"
    if pending:
        with _client(scheduler, workers) as (client, where):
            used = len(client.scheduler_info().get("workers", {}))
            bar = tqdm(total=len(tasks), initial=resumed, desc=label, unit="task",
                       disable=not progress, file=sys.stderr)  # fmt: skip
            futures = {
                client.submit(
                    _run_task,
                    t.fn,
                    dict(t.kwargs),
                    key=f"{label}-{t.key}-{os.getpid()}",
                    pure=False,
                ): t  # fmt: skip
                for t in pending
            }
            from distributed import as_completed

            for future in as_completed(futures):
                task = futures[future]
                if future.status != "finished":  # an error, or cancelled by the cluster
                    exc = future.exception() if future.status == "error" else None
                    failed[task.key] = _first_line(exc) if exc else f"task {future.status}"
                    _write(folder / f"{task.key}.error.json", {"key": task.key,
                           "error": failed[task.key]})  # fmt: skip
                    bar.write(f"zoo: {label}: task {task.key} failed: {failed[task.key]}",
                              file=sys.stderr)  # fmt: skip
                else:
                    result = future.result()
                    if on_result is not None:
                        result = on_result(task, result)
                    results[task.key] = result
                    _write(folder / f"{task.key}.json", result)
                    (folder / f"{task.key}.error.json").unlink(missing_ok=True)
                bar.update(1)
                future.release()
            bar.close()
    return JobRun(results, failed, len(pending) - len(failed), resumed,
                  time.perf_counter() - start, used, where)  # fmt: skip


def _run_task(fn: Callable[..., Mapping[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A task on a worker: one torch thread (a worker is one core's), its result a dict."""
    import torch

    torch.set_num_threads(1)
    return dict(fn(**kwargs))


@contextmanager
def _client(scheduler: str | None, workers: int | None):
    """A Dask client: of the scheduler at ``scheduler``, or of a new LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ZooInputError(
                f"no Dask scheduler answered at {scheduler} ({_first_line(exc)}); start one"
                " (dask scheduler) or drop --scheduler to run on this machine"
            ) from exc
        with client:
            yield client, scheduler
        return
    # The cluster's own chatter (workers joining and leaving at shutdown) is not the user's.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    n = cores() if workers is None else int(workers)
    if n < 1:
        raise ZooInputError(f"--workers must be at least 1, got {workers}")
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                           dashboard_address=":0", silence_logs=logging.ERROR)  # fmt: skip
    with cluster, Client(cluster) as client:
        plural = "worker" if n == 1 else "workers"
        yield client, f"LocalCluster, {n} single-thread {plural}"


def _read(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):  # not ours, or damaged: run the task again
        return None


def _write(path: Path, value: Mapping[str, Any]) -> None:
    """``value`` as JSON at ``path``, whole or not at all (a temporary file, then rename)."""
    write_atomic(path, json.dumps(value, allow_nan=True, default=_plain).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (a temporary file beside it, then rename),
    with the mode an ordinary write would give (0666 less the umask; mkstemp makes 0600).
    results.json, reports and the engine's result files are written so."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        mask = os.umask(0o022)  # read the umask (by setting it and setting it back)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # the mode an ordinary write gives (mkstemp's is 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    """NumPy numbers and arrays as JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
