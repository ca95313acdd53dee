"""The sampling benchmarks run end to end at tiny sizes (their figures are not checked: no timed tests)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # gpu_sampling imports the reference loop from sampling
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("name, argv, keys", [
    ("sampling", ["--width", "64", "--layers", "1", "--image-tokens", "4", "--codebook", "64", "--vocab", "500",
                  "--images", "1", "2", "--flow-steps", "2", "--answer-tokens", "3"],
     ["vq", "flow", "answer", "transformers_janus"]),
    ("gpu_sampling", ["--tiny", "--device", "cpu", "--parallel", "2", "--answer-tokens", "3", "--repeats", "1"],
     ["one_image_s", "one_image_reference_s", "parallel_s", "answer_per_token_ms", "image_bound_s"]),
])
def test_benchmark_runs_tiny(name, argv, keys, tmp_path, capsys):
    out = tmp_path / "figures.json"
    result = _script(name).main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()).keys() == result.keys()
    assert all(result[key] is not None for key in keys)
    if name == "sampling":
        assert [row["images"] for row in result["vq"]] == [1, 2]
        assert "| VQ image tokens/s, 2 image(s), guidance |" in capsys.readouterr().out
