"""Training checkpoints: atomic, complete enough to resume bit-for-bit, and pruned to the last K.

A checkpoint is a folder ``<output_dir>/checkpoints/step-00001000/`` holding

* what ``accelerate``'s ``save_state`` writes: the model (``model.safetensors``, or shards under FSDP/DeepSpeed),
  the optimiser, and every process's RNG states (python, numpy, torch, cuda);
* ``trainer_state.json``: stage index and name, the step within the stage, the global step, the config;
* ``scheduler.pt``: the learning-rate scheduler's state;
* ``data_rank{r}.json``: process ``r``'s data position (task-sampler step, per-source positions, skip counts).

It is written into ``.tmp-step-...`` and renamed once every process has finished, so an interrupted save never
leaves a folder that looks complete; resuming picks the newest folder that has ``trainer_state.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..registry import CheckpointError

STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class _TiedTensorNotice(logging.Filter):
    """Drops accelerate's "Removed shared tensor ... while saving" warning.

    A model whose two slots hold one module (the shared-VQ understanding encoder reads the generator's tokenizer)
    has each of its tensors under two names; safetensors stores one, accelerate warns with every name, one very long
    line per checkpoint, and loading fills both names from the one stored tensor (the resume tests cover it).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Removed shared tensor")


logging.getLogger("accelerate.utils.other").addFilter(_TiedTensorNotice())


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def resolve_resume(resume: Any, root: str | os.PathLike) -> Path | None:
    """``train.resume`` -> a checkpoint folder: ``null``/``false`` = none, ``latest`` = newest under ``root`` (or none
    yet, for a first launch of a preemptible job), else a path that must be a checkpoint."""
    if resume in (None, False, "", "none", "null"):
        return None
    if resume in (True, "latest", "auto"):
        return latest_checkpoint(root)
    path = Path(str(resume))
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"train.resume={resume}: not a checkpoint folder (no {STATE_FILE}); use 'latest' or a path like "
            f"{Path(root) / 'step-00001000'}"
        )
    return path


def save_checkpoint(
    accelerator: Any,
    root: str | os.PathLike,
    global_step: int,
    trainer_state: dict[str, Any],
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_state: dict[str, Any],
    keep_last: int = 2,
) -> Path:
    """Write a checkpoint atomically (every process must call this); returns the final folder."""
    root = Path(root)
    final = root / f"step-{global_step:08d}"
    tmp = root / f".tmp-step-{global_step:08d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    (tmp / f"data_rank{accelerator.process_index}.json").write_text(json.dumps(data_state))
    if accelerator.is_main_process:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_checkpoint(
    accelerator: Any, path: str | os.PathLike, scheduler: torch.optim.lr_scheduler.LRScheduler
) -> dict[str, Any]:
    """Restore model, optimiser and RNG (through accelerate) and the scheduler; return this process's data state."""
    path = Path(path)
    data_file = path / f"data_rank{accelerator.process_index}.json"
    if not data_file.is_file():
        raise CheckpointError(
            f"{path} has no {data_file.name}: it was written by fewer processes than now run "
            f"({accelerator.num_processes}); resume with the same number of processes"
        )
    accelerator.load_state(str(path))
    scheduler.load_state_dict(torch.load(path / SCHEDULER_FILE, weights_only=True))
    return json.loads(data_file.read_text())
