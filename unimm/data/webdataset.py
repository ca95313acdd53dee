"""WebDataset tar shards for data sets too large for one folder of files.

A shard is a plain ``.tar`` whose members are grouped into samples by their name without extension
(``000123.jpg`` + ``000123.txt`` = one sample), the format of `webdataset <https://github.com/webdataset/webdataset>`_,
img2dataset and most public image-text sets. Per task:

=================  ========================================================================================
task               members of one sample
=================  ========================================================================================
``generation``     an image (``jpg``/``jpeg``/``png``/``webp``) and its caption: ``txt``, or ``json`` with
                   ``"caption"``
``understanding``  an image and ``json`` with ``"conversations"`` (as in the JSONL manifest)
``text``           ``txt``, or ``json`` with ``"text"``
=================  ========================================================================================

Shards are read with the ``webdataset`` package (``pip install webdataset``), decoding nothing itself: images stay
bytes until :func:`unimm.data.images.load_record_image`, so a corrupt image is counted and skipped like any other bad
record, and a broken tar member is reported through webdataset's error handler instead of stopping the run.

Order and resuming: process ``r`` of ``W`` reads shards ``r, r+W, ...`` (every ``W``-th sample of every shard when
there are fewer shards than processes); each epoch visits its shards in an order drawn from ``(seed, source, epoch)``.
The stream's state is the number of samples it has taken; resuming re-reads the shards up to that point (tar
headers and bytes only, no decoding).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any

from ..registry import ConfigError
from .mixture import _seed_of
from .records import BAD_FIELDS, MALFORMED_JSON, Record, SkipRecord, parse_record

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
BAD_SHARD = "bad_shard_member"


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """``"data/t2i-{000..009}.tar"`` (brace notation) or a list of paths -> the list of shard paths."""
    from braceexpand import braceexpand  # installed with webdataset

    if isinstance(urls, str):
        urls = [urls]
    shards = [s for url in urls for s in braceexpand(str(url))]
    if not shards:
        raise ConfigError(f"no shards in {urls!r}")
    return shards


def sample_to_record(sample: dict[str, Any], task: str) -> Record:
    """One webdataset sample (extension -> bytes) -> a :class:`Record` (raises :class:`SkipRecord`)."""
    key = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
    obj: dict[str, Any] = {}
    if "json" in sample:
        try:
            obj = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SkipRecord(MALFORMED_JSON, f"{key}: {err}") from None
        if not isinstance(obj, dict):
            raise SkipRecord(BAD_FIELDS, f"{key}: the json member must hold an object")
    if "txt" in sample:
        text = sample["txt"].decode("utf-8", errors="replace")
        obj.setdefault("caption" if task == "generation" else "text", text)
    image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
    if task != "text":
        if image is None:
            raise SkipRecord(BAD_FIELDS, f"{key}: no image member ({'/'.join(IMAGE_EXTENSIONS)})")
        obj["image"] = image
    return parse_record(obj, task, key=key)


class WebDatasetStream:
    """The samples of a set of tar shards that one process reads (same interface as ``SourceStream``).

    Args:
        shards: shard paths or brace patterns.
        task: ``understanding``, ``generation`` or ``text``.
        name: the source's name (part of the shard-order seed).
        seed: run seed.
        rank, world_size: this process and the number of processes.
        shuffle: draw a new shard order each epoch (default) or keep the listed order.
    """

    def __init__(
        self, shards: str | Sequence[str], task: str, name: str, seed: int, rank: int = 0, world_size: int = 1,
        shuffle: bool = True,
    ):
        try:
            import webdataset  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"source '{name}' reads tar shards, which needs the webdataset package: pip install webdataset"
            ) from None
        self.task, self.name, self.seed, self.shuffle = task, name, seed, shuffle
        self.shards = expand_shards(shards)
        self.rank, self.world_size = rank, world_size
        self.position = 0
        self._errors: list[SkipRecord] = []
        self._iterator: Iterator[dict] | None = None
        self._stash: dict | None = None

    def _on_error(self, exn: Exception) -> bool:
        self._errors.append(SkipRecord(BAD_SHARD, f"{type(exn).__name__}: {exn}"))
        return True  # keep reading

    def _samples(self) -> Iterator[dict]:
        import webdataset as wds

        split_shards = len(self.shards) >= self.world_size
        for epoch in itertools.count():
            shards = list(self.shards)
            if self.shuffle:
                random.Random(_seed_of("shards", self.seed, self.name, epoch)).shuffle(shards)
            if split_shards:
                shards = shards[self.rank :: self.world_size]
            dataset = wds.WebDataset(
                shards, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                handler=self._on_error,
            )
            samples = iter(dataset)
            if not split_shards:
                samples = itertools.islice(samples, self.rank, None, self.world_size)
            yield from samples

    def next_record(self) -> tuple[int, Record | SkipRecord]:
        """Take the next sample: (its position, the record or the reason it is unusable)."""
        if self._iterator is None:
            self._iterator = self._samples()
        if self._stash is None and not self._errors:
            self._stash = next(self._iterator)
        if self._errors:  # webdataset reported a broken member while reading on: count it, keep the sample
            return self.position, self._errors.pop(0)
        sample, self._stash = self._stash, None
        position = self.position
        self.position += 1
        try:
            return position, sample_to_record(sample, self.task)
        except SkipRecord as skip:
            return position, skip

    def seek(self, position: int) -> None:
        """Restart and skip to ``position`` samples taken (used when resuming)."""
        self._iterator, self._errors, self._stash, self.position = self._samples(), [], None, 0
        for _ in range(position):
            next(self._iterator)
            self.position += 1
        self._errors.clear()


__all__ = ["BAD_SHARD", "WebDatasetStream", "expand_shards", "sample_to_record"]
