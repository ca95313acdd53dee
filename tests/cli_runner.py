"""Run several ``unimm`` command lines in one Python process, each as ``python -m unimm.cli ARGS`` would run it.

Starting Python and importing torch and transformers takes most of a CLI call's time, so the error tests run
their command lines here, one after another: ``python tests/cli_runner.py CASES.json`` reads a JSON list of argv
lists and prints a JSON list of ``{"status": int, "stderr": str}``. Each command's stderr is captured on its own;
an exception that escapes ``unimm.cli.main`` is printed with its traceback and gives status 1, exactly what the
interpreter does for ``python -m unimm.cli``, so a test that finds no "Traceback" proves none reached the user.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def run(argv: list[str]) -> dict:
    from unimm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
            traceback.print_exc()
            status = 1
    return {"status": status, "stderr": err.getvalue()}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    print(json.dumps([run(argv) for argv in cases]))
