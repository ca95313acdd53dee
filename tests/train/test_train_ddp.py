"""Two CPU processes (gloo) through `accelerate launch`: both ranks step on different records, gradients are
averaged, so the trained weights stay identical on both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_in_sync(tmp_path):
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert launcher, "accelerate's launcher is not installed"
    # `--cpu` alone with several processes asks for mpirun; torchrun (`--multi_gpu`) with ACCELERATE_USE_CPU gives
    # accelerate's MULTI_CPU mode over gloo.
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "29517", str(WORKER), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert [r["steps"] for r in ranks] == [3, 3]  # both ranks stepped
    # ... on different records: the understanding source (4 records) was read once, two records per rank.
    und = [set(r["seen"]["und"]) for r in ranks]
    assert len(und[0]) == len(und[1]) == 2 and not und[0] & und[1]
    assert ranks[0]["changed"] > 0  # weights moved
    # Different data, same weights after every step: the gradients were averaged across the ranks.
    assert ranks[0]["checksums"] == ranks[1]["checksums"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
