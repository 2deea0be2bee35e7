"""The Dask engine of the zoo's many-fit jobs (comparisons.engine): tasks run on a 2-worker
LocalCluster, each result lands in a file of its own, a failed task is reported while the
others finish, a worker killed mid-run costs nothing but time, and a job run again resumes:
finished tasks are read back, not rerun, to the results an uninterrupted run gives."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cloudpickle
import pytest

from comparisons.engine import Task, run_tasks

distributed = pytest.importorskip("distributed")

# The workers are fresh processes: they get this module's functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(n: int, seed: int) -> dict:
    import numpy as np

    return {"n": n, "value": n * n, "noise": float(np.random.default_rng(seed).normal())}


def _fails_on(n: int, seed: int, bad: int) -> dict:
    if n == bad:
        raise ValueError(f"task {n} cannot be done")
    return _square(n, seed)


def _dies_once(n: int, seed: int, marker: str) -> dict:
    """Kills its own worker process the first time it runs for n == 0 (a worker lost
    mid-run); Dask runs it again on a worker that lives."""
    if n == 0 and not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os._exit(1)
    return _square(n, seed)


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as c:  # fmt: skip
        yield c.scheduler_address


def _tasks(fn, **extra):
    return [Task(f"t{n:02d}", fn, {"n": n, "seed": 100 + n, **extra}) for n in range(6)]


def test_every_task_runs_and_lands_in_a_file_of_its_own(tmp_path, cluster):
    job = run_tasks(_tasks(_square), tmp_path, scheduler=cluster, progress=False)
    assert job.failed == {} and job.ran == 6 and job.resumed == 0 and job.workers == 2
    for n in range(6):
        saved = json.loads((tmp_path / f"t{n:02d}.json").read_text())
        assert saved == job.results[f"t{n:02d}"] and saved["value"] == n * n
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_a_failed_task_is_reported_and_the_others_finish_then_a_rerun_resumes(tmp_path, cluster):
    whole = run_tasks(_tasks(_square), tmp_path / "whole", scheduler=cluster, progress=False)
    first = run_tasks(_tasks(_fails_on, bad=3), tmp_path / "job", scheduler=cluster,
                      progress=False)  # fmt: skip
    assert (
        list(first.failed) == ["t03"] and "ValueError: task 3 cannot be done" in first.failed["t03"]
    )
    assert len(first.results) == 5 and (tmp_path / "job" / "t03.error.json").is_file()
    # Run again (the cause mended): only the failed task runs; the rest are read back.
    again = run_tasks(_tasks(_square), tmp_path / "job", scheduler=cluster, progress=False)
    assert again.ran == 1 and again.resumed == 5 and again.failed == {}
    assert again.results == whole.results  # what an uninterrupted run gives
    assert not (tmp_path / "job" / "t03.error.json").exists()


def test_a_worker_killed_mid_run_costs_only_time(tmp_path, cluster):
    marker = tmp_path / "killed"
    job = run_tasks(_tasks(_dies_once, marker=str(marker)), tmp_path / "job",
                    scheduler=cluster, progress=False)  # fmt: skip
    assert marker.is_file()  # a worker did die
    assert job.failed == {} and len(job.results) == 6
    assert job.results["t00"] == _square(0, 100)


def test_the_default_cluster_is_local_with_single_thread_workers(tmp_path):
    job = run_tasks(_tasks(_square)[:2], tmp_path, workers=2, progress=False)
    assert job.scheduler == "LocalCluster, 2 single-thread workers" and job.workers == 2
    assert job.failed == {} and len(job.results) == 2
    # Everything done: a second call starts no cluster at all.
    again = run_tasks(_tasks(_square)[:2], tmp_path, workers=2, progress=False)
    assert again.ran == 0 and again.workers == 0 and again.scheduler.startswith("none")
