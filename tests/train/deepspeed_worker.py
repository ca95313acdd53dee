"""Run by test_train_deepspeed.py under torchrun with 2 CPU processes: DeepSpeed ZeRO stage ``argv[2]`` (2:
optimiser state and gradients partitioned; 3: parameters too) on its CPU accelerator over gloo, driving the
trainer's ``TaskLossModule`` on half of each global batch; a DeepSpeed checkpoint after step 2, a resume from it,
and the gathered model saved by ``save_pretrained``.

accelerate is not used: on CPU processes accelerate 1.15 finds no distributed backend under DeepSpeed and reports
one process of rank 0 on every rank, while DeepSpeed's own gloo group has two (see docs/training.md).
Writes ``rank{r}.json`` (losses, resumed losses, ZeRO stage) and, from rank 0, ``final/`` and ``logits.pt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_steps import GLOBAL_BATCH, SAVE_AFTER, STEPS, batch, eval_batch, loss_of, make_model, optimizer_for  # noqa

from unimm.pretrained import save_pretrained  # noqa: E402

out, stage = Path(sys.argv[1]), int(sys.argv[2])
deepspeed.init_distributed(dist_backend="gloo")
rank, world = dist.get_rank(), dist.get_world_size()
per_rank = GLOBAL_BATCH // world
rows = range(rank * per_rank, (rank + 1) * per_rank)
CONFIG = {"train_micro_batch_size_per_gpu": per_rank, "gradient_accumulation_steps": 1,
          "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
          "zero_allow_untested_optimizer": True, "steps_per_print": 10**9,
          "gradient_clipping": 0.0}  # none, as in the reference step (DeepSpeed 0.19 clips at 1.0 by default)


def engine():
    wrapped, processor, cfg = make_model()
    eng, _, _, _ = deepspeed.initialize(model=wrapped, optimizer=optimizer_for(wrapped), config=CONFIG)
    return eng, processor, cfg


def step(eng, s: int) -> float:
    loss = loss_of(eng, batch(processor, s, rows))  # the engine's forward is the TaskLossModule's
    eng.backward(loss)
    eng.step()
    total = loss.detach().clone()
    dist.all_reduce(total)
    return float(total) / world


eng, processor, cfg = engine()
losses = []
for s in range(STEPS):
    losses.append(step(eng, s))
    if s + 1 == SAVE_AFTER:
        eng.save_checkpoint(str(out / "ckpt"), tag="step2")

eng.module.eval()
with torch.no_grad():
    logits = eng.module.model(**eval_batch(processor))  # under ZeRO-3 a partitioned forward, on every rank
    # ZeRO-2 keeps whole parameters on every rank; under ZeRO-3 every rank takes part in DeepSpeed's gather onto
    # rank 0, the call accelerator.get_state_dict makes in the trainer's save_final.
    state = eng._zero3_consolidated_16bit_state_dict() if stage == 3 else eng.module.state_dict()
    state = {k: v.detach().clone() for k, v in (state or {}).items()}  # {} on the other ranks
if rank == 0:
    plain = {k.removeprefix("model."): v for k, v in state.items()}  # the trainer's save_final does the same
    save_pretrained(eng.module.model, processor, cfg, out / "final", state_dict=plain)
    torch.save({"logits": logits, "state": state}, out / "logits.pt")

eng, processor, cfg = engine()
eng.load_checkpoint(str(out / "ckpt"), tag="step2")
resumed = [step(eng, s) for s in range(SAVE_AFTER, STEPS)]
(out / f"rank{rank}.json").write_text(json.dumps({
    "world": world, "backend": dist.get_backend(), "zero_stage": eng.zero_optimization_stage(),
    "accelerator": deepspeed.get_accelerator().device_name(), "deepspeed": deepspeed.__version__,
    "losses": losses, "resumed": resumed}))
