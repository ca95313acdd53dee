"""Training records on disk: JSONL manifests for the three tasks, and the book-keeping of records that are skipped.

Three tasks, one manifest format each (one JSON object per line; image paths are relative to the manifest's folder,
absolute paths are kept as they are):

=================  =====================================================================================
task               line
=================  =====================================================================================
``understanding``  ``{"image": "img/cat.png", "conversations": [{"role": "user", "content": "<image>\\nWhat is
                   this?"}, {"role": "assistant", "content": "A cat."}]}`` (``images``: a list, for several;
                   no image at all for a text-only conversation)
``generation``     ``{"image": "img/cat.png", "caption": "a cat on a sofa"}`` (text-to-image)
``text``           ``{"text": "Plain text for language modelling."}``
=================  =====================================================================================

Roles ``user``/``assistant`` (the LLaVA spellings ``human``/``gpt`` and ``from``/``value`` keys are accepted too).

A long run must never die on one bad line, so every check here raises :class:`SkipRecord` with a reason, and the
caller counts it in a :class:`SkipCounter`: malformed JSON, missing fields, missing or corrupt image, empty caption
or text, over-long sample. The counter is part of the checkpoint and is reported in the metrics log.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..registry import ConfigError

logger = logging.getLogger(__name__)

TASKS = ("understanding", "generation", "text")

# Reasons a record is skipped; the keys of SkipCounter.counts.
MALFORMED_JSON = "malformed_json"
BAD_FIELDS = "bad_fields"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
EMPTY_CAPTION = "empty_caption"
EMPTY_TEXT = "empty_text"
TOO_LONG = "too_long"

_ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


class SkipRecord(Exception):
    """A record that cannot be used. ``reason`` is one of the module's reason names."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SkipCounter:
    """Counts skipped records per reason and logs the first few of each, so a long run reports them without noise.

    Attributes:
        counts: reason -> number of records skipped for it.
        log_first: how many skips of each reason to log as warnings.
    """

    counts: Counter = field(default_factory=Counter)
    log_first: int = 5

    def add(self, skip: SkipRecord, where: str = "") -> None:
        self.counts[skip.reason] += 1
        if self.counts[skip.reason] <= self.log_first:
            logger.warning("skipped a record (%s) %s %s", skip.reason, where, skip.detail)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def report(self) -> str:
        """One line: ``skipped 3 records: corrupt_image=1, missing_image=2`` (or ``no records skipped``)."""
        if not self.counts:
            return "no records skipped"
        parts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"skipped {self.total} records: {parts}"

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.counts = Counter(dict(state))


@dataclass
class Record:
    """One validated record, images not yet loaded.

    Attributes:
        task: ``understanding``, ``generation`` or ``text``.
        images: image locations (paths, or ``bytes`` for records read from tar shards).
        conversations: understanding turns ``[{"role", "content"}]``.
        caption: text-to-image caption.
        text: plain text.
        key: where the record came from (``manifest.jsonl:12``), for messages.
    """

    task: str
    images: list[Any] = field(default_factory=list)
    conversations: list[dict[str, str]] = field(default_factory=list)
    caption: str = ""
    text: str = ""
    key: str = ""


def _resolve(image: Any, root: str) -> Any:
    if isinstance(image, str) and not os.path.isabs(image):
        return os.path.join(root, image)
    return image


def _conversations(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise SkipRecord(BAD_FIELDS, "'conversations' must be a non-empty list of turns")
    turns = []
    for turn in raw:
        if not isinstance(turn, Mapping):
            raise SkipRecord(BAD_FIELDS, f"a turn must be an object, got {turn!r:.60}")
        role = _ROLE_ALIASES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise SkipRecord(BAD_FIELDS, f"a turn needs a role (user/assistant) and string content, got {turn!r:.80}")
        turns.append({"role": role, "content": content})
    if not any(t["role"] == "assistant" and t["content"].strip() for t in turns):
        raise SkipRecord(BAD_FIELDS, "no non-empty assistant turn: nothing to learn from")
    return turns


def parse_record(obj: Any, task: str, *, root: str = "", key: str = "") -> Record:
    """Validate one decoded JSON object for ``task`` and return a :class:`Record` (raises :class:`SkipRecord`)."""
    if not isinstance(obj, Mapping):
        raise SkipRecord(BAD_FIELDS, f"a line must be a JSON object, got {type(obj).__name__}")
    if task == "understanding":
        images = obj.get("images", [obj["image"]] if "image" in obj else [])
        if not isinstance(images, list):
            images = [images]
        turns = _conversations(obj.get("conversations"))
        n_tags = sum(t["content"].count("<image>") for t in turns)
        if len(images) == 1 and n_tags == 0:
            # The common single-image form without a tag: the image goes before the first user turn.
            first = next((i for i, t in enumerate(turns) if t["role"] == "user"), 0)
            turns[first] = {**turns[first], "content": "<image>\n" + turns[first]["content"]}
            n_tags = 1
        if n_tags != len(images):
            raise SkipRecord(BAD_FIELDS, f"{len(images)} images but {n_tags} '<image>' tags in the conversation")
        return Record(task, images=[_resolve(i, root) for i in images], conversations=turns, key=key)
    if task == "generation":
        if "image" not in obj:
            raise SkipRecord(BAD_FIELDS, "a text-to-image record needs 'image' and 'caption'")
        caption = obj.get("caption", obj.get("text"))
        if not isinstance(caption, str) or not caption.strip():
            raise SkipRecord(EMPTY_CAPTION, "empty or missing 'caption'")
        return Record(task, images=[_resolve(obj["image"], root)], caption=caption.strip(), key=key)
    if task == "text":
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SkipRecord(EMPTY_TEXT, "empty or missing 'text'")
        return Record(task, text=text, key=key)
    raise ConfigError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


class JsonlSource:
    """A map-style source over one JSONL manifest: ``len(source)`` lines, ``source.record(i)`` -> :class:`Record`.

    Lines are parsed when asked for (a malformed line costs nothing until it is reached, and is then skipped
    with reason ``malformed_json``); only byte offsets are kept in memory, so manifests of millions of lines are fine.

    Args:
        path: the ``.jsonl`` file.
        task: ``understanding``, ``generation`` or ``text``.
    """

    def __init__(self, path: str | os.PathLike, task: str):
        if task not in TASKS:
            raise ConfigError(f"task '{task}' for {path}: choose one of {', '.join(TASKS)}")
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ConfigError(f"manifest {self.path} does not exist; give the path of a .jsonl file")
        self.task = task
        self.root = os.path.dirname(os.path.abspath(self.path))
        self._offsets: list[int] = []
        with open(self.path, "rb") as f:
            offset = 0
            for line in f:
                if line.strip():
                    self._offsets.append(offset)
                offset += len(line)
        if not self._offsets:
            raise ConfigError(f"manifest {self.path} has no records")

    def __len__(self) -> int:
        return len(self._offsets)

    def record(self, index: int) -> Record:
        """The ``index``-th record (raises :class:`SkipRecord` if the line is unusable)."""
        with open(self.path, "rb") as f:
            f.seek(self._offsets[index])
            line = f.readline()
        key = f"{os.path.basename(self.path)}:{index + 1}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SkipRecord(MALFORMED_JSON, f"{key}: {err}") from None
        return parse_record(obj, self.task, root=self.root, key=key)
