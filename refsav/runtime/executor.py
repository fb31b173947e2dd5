"""Executors: where the units of work of a long job run. `make_executor` is the one factory.

Every long job in refsav (annotation shards, scoring chunks, DAVIS sequences, prediction
videos, sample and export videos) hands a list of picklable tasks and a top-level function
to an executor and consumes the outcomes, so the same job runs

- in this process (`workers=1`, no scheduler): simplest to debug, used by tests of logic;
- in worker processes on this machine (`workers>1`): a Dask `LocalCluster` by default, or a
  plain process pool (`local="processes"`) where the job is short enough that a cluster's
  start-up (seconds) would dominate, as in scoring;
- on an existing Dask cluster (`scheduler="tcp://host:8786"`), whose workers must have
  refsav installed and see the same input/output paths (a shared filesystem).

A task's exception is returned as its outcome, not raised: one bad shard must not cost
the others, and the caller decides what a failure means (`results_in_order` raises it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Generic, Iterator, Literal, Sequence, TypeVar

from refsav.schemas.errors import RefsavError

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    task: T
    result: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class InlineExecutor:
    """Runs tasks one after the other in this process."""

    name = "inline"
    n_workers = 1

    def __init__(self) -> None:
        self.address = "inline"

    def map_unordered(self, fn: Callable[[T], Any], tasks: Sequence[T]) -> Iterator[Outcome[T]]:
        for task in tasks:
            try:
                yield Outcome(task, fn(task))
            except Exception as err:  # noqa: BLE001 - reported to the caller as the task's outcome
                yield Outcome(task, error=err)

    def close(self) -> None:
        pass

    def __enter__(self) -> "InlineExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcessExecutor:
    """Worker processes on this machine from the standard library's pool.

    Starts in milliseconds where a Dask LocalCluster takes seconds. `initializer(*initargs)`
    runs once in each worker, so that large shared inputs travel once per worker rather than
    once per task.
    """

    name = "processes"

    def __init__(self, workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(workers, initializer=initializer, initargs=initargs)
        self.n_workers = workers
        self.address = "processes"

    def map_unordered(self, fn: Callable[[T], Any], tasks: Sequence[T]) -> Iterator[Outcome[T]]:
        from concurrent.futures import as_completed

        futures = {self._pool.submit(fn, task): task for task in tasks}
        for future in as_completed(futures):
            err = future.exception()
            yield Outcome(futures[future], future.result() if err is None else None, err)

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaskExecutor:
    """Runs tasks on a Dask cluster: a `LocalCluster` of `workers` processes, or `scheduler`.

    Each worker runs one task at a time (one thread): the tasks are CPU-bound Python or
    hold their own pools (the VLM client's requests in flight), so more threads would
    only fight over the GIL.
    """

    name = "dask"

    def __init__(self, workers: int = 1, scheduler: str | None = None, memory_limit: str | None = None,
                 gpus: bool = False) -> None:
        """`gpus`: every task holds one GPU (Dask resource "GPU"). Local workers then get one
        device each; the workers of an existing cluster must be started with `--resources GPU=1`."""
        from distributed import Client, LocalCluster

        self._cluster = None
        self.resources = {"GPU": 1} if gpus else None
        if scheduler:
            self._client = Client(scheduler, timeout="30s")
        else:
            devices: list[str] = []
            if gpus:
                # Checked before any worker starts, so that a refusal costs nothing.
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                devices = [d for d in visible.split(",") if d] if visible else [str(i) for i in range(workers)]
                if len(devices) < workers:
                    raise RefsavError(f"--workers {workers} needs {workers} GPUs; {len(devices)} visible")
            self._cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # Even without a dashboard the scheduler serves health checks over HTTP, on 8787
                # unless told otherwise: a free local port instead, so that two runs (or a
                # dashboard of the user's own) never collide and no "port in use" warning shows.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                memory_limit=memory_limit or "auto",
                silence_logs=40,  # logging.ERROR: worker chatter would bury the progress bar
                resources=self.resources,
            )
            self._client = Client(self._cluster)
            if gpus:
                self._client.register_plugin(_OneGpuPerWorker(devices))
        self.address = self._client.scheduler.address

    @property
    def n_workers(self) -> int:
        return len(self._client.scheduler_info()["workers"])

    def map_unordered(self, fn: Callable[[T], Any], tasks: Sequence[T]) -> Iterator[Outcome[T]]:
        from distributed import as_completed

        if not tasks:
            return
        # pure=False: a rerun must run again (inputs on disk may have changed), not reuse a key.
        extra = {"resources": self.resources} if self.resources else {}
        futures = {self._client.submit(fn, task, pure=False, **extra): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            if future.status == "finished":
                yield Outcome(task, future.result())
            else:
                yield Outcome(task, error=future.exception())
            future.release()

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _OneGpuPerWorker:
    """Worker plugin: LocalCluster names its workers 0..N-1, and worker i sees only GPU
    devices[i]. It runs before the worker's first task, so before torch initialises CUDA."""

    name = "refsav-one-gpu-per-worker"

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices

    def setup(self, worker) -> None:
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[int(worker.name) % len(self.devices)]

    def teardown(self, worker) -> None:
        pass

    def transition(self, *args, **kwargs) -> None:
        pass


Executor = InlineExecutor | ProcessExecutor | DaskExecutor


def make_executor(workers: int | None = None, scheduler: str | None = None, *,
                  local: Literal["dask", "processes"] = "dask", gpus: bool = False,
                  initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Executor:
    """The executor for a job: `scheduler` wins; otherwise this process when `workers == 1`,
    else `workers` local processes (default: all cores) of kind `local`.

    `gpus`: each task holds one GPU (Dask only). `initializer(*initargs)` runs once per local
    process worker (`local="processes"`); inline and Dask callers must not need it.
    """
    if scheduler:
        return DaskExecutor(scheduler=scheduler, gpus=gpus)
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return InlineExecutor()
    if local == "processes":
        return ProcessExecutor(workers, initializer, initargs)
    return DaskExecutor(workers=workers, gpus=gpus)


def results_in_order(executor: Executor, fn: Callable[[T], Any], tasks: Sequence[T],
                     advance: Callable[[int], None] | None = None) -> Iterator[Any]:
    """`fn(task)` for each task, yielded in the order of `tasks` whatever order they finish in;
    the first failed task's exception is raised. `advance(1)` is called as each task finishes."""
    waiting: dict[int, Any] = {}
    following = 0
    for outcome in executor.map_unordered(partial(_indexed, fn), list(enumerate(tasks))):
        if not outcome.ok:
            raise outcome.error  # type: ignore[misc]
        if advance:
            advance(1)
        waiting[outcome.task[0]] = outcome.result
        while following in waiting:
            yield waiting.pop(following)
            following += 1


def _indexed(fn: Callable[[T], Any], item: tuple[int, T]) -> Any:
    return fn(item[1])
