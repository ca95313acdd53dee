"""The batcher alone, with a recording function in place of the model: grouping by key, the max-batch split,
arrival order, errors handed to every waiting request, and cancelled requests skipped."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from unimm.serving.batcher import Batcher


def _run(coroutine_fn, run_batch, **kwargs):
    async def main():
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(run_batch, executor, **kwargs)
            batcher.start()
            try:
                return await coroutine_fn(batcher), batcher.calls
            finally:
                await batcher.stop()

    return asyncio.run(main())


def _recording():
    seen, threads = [], set()

    def run_batch(key, payloads):
        seen.append((key, list(payloads)))
        threads.add(threading.get_ident())
        return [f"{key}:{p}" for p in payloads]

    return run_batch, seen, threads


def test_rows_are_grouped_by_key_and_split_at_max_batch():
    run_batch, seen, threads = _recording()

    async def requests(batcher):
        return await asyncio.gather(batcher.submit("a", [1, 2]), batcher.submit("b", [3]), batcher.submit("a", [4]),
                                    batcher.submit("a", [5, 6]))

    results, calls = _run(requests, run_batch, max_batch=3, window=0.05)
    assert results == [["a:1", "a:2"], ["b:3"], ["a:4"], ["a:5", "a:6"]]
    assert seen == [("a", [1, 2, 4]), ("b", [3]), ("a", [5, 6])]  # oldest row's key first, arrival order kept
    assert calls == [("a", 3), ("b", 1), ("a", 2)]
    assert len(threads) == 1 and threading.get_ident() not in threads  # one worker thread, not the event loop's


def test_an_error_reaches_every_request_of_its_call_only():
    def run_batch(key, payloads):
        if key == "bad":
            raise ValueError("boom")
        return payloads

    async def requests(batcher):
        return await asyncio.gather(batcher.submit("bad", [1]), batcher.submit("bad", [2]),
                                    batcher.submit("good", [3]), return_exceptions=True)

    (first, second, good), _ = _run(requests, run_batch, max_batch=8, window=0.05)
    assert isinstance(first, ValueError) and first is second and good == [3]


def test_a_cancelled_request_is_not_run():
    run_batch, seen, _ = _recording()

    async def requests(batcher):
        gone = asyncio.ensure_future(batcher.submit("a", [1]))
        await asyncio.sleep(0)
        gone.cancel()
        kept = await batcher.submit("a", [2])
        with pytest.raises(asyncio.CancelledError):
            await gone
        return kept

    kept, _ = _run(requests, run_batch, max_batch=8, window=0.05)
    assert kept == ["a:2"] and seen == [("a", [2])]
