"""Load test of ``unimm serve``: N concurrent clients asking for images, without and with batching.

For each ``--max-batch`` setting (default ``1``, no batching, then ``16``) it starts ``unimm serve`` on a free
localhost port with the model (default: the shipped shapes model), waits for ``/health``, sends one warm-up
request, then runs ``--clients`` concurrent clients (default 16). Each client sends ``POST /v1/generate`` requests
(``--num-images`` images, a seed of its own) one after another until ``--duration`` seconds have passed or it has
sent ``--max-requests``; the server is then stopped. The server runs torch on ``--threads`` threads (default 1).
Reported per setting: requests, errors (non-200 answers and transport errors), requests/s and images/s over the
run, and p50 / p95 latency. The last line compares the throughputs::

    python benchmarks/serve_load.py                      # 16 clients, 20 s per setting
    python benchmarks/serve_load.py --clients 4 --duration 5 --max-batch 1 4 --json out.json

Figures on this machine are in docs/performance.md ("## Serving").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:
    """``unimm serve`` in a subprocess; returns it and its URL once ``/health`` answers."""
    port = free_port()
    command = [sys.executable, "-m", "unimm.cli", "serve", "--port", str(port), "--max-batch", str(max_batch),
               "--max-images", str(max(args.num_images, 1)), "--device", args.device]
    if args.model:
        command += ["--model", args.model]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if args.threads:  # torch reads it at start; one thread was fastest for the small model on a shared CPU
        env["OMP_NUM_THREADS"] = str(args.threads)
    log = tempfile.TemporaryFile(mode="w+")  # not a pipe: uvicorn's access log would fill it and block the server
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"unimm serve exited with status {server.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop_server(server)
    raise SystemExit(f"unimm serve did not answer /health within {args.startup_timeout} s")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


async def client(http: httpx.AsyncClient, url: str, index: int, args: argparse.Namespace, end: float,
                 latencies: list[float], errors: list[str]) -> None:
    """One client: requests one after another until ``end`` or ``args.max_requests``."""
    for n in range(args.max_requests):
        if time.monotonic() >= end:
            return
        body = {"prompt": args.prompt, "num_images": args.num_images, "seed": 1000 * index + n}
        start = time.monotonic()
        try:
            response = await http.post(f"{url}/v1/generate", json=body)
            if response.status_code != 200 or len(response.json()["images"]) != args.num_images:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
        except httpx.HTTPError as err:
            errors.append(f"{type(err).__name__}: {err}")
            continue
        latencies.append(time.monotonic() - start)


async def load(url: str, args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(timeout=args.request_timeout, limits=limits) as http:
        await http.post(f"{url}/v1/generate", json={"prompt": args.prompt, "num_images": args.num_images})  # warm-up
        start = time.monotonic()
        await asyncio.gather(*(client(http, url, i, args, start + args.duration, latencies, errors)
                               for i in range(args.clients)))
        elapsed = time.monotonic() - start
    cuts = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else latencies * 19 or [float("nan")] * 19
    return {"requests": len(latencies), "errors": len(errors), "first_errors": errors[:3], "seconds": elapsed,
            "requests_per_s": len(latencies) / elapsed, "images_per_s": len(latencies) * args.num_images / elapsed,
            "p50_s": cuts[9], "p95_s": cuts[18]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the shipped shapes model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads (OMP_NUM_THREADS; "
                        "default 1, the fastest for the small model on a shared CPU; 0 = torch's default)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per setting (default 20)")
    parser.add_argument("--max-requests", type=int, default=200, help="most requests per client (default 200)")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 16], help="settings to compare")
    parser.add_argument("--num-images", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--prompt", default="a red circle above a blue square")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    results = {}
    print(f"{args.clients} clients, {args.duration:g} s per setting, {args.num_images} image(s) per request, "
          f"server threads: {args.threads or 'default'}")
    print(f"{'max-batch':>9} {'requests':>8} {'errors':>6} {'req/s':>7} {'img/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for max_batch in args.max_batch:
        server, url = start_server(args, max_batch)
        try:
            result = asyncio.run(load(url, args))
        finally:
            stop_server(server)
        results[max_batch] = result
        print(f"{max_batch:>9} {result['requests']:>8} {result['errors']:>6} {result['requests_per_s']:>7.2f} "
              f"{result['images_per_s']:>7.2f} {result['p50_s']:>7.2f} {result['p95_s']:>7.2f}", flush=True)
        for error in result["first_errors"]:
            print(f"          error: {error}")
    first, last = args.max_batch[0], args.max_batch[-1]
    if len(args.max_batch) > 1 and results[first]["requests_per_s"] > 0:
        ratio = results[last]["requests_per_s"] / results[first]["requests_per_s"]
        print(f"throughput --max-batch {last} / --max-batch {first}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "results": results}, indent=2))
    return 0 if all(r["errors"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
