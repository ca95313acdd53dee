"""How fast, and in how much memory, ``load_pretrained`` loads a full-size Janus-Pro-1B checkpoint.

Writes once a released-layout Janus-Pro-1B folder with random weights (``config.json`` and the parameter names and
shapes of the released model, from ``tests/fixtures/golden/official/Janus-Pro-1B``; bf16, as the release is;
the small test tokenizer) into ``--cache``, then measures, each in a fresh process and interleaved over
``--repeats`` rounds so that load from other processes on a shared machine hits every measurement alike:

* ``read``: reading every byte of ``model.safetensors`` (the floor for anything that uses the weights);
* ``old``: ``load_pretrained(folder, dtype=bf16, lean=False)``, the way before: build with random float32
  weights, copy the checkpoint in, cast;
* ``new``: ``load_pretrained(folder, dtype=bf16)``: a skeleton build, the memory-mapped tensors assigned;
* ``new+touch``: the same, then one element of every page of every weight read, so that the whole file has been
  paged in (what the first forward pass would do; the new way's own figure defers that reading);
* ``new-fp32``: ``load_pretrained(folder)`` in the default float32: each tensor is cast as it is assigned, so the
  float32 weights are made once (twice the file's size) beside the mapped file.

Each process imports everything first (untimed, the same for every kind), then reports the seconds of the
measured call, its peak resident memory (``VmHWM``, which counts the mapped file pages it touched) against the
weights' byte size, and what stays resident after the call with the model alive (``VmRSS``). A round takes
about two minutes on 2 CPU cores, most of it the old way::

    python benchmarks/loading.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "tests" / "fixtures" / "golden" / "official" / "Janus-Pro-1B"
TOKENIZER = ROOT / "tests" / "fixtures" / "golden" / "janus_tiny"
KINDS = ("read", "old", "new", "new+touch", "new-fp32")


def write_checkpoint(folder: Path) -> Path:
    """The released layout with random bf16 weights of the released shapes (written once; kept in ``folder``)."""
    import torch
    from safetensors.torch import save_file

    weights = folder / "model.safetensors"
    if weights.is_file():
        return weights
    folder.mkdir(parents=True, exist_ok=True)
    shapes = json.loads((RELEASE / "manifest.json").read_text())["state_dict"]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in shapes.items():
        state[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    (folder / "config.json").write_text((RELEASE / "config.json").read_text())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).write_bytes((TOKENIZER / name).read_bytes())
    save_file(state, str(folder / "model.safetensors.tmp"), metadata={"format": "pt"})
    (folder / "model.safetensors.tmp").replace(weights)
    return weights


def status(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` in bytes: ``VmHWM`` (peak resident), ``VmRSS``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(kind: str, folder: Path) -> dict:
    """One measurement in this process: seconds of the call and peak memory."""
    import torch

    import unimm
    from unimm.registry import ALL_REGISTRIES

    torch.set_num_threads(1)
    for registry in ALL_REGISTRIES.values():  # import every part's module (transformers, timm, ...) untimed
        registry.load_all()
    baseline = status("VmHWM")  # Python, torch, unimm and its parts imported
    start = time.perf_counter()
    if kind == "read":
        buffer = bytearray(64 << 20)
        with open(folder / "model.safetensors", "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    else:
        dtype = None if kind == "new-fp32" else torch.bfloat16
        model = unimm.load_pretrained(folder, dtype=dtype, lean=kind != "old").model
        if kind == "new+touch":
            with torch.no_grad():
                for p in model.parameters():  # one element per 4 KiB page
                    p.view(-1)[:: 4096 // p.element_size()].float().sum()
    seconds = time.perf_counter() - start
    return {"kind": kind, "seconds": seconds, "peak": status("VmHWM"), "after": status("VmRSS"), "baseline": baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/unimm-bench/Janus-Pro-1B-random"),
                        help="folder for the random checkpoint, written on the first run (4.2 GB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)  # the child process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.cache)))
        return

    weights = write_checkpoint(args.cache)
    size = weights.stat().st_size
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(args.repeats):
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--measure", kind, "--cache", str(args.cache)],
                                 check=True, capture_output=True, text=True).stdout
            runs[kind].append(json.loads(out.strip().splitlines()[-1]))
    read = statistics.median(r["seconds"] for r in runs["read"])
    print(f"{weights}: {size / 2**30:.2f} GiB of weights (bf16), {args.repeats} rounds, median (min - max); "
          "GiB; base: the process before the call (Python, torch, unimm and its parts imported)")
    print(f"{'':10} {'seconds':>22} {'x read':>7} {'peak RSS':>22} {'x weights':>9} {'base':>5} "
          f"{'(peak - base) x weights':>23} {'RSS after':>9}")
    for kind, results in runs.items():
        seconds = sorted(r["seconds"] for r in results)
        peaks = sorted(r["peak"] / 2**30 for r in results)
        seconds_mid, peak_mid = statistics.median(seconds), statistics.median(peaks)
        base, after = (statistics.median(r[key] for r in results) / 2**30 for key in ("baseline", "after"))
        print(f"{kind:10} {seconds_mid:8.2f} ({seconds[0]:5.2f} - {seconds[-1]:5.2f}) {seconds_mid / read:7.2f} "
              f"{peak_mid:6.2f} ({peaks[0]:5.2f} - {peaks[-1]:5.2f}) {peak_mid * 2**30 / size:9.2f} {base:5.2f} "
              f"{(peak_mid - base) * 2**30 / size:23.2f} {after:9.2f}")

if __name__ == "__main__":
    main()
