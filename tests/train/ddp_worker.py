"""Run by test_train_ddp.py under `accelerate launch --cpu --num_processes 2`: train the tiny Janus model for a
few steps and write, per rank, the steps taken, the records read and a checksum of every trained parameter."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_run import run_config  # noqa: E402

from unimm.train import Trainer, end_process_group  # noqa: E402

out = Path(sys.argv[1])
stage = {"name": "ddp", "steps": 3, "trainable": ["und_aligner", "backbone"], "mixture": {"und": 1, "text": 1},
         "lr": 1e-3}
model, processor, cfg = run_config("janus_tiny", out, [stage], batch_size=1, grad_accum=2)
cfg.train.output_dir = str(out / "run")  # shared by both ranks
trainer = Trainer(cfg, model=model, processor=processor)
before = {n: p.detach().clone() for n, p in model.named_parameters()}
trainer.fit()
acc = trainer.accelerator
seen = {name: sorted(stream._index(p * acc.num_processes + acc.process_index) for p in range(stream.position))
        for name, stream in trainer.streams.items()}
trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
report = {
    "rank": acc.process_index,
    "world": acc.num_processes,
    "backend": str(torch.distributed.get_backend()) if torch.distributed.is_initialized() else None,
    "steps": trainer.global_step,
    "seen": seen,
    "changed": sum(int(not torch.equal(before[n], p)) for n, p in trained.items()),
    "checksums": {n: float(p.detach().double().sum()) for n, p in trained.items()},
}
(out / f"rank{acc.process_index}.json").write_text(json.dumps(report))
end_process_group()  # as `unimm train` ends a launch
