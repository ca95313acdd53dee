"""The Python examples in docs/training.md run as written, from the repository root (they read tests/fixtures)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "training.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def test_the_python_examples_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    python = [m.group(2) for m in FENCE.finditer(GUIDE.read_text()) if m.group(1) == "python"]
    assert python, "the guide shows no Python example"
    for text in python:
        exec(compile(text, str(GUIDE), "exec"), {})
    out = capsys.readouterr().out
    assert "backbone.lm.model.layers.0" in out and "'fsdp_version': 2" in out  # the sharding example's output
