"""DeepSpeed ZeRO stages 2 and 3 on two CPU processes (DeepSpeed's CPU accelerator, gloo), when the installed DeepSpeed
has one: the losses equal a single-process run of the same global batches, a DeepSpeed checkpoint resumes with the
same next losses, and the saved model loads with ``load_pretrained``.

The worker drives DeepSpeed itself, not through accelerate: on CPU processes accelerate 1.15 finds no distributed
backend under DeepSpeed and reports one process of rank 0 on every rank (docs/training.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sharded_steps import check_gathered_model, single_process_losses  # noqa: E402


def cpu_deepspeed_or_skip() -> None:
    """Skip, saying why, where DeepSpeed is missing or has no CPU accelerator."""
    import importlib

    try:
        importlib.import_module("deepspeed")
    except ImportError as err:
        pytest.skip(f"deepspeed is not installed ({err}); pip install deepspeed")
    try:
        importlib.import_module("deepspeed.accelerator.cpu_accelerator")
    except ImportError as err:
        pytest.skip(f"this DeepSpeed has no CPU accelerator ({err}); ZeRO runs only on GPUs here")


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_on_two_cpu_processes_matches_one_process_and_resumes_exactly(stage, tmp_path):
    cpu_deepspeed_or_skip()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(29533 + stage),
           str(HERE / "deepspeed_worker.py"), str(tmp_path), str(stage)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    engines = [(r["world"], r["backend"], r["zero_stage"], r["accelerator"]) for r in ranks]
    assert engines == [(2, "gloo", stage, "cpu")] * 2
    partitions = sorted(p.name for p in (tmp_path / "ckpt" / "step2").glob("zero_pp_rank_*_optim_states.pt"))
    assert len(partitions) == 2  # the optimiser state is partitioned: one file per rank

    reference = single_process_losses()
    assert ranks[0]["losses"] == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert ranks[0]["resumed"] == ranks[0]["losses"][2:] == ranks[1]["resumed"]
    check_gathered_model(tmp_path)
