"""The examples in docs/parts.md run as written, so the guide cannot drift from the code.

Each ```python block is executed on its own (each is self-contained, as a reader would paste it), and the
``unimm ...`` lines of each ```bash block go, in order, through the command-line entry point and must succeed;
``unimm config show`` lines must print the parts they build. A block whose info string names a file
(```python file=my_parts.py) is a file the reader saves: it is written into one temporary folder, the working
folder of every example, before any runs. The blocks carry their own asserts on shapes, so a changed shape fails
here too.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from unimm.cli import main as cli_main
from unimm.registry import ALL_REGISTRIES

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "parts.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(language: str, files: bool = False) -> list:
    """pytest params for the fenced blocks of ``language``, named after the section they sit in.

    With ``files``, only the blocks that name a file (``file=NAME``), as (name, text); else only the others.
    """
    text = GUIDE.read_text()
    params = []
    for index, match in enumerate(m for m in FENCE.finditer(text) if m.group(1) == language):
        file = re.search(r"\bfile=(\S+)", match.group(2))
        if bool(file) != files:
            continue
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        section = re.sub(r"\W+", "_", headings[-1].lower()).strip("_")[:40] if headings else "intro"
        values = (file.group(1), match.group(3)) if files else (match.group(3),)
        params.append(pytest.param(*values, id=f"{index}-{section}"))
    return params


PYTHON_BLOCKS = blocks("python")
FILES = [p.values for language in ("python", "yaml") for p in blocks(language, files=True)]
COMMAND_BLOCKS = [
    pytest.param([line.strip() for line in p.values[0].splitlines() if line.strip().startswith("unimm ")], id=p.id)
    for p in blocks("bash")
]
COMMANDS = [line for p in COMMAND_BLOCKS for line in p.values[0]]


@pytest.fixture(scope="module", autouse=True)
def guide_folder(tmp_path_factory):
    """The reader's working folder: the guide's files written into it, and every example run from it.

    Afterwards the working folder, ``sys.path``, the modules imported from the folder and the registries are as
    they were, so the guide's own parts do not leak into other tests.
    """
    folder = tmp_path_factory.mktemp("guide")
    for name, text in FILES:
        (folder / name).write_text(text)
    saved_path = list(sys.path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder
    sys.path[:] = saved_path
    guide_modules = [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(str(folder))]
    for name in guide_modules:
        del sys.modules[name]
    # Drop only what the guide's modules registered: shipped parts imported lazily meanwhile stay registered.
    for registry in ALL_REGISTRIES.values():
        gone = {n for n, b in registry._builders.items() if getattr(b, "__module__", None) in guide_modules}
        registry._builders = {n: b for n, b in registry._builders.items() if n not in gone}
        registry._aliases = {a: n for a, n in registry._aliases.items() if n not in gone}


def test_the_guide_has_its_examples():
    # encoder + aligner (SigLIP, hybrid), VQ tokenizer, shared VQ encoder, rectified flow with another backbone,
    # the VQ path on a plain transformers causal LM
    # a part of one's own (its file, its config, trained and loaded)
    assert len(PYTHON_BLOCKS) >= 6
    assert len(COMMANDS) >= 3
    assert {name for name, _ in FILES} >= {"my_parts.py", "my_model.yaml"}


@pytest.mark.parametrize("code", PYTHON_BLOCKS)
def test_python_example_runs(code):
    exec(compile(code, str(GUIDE), "exec"), {"__name__": "docs_parts_example"})


@pytest.mark.parametrize("commands", COMMAND_BLOCKS)
def test_command_example_runs(commands, capsys):
    for command in commands:
        assert cli_main(shlex.split(command)[1:]) == 0, f"{command}: {capsys.readouterr().err}"
        out = capsys.readouterr().out
        if command.startswith("unimm config show"):
            assert "# built:" in out and "CausalLMBackbone" in out, command
