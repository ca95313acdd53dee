"""``unimm serve`` on the command line: bad flags give one line and exit 2 before any model is loaded; a real server
starts, answers, and stops when terminated."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def busy_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s.getsockname()[1]


BAD = [
    (["--max-batch", "0"], "--max-batch 0: must be a positive number"),
    (["--max-images", "-2"], "--max-images -2: must be a positive number"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be a positive number"),
    (["--port", "70000"], "--port 70000: must be a port number in 1..65535"),
    (["--port", "{busy}"], "--port {busy}: cannot listen there"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid --port"),
    (["--device", "tpu"], "--device"),
    (["--model", "{tmp}/missing"], "missing"),
]


def test_bad_flags_give_one_line_and_status_2(tmp_path, busy_port):
    cases = [["serve", "--port", str(_free_port()), *[a.format(busy=busy_port, tmp=tmp_path) for a in args]]
             for args, _ in BAD]  # fmt: skip
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_runner.py"), str(spec)], env=ENV, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for (args, fragment), result in zip(BAD, json.loads(done.stdout.strip().splitlines()[-1])):
        lines = result["stderr"].strip().splitlines()
        assert result["status"] == 2 and len(lines) == 1, (args, result)
        assert lines[0].startswith("unimm: error: ") and fragment.format(busy=busy_port, tmp=tmp_path) in lines[0]


@pytest.mark.slow  # a real process: starting Python with torch takes seconds
def test_real_server_starts_answers_and_stops(tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "unimm.cli", "serve", "--port", str(port), "--device", "cpu"],
                              env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).json() == {"status": "ok"}:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not answer /health within 120 s"
            time.sleep(0.3)
        out = httpx.post(f"{url}/v1/generate", json={"prompt": "a red circle", "num_images": 2}, timeout=120).json()
        assert len(out["images"]) == 2 and out["seeds"] == [0, 1]
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on Ctrl-C
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    log = server.stdout.read()
    assert server.returncode == 0 and f"127.0.0.1:{port}" in log and "Traceback" not in log, log
