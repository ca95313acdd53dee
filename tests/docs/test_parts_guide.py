"""The examples in docs/parts.md run as written, so the guide cannot drift from the code.

Each ```python block is executed on its own (each is self-contained, as a reader would paste it), and each
``unimm ...`` line of the ```bash blocks goes through the command-line entry point and must succeed and print the
parts it builds. The blocks carry their own asserts on shapes, so a changed shape fails here too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from unimm.cli import main as cli_main

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "parts.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list:
    """pytest params for the fenced blocks of ``language``, named after the section they sit in."""
    text = GUIDE.read_text()
    params = []
    for index, match in enumerate(m for m in FENCE.finditer(text) if m.group(1) == language):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        section = re.sub(r"\W+", "_", headings[-1].lower()).strip("_")[:40] if headings else "intro"
        params.append(pytest.param(match.group(2), id=f"{index}-{section}"))
    return params


PYTHON_BLOCKS = blocks("python")
COMMANDS = [
    pytest.param(line, id=f"command{i}")
    for i, line in enumerate(
        line.strip() for p in blocks("bash") for line in p.values[0].splitlines() if line.strip().startswith("unimm ")
    )
]


def test_the_guide_has_its_examples():
    # encoder + aligner (SigLIP, hybrid), VQ tokenizer, shared VQ encoder, rectified flow with another backbone,
    # the VQ path on a plain transformers causal LM
    assert len(PYTHON_BLOCKS) >= 6
    assert len(COMMANDS) >= 3


@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_example_runs(code):
    exec(compile(code, str(GUIDE), "exec"), {"__name__": "docs_parts_example"})


@pytest.mark.parametrize("command", COMMANDS)
def test_command_example_runs(command, capsys):
    assert cli_main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "# built:" in out and "CausalLMBackbone" in out
