"""The examples in docs/hf_janus.md run as written: its ``unimm ...`` lines through the command-line entry point,
then its Python blocks, in order, in one folder where ``tests/`` is the repository's (the guide runs from the root).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from unimm.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "hf_janus.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def test_the_guide_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests").symlink_to(ROOT / "tests")
    blocks = [(m.group(1), m.group(2)) for m in FENCE.finditer(GUIDE.read_text())]
    commands = [shlex.split(line)[1:] for kind, text in blocks if kind == "bash"
                for line in text.splitlines() if line.startswith("unimm ")]
    assert commands, "the guide shows no command"
    for argv in commands:
        assert cli_main(argv) == 0, (argv, capsys.readouterr().err)
    python = [text for kind, text in blocks if kind == "python"]
    assert len(python) == 2
    for text in python:  # the load example uses the folder the convert example writes
        exec(compile(text, str(GUIDE), "exec"), {})
