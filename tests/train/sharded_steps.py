"""What the sharded-training tests (FSDP, DeepSpeed) and their workers share: the tiny Janus model under one stage,
fixed global batches, one step.

A stage that mixes frozen and trained parts: the understanding encoder and the VQ tokenizer frozen, the LM head
frozen inside the trained backbone (so the backbone's own unit mixes both), the aligner and image head trained.
Every row of a batch has the same length and the same number of labelled tokens, so the mean of two half-batch
losses is the loss of the whole batch, and averaged gradients are its gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import unimm
from unimm.train import TaskLossModule, apply_stage, build_optimizer, frozen_parts_to_eval

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "janus_tiny"
STAGE = {"name": "sharded", "trainable": ["und_aligner", "backbone", "generator.head", "generator.aligner"],
         "frozen": ["backbone.lm.lm_head"], "mixture": {"und": 1}, "lr": 3e-3, "weight_decay": 0.1}
GLOBAL_BATCH, STEPS, SAVE_AFTER = 4, 4, 2


def make_model():
    """The golden tiny Janus with :data:`STAGE` applied, in training mode (frozen parts in eval), wrapped in the
    trainer's ``TaskLossModule``; returns (wrapped, processor, cfg)."""
    model, processor, cfg = unimm.load_pretrained(GOLDEN, device="cpu", dtype="float32")
    apply_stage(model, STAGE)
    model.train()
    frozen_parts_to_eval(model)
    return TaskLossModule(model), processor, cfg


def optimizer_for(model):
    return build_optimizer(model, STAGE)


def batch(processor, step: int, rows: range) -> dict:
    """Rows ``rows`` of global batch ``step``: understanding (noise images, one question) and generation."""
    rng = np.random.default_rng(1000 + step)
    pixels = rng.integers(0, 256, (GLOBAL_BATCH, 24, 24, 3), dtype=np.uint8)
    images = torch.from_numpy(rng.uniform(-1, 1, (GLOBAL_BATCH, 3, 16, 16)).astype(np.float32))
    records = [{"conversations": [{"role": "user", "content": "<image>\nWhat is this?"},
                                  {"role": "assistant", "content": "noise"}],
                "images": [Image.fromarray(pixels[i])]} for i in rows]
    und = processor.understanding_batch(records)
    und.pop("sft_format", None)
    prompt_ids, prompt_mask = processor.generation_prompts(["a picture of noise"] * len(rows))
    return {"und": und, "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "images": images[list(rows)]}


def loss_of(wrapped: TaskLossModule, b: dict) -> torch.Tensor:
    """Understanding CE + image-token CE through the trainer's ``TaskLossModule`` (the module FSDP wraps)."""
    und, _ = wrapped("understanding", b["und"])
    gen, _ = wrapped("generation", {k: b[k] for k in ("prompt_ids", "prompt_mask", "images")})
    return und + gen


def train_step(wrapped, optimizer, b: dict) -> torch.Tensor:
    loss = loss_of(wrapped, b)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def eval_batch(processor) -> dict:
    """A fixed understanding batch for comparing logits."""
    return batch(processor, 99, range(2))["und"]


def single_process_losses() -> list[float]:
    """The reference: :data:`STEPS` steps on whole global batches in one process."""
    wrapped, processor, _ = make_model()
    optimizer = optimizer_for(wrapped)
    return [float(train_step(wrapped, optimizer, batch(processor, s, range(GLOBAL_BATCH)))) for s in range(STEPS)]


def check_gathered_model(out: Path) -> None:
    """The worker's ``final/`` (save_pretrained of the gathered weights) loads with ``load_pretrained`` and gives
    the logits the sharded model gave; only trained parameters moved, the frozen LM head did not."""
    saved = torch.load(out / "logits.pt", weights_only=True)
    model, processor, _ = unimm.load_pretrained(out / "final", device="cpu", dtype="float32")
    model.eval()
    with torch.no_grad():
        logits = model(**eval_batch(processor))
    torch.testing.assert_close(logits, saved["logits"], rtol=1e-5, atol=1e-5)
    start, _, _ = make_model()
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, saved["state"][k])]
    assert moved and all(k.startswith(("model.backbone.", "model.und_aligner", "model.generator.head",
                                       "model.generator.aligner")) for k in moved), moved
    assert "model.backbone.lm.lm_head.weight" not in moved  # frozen inside a trained unit: unchanged
