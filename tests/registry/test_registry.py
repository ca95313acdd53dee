"""Registry errors: every message names the config path, the closest valid name and the choices.

Also: duplicate registration raises, ``get`` never returns None, inferred widths fill in or clash with both numbers,
and unknown keys are caught before any module is constructed.
"""

import functools

import pytest
from torch import nn

from unimm.backbones.causal_lm import CausalLMBackbone
from unimm.build import build_model, check_slots
from unimm.config import load_config
from unimm.encoders.siglip import SigLIPEncoder
from unimm.registry import ALIGNERS, ALL_REGISTRIES, ENCODERS, ConfigError, Registry, to_plain


@pytest.fixture
def toy():
    """A fresh registry with one part that has a required, a typed and an optional argument."""
    registry = Registry("toy part")

    @registry.register("toy_linear", aliases=("toy",))
    class ToyLinear(nn.Linear):
        """A linear layer."""

        def __init__(self, in_dim: int, out_dim: int = 4, depth: int = 1, name: str | None = None):
            super().__init__(in_dim, out_dim)
            self.depth = depth

    return registry


def test_unknown_type_names_path_closest_and_choices():
    with pytest.raises(ConfigError) as err:
        ENCODERS.build({"type": "siglp"}, where="model.und_encoder")
    message = str(err.value)
    assert "model.und_encoder.type" in message
    assert "unknown understanding encoder 'siglp'" in message
    assert "Did you mean 'siglip'?" in message
    assert "Choices: " in message and "siglip" in message.split("Choices: ")[1]


def test_unknown_type_from_a_config_override():
    with pytest.raises(ConfigError, match=r"model\.und_encoder\.type: .*'sigclip'\. Did you mean 'siglip'\?"):
        build_model("janus_tiny", ["model.und_encoder.type=sigclip"])


def test_unknown_type_with_nothing_close_lists_choices_only():
    with pytest.raises(ConfigError) as err:
        ALIGNERS.get("zzzzzz", where="model.und_aligner")
    assert "Did you mean" not in str(err.value)
    assert all(name in str(err.value) for name in ALIGNERS.names())


def test_non_string_type():
    with pytest.raises(ConfigError, match=r"model\.und_aligner\.type must be a string .* got 3"):
        ALIGNERS.get(3, where="model.und_aligner")


def test_get_never_returns_none(toy):
    assert toy.get("toy_linear") is toy.get("toy")  # alias resolves to the same builder
    with pytest.raises(ConfigError, match="unknown toy part 'nothing'"):
        toy.get("nothing")
    for registry in ALL_REGISTRIES.values():
        for name in registry.names():
            assert callable(registry.get(name))
            assert registry.describe(name), f"{registry.kind} '{name}' has no docstring"


def test_misspelled_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as err:
        build_model("janus_tiny", ["model.und_aligner.dept=2"])
    message = str(err.value)
    assert message.startswith("model.und_aligner.dept: unknown key for aligner 'mlp_gelu'.")
    assert "Did you mean 'depth'?" in message
    assert "Valid keys: in_dim, out_dim, depth" in message


def test_wrong_value_type(toy):
    with pytest.raises(ConfigError, match=r"model\.und_aligner\.depth: expected int, got str 'two'"):
        ALIGNERS.build({"type": "mlp_gelu", "depth": "two", "in_dim": 4, "out_dim": 4}, where="model.und_aligner")
    with pytest.raises(ConfigError, match=r"x\.depth: expected int, got bool True"):
        toy.build({"type": "toy", "in_dim": 2, "depth": True}, where="x")
    with pytest.raises(ConfigError, match=r"x\.name: expected str, got int 5"):  # Optional[str]
        toy.build({"type": "toy", "in_dim": 2, "name": 5}, where="x")
    assert toy.build({"type": "toy", "in_dim": 2, "name": None}, where="x").in_features == 2


def test_missing_required_argument(toy):
    with pytest.raises(ConfigError, match=r"model\.slot\.in_dim: required by toy part 'toy' but not given"):
        toy.build({"type": "toy"}, where="model.slot")


def test_missing_type_and_non_mapping(toy):
    with pytest.raises(ConfigError, match=r"model\.slot: missing 'type'\. Choose a toy part: toy_linear"):
        toy.build({"in_dim": 2}, where="model.slot")
    with pytest.raises(ConfigError, match=r"model\.slot must be a mapping with a 'type' key, got 'toy'"):
        toy.build("toy", where="model.slot")


