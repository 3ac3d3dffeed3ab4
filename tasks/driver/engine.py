"""The task engine: every stage's tasks reach Dask through one :class:`Streamer`.

Tasks are handed over in an order in which every task's dependencies come first, and submitted while
at most ``window`` are in flight. A dependency that is still running is passed to Dask as a future; one
that has finished has left its result in storage (scratch or the output) and is not passed at all. So
the driver holds O(window) futures whatever the size of the volume, for the segmentation stages
(:mod:`emseg.tasks.driver.graph`) and the post-processing stages (:mod:`emseg.tasks.driver.postprocess`)
alike, with the same retries, failure records and progress bar.

A task whose dependency failed is not submitted; it is recorded as ``skipped: an upstream task failed``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Item = tuple[str, Any]  # (stage, item)
SKIPPED = "skipped: an upstream task failed"


@dataclass
class Task:
    """One Dask task: ``fn(*args, *futures_of_running_deps)`` returning a dict with ``seconds``.

    ``keep``: the driver needs the task's result (a reduce, a union-find ``finish``);
    ``counts_voxels``: its ``voxels`` count towards the stage's megavoxels (not so for reduces that
    re-read what their blocks already counted); ``resources``: the Dask worker resources it needs
    (``cluster.model_resources`` for the tasks that run the model).
    """

    stage: str
    item: Any
    fn: Callable[..., dict[str, Any]]
    args: tuple[Any, ...]
    deps: list[Item] = field(default_factory=list)
    keep: bool = False
    counts_voxels: bool = True
    resources: dict[str, float] | None = None


#: children per reduce task: a reduce of a million blocks is a tree of 15,625 + 245 + 4 partial tasks
FAN_IN = 64


def reduce_levels(n: int, fan_in: int = FAN_IN) -> list[int]:
    """Task counts per level of a tree reduce over ``n`` leaves: ``[n, ceil(n / fan_in), ...]``, down
    to the first level of at most ``fan_in`` tasks, which the final reduce reads.

    >>> reduce_levels(10), reduce_levels(1000), reduce_levels(1_000_000)
    ([10], [1000, 16], [1000000, 15625, 245, 4])
    """
    counts = [max(n, 0)]
    while counts[-1] > fan_in:
        counts.append(-(-counts[-1] // fan_in))
    return counts


def children(index: int, below: int, fan_in: int = FAN_IN) -> range:
    """The indices one level down that partial ``index`` reads (``below`` of them on that level).

    >>> children(1, 130, 64), children(2, 130, 64)
    (range(64, 128), range(128, 130))
    """
    return range(index * fan_in, min((index + 1) * fan_in, below))


def join(*upstream: Any) -> dict[str, Any]:
    """A task that only waits: others depend on it instead of on every task of a large set."""
    return {"seconds": 0.0}


def timed(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a task on its worker and add ``cpu_seconds`` to its result: the CPU time of the worker
    process while it ran (``time.process_time``; with one thread per worker, the task's own CPU time
    including the storage libraries' threads; with more, it includes the other tasks' time)."""
    t0 = time.process_time()
    info = fn(*args)
    if isinstance(info, dict):
        info = {**info, "cpu_seconds": time.process_time() - t0, "worker": _worker_name()}
    return info


