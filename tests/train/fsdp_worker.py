"""Run by test_train_fsdp.py under torchrun with 2 CPU processes (gloo): shard the tiny Janus model with
``fully_shard`` under the wrapping its parts declare (unimm.train.sharding), train on half of each global batch,
write a sharded checkpoint, resume from it, and gather the full model for ``save_pretrained``.

Writes ``rank{r}.json`` (losses, resumed losses, the unit names) and, from rank 0, ``final/`` and ``logits.pt``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_steps import (GLOBAL_BATCH, SAVE_AFTER, STEPS, batch, eval_batch, make_model, optimizer_for,  # noqa: E402
                           train_step)

from unimm.pretrained import save_pretrained  # noqa: E402
from unimm.train import end_process_group  # noqa: E402
from unimm.train.sharding import full_state_dict, load_sharded, save_sharded, shard_model  # noqa: E402

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
per_rank = GLOBAL_BATCH // world
rows = range(rank * per_rank, (rank + 1) * per_rank)


def global_loss(local: torch.Tensor) -> float:
    """The global batch's loss: the mean of the ranks' equal-sized half-batch losses."""
    total = local.clone()
    dist.all_reduce(total)
    return float(total) / world


def sharded():
    model, processor, cfg = make_model()
    shard_model(model)
    return model, processor, cfg, optimizer_for(model)  # built on the sharded (DTensor) parameters


model, processor, cfg, optimizer = sharded()
losses = []
for step in range(STEPS):
    losses.append(global_loss(train_step(model, optimizer, batch(processor, step, rows))))
    if step + 1 == SAVE_AFTER:
        save_sharded(out / "ckpt", model, optimizer)
        dist.barrier()

# The gathered model: one full state dict on rank 0, loaded into a plain model and saved in unimm's format.
state = full_state_dict(model)
model.eval()
with torch.no_grad():
    logits = model.model(**eval_batch(processor))  # a sharded forward, on every rank
if rank == 0:
    plain, _, _ = make_model()
    plain.load_state_dict(state, strict=True)
    save_pretrained(plain.model, processor, cfg, out / "final")
    torch.save({"logits": logits, "state": state}, out / "logits.pt")

# Resume: a fresh model and optimiser, sharded the same way, read from the checkpoint, then the same next steps.
model, processor, cfg, optimizer = sharded()
load_sharded(out / "ckpt", model, optimizer)
resumed = [global_loss(train_step(model, optimizer, batch(processor, step, rows))) for step in range(SAVE_AFTER, STEPS)]

units = sorted(type(m).__name__ for m in model.modules() if hasattr(m, "reshard"))  # the FSDPModule classes
(out / f"rank{rank}.json").write_text(json.dumps({"world": world, "backend": dist.get_backend(), "losses": losses,
                                                  "resumed": resumed, "fsdp_modules": len(units)}))
end_process_group()  # as `unimm train` ends a launch: both ranks past every collective, then gloo torn down
# ... and out without the interpreter's finalisation, where gloo's threads may still hold tensors: a finished rank
# could abort there with "terminate called without an active exception" (pytorch/pytorch#179291).
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
