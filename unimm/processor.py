"""The processor: chat template, image placeholders, tokenisation and batching for a unified model.

It turns conversations and pictures into what :class:`unimm.model.UnifiedModel` eats, reproducing the reference
``VLChatProcessor`` of Janus and JanusFlow token for token:

* the ``deepseek`` chat template: ``{system}\\n\\n{User}: {msg}\\n\\n{Assistant}: {answer}<eos>...``; Janus's role
  names are ``<|User|>`` / ``<|Assistant|>``, JanusFlow's ``User`` / ``Assistant``;
* each ``<image_placeholder>`` (``<image>`` is accepted too) becomes ``<begin_of_image>`` + N placeholders +
  ``<end_of_image>``, where N is the understanding encoder's token count;
* batches are left-padded with the pad token, with masks saying where image features go;
* text-to-image prompts end with the generation path's start tag (``<begin_of_image>`` for Janus,
  ``<|begin_of_generation|>`` for JanusFlow).

Batch tensors (B conversations, T tokens, n images at most per conversation, S pixels):
``input_ids`` (B, T), ``attention_mask`` (B, T), ``pixel_values`` (B, n, 3, S, S), ``images_seq_mask`` (B, T),
``images_emb_mask`` (B, n, N or N + 1), ``labels`` (B, T) with -100 except on answers (when asked).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import BUNDLED_TOKENIZERS
from .registry import ConfigError, InputError

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)
IGNORE_INDEX = -100

def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> left-padded ``ids`` (B, L) and ``mask`` (B, L), L the longest row (generation prompts)."""
    length = max(len(ids) for ids in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row):] = 1
    return ids, mask


def load_tokenizer(path: str | Path):
    """Load the tokenizer files in ``path`` (or a bundled tokenizer name, e.g. ``tiny``) with transformers.

    Nothing is downloaded.
    The released DeepSeek tokenizer files name ``LlamaTokenizerFast`` but hold a byte-level BPE ``tokenizer.json``;
    transformers 5 loads them as its generic fast backend and gives the reference ids.
    """
    import logging

    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists() and (BUNDLED_TOKENIZERS / str(path)).is_dir():
        path = BUNDLED_TOKENIZERS / str(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise InputError(f"no tokenizer files (tokenizer.json / tokenizer_config.json) in {path}")
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)  # silence the tokenizer-class and model-type notices about released files
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    finally:
        logger.setLevel(level)

