"""The shipped model loaded once, and the demo launched on it once, for the demo's tests."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from a test machine


@pytest.fixture(scope="session")
def loaded():
    from unimm.pretrained import DEFAULT_MODEL, load_pretrained
    from unimm.serving.demo import Loaded

    model, processor, cfg = load_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")
    return Loaded(model, processor, cfg)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def demo_url(loaded):
    """The demo on the shipped model, served from this process on a free port; its URL."""
    from unimm.serving.demo import launch

    port = free_port()
    demo = launch(loaded, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
