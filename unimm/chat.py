"""A multi-turn conversation with a model on text streams: ``unimm chat``.

Each line read is a user turn, answered on the output stream; a line that starts with ``/`` is a command:

* ``/image PATH`` attaches an image to the next turn (several lines: several images in that turn, in order);
  a missing or unreadable file is reported in one line and the conversation goes on;
* ``/reset`` forgets the history (and any attached images);
* ``/quit`` (or the end of the input) ends the conversation.

Every answer is computed from the whole conversation so far, built with the processor's roles and chat template
exactly as ``unimm understand`` builds one turn (:func:`unimm.answers.user_content`): past turns, the new user
turn, an empty assistant turn. The history is kept within the model's context: the prompt may use the processor's
``max_length`` (the backbone's ``max_positions``) less ``max_new_tokens`` kept for the answer. When a new turn
would overflow, the oldest exchanges are dropped, with a one-line notice; a turn too long even alone is refused
with a one-line message and the history is left as it was. Notices go to the error stream, so the output stream
holds only answers.

The whole conversation is run again for each answer (no cache is kept between turns): simple, and exactly what a
fresh ``generate_text`` on that conversation gives.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from .answers import user_content
from .registry import InputError


@dataclass
class Exchange:
    """One user turn (its text and images) and the model's answer."""

    text: str
    images: list[Any] = field(default_factory=list)
    answer: str = ""


class Chat:
    """A conversation with ``model``: :meth:`ask` answers a turn, :meth:`handle` reads one input line.

    Args:
        model, processor: a loaded model and its processor.
        max_new_tokens: the longest answer; that many positions of the context are kept free for it.
        out, err: where answers and notices are written.
        **sampling: passed to ``generate_text`` (temperature, top_k, top_p, seed).

    Raises:
        InputError: ``max_new_tokens`` leaves no room for a conversation in the model's context.
    """

    def __init__(self, model, processor, *, max_new_tokens: int = 128, out: TextIO | None = None,
                 err: TextIO | None = None, **sampling: Any):
        self.model, self.processor = model, processor
        self.max_new_tokens, self.sampling = max_new_tokens, sampling
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.limit = processor.max_length or model.backbone.max_positions
        if self.limit is not None and max_new_tokens >= self.limit:
            raise InputError(f"--max-new-tokens = {max_new_tokens} leaves no room for the conversation in the "
                             f"model's {self.limit} positions; give fewer")
        self.history: list[Exchange] = []
        self.pending: list[Any] = []  # images attached to the next turn

    @property
    def budget(self) -> int | None:
        """Tokens the prompt (history + new turn) may use: the context less the answer's room (None: no limit)."""
        return None if self.limit is None else self.limit - self.max_new_tokens

    def notice(self, message: str) -> None:
        print(f"unimm: {message}", file=self.err, flush=True)

    def conversation(self, exchanges: list[Exchange]) -> tuple[list[dict], list[Any]]:
        """Turns and images for ``exchanges``, the last one unanswered (its assistant turn empty)."""
        turns, images = [], []
        for exchange in exchanges:
            turns += [{"role": "user", "content": user_content(exchange.text, len(exchange.images))},
                      {"role": "assistant", "content": exchange.answer}]
            images += exchange.images
        return turns, images

    def length(self, exchanges: list[Exchange]) -> int:
        return self.processor.prompt_length(self.conversation(exchanges)[0])

    def ask(self, text: str) -> str | None:
        """Answer ``text`` (with the attached images) in the context of the history; None if the turn is refused."""
        turn, self.pending = Exchange(text, self.pending), []
        budget = self.budget
        if budget is not None:
            alone = self.length([turn])
            if alone > budget:
                images = f" and its {len(turn.images)} image(s)" if turn.images else ""
                self.notice(f"this turn{images} is {alone} tokens; the model reads {self.limit} positions, "
                            f"{self.max_new_tokens} of them kept for the answer (--max-new-tokens), so a turn may "
                            f"use {budget}: shorten it or attach fewer images (it was not sent)")
                return None
            dropped = 0
            while self.length(self.history[dropped:] + [turn]) > budget:
                dropped += 1
            if dropped:
                self.history = self.history[dropped:]
                self.notice(f"dropped the oldest {dropped} turn(s) to stay within the model's {self.limit} "
                            f"positions ({self.max_new_tokens} kept for the answer)")
        turns, images = self.conversation(self.history + [turn])
        batch = self.processor(turns, images)
        tokens = self.model.generate_text(batch, max_new_tokens=self.max_new_tokens, eos_id=self.processor.eos_id,
                                          pad_id=self.processor.pad_id, **self.sampling)
        turn.answer = self.processor.decode(tokens[0]).strip()
        self.history.append(turn)
        print(turn.answer, file=self.out, flush=True)
        return turn.answer

    def attach(self, path: str) -> None:
        """Attach the image at ``path`` to the next turn; a bad path is reported and changes nothing."""
        from .encoders.transforms import load_image

        if not path:
            self.notice("/image needs a path: /image PATH")
            return
        try:
            self.pending.append(load_image(path))
        except InputError as err:
            self.notice(f"/image {path}: {err}; the conversation goes on without it")

    def handle(self, line: str) -> bool:
        """Act on one input line (a turn or a command); False when the conversation should end."""
        text = line.strip()
        if not text:
            return True
        if text == "/quit":
            return False
        if text == "/reset":
            self.history, self.pending = [], []
            self.notice("history cleared")
        elif text == "/image" or text.startswith("/image "):
            self.attach(text[len("/image"):].strip())
        elif text.startswith("/"):
            self.notice(f"unknown command {text.split()[0]}; the commands are /image PATH, /reset and /quit")
        else:
            self.ask(text)
        return True

    def run(self, lines: TextIO, prompt: str = "") -> None:
        """Read ``lines`` until ``/quit`` or their end; ``prompt`` is shown before each line (interactive use)."""
        while True:
            if prompt:
                print(prompt, end="", file=self.err, flush=True)
            line = lines.readline()
            if not line or not self.handle(line):
                return