class Processor:
    """Chat template + tokenizer + image transform for one unified model.

    Args:
        tokenizer: a transformers tokenizer holding the image special tokens.
        image_transform: callable image -> (3, S, S) tensor (the understanding encoder's transform).
        num_image_tokens: feature tokens per image from the understanding encoder.
        roles: the template's user and assistant role names.
        system_prompt: text placed before the first turn ("" for none).
        image_tag, image_start_tag, image_end_tag: the placeholder and the tags around an image.
        pad_tag: the token used for left padding and for unconditional generation prompts.
        generation_tag: the token that starts image generation.
        learned_image_start: JanusFlow puts a learned embedding on ``<begin_of_image>`` for understanding, so the
            start tag is part of the image slot (masks get N + 1 positions).
        max_length: longest sequence the backbone accepts; longer prompts raise :class:`InputError`.
    """

    def __init__(
        self,
        tokenizer,
        image_transform: Callable[[Any], torch.Tensor],
        num_image_tokens: int,
        roles: Sequence[str] = ("<|User|>", "<|Assistant|>"),
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        image_tag: str = "<image_placeholder>",
        image_start_tag: str = "<begin_of_image>",
        image_end_tag: str = "<end_of_image>",
        pad_tag: str = "<｜▁pad▁｜>",
        generation_tag: str = "<begin_of_image>",
        learned_image_start: bool = False,
        max_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.num_image_tokens = int(num_image_tokens)
        self.roles = tuple(roles)
        self.system_prompt = system_prompt
        self.image_tag, self.image_start_tag, self.image_end_tag = image_tag, image_start_tag, image_end_tag
        self.generation_tag = generation_tag
        self.learned_image_start = learned_image_start
        self.max_length = max_length
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                "processor.tokenizer: the tokenizer has no end-of-sentence token, which ends every answer; add one "
                "and save it again, e.g. tokenizer.add_special_tokens({'eos_token': '</s>'}); "
                "tokenizer.save_pretrained(FOLDER)"
            )
        # A family without a pad token (gpt2) gets pad_tag as a new special token below, like the image tags.
        self.sep, self.sep2 = "\n\n", tokenizer.eos_token
        self._ensure_special_tokens([image_tag, image_start_tag, image_end_tag, generation_tag, pad_tag])
        self.image_id = self.token_id(image_tag)
        self.image_start_id = self.token_id(image_start_tag)
        self.image_end_id = self.token_id(image_end_tag)
        self.generation_id = self.token_id(generation_tag)
        self.pad_id = self.token_id(pad_tag)
        self.eos_id = tokenizer.eos_token_id

    # -- construction ---------------------------------------------------------------------------------------
    def _ensure_special_tokens(self, tags: Sequence[str]) -> None:
        """Add tags the tokenizer lacks as special tokens (the model's embeddings must then be resized)."""
        vocab = self.tokenizer.get_vocab()
        missing = [t for t in dict.fromkeys(tags) if t not in vocab]
        if missing:
            self.tokenizer.add_special_tokens({"additional_special_tokens": missing})

    def token_id(self, token: str) -> int:
        """Id of a special token; raises if the tokenizer does not know it."""
        token_id = self.tokenizer.get_vocab().get(token)
        if token_id is None:
            raise ConfigError(f"the tokenizer has no token {token!r}")
        return token_id

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (the backbone's embedding table must be at least this big)."""
        return len(self.tokenizer)

    @property
    def image_size(self) -> int:
        """Side of the understanding encoder's input images."""
        return int(self.image_transform.image_size)

    # -- text -----------------------------------------------------------------------------------------------
    def _role(self, role: str) -> int:
        lowered = role.lower().strip("<|>")
        if role in self.roles:
            return self.roles.index(role)
        if lowered in ("user", "human"):
            return 0
        if lowered in ("assistant", "gpt", "model"):
            return 1
        raise InputError(f"unknown role {role!r}; use 'user' or 'assistant' (or {self.roles[0]!r}/{self.roles[1]!r})")

    def format_conversation(
        self, conversation: Sequence[dict], system_prompt: str | None = None
    ) -> tuple[str, list[tuple[int, int]]]:
        """Apply the chat template.

        Args:
            conversation: turns ``{"role": "user" | "assistant", "content": str}``; a trailing assistant turn with
                empty content asks the model to answer.
            system_prompt: overrides the processor's.

        Returns:
            The prompt text and the character spans of the assistant answers (each including its closing
            end-of-sentence token), for training labels.
        """
        if not conversation:
            raise InputError("empty conversation: give at least one user turn")
        system = self.system_prompt if system_prompt is None else system_prompt
        text = system + self.sep if system else ""
        answer_spans: list[tuple[int, int]] = []
        for turn in conversation:
            if "role" not in turn or "content" not in turn:
                raise InputError(f"each turn needs 'role' and 'content', got keys {sorted(turn)}")
            index = self._role(turn["role"])
            content = (turn["content"] or "").strip().replace("<image>", self.image_tag)
            if content:
                text += f"{self.roles[index]}:"
                # An answer's span starts at the space after the colon: a prompt for answering ends at the colon
                # (below), so whatever the tokenizer makes of ": answer" after it is what the model must generate.
                start = len(text)
                text += " " + content + (self.sep if index == 0 else self.sep2)
                if index == 1:
                    answer_spans.append((start, len(text)))
            else:
                text += f"{self.roles[index]}:"
        stripped = text.strip()
        offset = len(text) - len(text.lstrip())
        return stripped, [(a - offset, b - offset) for a, b in answer_spans]

    def _check_length(self, length: int, what: str) -> None:
        if self.max_length is not None and length > self.max_length:
            raise InputError(
                f"{what} is {length} tokens long but the model allows {self.max_length}; shorten the text or use "
                f"fewer images"
            )

    # -- understanding ----------------------------------------------------------------------------------------
    def prompt_length(self, conversation: Sequence[dict], system_prompt: str | None = None) -> int:
        """Tokens :meth:`encode_conversation` would give (each image placeholder expanded), without reading images
        or checking the limit: what a chat counts to keep its history within ``max_length``."""
        text, _ = self.format_conversation(conversation, system_prompt)
        ids = self.tokenizer(text)["input_ids"]
        return len(ids) + ids.count(self.image_id) * (self.num_image_tokens + 1)  # tag -> start + N + end

    def encode_conversation(
        self, conversation: Sequence[dict], images: Sequence[Any] = (), system_prompt: str | None = None,
        with_labels: bool = False,
    ) -> dict[str, Any]:
        """One conversation -> unpadded ``input_ids`` (T,), ``pixel_values`` (n, 3, S, S), optional ``labels``."""
        text, answer_spans = self.format_conversation(conversation, system_prompt)
        encoded = self.tokenizer(text, return_offsets_mapping=with_labels)
        ids = list(encoded["input_ids"])
        n_placeholders = ids.count(self.image_id)
        if n_placeholders != len(images):
            raise InputError(
                f"the conversation has {n_placeholders} image placeholder(s) ({self.image_tag} or <image>) but "
                f"{len(images)} image(s) were given; put one placeholder where each image belongs"
            )
        token_answer = [False] * len(ids)
        if with_labels:
            for i, (start, end) in enumerate(encoded["offset_mapping"]):
                # Overlap, not containment: byte-level BPE merges the template's space with the answer's first
                # characters (": ok" -> ":", " o", "k"), and that token is the answer's first prediction.
                token_answer[i] = end > start and any(start < b and end > a for a, b in answer_spans)
        out_ids: list[int] = []
        out_answer: list[bool] = []
        for token, is_answer in zip(ids, token_answer):
            if token == self.image_id:
                expanded = [self.image_start_id] + [self.image_id] * self.num_image_tokens + [self.image_end_id]
                out_ids += expanded
                out_answer += [False] * len(expanded)
            else:
                out_ids.append(token)
                out_answer.append(is_answer)
        self._check_length(len(out_ids), "the conversation")
        pixel_values = (
            torch.stack([self.image_transform(image) for image in images])
            if images else torch.zeros(0, 3, self.image_size, self.image_size)
        )
        item = {"sft_format": text, "input_ids": torch.tensor(out_ids, dtype=torch.long), "pixel_values": pixel_values}
        if with_labels:
            labels = torch.tensor(out_ids, dtype=torch.long)
            labels[~torch.tensor(out_answer, dtype=torch.bool)] = IGNORE_INDEX
            item["labels"] = labels
        return item

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Left-pad encoded conversations into one batch (see the module docstring for the tensors)."""
        if not items:
            raise InputError("cannot build a batch from no conversations")
        batch_size = len(items)
        length = max(len(item["input_ids"]) for item in items)
        max_images = max(1, max(len(item["pixel_values"]) for item in items))
        slot = self.num_image_tokens + (1 if self.learned_image_start else 0)
        input_ids = torch.full((batch_size, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, length, dtype=torch.long)
        pixel_values = torch.zeros(batch_size, max_images, 3, self.image_size, self.image_size)
        images_seq_mask = torch.zeros(batch_size, length, dtype=torch.bool)
        images_emb_mask = torch.zeros(batch_size, max_images, slot, dtype=torch.bool)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long) if "labels" in items[0] else None
        for i, item in enumerate(items):
            ids = item["input_ids"]
            n = len(ids)
            input_ids[i, -n:] = ids
            attention_mask[i, -n:] = 1
            in_slot = ids == self.image_id
            if self.learned_image_start:
                in_slot = in_slot | (ids == self.image_start_id)
            images_seq_mask[i, -n:] = in_slot
            n_images = len(item["pixel_values"])
            pixel_values[i, :n_images] = item["pixel_values"]
            images_emb_mask[i, :n_images] = True
            if labels is not None:
                labels[i, -n:] = item["labels"]
        batch = {
            "sft_format": [item["sft_format"] for item in items],
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "images_seq_mask": images_seq_mask,
            "images_emb_mask": images_emb_mask,
        }
        if labels is not None:
            batch["labels"] = labels
        return batch

    def __call__(
        self, conversations: Sequence[dict] | Sequence[Sequence[dict]], images: Sequence[Any] | Sequence[Sequence[Any]] = (),
        system_prompt: str | None = None, with_labels: bool = False,
    ) -> dict[str, Any]:
        """Batch one conversation (a list of turns) or several (a list of lists) with their images."""
        if conversations and isinstance(conversations[0], dict):
            conversations, images = [conversations], [images]
        if len(images) != len(conversations):
            images = list(images) + [[]] * (len(conversations) - len(images))
        items = [
            self.encode_conversation(conv, imgs, system_prompt, with_labels)
            for conv, imgs in zip(conversations, images)
        ]
        return self.collate(items)

    def understanding_batch(self, records: Sequence[dict]) -> dict[str, Any]:
        """Training batch from records ``{"conversations": [...], "images": [...]}`` with labels on answers only."""
        return self([r["conversations"] for r in records], [r.get("images", []) for r in records], with_labels=True)

    # -- text only --------------------------------------------------------------------------------------------
    def text_batch(self, texts: Sequence[str]) -> dict[str, Any]:
        """Plain-text language-modelling batch: every real token is a label (left padded)."""
        encoded = [torch.tensor(self.tokenizer(t)["input_ids"] + [self.eos_id], dtype=torch.long) for t in texts]
        for ids in encoded:
            self._check_length(len(ids), "the text")
        length = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for i, ids in enumerate(encoded):
            input_ids[i, -len(ids):], attention_mask[i, -len(ids):], labels[i, -len(ids):] = ids, 1, ids
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    # -- generation -------------------------------------------------------------------------------------------
    def generation_prompt_text(self, caption: str) -> str:
        """The text-to-image prompt for ``caption``: one user turn, an empty assistant turn, then the start tag."""
        text, _ = self.format_conversation(
            [{"role": "user", "content": caption}, {"role": "assistant", "content": ""}], system_prompt=""
        )
        return text + self.generation_tag

    def generation_prompts(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> left-padded ``prompt_ids`` (B, L) and ``prompt_mask`` (B, L) for a generation path.

        An empty caption gives the prompt with no text (used for caption dropout in training).
        """
        if isinstance(captions, str):
            captions = [captions]
        encoded = [self.tokenizer(self.generation_prompt_text(c))["input_ids"] for c in captions]
        for ids in encoded:
            self._check_length(len(ids), "the prompt")
        return left_pad(encoded, self.pad_id)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Token ids -> text, without special tokens, cut at the first end-of-sentence."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def settings(self) -> dict[str, Any]:
        """The template and tag settings (everything but the tokenizer and the image transform)."""
        return dict(
            roles=list(self.roles), system_prompt=self.system_prompt, image_tag=self.image_tag,
            image_start_tag=self.image_start_tag, image_end_tag=self.image_end_tag,
            pad_tag=self.tokenizer.convert_ids_to_tokens(self.pad_id), generation_tag=self.generation_tag,
        )

def released_processor_settings(folder: str | Path) -> dict[str, Any]:
    """Read a released ``processor_config.json`` (Janus or JanusFlow) into :class:`Processor` keyword arguments."""
    folder = Path(folder)
    raw = json.loads((folder / "processor_config.json").read_text())
    settings: dict[str, Any] = {
        "image_tag": raw.get("image_tag", "<image_placeholder>"),
        "image_start_tag": raw.get("image_start_tag", "<begin_of_image>"),
        "image_end_tag": raw.get("image_end_tag", "<end_of_image>"),
    }
    if raw.get("sft_format", "deepseek") != "deepseek":
        raise ConfigError(f"{folder}/processor_config.json: sft_format {raw['sft_format']!r} is not supported")
    if "image_gen_tag" in raw:  # JanusFlow
        settings.update(roles=("User", "Assistant"), generation_tag=raw["image_gen_tag"], learned_image_start=True,
                        pad_tag="<｜▁pad▁｜>")
    else:
        settings.update(roles=("<|User|>", "<|Assistant|>"), generation_tag=settings["image_start_tag"],
                        pad_tag=raw.get("pad_tag", "<｜▁pad▁｜>"))
    return settings

_ROLE_RE = re.compile(r"^<\|?(\w+)\|?>$")
