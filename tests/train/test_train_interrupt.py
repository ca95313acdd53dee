"""Ctrl-C during training: the step in flight finishes and is checkpointed, one line says how to resume (exit 2),
and resuming gives the losses of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_train_run import losses, run_config
from unimm.bench.export import export_split
from unimm.pretrained import DEFAULT_MODEL
from unimm.train import TaskLossModule, train_main
from unimm.train.interrupt import TrainingInterrupted

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_mid_step_checkpoints_that_step_and_resume_is_exact(tmp_path, monkeypatch):
    """SIGINT arrives inside the first micro-batch of step 2 (grad_accum=2): step 2 still completes, is saved,
    and the resumed run's losses equal an uninterrupted run's bit for bit."""
    stage = [{"name": "fit", "steps": 4, "trainable": ["und_aligner", "generator"], "mixture": {"und": 1, "t2i": 1},
              "lr": 1e-3}]
    model, processor, cfg = run_config("janus_tiny", tmp_path / "a", stage, grad_accum=2, batch_size=1)
    train_main(cfg, model=model, processor=processor)
    uninterrupted = losses(tmp_path / "a" / "run")

    calls = {"n": 0}
    forward = TaskLossModule.forward

    def interrupting_forward(self, task, inputs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first micro-batch of step 2
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, task, inputs)

    monkeypatch.setattr(TaskLossModule, "forward", interrupting_forward)
    model, processor, cfg = run_config("janus_tiny", tmp_path / "b", stage, grad_accum=2, batch_size=1)
    with pytest.raises(TrainingInterrupted) as stop:
        train_main(cfg, model=model, processor=processor)
    assert calls["n"] == 4 and stop.value.global_step == 2  # the step in flight finished, no further one began
    assert stop.value.checkpoint == tmp_path / "b" / "run" / "checkpoints" / "step-00000002"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C behaves as usual again

    monkeypatch.setattr(TaskLossModule, "forward", forward)
    model, processor, cfg = run_config("janus_tiny", tmp_path / "b", stage, grad_accum=2, batch_size=1,
                                       resume="latest")
    train_main(cfg, model=model, processor=processor)
    assert losses(tmp_path / "b" / "run") == uninterrupted


def unimm_train(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "unimm.cli", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigint_to_unimm_train_saves_and_prints_the_resume_command(tmp_path):
    data = export_split(tmp_path / "shapes", "train", 4)
    overrides = [f"train.init_from={DEFAULT_MODEL}", "train.output_dir=run", "train.batch_size=2",
                 "train.log_every=1", "train.progress=false", "train.data.num_threads=1", "train.stages.0.steps=1000",
                 f"train.data.sources.und.jsonl={data / 'und.jsonl'}",
                 f"train.data.sources.t2i.jsonl={data / 't2i.jsonl'}"]
    run = tmp_path / "run"
    proc = unimm_train(["--config", "finetune/shapes", *overrides], tmp_path)
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):  # a first step is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)

    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("unimm:")]
    assert len(ours) == 1 and stderr.splitlines()[-1] == ours[0], stderr
    step = len((run / "metrics.jsonl").read_text().splitlines())  # one record per step (log_every=1)
    checkpoint = Path("run") / "checkpoints" / f"step-{step:08d}"
    command = ["unimm", "train", "--config", "finetune/shapes", *overrides, "--resume"]
    assert ours[0] == (f"unimm: interrupted after step {step}; saved {checkpoint}; resume with: "
                       f"{shlex.join(command)}")
    assert (tmp_path / checkpoint / "trainer_state.json").is_file() and step < 1000

    # The printed command continues from that step (stopped one step later for the test).
    resume = shlex.split(ours[0].split("resume with: ", 1)[1])
    resume.insert(resume.index("--resume"), f"train.stop_after={step + 1}")
    proc = unimm_train(resume[2:], tmp_path)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert f"resumed from {checkpoint} at stage finetune step {step}" in stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, step + 2))  # one more step, not a restart


def test_ctrl_c_before_a_step_is_saved_names_the_newest_checkpoint(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the model is built (or a second one while a step finishes): exit 2, one line, no traceback."""
    import unimm.train
    from unimm.cli import main

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(unimm.train, "train_main", interrupted)
    argv = ["train", "--config", "janus_tiny", f"train.output_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    resume = f"resume with: unimm train --config janus_tiny train.output_dir={tmp_path / 'run'} --resume"
    assert capsys.readouterr().err == f"unimm: interrupted before the step in flight was saved; no checkpoint " \
                                      f"was written; {resume}\n"
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    assert main(argv) == 2
    assert f"the newest checkpoint is {checkpoint}; {resume}\n" in capsys.readouterr().err
