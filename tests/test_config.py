"""Configs: shipped names, section keys, override syntax, slot replacement, path resolution, and that every
shipped YAML (and every slot file under configs/parts/) builds."""

import pytest
import torch
from omegaconf import OmegaConf

from unimm.build import build_model, count_parameters
from unimm.config import CONFIG_DIR, apply_overrides, find_config, load_config, to_yaml
from unimm.registry import ConfigError

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))
PARTS = sorted((CONFIG_DIR / "parts").rglob("*.yaml"))


def test_shipped_names_resolve():
    for path in SHIPPED:
        assert find_config(path.stem) == path
    assert find_config("parts/generator/vq_tiny") == CONFIG_DIR / "parts" / "generator" / "vq_tiny.yaml"
    assert load_config("janus_tiny").name == "janus-tiny"


def test_misspelled_config_name_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        find_config("janus_tinny")
    message = str(err.value)
    assert "no config file 'janus_tinny'. Did you mean 'janus_tiny'?" in message
    assert all(path.stem in message for path in SHIPPED)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("modell.und_encoder.type=siglip", r"^modell: unknown key\. Did you mean 'model'\? Valid keys: name, model"),
        ("model.und_encodr.type=siglip", r"^model\.und_encodr: unknown key\. Did you mean 'und_encoder'\?"),
        ("processor.max_len=4", r"^processor\.max_len: unknown key\. Did you mean 'max_length'\?"),
    ],
)
def test_unknown_section_keys(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("janus_tiny", [override])


def test_missing_sections():
    with pytest.raises(ConfigError, match="the config has no 'model' section"):
        load_config({"name": "x"})
    with pytest.raises(ConfigError, match=r"model\.backbone: required slot is missing"):
        load_config({"model": {"und_encoder": {"type": "siglip"}, "und_aligner": {"type": "linear"}}})


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.backbone", r"override 'model\.backbone' must look like key=value"),
        ("=3", r"override '=3': '' is not a dotted key"),
        ("model..backbone=3", r"override 'model\.\.backbone=3': 'model\.\.backbone' is not a dotted key"),
        ("model.backbone.num_hidden_layers=[1,2", r"override '.*': cannot parse the value '\[1,2'"),
        ("model.generator=@parts/generator/nope", r"no config file 'parts/generator/nope'"),
    ],
)
def test_override_syntax_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config("janus_tiny", [override])


def test_override_values_are_typed_and_can_add_keys():
    cfg = load_config("janus_tiny", ["model.backbone.num_hidden_layers=3", "model.backbone.rope_theta=500.0",
                                     "+processor.max_length=64", "model.und_encoder.pixel_mean=[0.1,0.2,0.3]"])
    assert cfg.model.backbone.num_hidden_layers == 3
    assert cfg.model.backbone.rope_theta == 500.0
    assert cfg.processor.max_length == 64
    assert list(cfg.model.und_encoder.pixel_mean) == [0.1, 0.2, 0.3]


def test_changing_a_slot_type_replaces_the_slot():
    cfg = load_config("janus_tiny", ["model.generator.type=rectified_flow"])
    assert OmegaConf.to_container(cfg.model.generator) == {"type": "rectified_flow"}  # no VQ keys inherited
    cfg = load_config("janus_tiny", ["model.und_aligner.type=linear"])
    assert OmegaConf.to_container(cfg.model.und_aligner) == {"type": "linear"}  # depth is gone


def test_an_inline_slot_of_another_type_replaces_the_slot():
    cfg = load_config("janus_tiny", ["model.und_aligner={type: linear}"])
    assert OmegaConf.to_container(cfg.model.und_aligner) == {"type": "linear"}  # depth is gone
    cfg = load_config("janus_tiny", ["model.und_aligner={type: mlp_gelu, depth: 3}"])
    assert OmegaConf.to_container(cfg.model.und_aligner) == {"type": "mlp_gelu", "depth": 3}  # same type: merged


def test_same_type_override_merges():
    before = load_config("janus_tiny")
    cfg = load_config("janus_tiny", ["model.generator.type=vq", "model.generator.image_size=32"])
    assert cfg.model.generator.image_size == 32
    assert cfg.model.generator.autoencoder == before.model.generator.autoencoder
    assert cfg.model.generator.head.type == "vq_image_head"


def test_slot_replacement_from_a_file(tmp_path):
    cfg = load_config("janus_tiny", ["model.generator=@parts/generator/flow_tiny"])
    expected = OmegaConf.load(CONFIG_DIR / "parts" / "generator" / "flow_tiny.yaml")
    assert cfg.model.generator == expected
    assert "head" not in cfg.model.generator and "aligner" not in cfg.model.generator
    part = tmp_path / "aligner.yaml"
    part.write_text("type: mlp_gelu\ndepth: 3\n")
    cfg = load_config("janus_tiny", [f"model.und_aligner=@{part}"])
    assert OmegaConf.to_container(cfg.model.und_aligner) == {"type": "mlp_gelu", "depth": 3}


def test_relative_tokenizer_path_resolves_against_the_config_folder(tmp_path, monkeypatch):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    config = tmp_path / "model.yaml"
    text = (CONFIG_DIR / "janus_tiny.yaml").read_text().replace("tokenizer: tiny", "tokenizer: tok")
    config.write_text(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(config)
    assert cfg.processor.tokenizer == str((tmp_path / "tok").resolve())
    assert load_config("janus_tiny").processor.tokenizer == "tiny"  # a bundled name, not a path: left alone


def test_to_yaml_round_trips():
    cfg = load_config("janus_tiny", ["model.backbone.num_hidden_layers=1"])
    assert OmegaConf.create(to_yaml(cfg)) == cfg


def test_apply_overrides_does_not_touch_the_input():
    cfg = load_config("janus_tiny")
    apply_overrides(cfg, ["model.generator.type=rectified_flow"])
    assert cfg.model.generator.type == "vq"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_builds(path):
    cfg = load_config(path)
    with torch.device("meta"):
        model = build_model(cfg)
    assert count_parameters(model) > 0
    for slot in ("und_encoder", "und_aligner", "backbone"):
        assert getattr(model, slot) is not None
    assert (model.generator is not None) == ("generator" in cfg.model)


@pytest.mark.parametrize("path", PARTS, ids=lambda p: str(p.relative_to(CONFIG_DIR / "parts").with_suffix("")))
def test_every_slot_file_builds_into_janus_tiny(path):
    slot = path.relative_to(CONFIG_DIR / "parts").parts[0]  # configs/parts/<slot>/<name>.yaml
    overrides = [f"model.{slot}=@{path}"]
    # the hybrid encoder and the split aligner only work as a pair (build_model checks it)
    partner = {"sam_siglip_tiny": "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu",
               "hybrid_split_mlp_gelu": "model.und_encoder=@parts/und_encoder/sam_siglip_tiny"}.get(path.stem)
    cfg = load_config("janus_tiny", overrides + ([partner] if partner else []))
    assert cfg.model[slot] == OmegaConf.load(path)
    with torch.device("meta"):
        model = build_model(cfg)
    assert getattr(model, slot) is not None and count_parameters(getattr(model, slot)) > 0


def test_tiny_config_builds_for_real():
    model = build_model("janus_tiny")
    assert not any(p.is_meta for p in model.parameters())
    assert count_parameters(model) < 5_000_000
