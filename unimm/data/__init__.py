"""Training data: on-disk formats, image preparation, task mixing (see docs/training.md).

Sources are declared under ``train.data.sources`` in a config, one entry per name::

    sources:
      und:  {task: understanding, jsonl: data/llava/train.jsonl}
      text: {task: text, jsonl: [data/text/a.jsonl, data/text/b.jsonl]}
      t2i:  {task: generation, shards: "data/t2i/{00000..00127}.tar", caption_dropout: 0.1}

:func:`build_streams` turns that section into per-process streams for :class:`MixtureLoader`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..registry import ConfigError
from ..registry.errors import did_you_mean
from .images import GenerationImageTransform, load_record_image
from .mixture import ConcatSource, MixtureLoader, SourceStream, TaskBatch, TaskSampler
from .records import TASKS, JsonlSource, Record, SkipCounter, SkipRecord, parse_record

SOURCE_KEYS = {"task", "jsonl", "shards", "caption_dropout", "shuffle"}


def build_streams(
    sources: Mapping[str, Mapping[str, Any]], seed: int, rank: int = 0, world_size: int = 1
) -> dict[str, Any]:
    """``train.data.sources`` -> name -> stream (``SourceStream`` for JSONL, ``WebDatasetStream`` for shards)."""
    streams: dict[str, Any] = {}
    for name, spec in sources.items():
        where = f"train.data.sources.{name}"
        unknown = set(spec) - SOURCE_KEYS
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(
                f"{where}.{key}: unknown key.{did_you_mean(key, sorted(SOURCE_KEYS))} "
                f"Valid keys: {', '.join(sorted(SOURCE_KEYS))}"
            )
        task = spec.get("task")
        if task not in TASKS:
            raise ConfigError(f"{where}.task must be one of {', '.join(TASKS)}, got {task!r}")
        if ("jsonl" in spec) == ("shards" in spec):
            raise ConfigError(f"{where}: give exactly one of 'jsonl' (manifest paths) or 'shards' (tar shards)")
        shuffle = bool(spec.get("shuffle", True))
        if "jsonl" in spec:
            paths = spec["jsonl"]
            paths = [paths] if isinstance(paths, str) else list(paths)
            parts = [JsonlSource(p, task) for p in paths]
            source = parts[0] if len(parts) == 1 else ConcatSource(parts)
            streams[name] = SourceStream(source, name, seed, rank, world_size, shuffle=shuffle)
        else:
            from .webdataset import WebDatasetStream

            streams[name] = WebDatasetStream(spec["shards"], task, name, seed, rank, world_size, shuffle=shuffle)
    return streams


def caption_dropout_of(sources: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Source name -> caption-dropout probability, checked to lie in [0, 1)."""
    out = {}
    for name, spec in sources.items():
        p = float(spec.get("caption_dropout", 0.0))
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"train.data.sources.{name}.caption_dropout must be in [0, 1), got {p}")
        out[name] = p
    return out


__all__ = [
    "TASKS",
    "ConcatSource",
    "GenerationImageTransform",
    "JsonlSource",
    "MixtureLoader",
    "Record",
    "SkipCounter",
    "SkipRecord",
    "SourceStream",
    "TaskBatch",
    "TaskSampler",
    "build_streams",
    "caption_dropout_of",
    "load_record_image",
    "parse_record",
]
