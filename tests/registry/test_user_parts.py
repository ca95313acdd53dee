"""A part from the user's own code, outside the package: through ``imports:``, ``--import`` and an entry point.

The part is a gated linear aligner written into a temporary folder. Each way of bringing it in is run as a user
would (a fresh ``unimm`` process, started the way a console script is, so only the working folder makes the module
importable): the model builds, trains two steps, saves, and a fresh process loads it back with the part and the
trained weights. Mistakes (a module that is not there, a broken installed package) give one line and exit 2.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from unimm.bench.export import export_split
from unimm.config import load_config
from unimm.registry import ConfigError, Registry
from unimm.registry.plugins import import_modules, module_names, record_imports

ROOT = Path(__file__).resolve().parents[2]
GATE_INIT = 0.5


def part_source(name: str) -> str:
    """A module that registers a gated linear aligner as ``name``."""
    return textwrap.dedent(f'''
        """A part of one's own: a linear aligner scaled by a learned per-channel gate."""
        import torch
        from torch import nn

        from unimm.aligners.base import Aligner
        from unimm.registry import ALIGNERS


        @ALIGNERS.register("{name}")
        class GatedLinearAligner(Aligner):
            """(..., in_dim) -> (..., out_dim): a Linear times sigmoid(gate), the gate one value per channel."""

            def __init__(self, in_dim: int, out_dim: int, gate_init: float = 0.0):
                super().__init__()
                self.proj = nn.Linear(in_dim, out_dim)
                self.gate = nn.Parameter(torch.full((out_dim,), float(gate_init)))
                self.in_dim, self.out_dim = in_dim, out_dim

            def forward(self, x):
                return self.proj(x) * torch.sigmoid(self.gate)
    ''')


LAUNCHER = "import sys\nfrom unimm.cli import main\nsys.exit(main())\n"  # like the `unimm` console script

CHECK_LOAD = textwrap.dedent('''
    """Load each folder given (a fresh process) and check its understanding aligner is the trained user part."""
    import sys
    import torch
    import unimm

    for folder, part_type in zip(sys.argv[1::2], sys.argv[2::2]):
        model, processor, cfg = unimm.load_pretrained(folder)
        aligner = model.und_aligner
        assert type(aligner).__name__ == "GatedLinearAligner", type(aligner)
        assert cfg.model.und_aligner.type == part_type and cfg.model.und_aligner.gate_init == {gate}
        assert not torch.allclose(aligner.gate, torch.full_like(aligner.gate, {gate})), "the part did not train"
        tokens = aligner(torch.randn(2, 3, aligner.in_dim))
        assert tokens.shape == (2, 3, model.backbone.hidden_size)
        batch = processor([{{"role": "user", "content": "<image_placeholder>\\nwhat colour?"}},
                           {{"role": "assistant", "content": ""}}], [torch.zeros(3, 32, 32)])
        model.generate_text(batch, max_new_tokens=2, eos_id=processor.eos_id, pad_id=processor.pad_id)
        print("loaded", folder, type(aligner).__name__)
