"""Packaging: a plain wheel (not an editable install) carries the configs, and its CLI runs from any folder."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "unimm", "configs")


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_wheel_installed_without_dependencies_runs_config_show_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build writes nothing into the checkout
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path / "dist"), "."], cwd=source)
    (wheel,) = (tmp_path / "dist").glob("unimm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = ROOT / "configs"
    shipped = {f"unimm/configs/{p.relative_to(configs).as_posix()}" for p in configs.rglob("*.yaml")}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "unimm/assets/tokenizers/tiny/tokenizer.json" in names

    target = tmp_path / "target"
    run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    show = "import unimm, unimm.config; print(unimm.__file__); print(unimm.config.CONFIG_DIR)"
    where = run([sys.executable, "-c", show], cwd=elsewhere, PYTHONPATH=str(target)).stdout.split()
    assert where == [str(target / "unimm" / "__init__.py"), str(target / "unimm" / "configs")]

    plain = run([sys.executable, "-m", "unimm.cli", "config", "show", "janus_tiny", "--no-build"],
                cwd=elsewhere, PYTHONPATH=str(target)).stdout
    assert "name: janus-tiny" in plain and "# built:" not in plain
    # a slot replaced from a shipped parts file, then built (torch and the rest come from this interpreter's venv)
    built = run([sys.executable, "-m", "unimm.cli", "config", "show", "janus_tiny",
                 "model.generator=@parts/generator/flow_tiny"], cwd=elsewhere, PYTHONPATH=str(target)).stdout
    assert "type: rectified_flow" in built and "#   generator    RectifiedFlowPath" in built
