"""Start-up cost: the command's help and ``import unimm`` import no torch, and one part imports only what it needs.

Each check runs in a fresh interpreter, because this test process has imported everything already.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "transformers", "diffusers", "taming", "torchvision")


def imported_after(code: str) -> set[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a new interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_help_imports_no_torch():
    code = "import unimm.cli\ntry:\n    unimm.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert imported_after(code) == set()


def test_import_unimm_imports_no_torch_until_a_model_function_is_used():
    assert imported_after("import unimm, unimm.registry, unimm.config") == set()
    assert "torch" in imported_after("import unimm\nunimm.build_model")


@pytest.mark.parametrize("code, needed", [
    ("from unimm.encoders.siglip import SigLIPEncoder", {"torch"}),  # timm is imported when a tower is built
    ("from unimm.aligners.mlp import MLPAligner", {"torch"}),
    ("from unimm.generation.vq_path import VQGenerationPath", {"torch", "taming"}),
    ("from unimm.registry import ENCODERS\nENCODERS.get('siglip')", {"torch"}),
    ("from unimm.registry import GENERATORS\nGENERATORS.get('vq')", {"torch", "taming"}),
])
def test_one_part_imports_only_what_it_needs(code, needed):
    assert imported_after(code) == needed


def test_the_flow_path_does_not_import_taming():
    assert "taming" not in imported_after("from unimm.generation.flow_path import RectifiedFlowPath")