''').format(gate=GATE_INIT)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A user's folder: ``my_parts.py``, a tiny shapes split, and helper scripts in ``bin/`` beside it."""
    root = tmp_path_factory.mktemp("user_project")
    (root / "my_parts.py").write_text(part_source("gated_linear"))
    export_split(root / "data", "train", 6)
    (root / "bin").mkdir()
    (root / "bin" / "unimm_cli.py").write_text(LAUNCHER)
    (root / "bin" / "check_load.py").write_text(CHECK_LOAD)
    # An installed package that ships a part through the unimm.parts entry point.
    site = root / "site"
    (site / "acme_parts").mkdir(parents=True)
    (site / "acme_parts" / "__init__.py").write_text(part_source("acme_gated_linear"))
    dist = site / "acme_parts-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-parts\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[unimm.parts]\nacme = acme_parts\n")
    # One whose entry point names a module that is not there.
    broken = root / "broken_site" / "broken_parts-0.1.dist-info"
    broken.mkdir(parents=True)
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-parts\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[unimm.parts]\nbroken = broken_parts_gone.parts\n")
    return root


def write_config(project: Path, name: str, part_type: str, imports: list[str] | None = None) -> Path:
    """janus_tiny with the user's aligner as ``model.und_aligner``, and a two-step understanding stage."""
    cfg = OmegaConf.to_container(load_config("janus_tiny"), resolve=True)
    cfg["model"]["und_aligner"] = {"type": part_type, "gate_init": GATE_INIT}
    if imports is not None:
        cfg["imports"] = imports
    cfg["train"] = {
        "output_dir": f"runs/{name}", "seed": 0, "batch_size": 2, "log_every": 1, "save_every": 0,
        "progress": False, "tensorboard": False, "mixed_precision": "no",
        "data": {"num_threads": 1, "sources": {"und": {"task": "understanding", "jsonl": "data/und.jsonl"}}},
        "stages": [{"name": "align", "steps": 2, "trainable": ["und_aligner"], "mixture": {"und": 1}, "lr": 1e-2}],
    }
    path = project / f"{name}.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)))
    return path


def unimm_cli(project: Path, *args: str, cwd: Path | None = None, site: str | None = None,
              script: str = "unimm_cli.py") -> subprocess.CompletedProcess:
    """Run ``unimm ARGS`` in a fresh process in ``cwd`` (default: the project); ``site`` joins PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, str(ROOT)) if p), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(project / "bin" / script), *args], cwd=cwd or project, env=env,
                          capture_output=True, text=True, timeout=600)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit status 2, no traceback, and a ``unimm: error:`` line holding every ``expected`` text."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("unimm: error:")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def saved_imports(folder: Path) -> list:
    return OmegaConf.load(folder / "config.yaml").get("imports")


# -- the three ways, end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_part_named_in_imports_trains_saves_and_loads_back(project):
    config = write_config(project, "via_imports", "gated_linear", imports=["my_parts"])
    assert_ok(unimm_cli(project, "train", "--config", config.name))
    final = project / "runs" / "via_imports" / "final"
    assert saved_imports(final) == ["my_parts"]
    assert_ok(unimm_cli(project, str(final), "gated_linear", script="check_load.py"))

    # From a folder where my_parts is not importable, the saved imports fail in one line.
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    result = unimm_cli(project, "understand", "--model", str(final), "--image", str(project / "data" / "images" /
                       "000000.png"), "--question", "what colour?", cwd=elsewhere)
    assert_one_line_error(result, "imports: cannot import 'my_parts' (No module named 'my_parts'); check the name "
                                  "and that its folder is on PYTHONPATH")


@pytest.mark.slow
def test_a_part_brought_in_with_the_import_flag_is_recorded_in_the_saved_model(project):
    config = write_config(project, "via_flag", "gated_linear")
    result = unimm_cli(project, "config", "show", config.name)  # without the flag the type is unknown
    assert_one_line_error(result, "model.und_aligner.type: unknown aligner 'gated_linear'", "Choices: ")

    assert_ok(unimm_cli(project, "train", "--config", config.name, "--import", "my_parts"))
    final = project / "runs" / "via_flag" / "final"
    assert saved_imports(final) == ["my_parts"]  # so loading needs no flag
    assert_ok(unimm_cli(project, str(final), "gated_linear", script="check_load.py"))


@pytest.mark.slow
def test_a_part_from_an_installed_package_entry_point(project):
    config = write_config(project, "via_entry_point", "acme_gated_linear")
    site = str(project / "site")
    assert_ok(unimm_cli(project, "train", "--config", config.name, site=site))
    final = project / "runs" / "via_entry_point" / "final"
    assert saved_imports(final) is None  # the entry point is found again by the loading process
    assert_ok(unimm_cli(project, str(final), "acme_gated_linear", script="check_load.py", site=site))
    listing = unimm_cli(project, "list", site=site)
    assert_ok(listing)
    assert "acme_gated_linear" in listing.stdout


# -- mistakes: one line, exit 2 -----------------------------------------------------------------------------------
def test_an_import_flag_naming_no_module(project):
    result = unimm_cli(project, "config", "show", "janus_tiny", "--import", "no_such_parts_module")
    assert_one_line_error(result, "--import: cannot import 'no_such_parts_module' (No module named "
                                  "'no_such_parts_module'); check the name and that its folder is on PYTHONPATH")


def test_an_entry_point_that_fails_names_its_distribution(project):
    result = unimm_cli(project, "config", "show", "janus_tiny", site=str(project / "broken_site"))
    assert_one_line_error(result, "entry point 'broken = broken_parts_gone.parts'", "group unimm.parts",
                          "installed package 'broken-parts'", "No module named 'broken_parts_gone'",
                          "pip uninstall broken-parts")


def test_an_imports_override_naming_no_module(project, monkeypatch):
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=r"^imports: cannot import 'nope_parts' \(No module named 'nope_parts'\)"):
        load_config("janus_tiny", ["imports=[nope_parts]"])
    with pytest.raises(ConfigError, match=r"^imports must be a list of module names, e.g. imports=\[my_parts\], "
                                          r"got 'my_parts'"):
        load_config("janus_tiny", ["imports=my_parts"])


# -- the pieces, in this process ----------------------------------------------------------------------------------
def test_imports_override_imports_from_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "probe_parts_for_override.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "probe_parts_for_override", raising=False)
    cfg = load_config("janus_tiny", ["imports=[probe_parts_for_override]"])
    assert list(cfg.imports) == ["probe_parts_for_override"]
    assert sys.modules["probe_parts_for_override"].LOADED
    assert sys.path[0] == str(tmp_path)
    monkeypatch.delitem(sys.modules, "probe_parts_for_override")


def test_record_imports_keeps_order_and_drops_repeats():
    cfg = OmegaConf.create({"imports": ["a", "b"]})
    record_imports(cfg, ["b", "c"])
    assert list(cfg.imports) == ["a", "b", "c"]
    empty = OmegaConf.create({})
    record_imports(empty, [])
    assert "imports" not in empty
    assert module_names(None) == [] and module_names(OmegaConf.create(["x.y"])) == ["x.y"]
    with pytest.raises(ConfigError, match=r"^--import must be a list of module names"):
        import_modules([""], where="--import")


def test_a_name_taken_by_another_class_fails_and_the_same_class_again_is_fine(tmp_path, monkeypatch):
    importlib.import_module("unimm.aligners")  # the shipped aligners register into the real registry, not the toy
    registry = Registry("toy part")
    monkeypatch.setattr("unimm.registry.ALIGNERS", registry)  # the module below registers into this registry
    (tmp_path / "toy_parts_twice.py").write_text(part_source("toy_gated"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "toy_parts_twice", raising=False)
    first = importlib.import_module("toy_parts_twice").GatedLinearAligner
    second = importlib.reload(sys.modules["toy_parts_twice"]).GatedLinearAligner  # a fresh class, same definition
    assert first is not second and registry.get("toy_gated") is second

    class GatedLinearAligner:  # another class under the taken name
        pass

    with pytest.raises(ConfigError) as err:
        registry.register("toy_gated")(GatedLinearAligner)
    message = str(err.value)
    assert message.startswith("toy part 'toy_gated' is registered twice: toy_parts_twice.GatedLinearAligner has it")
    assert f"{__name__}.test_a_name_taken_by_another_class_fails" in message
    assert message.endswith("register yours under another name")
    assert registry.get("toy_gated") is second
    monkeypatch.delitem(sys.modules, "toy_parts_twice")


def test_a_saved_config_keeps_its_imports(tmp_path):
    """save_pretrained writes the config as given, imports included (the end-to-end tests load them back)."""
    import unimm

    model = unimm.build_model("janus_tiny")
    cfg = load_config("janus_tiny", ["imports=[json]"])  # any importable module
    processor = unimm.build_processor(cfg, model)
    unimm.save_pretrained(model, processor, cfg, tmp_path / "saved")
    assert saved_imports(tmp_path / "saved") == ["json"]
    assert list(unimm.load_pretrained(tmp_path / "saved").config.imports) == ["json"]


def test_entry_points_load_once_before_the_first_lookup(monkeypatch):
    from types import SimpleNamespace

    from unimm.registry import ALIGNERS, plugins

    loads = []
    entry_point = SimpleNamespace(name="probe", value="probe_parts", dist=SimpleNamespace(name="probe-dist"),
                                  load=lambda: loads.append(1))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points",
                        lambda group: [entry_point] if group == plugins.ENTRY_POINT_GROUP else [])
    assert "mlp_gelu" in ALIGNERS and ALIGNERS.get("linear") and ALIGNERS.names()
    assert loads == [1]

    def fail():
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(entry_point, "load", fail)
    with pytest.raises(ConfigError, match=r"^entry point 'probe = probe_parts' \(group unimm.parts\) of the installed "
                                          r"package 'probe-dist' failed to load \(RuntimeError: boom\); "):
        ALIGNERS.get("linear")