def _worker_name() -> str:
    """The name of the Dask worker running the calling task (its address where it has no name)."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not on a worker (a task run in the driver's process)
        return "driver"
    return str(worker.name if worker.name is not None else worker.address)


class Streamer:
    """Submits tasks with at most ``window`` in flight; records results and failures as they finish.

    ``results[stage]`` is ``[tasks, task-seconds, voxels, task CPU seconds]``, ``workers[stage]`` the
    tasks each worker ran (by name), ``wall[stage]`` ``[first submit, last completion]`` (epoch
    seconds), ``kept[(stage, item)]`` the result of every task with ``keep``, and ``failed[(stage,
    item)]`` the error of every task that failed after the retries or was skipped.
    """

    def __init__(self, client: Any, *, run_id: str, retries: int, window: int,
                 on_done: Callable[[Task], None] | None = None, progress: Any = None):
        from distributed import as_completed

        self.client = client
        self.run_id = run_id
        self.retries = retries
        self.window = window
        self.on_done = on_done
        self.progress = progress
        self.inflight: dict[Item, tuple[Any, Task]] = {}
        self.by_key: dict[str, Item] = {}
        self.completed = as_completed()
        self.failed: dict[Item, str] = {}
        self.results: dict[str, list[float]] = {}
        self.workers: dict[str, dict[str, int]] = {}
        self.kept: dict[Item, dict[str, Any]] = {}
        self.wall: dict[str, list[float]] = {}

    def submit(self, task: Task) -> None:
        item = (task.stage, task.item)
        while len(self.inflight) >= self.window:
            self._drain(block=True)
        # after the wait: a dependency that failed meanwhile is no longer in flight, and the task
        # would otherwise be submitted without it
        if any(d in self.failed for d in task.deps):
            self.failed[item] = SKIPPED
            self._finished(task)
            return
        futures = [self.inflight[d][0] for d in task.deps if d in self.inflight]
        key = f"{task.stage}-{task.item}-{self.run_id}"
        f = self.client.submit(timed, task.fn, *task.args, *futures, key=key, retries=self.retries, pure=False,
                               resources=task.resources)
        self.inflight[item] = (f, task)
        self.by_key[f.key] = item
        self.completed.add(f)
        self.wall.setdefault(task.stage, [time.time(), time.time()])
        self._drain(block=False)

    def submit_all(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.submit(task)

    def _drain(self, *, block: bool) -> None:
        for f in self.completed.next_batch(block=block and bool(self.inflight)):
            if f.status in ("lost", "pending"):
                # Its worker died after (or while) running it: Dask recomputes it; wait again.
                self.completed.add(f)
                continue
            item = self.by_key.pop(f.key)
            _, task = self.inflight.pop(item)
            if f.status == "finished":
                info = f.result()
                stat = self.results.setdefault(task.stage, [0, 0.0, 0, 0.0])
                stat[0] += 1
                stat[1] += float(info.get("seconds", 0.0))
                if task.counts_voxels:
                    stat[2] += int(info.get("voxels", 0))
                stat[3] += float(info.get("cpu_seconds", 0.0))
                on = self.workers.setdefault(task.stage, {})
                on[info.get("worker", "?")] = on.get(info.get("worker", "?"), 0) + 1
                if task.keep:
                    self.kept[item] = info
            elif any(self._failed(d) for d in task.deps):  # the error is its dependency's
                self.failed[item] = SKIPPED
            elif f.status == "cancelled":
                self.failed[item] = "cancelled by the scheduler (a worker died too often?)"
            else:
                exc = f.exception()
                self.failed[item] = f"{type(exc).__name__}: {exc}"
            self.wall[task.stage][1] = time.time()
            self._finished(task)

    def _failed(self, item: Item) -> bool:
        """Whether ``item`` failed: recorded already, or in flight and errored (a batch of completions
        may hand over a dependant before the dependency it failed through)."""
        if item in self.failed:
            return True
        running = self.inflight.get(item)
        return running is not None and running[0].status in ("error", "cancelled")

    def _finished(self, task: Task) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix_str(f"{task.stage} {task.item}", refresh=False)
        if self.on_done is not None:
            self.on_done(task)

    def barrier(self) -> None:
        """Wait for everything in flight."""
        while self.inflight:
            self._drain(block=True)

    def failures(self, stages: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The failure records (``stage``, ``block``, ``error``), optionally of some stages only."""
        keep = None if stages is None else set(stages)
        return [{"stage": stage, "block": item, "error": error} for (stage, item), error in self.failed.items()
                if keep is None or stage in keep]


def progress_bar(total: int | None, *, desc: str, enabled: bool) -> Any:
    """The progress bar every engine run shows on stderr (tqdm; ``enabled=False`` shows nothing)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=not enabled, file=sys.stderr, mininterval=0.5)
