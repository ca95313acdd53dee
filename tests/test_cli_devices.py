"""``--device`` / ``--dtype`` on the command line, and quiet runs: a normal ``unimm generate`` / ``unimm understand``
of the shipped model writes nothing on stderr (no transformers deprecation, no progress bar unless ``--progress``).

Bad values run through ``tests/cli_runner.py`` (one subprocess for all of them); the quiet runs need real
``python -m unimm.cli`` processes, because a library's warning goes to the stderr it saw at import time and is
shown once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_cli_errors import run_in_one_process

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "understand": ["understand", "--image", "red.png", "--question", "What colour is the shape?"],
    "generate": ["generate", "--prompt", "a red circle", "--num-images", "1", "--out", "out"],
    "bench evaluate": ["bench", "evaluate", "no_data"],
}
BAD = [
    (["--device", "cuda:64"], "--device cuda:64: "),
    (["--device", "gpu"], "--device 'gpu': not a device; use one of auto, cpu, cuda, cuda:N, mps (this machine has: "
                          "auto, cpu"),
    (["--dtype", "half"], "--dtype 'half': not a dtype unimm runs in; use one of auto, bfloat16, float16, float32"),
    (["--dtype", "int8"], "--dtype 'int8': not a dtype unimm runs in"),
]
if not torch.cuda.is_available():
    BAD.append((["--device", "cuda"], "--device cuda: this machine has no CUDA GPU that torch can use; available: "
                                      "auto, cpu"))
CASES = [(COMMANDS[name] + flags, fragment) for name in COMMANDS for flags, fragment in BAD]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cli_devices")
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp / "red.png")
    return tmp


@pytest.fixture(scope="module")
def results(folder) -> list[dict]:
    return run_in_one_process([argv for argv, _ in CASES], folder)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(argv[:1] + argv[-2:]) for argv, _ in CASES])
def test_a_bad_device_or_dtype_is_one_line_and_exit_2(results, index):
    result, fragment = results[index], CASES[index][1]
    lines = result["stderr"].splitlines()
    assert result["status"] == 2 and len(lines) == 1, result
    assert lines[0].startswith(f"unimm: error: {fragment}"), lines[0]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "unimm.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("dtype", ["auto", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_generate_is_quiet_and_runs_in_bfloat16(folder, dtype):
    done = run_cli(COMMANDS["generate"] + ["--dtype", dtype, "--prefix", dtype], folder)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == f"out/{dtype}_000.png" and (folder / "out" / f"{dtype}_000.png").is_file()


@pytest.mark.parametrize("dtype", ["auto", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_understand_is_quiet_and_runs_in_bfloat16(folder, dtype):
    done = run_cli(COMMANDS["understand"] + ["--dtype", dtype, "--max-new-tokens", "4", "--device", "cpu"], folder)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip()


def test_progress_bar_only_when_asked(folder, capsys, monkeypatch):
    from unimm.cli import main

    monkeypatch.chdir(folder)
    assert main(COMMANDS["generate"] + ["--progress", "--prefix", "bar"]) == 0
    assert "image tokens: 100%" in capsys.readouterr().err
