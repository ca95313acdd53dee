"""Building the next micro-batch while the current one trains.

:class:`~unimm.data.MixtureLoader` reads, decodes, resizes and tokenizes a batch when the trainer asks for it, so
the accelerator waits for the data every step (on CPU, 8% of a shapes-benchmark step). :class:`BatchPrefetcher`
asks the loader for batch k + 1 in one background thread as soon as batch k is handed out. Only this thread
touches the loader between two hand-outs, so the batches and their order are exactly the loader's own; the
state it reports (for checkpoints) is the loader's state after the last batch *handed out*, so a run resumed from
a checkpoint draws the batch the interrupted run would have trained next, not the one it had prefetched.

torch's DataLoader workers would be the usual tool, but a mixture draws its task per step and keeps one position
per source for exact resumption; a single prefetch thread keeps both, and the image decoding inside the loader
already runs on its own thread pool (``train.data.num_threads``).
"""

from __future__ import annotations

import copy
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class BatchPrefetcher:
    """Hands out ``loader.next_batch()`` results, the next one already being built in a background thread.

    Args:
        loader: a :class:`~unimm.data.MixtureLoader` (anything with ``next_batch`` and ``state_dict``), already
            restored with ``load_state_dict`` when resuming.
        batches: how many batches will be asked for; nothing is built beyond them, so the loader's skip counts
            at the end are those of the batches trained.
    """

    def __init__(self, loader: Any, batches: int):
        self.loader = loader
        self.remaining = int(batches)
        self._state = copy.deepcopy(loader.state_dict())
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="unimm-prefetch")
        self._pending: Future | None = self._executor.submit(loader.next_batch) if self.remaining > 0 else None

    def next_batch(self) -> Any:
        """The next batch (an error raised while building it is raised here)."""
        if self._pending is None:
            raise RuntimeError(f"BatchPrefetcher: all {self.remaining} batches were handed out already")
        batch = self._pending.result()
        self.remaining -= 1
        self._state = copy.deepcopy(self.loader.state_dict())
        self._pending = self._executor.submit(self.loader.next_batch) if self.remaining > 0 else None
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The loader's state after the last batch handed out (what a checkpoint must hold)."""
        return copy.deepcopy(self._state)

    @property
    def skipped(self) -> int:
        """Records skipped up to the last batch handed out."""
        return sum(self._state.get("skips", {}).values())

    def close(self) -> None:
        """Stop: drop a batch still being built (waits for it, as a thread cannot be killed)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._executor.shutdown(wait=True)

    def __enter__(self) -> BatchPrefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
