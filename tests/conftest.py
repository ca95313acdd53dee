"""Shared test helpers: discovery of the golden reference cases."""

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
OFFICIAL = GOLDEN / "official"


def golden_cases(kind: str) -> list:
    """pytest params for every golden folder whose cases.json has this ``kind`` (folder name as the test id)."""
    folders = sorted(p.parent for p in GOLDEN.glob("*/cases.json") if json.loads(p.read_text())["kind"] == kind)
    return [pytest.param(folder, id=folder.name) for folder in folders]


def pytest_configure(config):
    """The tests use tiny models, for which one thread is fastest and immune to a busy machine's contention."""
    import os

    # load_pretrained's default device is "auto" (a CUDA GPU, in bfloat16, where there is one), but the golden
    # tests compare float32 CPU numbers: the suite runs on the CPU (CUDA_VISIBLE_DEVICES=0 ... opts a run back in).
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process, with the first Trainer's mixed precision: call this to let the next
    Trainer choose another (the test ends with a fresh state for the next test too)."""
    from accelerate.state import AcceleratorState

    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)

    reset()
    yield reset
    reset()
