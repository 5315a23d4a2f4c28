"""Requests that arrive together share one forward pass.

:class:`MicroBatcher` takes dialogues from concurrent requests on an asyncio queue: the first
one waits up to ``wait_ms`` for others (or until ``max_batch`` dialogues are there), then the
batch runs in a worker thread, so the event loop keeps serving while the model computes. While a
batch runs, new requests queue up and form the next one, so under load batches fill without
waiting. A batch that fails is rerun one dialogue at a time, so a fault reaches only the request
that holds it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["MicroBatcher"]

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Job(Generic[Item, Result]):
    item: Item
    explain: bool
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[Item, Result]):
    """Gathers concurrent :meth:`submit` calls into batches for ``run``.

    Args:
        run: ``run(items, explain)`` -> one result per item, in order; called in ``executor``
            (one worker thread: batches run one after the other).
        executor: Where ``run`` runs.
        max_batch: Most items per call of ``run`` (1: every request alone).
        wait_ms: How long a batch's first item waits for more.

    Attributes:
        batches, items: Calls of ``run`` made for whole batches and the items they held (a
            failed batch's one-by-one reruns are not counted).
    """

    def __init__(self, run: Callable[[list[Item], bool], Sequence[Result]], *, executor: Executor,
                 max_batch: int = 8, wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be >= 0, got {wait_ms}")
        self.run = run
        self.executor = executor
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self.batches = self.items = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.get_running_loop().create_task(self._loop(), name="redifu-micro-batcher")

    async def close(self) -> None:
        """Stop the batching task; requests still queued fail with ``RuntimeError``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, item: Item, *, explain: bool = False) -> Result:
        """The result for ``item``, computed in a batch with whatever arrives with it."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() has not been called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(item, explain, future))
        return await future

    async def _gather(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.wait_s
        while len(jobs) < self.max_batch:
            try:
                jobs.append(self._queue.get_nowait())  # already waiting: no timer needed
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]  # a client that left is not computed

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._gather()
            if not jobs:
                continue
            outcomes = await loop.run_in_executor(self.executor, self._run_jobs, jobs)
            for job, (result, error) in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if error is not None:
                    job.future.set_exception(error)
                else:
                    job.future.set_result(result)

    def _run_jobs(self, jobs: list[_Job]) -> list[tuple[Result | None, BaseException | None]]:
        """In the worker thread: one ``run`` per explain flag, failed groups rerun one by one."""
        outcomes: dict[int, tuple[Result | None, BaseException | None]] = {}
        for explain in (False, True):
            group = [(position, job) for position, job in enumerate(jobs) if job.explain is explain]
            if not group:
                continue
            try:
                results = self.run([job.item for _, job in group], explain)
                self.batches += 1
                self.items += len(group)
                outcomes.update({position: (result, None) for (position, _), result in zip(group, results)})
                continue
            except Exception as error:  # noqa: BLE001  (attributed below, one dialogue at a time)
                if len(group) == 1:
                    outcomes[group[0][0]] = (None, error)
                    continue
                logger.info("a batch of %d dialogues failed; running them one by one", len(group))
            for position, job in group:
                try:
                    outcomes[position] = (self.run([job.item], explain)[0], None)
                except Exception as error:  # noqa: BLE001  (the request's own fault, or a 500)
                    outcomes[position] = (None, error)
        return [outcomes[position] for position in range(len(jobs))]
