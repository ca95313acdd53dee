"""Mixing data sources at given ratios, deterministically and resumably, into task batches for the trainer.

Janus trains one model on three tasks at once: multimodal understanding, plain text and text-to-image. Here each
*micro-batch* holds one task; which task is drawn per micro-batch from the stage's ratios (e.g. 5:1:4), so over a
run the tasks appear in those proportions and gradient accumulation mixes them within an optimiser step.

Everything is a pure function of a seed and a few counters, so a run resumes exactly where it stopped:

* :class:`TaskSampler` - the task of micro-batch ``i`` depends only on ``(seed, i)``; its state is ``i``.
* :class:`SourceStream` - one source seen by one process: epoch ``e`` visits the records in a permutation drawn
  from ``(seed, source, e)``; process ``r`` of ``W`` takes every ``W``-th record from position ``r``, so processes
  never share a record; its state is how many records it has taken.
* :class:`MixtureLoader` - draws the task, takes records from that source until the batch is full, skipping and
  counting bad ones (:class:`~unimm.data.records.SkipCounter`), applies caption dropout (the prompt of a
  text-to-image sample is replaced by the generation path's ``unconditional_prompt`` with probability
  ``caption_dropout``, seeded per record, so the model learns the very prompt its sampler guides with) and batches
  with the processor.
  ``state_dict()`` / ``load_state_dict()`` hold the counters and the skip counts.

Batches (see :class:`TaskBatch`): ``understanding`` -> the processor's ``understanding_batch`` dict (labels only on
answers); ``text`` -> ``text_batch``; ``generation`` -> ``prompt_ids`` (B, L), ``prompt_mask`` (B, L),
``prompt_positions`` (B, L) (each row's conditional prompt's, which an unconditional row keeps, as sampling does),
``images`` (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..backbones.base import positions_from_mask
from ..registry import ConfigError, InputError
from ..registry.errors import did_you_mean
from .images import GenerationImageTransform, load_record_image
from .records import BAD_FIELDS, TOO_LONG, Record, SkipCounter, SkipRecord


class Source(Protocol):
    """A map-style source: ``len(source)`` records, ``source.record(i)`` -> Record (or raises SkipRecord)."""

    task: str

    def __len__(self) -> int: ...

    def record(self, index: int) -> Record: ...


class ConcatSource:
    """Several map-style sources of one task read as one (e.g. a list of manifests)."""

    def __init__(self, sources: Sequence[Source]):
        tasks = {s.task for s in sources}
        if len(tasks) != 1:
            raise ConfigError(f"a source's manifests must all hold one task, got {sorted(tasks)}")
        self.task = tasks.pop()
        self.sources = list(sources)
        self._ends = []
        total = 0
        for s in self.sources:
            total += len(s)
            self._ends.append(total)

    def __len__(self) -> int:
        return self._ends[-1]

    def record(self, index: int) -> Record:
        start = 0
        for source, end in zip(self.sources, self._ends):
            if index < end:
                return source.record(index - start)
            start = end
        raise IndexError(index)


def _seed_of(*parts: Any) -> int:
    """A 63-bit seed from any hashable parts, stable across processes and Python runs (unlike ``hash``)."""
    return random.Random("/".join(map(str, parts))).getrandbits(63)


class TaskSampler:
    """Draws the source of micro-batch ``i`` with probability proportional to its weight, from ``(seed, i)`` only.

    Args:
        weights: source name -> ratio (any positive numbers: ``{"und": 5, "text": 1, "t2i": 4}``); zeros drop a source.
        seed: run seed.
    """

    def __init__(self, weights: Mapping[str, float], seed: int):
        bad = {k: v for k, v in weights.items() if not isinstance(v, (int, float)) or v < 0 or math.isnan(v)}
        if bad:
            raise ConfigError(f"mixture ratios must be numbers >= 0, got {bad}")
        self.names = [k for k, v in weights.items() if v > 0]
        if not self.names:
            raise ConfigError(f"the mixture {dict(weights)} gives no source a positive ratio")
        total = float(sum(weights[k] for k in self.names))
        self.probabilities = {k: weights[k] / total for k in self.names}
        self._cumulative = []
        acc = 0.0
        for k in self.names:
            acc += self.probabilities[k]
            self._cumulative.append(acc)
        self.seed = seed

    def choose(self, index: int) -> str:
        """The source name for micro-batch ``index``."""
        u = random.Random(_seed_of("task", self.seed, index)).random()
        for name, edge in zip(self.names, self._cumulative):
            if u < edge:
                return name
        return self.names[-1]


class SourceStream:
    """The records of one map-style source that one process reads, in a seeded per-epoch order.

    Args:
        source: the records.
        name: the source's name (part of the seed, so two sources do not share an order).
        seed: run seed.
        rank, world_size: this process and the number of processes.
        shuffle: visit records in a seeded random order (default) or in file order.
    """

    def __init__(self, source: Source, name: str, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.source, self.name, self.seed = source, name, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.position = 0  # records taken by this process
        self._epoch, self._order = -1, None

    def _index(self, global_position: int) -> int:
        n = len(self.source)
        epoch, offset = divmod(global_position, n)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_seed_of("order", self.seed, self.name, epoch))
            self._order, self._epoch = torch.randperm(n, generator=gen), epoch
        return int(self._order[offset])

    def next_record(self) -> tuple[int, Record | SkipRecord]:
        """Take the next record: returns (its stream position, the record or the reason it is unusable)."""
        position = self.position
        self.position += 1
        index = self._index(position * self.world_size + self.rank)
        try:
            return position, self.source.record(index)
        except SkipRecord as skip:
            return position, skip

    @property
    def epoch(self) -> float:
        return self.position * self.world_size / len(self.source)


@dataclass
class TaskBatch:
    """One micro-batch of one task.

    Attributes:
        task: ``understanding``, ``generation`` or ``text``.
        source: the source name it came from.
        inputs: the tensors (see the module docstring).
        size: number of samples.
    """

    task: str
    source: str
    inputs: dict[str, Any]
    size: int


class MixtureLoader:
    """Builds task batches from named streams at the ratios of a :class:`TaskSampler`.

    Args:
        streams: source name -> stream (map-style :class:`SourceStream` or a WebDataset stream: anything with
            ``next_record()``, ``position`` and a ``task``/``source.task``).
        sampler: picks the source of each micro-batch.
        processor: the model's processor (``understanding_batch``, ``text_batch``, ``generation_prompts``).
        batch_size: samples per micro-batch and process.
        generation_image_size: side of generation targets (the generator's ``image_size``).
        caption_dropout: source name -> probability of replacing a sample's prompt with the unconditional one.
        unconditional_prompt: the generation path's ``unconditional_prompt`` (ids, mask, pad_id) -> (ids, mask),
            which caption dropout writes (needed when a source the mixture draws has a caption_dropout above 0).
        max_length: longest token sequence kept (longer samples are skipped as ``too_long``); None = no limit.
        seed, rank: for the caption-dropout draws.
        num_threads: images decoded in parallel.
        max_skips_in_a_row: give up (with an error naming the source) after this many consecutive bad records,
            which means the source is broken rather than noisy.
    """

    def __init__(
        self,
        streams: Mapping[str, Any],
        sampler: TaskSampler,
        processor: Any,
        batch_size: int,
        generation_image_size: int | None = None,
        caption_dropout: Mapping[str, float] | None = None,
        unconditional_prompt: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
        max_length: int | None = None,
        seed: int = 0,
        rank: int = 0,
        num_threads: int = 4,
        max_skips_in_a_row: int = 1000,
    ):
        missing = [n for n in sampler.names if n not in streams]
        if missing:
            raise ConfigError(
                f"the mixture names source(s) {missing} that train.data.sources does not define."
                f"{did_you_mean(missing[0], streams)} Sources: {', '.join(streams) or 'none'}"
            )
        self.streams, self.sampler, self.processor = dict(streams), sampler, processor
        self.batch_size = int(batch_size)
        self.caption_dropout = dict(caption_dropout or {})
        drawn_dropout = [p for name, p in self.caption_dropout.items() if name in sampler.names]
        if unconditional_prompt is None and any(p > 0 for p in drawn_dropout):
            raise ConfigError("caption dropout needs a generation path to give the unconditional prompt: build the "
                              "model with a generator, or remove caption_dropout from train.data.sources")
        self.unconditional_prompt = unconditional_prompt
        self.max_length, self.seed, self.rank = max_length, seed, rank
        self.max_skips_in_a_row = max_skips_in_a_row
        self.generation_transform = GenerationImageTransform(generation_image_size) if generation_image_size else None
        self.skips = SkipCounter()
        self.step = 0  # micro-batches drawn
        self._pool = ThreadPoolExecutor(max(1, num_threads)) if num_threads > 1 else None

    @staticmethod
    def task_of(stream: Any) -> str:
        return getattr(stream, "task", None) or stream.source.task

    # -- preparing one record -------------------------------------------------------------------------------
    def _prepare(self, name: str, task: str, position: int, item: Record | SkipRecord) -> Any:
        """Record -> sample ready for batching (raises SkipRecord)."""
        if isinstance(item, SkipRecord):
            raise item
        if task == "understanding":
            images = [load_record_image(loc) for loc in item.images]
            return {"conversations": item.conversations, "images": images, "key": item.key}
        if task == "generation":
            if self.generation_transform is None:
                raise ConfigError("a generation source needs generation_image_size (the generator's image_size)")
            image = self.generation_transform(load_record_image(item.images[0]))
            p = self.caption_dropout.get(name, 0.0)
            dropped = p > 0 and random.Random(_seed_of("drop", self.seed, name, self.rank, position)).random() < p
            return {"image": image, "caption": item.caption, "dropped": dropped, "key": item.key}
        return {"text": item.text, "key": item.key}

    def _take(self, name: str, count: int) -> list[Any]:
        stream = self.streams[name]
        task = self.task_of(stream)
        samples: list[Any] = []
        in_a_row = 0
        while len(samples) < count:
            drawn = [stream.next_record() for _ in range(count - len(samples))]
            jobs = [(name, task, pos, item) for pos, item in drawn]
            results = (self._pool.map(self._try_prepare, jobs) if self._pool else map(self._try_prepare, jobs))
            for result in results:
                if isinstance(result, SkipRecord):
                    self.skips.add(result, where=f"in source '{name}'")
                    in_a_row += 1
                    if in_a_row >= self.max_skips_in_a_row:
                        raise InputError(
                            f"source '{name}': {in_a_row} bad records in a row ({self.skips.report()}); "
                            f"check its paths and format"
                        )
                else:
                    samples.append(result)
                    in_a_row = 0
        return samples

    def _try_prepare(self, job: tuple) -> Any:
        try:
            return self._prepare(*job)
        except SkipRecord as skip:
            return skip

    # -- batching -------------------------------------------------------------------------------------------
    def _length_ok(self, length: int) -> bool:
        return self.max_length is None or length <= self.max_length

    def _batch_one_or_skip(self, task: str, sample: Any) -> bool:
        """Whether one sample batches alone within max_length; counts the reason when it does not."""
        try:
            inputs = self._collate(task, [sample])
        except InputError as err:
            reason = TOO_LONG if "tokens long" in str(err) else BAD_FIELDS
            self.skips.add(SkipRecord(reason, f"{sample.get('key', '')}: {err}"))
            return False
        mask = inputs.get("attention_mask", inputs.get("prompt_mask"))
        if not self._length_ok(int(mask.shape[1])):
            self.skips.add(SkipRecord(TOO_LONG, f"{sample.get('key', '')}: {int(mask.shape[1])} tokens"))
            return False
        return True

    def _collate(self, task: str, samples: list[Any]) -> dict[str, Any]:
        if task == "understanding":
            batch = self.processor.understanding_batch(samples)
            batch.pop("sft_format", None)
            return batch
        if task == "text":
            return dict(self.processor.text_batch([s["text"] for s in samples]))
        prompt_ids, prompt_mask = self.processor.generation_prompts([s["caption"] for s in samples])
        prompt_positions = positions_from_mask(prompt_mask)
        dropped = torch.tensor([s["dropped"] for s in samples]).unsqueeze(1)
        if dropped.any():
            uncond_ids, uncond_mask = self.unconditional_prompt(prompt_ids, prompt_mask, self.processor.pad_id)
            prompt_ids = torch.where(dropped, uncond_ids, prompt_ids)
            prompt_mask = torch.where(dropped, uncond_mask, prompt_mask)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "prompt_positions": prompt_positions,
                "images": torch.stack([s["image"] for s in samples])}

    def next_batch(self) -> TaskBatch:
        """The next micro-batch: draw its source, fill it with good samples, batch it."""
        name = self.sampler.choose(self.step)
        self.step += 1
        task = self.task_of(self.streams[name])
        samples = self._take(name, self.batch_size)
        while True:
            try:
                inputs = self._collate(task, samples)
                mask = inputs.get("attention_mask", inputs.get("prompt_mask"))
                if self._length_ok(int(mask.shape[1])):
                    return TaskBatch(task, name, inputs, len(samples))
            except InputError:
                pass
            # Some sample is too long or malformed: find it alone, drop it, refill, try again.
            samples = [s for s in samples if self._batch_one_or_skip(task, s)]
            samples += self._take(name, self.batch_size - len(samples))

    # -- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "positions": {name: stream.position for name, stream in self.streams.items()},
            "skips": self.skips.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step = int(state["step"])
        for name, position in state["positions"].items():
            if name in self.streams:
                seek = getattr(self.streams[name], "seek", None)
                if seek is not None:
                    seek(int(position))
                else:
                    self.streams[name].position = int(position)
        self.skips.load_state_dict(state.get("skips", {}))
