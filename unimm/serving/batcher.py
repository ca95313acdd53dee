"""Gather concurrent requests' rows into one model call: dynamic batching for ``POST /v1/generate``.

A request is a list of rows (one row = one image: a prompt and its own seed) and a key (its sampling options).
Rows wait in arrival order; the batcher takes the oldest row's key and runs up to ``max_batch`` waiting rows with
that same key in one call, so requests with other options never share a call. A call starts after a short
``window`` when the model is idle (to let simultaneous requests arrive together); while a call runs, new rows
simply wait, so the next call takes whatever gathered meanwhile. A request's rows may be split over several
calls; because every row is drawn with its own generator (``UnifiedModel.sample_images(seed=[...])``), its
results are the same however it was batched.

Every call runs on one worker thread (``executor``): torch is not re-entrant for one model, and the event loop
stays free to accept requests while the model works. Written here rather than taken from a serving library
because the pieces that matter (row-level splitting, grouping by options, per-row seeds) are specific to this
model and small.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Row:
    key: Hashable
    payload: Any
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Run rows in batches of up to ``max_batch`` through ``run_batch(key, payloads) -> results`` (one result per
    payload, in order) on ``executor``.

    Call :meth:`start` from the running event loop (the app's startup) and :meth:`stop` at shutdown.
    """

    def __init__(self, run_batch: Callable[[Hashable, list[Any]], Sequence[Any]], executor: Executor, *,
                 max_batch: int, window: float = 0.005):
        self.run_batch, self.executor, self.max_batch, self.window = run_batch, executor, max_batch, window
        self._rows: list[_Row] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        #: (key, rows) of every call made, newest last, kept for tests and the load benchmark (bounded).
        self.calls: list[tuple[Hashable, int]] = []

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, key: Hashable, payloads: Sequence[Any]) -> list[Any]:
        """Queue ``payloads`` (rows sharing ``key``) and wait for their results, in order."""
        loop = asyncio.get_running_loop()
        rows = [_Row(key, payload, loop.create_future()) for payload in payloads]
        self._rows.extend(rows)
        self._wake.set()
        return list(await asyncio.gather(*(row.future for row in rows)))

    def _take(self) -> list[_Row]:
        """Up to ``max_batch`` waiting rows with the oldest row's key, oldest first, removed from the queue."""
        key = self._rows[0].key
        chosen = [row for row in self._rows if row.key == key][: self.max_batch]
        taken = {id(row) for row in chosen}
        self._rows = [row for row in self._rows if id(row) not in taken]
        return chosen

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.window and len(self._rows) < self.max_batch:
                await asyncio.sleep(self.window)  # let requests sent together arrive together
            rows = [row for row in self._take() if not row.future.cancelled()]
            if not self._rows:
                self._wake.clear()
            if not rows:
                continue
            self.calls = [*self.calls[-999:], (rows[0].key, len(rows))]
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, rows[0].key,
                                                     [row.payload for row in rows])
            except Exception as err:  # noqa: BLE001 - handed to the waiting requests, which report it
                for row in rows:
                    if not row.future.done():
                        row.future.set_exception(err)
                continue
            for row, result in zip(rows, results):
                if not row.future.done():
                    row.future.set_result(result)
