"""The prefetching loader hands out the loader's own batches, reports the state of the last one handed out, and
raises the loader's errors where the batch is asked for."""

from __future__ import annotations

import threading

import pytest

from unimm.data.prefetch import BatchPrefetcher
from unimm.registry import InputError


class CountingLoader:
    """Batch k is ``k``; its state is how many batches were built, and by which thread."""

    def __init__(self, fail_at: int | None = None):
        self.built, self.fail_at, self.threads = 0, fail_at, set()

    def next_batch(self) -> int:
        self.threads.add(threading.current_thread().name)
        if self.built == self.fail_at:
            raise InputError(f"source 'und': bad record at batch {self.built}")
        self.built += 1
        return self.built - 1

    def state_dict(self) -> dict:
        return {"step": self.built, "skips": {"missing_image": self.built % 2}}


def test_batches_come_in_order_and_the_state_is_the_last_handed_out():
    loader = CountingLoader()
    with BatchPrefetcher(loader, 5) as batches:
        assert batches.state_dict()["step"] == 0
        for k in range(5):
            assert batches.next_batch() == k
            assert batches.state_dict()["step"] == k + 1  # not k + 2, though batch k + 1 is being built
            assert batches.skipped == (k + 1) % 2
        with pytest.raises(RuntimeError, match="handed out already"):
            batches.next_batch()
    assert loader.built == 5  # nothing built beyond the batches asked for
    assert loader.threads == {"unimm-prefetch_0"}  # built off the training thread


def test_an_error_while_building_is_raised_by_next_batch():
    with BatchPrefetcher(CountingLoader(fail_at=2), 4) as batches:
        assert [batches.next_batch(), batches.next_batch()] == [0, 1]
        with pytest.raises(InputError, match="bad record at batch 2"):
            batches.next_batch()
        assert batches.state_dict()["step"] == 2


def test_closing_early_leaves_the_state_of_the_batches_trained():
    loader = CountingLoader()
    batches = BatchPrefetcher(loader, 10)
    batches.next_batch()
    batches.close()
    assert batches.state_dict()["step"] == 1 and loader.built <= 2
