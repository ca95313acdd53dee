"""Ctrl-C during training: finish the step in flight, checkpoint it, then stop.

A KeyboardInterrupt raised in the middle of a step could land inside the optimiser's update or after the data
loader has drawn the next micro-batches, so the state at that instant is not one a checkpoint can describe.
:class:`DeferredInterrupt` therefore replaces Python's SIGINT handler while the training loop runs: the signal only
sets a flag, which the trainer reads at the end of each step (every process agrees, through one all-reduce, when
there are several), writes a checkpoint through its usual :func:`~unimm.train.checkpointing.save_checkpoint`, and
raises :class:`TrainingInterrupted`. A second Ctrl-C while the step finishes interrupts at once, as usual.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a step boundary after Ctrl-C, with a checkpoint of that step.

    Attributes:
        checkpoint: the checkpoint folder written for the step.
        global_step: the number of optimiser steps done.
        main_process: True on the process that reports (the main one of a multi-process run).
    """

    def __init__(self, checkpoint: Path, global_step: int, main_process: bool = True):
        super().__init__(f"interrupted after step {global_step}; saved {checkpoint}")
        self.checkpoint, self.global_step, self.main_process = checkpoint, global_step, main_process


class DeferredInterrupt:
    """``with DeferredInterrupt() as interrupt:`` SIGINT sets ``interrupt`` instead of raising; ``requested(acc)``
    tells whether any process got one. Outside the main thread (where Python cannot set handlers) it does nothing."""

    def __init__(self) -> None:
        self._flag = False
        self._previous: Any = signal.default_int_handler  # what SIGINT did before (None: set outside Python)

    def _restore(self) -> None:
        signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self._flag = True
        self._restore()  # a second Ctrl-C interrupts at once

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == self._handle:
            self._restore()

    def requested(self, accelerator: Any) -> bool:
        """Whether Ctrl-C came on any process (an all-reduce when there are several, so all stop at one step)."""
        if accelerator.num_processes == 1:
            return self._flag
        import torch

        flag = torch.tensor([float(self._flag)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


__all__ = ["DeferredInterrupt", "TrainingInterrupted"]
