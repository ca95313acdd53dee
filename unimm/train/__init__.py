"""Training: stage recipes as config, run on Hugging Face ``accelerate`` (see docs/training.md).

``train_main(cfg)`` is what ``unimm train --config CFG`` runs; ``accelerate launch -m unimm.cli train ...`` runs it
on several processes (DDP, or FSDP / DeepSpeed as ``accelerate config`` sets up).
"""

from .checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from .freeze import always_frozen, apply_stage, frozen_parts_to_eval, part_paths
from .optim import build_optimizer, build_scheduler, lr_factor, param_groups
from .trainer import TRAIN_DEFAULTS, TaskLossModule, Trainer, end_process_group, train_main, train_settings

__all__ = [
    "always_frozen",
    "TRAIN_DEFAULTS",
    "TaskLossModule",
    "Trainer",
    "apply_stage",
    "build_optimizer",
    "build_scheduler",
    "end_process_group",
    "frozen_parts_to_eval",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "part_paths",
    "save_checkpoint",
    "train_main",
    "train_settings",
]