def test_duplicate_registration_raises(toy):
    with pytest.raises(ValueError, match="toy part 'toy_linear' is registered twice"):
        toy.register("toy_linear")(nn.Identity)
    with pytest.raises(ValueError, match="toy part 'toy' is registered twice"):  # an alias clashes too
        toy.register("other", aliases=("toy",))(nn.Identity)
    assert toy.names() == ["toy_linear"]


def test_inferred_values_fill_and_contradictions_give_both_numbers(toy):
    built = toy.build({"type": "toy"}, where="model.slot", inferred={"in_dim": 7, "unused": 1})
    assert built.in_features == 7
    assert toy.build({"type": "toy", "in_dim": 7}, where="model.slot", inferred={"in_dim": 7}).in_features == 7
    with pytest.raises(ConfigError) as err:
        toy.build({"type": "toy", "in_dim": 999}, where="model.slot", inferred={"in_dim": 7})
    assert "model.slot.in_dim = 999 contradicts the value 7" in str(err.value)


def test_aligner_width_contradiction_in_a_model():
    overrides = ["model.und_encoder.width=64", "model.und_aligner.in_dim=999"]
    with pytest.raises(ConfigError) as err:
        build_model("janus_tiny", overrides)
    message = str(err.value)
    assert message.startswith("model.und_aligner.in_dim = 999 contradicts the value 64")
    assert "remove the key to infer it" in message


def test_check_validates_without_building(toy):
    toy.check({"type": "toy"}, where="model.slot")  # required keys may still be inferred
    with pytest.raises(ConfigError, match=r"model\.slot\.depht: unknown key .* Did you mean 'depth'\?"):
        toy.check({"type": "toy", "depht": 1}, where="model.slot")
    with pytest.raises(ConfigError, match=r"model\.slot\.depth: expected int, got str 'two'"):
        toy.check({"type": "toy", "depth": "two"}, where="model.slot")


@pytest.fixture
def constructed(monkeypatch):
    """Record every SigLIP encoder and causal-LM backbone constructed while the test runs."""
    record = []
    for cls in (SigLIPEncoder, CausalLMBackbone):
        original = cls.__init__

        @functools.wraps(original)
        def recording(self, *args, __original=original, **kwargs):
            record.append(type(self).__name__)
            __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", recording)
    return record


def test_recorder_sees_construction(constructed):
    ENCODERS.build({"type": "siglip", "variant": None, "image_size": 16, "patch_size": 8, "width": 8,
                    "layers": 1, "heads": 1, "mlp_ratio": 1.0})
    assert constructed == ["SigLIPEncoder"]  # so the empty lists below really mean "nothing was built"


def test_bad_generator_key_is_caught_before_anything_is_built(constructed):
    with pytest.raises(ConfigError, match=r"model\.generator\.imag_size: .* Did you mean 'image_size'\?"):
        build_model("janus_tiny", ["model.generator.imag_size=32"])
    assert constructed == []


def test_unknown_generator_type_is_caught_before_anything_is_built(constructed):
    with pytest.raises(ConfigError, match=r"model\.generator\.type: unknown generation path 'vqq'\. Did you mean 'vq'"):
        build_model("janus_tiny", ["model.generator.type=vqq"])
    assert constructed == []


def test_check_slots_alone():
    model_cfg = to_plain(load_config("janus_tiny", ["model.und_aligner.dept=2"]).model)
    with pytest.raises(ConfigError, match=r"model\.und_aligner\.dept: .* Did you mean 'depth'\?"):
        check_slots(model_cfg)
    with pytest.raises(ConfigError, match=r"model\.backbone: missing 'type'\. Choose a backbone: .*llama"):
        check_slots({"backbone": {"hidden_size": 4}})


@pytest.mark.parametrize("override", ["model.und_aligner.depth=two", "model.generator.autoencoder.chh=32"])
def test_wrong_types_and_nested_keys_are_caught_before_anything_is_built(constructed, override):
    with pytest.raises(ConfigError):
        build_model("janus_tiny", [override])
    assert constructed == []


def test_did_you_mean_is_the_one_suggestion_helper():
    """One helper words every suggestion; nothing else in the package asks difflib for close matches."""
    from pathlib import Path

    import unimm
    from unimm.registry.errors import did_you_mean

    assert did_you_mean("depht", ["depth", "width"]) == " Did you mean 'depth'?"
    assert did_you_mean("zzz", ["depth", "width"]) == ""
    package = Path(unimm.__file__).parent
    callers = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
               if "get_close_matches" in p.read_text()]
    assert callers == ["registry/errors.py"]
