"""Each kind of part has one contract, and the library relies on it and nothing else.

* registries hold classes and check what they build against the kind's base class;
* a third generation path, written here against the contract alone, trains, samples, saves and loads inside the
  unified model with no change to the library;
* errors name the real config path of a part wherever it sits (nested towers, U-ViT blocks, heads);
* sampling options are declared by the path and checked before anything runs, from the API, ``sample:`` and CLI;
* the shared-VQ ablation really shares the generation path's tokenizer (one module), or keeps a copy when asked.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from torch import nn

import unimm
from unimm.cli import main as cli_main
from unimm.encoders.siglip import SigLIPEncoder
from unimm.generation.base import GenerationLoss, GenerationOutput, GenerationPath, SampleOption
from unimm.registry import ALIGNERS, ENCODERS, GENERATORS, ConfigError, InputError, Registry
from unimm.train.freeze import apply_stage

TIED = ["model.und_encoder=@parts/und_encoder/shared_vq_tied_tiny", "model.und_aligner=@parts/und_aligner/mlp_gelu",
        "model.generator=@parts/generator/vq_tiny"]


# -- registries hold classes and check the contract --------------------------------------------------------------
def test_registry_returns_the_class_so_a_shipped_part_can_be_subclassed():
    assert ENCODERS.get("siglip") is SigLIPEncoder

    class HalfTokens(SigLIPEncoder):
        """SigLIP keeping every other token."""

        @property
        def num_tokens(self) -> int:
            return super().num_tokens // 2

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            return super().forward(pixel_values)[:, ::2]

    registry = Registry("understanding encoder", contract="unimm.encoders.base:UnderstandingEncoder")
    registry.register("half")(HalfTokens)
    encoder = registry.build({"type": "half", "variant": None, "image_size": 16, "patch_size": 4, "width": 16,
                              "layers": 1, "heads": 2, "mlp_ratio": 2.0}, where="model.und_encoder")
    out = encoder(torch.zeros(1, 3, 16, 16))
    assert out.shape == (1, encoder.num_tokens, 16) == (1, 8, 16)


def test_a_part_that_breaks_its_contract_fails_naming_the_base_class():
    registry = Registry("aligner", contract="unimm.aligners.base:Aligner")
    registry.register("plain_linear")(lambda in_dim, out_dim: nn.Linear(in_dim, out_dim))
    with pytest.raises(ConfigError, match=r"model.und_aligner.type: aligner 'plain_linear' is a Linear, which does "
                                          r"not meet the aligner contract; make it a subclass of unimm.aligners.base.Aligner"):
        registry.build({"type": "plain_linear", "in_dim": 2, "out_dim": 3}, where="model.und_aligner")
    registry.register("linear_class")(nn.Linear)  # a class is refused before it is built, and by check()
    with pytest.raises(ConfigError, match=r"aligner 'linear_class' is a Linear, which does not meet"):
        registry.check({"type": "linear_class", "in_features": 2}, where="model.und_aligner")


# -- a third generation path, from the contract alone ------------------------------------------------------------
class PixelRegressionPath(GenerationPath):
    """A deliberately simple generation path: one linear read-out of the prompt's last hidden state to pixels.

    Args:
        hidden_size: LLM width (inferred).
        image_size: side of the generated images.
        scale: multiplies the output before the tanh (a sampling option, to show declared options).
    """

    sample_options: ClassVar[dict[str, SampleOption]] = {
        "scale": SampleOption(float, 1.0, min=0.0, help="output scale before tanh"),
    }
    frozen_children = ()

    def __init__(self, hidden_size: int, image_size: int = 4):
        super().__init__()
        self.image_size, self.num_image_tokens = image_size, 1
        self.readout = nn.Linear(hidden_size, 3 * image_size * image_size)

    def _pixels(self, backbone, embeds, mask, scale: float = 1.0) -> torch.Tensor:
        from unimm.backbones.base import positions_from_mask

        hidden = backbone(embeds, attention_mask=mask, position_ids=positions_from_mask(mask)).hidden_states
        out = torch.tanh(scale * self.readout(hidden[:, -1]))
        return out.view(-1, 3, self.image_size, self.image_size)

    def sample(self, backbone, prompt_ids, prompt_mask, *, pad_id, generator=None, progress=False, keep_steps=False,
               scale: float = 1.0) -> GenerationOutput:
        self.check_prompt(prompt_ids, prompt_mask)
        images = self._pixels(backbone, backbone.embed(prompt_ids), prompt_mask, scale)
        return GenerationOutput(images, images)

    def loss(self, backbone, prompt_embeds, prompt_mask, images, *, und_features=None, generator=None,
             prompt_positions=None):
        self.check_prompt(prompt_embeds, prompt_mask, prompt_positions)
        mse = nn.functional.mse_loss(self._pixels(backbone, prompt_embeds, prompt_mask), images)
        return GenerationLoss(mse, {"mse": mse.detach()})

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


@pytest.fixture
def pixel_path_registered():
    GENERATORS.register("pixel_regression_test")(PixelRegressionPath)
    yield
    GENERATORS._builders.pop("pixel_regression_test")


def test_a_new_generation_path_needs_no_change_to_the_library(pixel_path_registered, tmp_path):
    overrides = ["model.generator.type=pixel_regression_test", "model.generator.image_size=4"]
    model = unimm.build_model("janus_tiny", overrides)
    cfg = unimm.load_config("janus_tiny", overrides)
    processor = unimm.build_processor(cfg, model)
    ids, mask = processor.generation_prompts(["a red circle", "a blue square above"])
    images = torch.rand(2, 3, 4, 4) * 2 - 1
    loss = model.generation_loss(ids, mask, images)
    loss.loss.backward()
    assert model.generator.readout.weight.grad is not None and "mse" in loss.parts
    trained = apply_stage(model, {"name": "gen", "trainable": ["generator"]})
    assert trained == ["generator.readout.weight", "generator.readout.bias"]
    out = model.generate_images(ids, mask, pad_id=processor.pad_id, scale=2.0)
    assert out.shape == (2, 3, 4, 4)
    with pytest.raises(InputError, match=r"guidance: the PixelRegressionPath does not take this sampling option.*"
                                         r"Its options: scale"):
        model.generate_images(ids, mask, pad_id=processor.pad_id, guidance=3.0)
    unimm.save_pretrained(model, processor, cfg, tmp_path / "m")
    loaded, _, _ = unimm.load_pretrained(tmp_path / "m")
    assert torch.equal(loaded.generator.readout.weight, model.generator.readout.weight)


# -- errors name the real config path ----------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["model.und_encoder=@parts/und_encoder/sam_siglip_tiny", "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu",
      "model.und_encoder.low.widht=16"],
     r"model\.und_encoder\.low\.widht: unknown key for SigLIP tower\. Did you mean 'width'\?"),
    (["model.und_encoder=@parts/und_encoder/sam_siglip_tiny", "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu",
      "model.und_encoder.high.image_size=60"],
     r"model\.und_encoder\.high: SAM image_size 60 is not a multiple of patch_size"),
    (["model.generator=@parts/generator/flow_tiny", "model.generator.encoder.strides=2"],
     r"model\.generator\.encoder\.strides: unknown key for ShallowUViTEncoder\. Did you mean 'stride'\?"),
    (["model.generator=@parts/generator/flow_tiny", "model.generator.image_size=15"],
     r"model\.generator\.image_size = 15 is not divisible by the VAE's downsampling"),
    (["model.generator.head.codebok_size=3"],
     r"model\.generator\.head\.codebok_size: unknown key for head 'vq_image_head'\. Did you mean 'codebook_size'\?"),
    (["model.generator.autoencoder.type=siglip"],
     r"model\.generator\.autoencoder\.type: unknown image autoencoder 'siglip'"),
], ids=["hybrid-low-tower", "hybrid-high-tower", "uvit-encoder", "flow-size", "vq-head", "vq-autoencoder"])
def test_errors_name_the_part_where_it_sits(overrides, message):
    with pytest.raises(ConfigError, match=message):
        with torch.device("meta"):
            unimm.build_model("janus_tiny", overrides)


def test_nested_slots_are_checked_before_anything_is_built(monkeypatch):
    built = []
    monkeypatch.setattr(SigLIPEncoder, "__init__", lambda *a, **k: built.append(1) or None)
    with pytest.raises(ConfigError, match=r"model\.generator\.aligner\.dept: unknown key"):
        unimm.build_model("janus_tiny", ["model.generator.aligner.dept=2"])
    assert not built


# -- declared sampling options ------------------------------------------------------------------------------------
def test_sample_options_are_declared_with_types_and_ranges():
    from unimm.generation.flow_path import RectifiedFlowPath
    from unimm.generation.vq_path import VQGenerationPath

    assert set(VQGenerationPath.sample_options) == {"guidance", "temperature", "top_k", "top_p", "compile"}
    assert set(RectifiedFlowPath.sample_options) == {"guidance", "num_steps"}
    assert VQGenerationPath.check_sample_options({"guidance": 3, "top_k": None}) == {"guidance": 3.0, "top_k": None}
    for options, message in [({"num_steps": 3}, r"num_steps: .*Its options: compile, guidance, temperature, top_k, "
                                                "top_p"),
                             ({"guidance": -1.0}, r"guidance = -1.0: must be >= 0.0"),
                             ({"top_p": 0.0}, r"top_p = 0.0: must be > 0.0"),
                             ({"top_k": 2.5}, r"top_k: expected int, got float"),
                             ({"temperature": True}, r"temperature: expected float, got bool")]:
        with pytest.raises(InputError, match=message):
            VQGenerationPath.check_sample_options(options)
    with pytest.raises(InputError, match=r"sample\.num_step: .*Did you mean 'num_steps'"):
        RectifiedFlowPath.check_sample_options({"num_step": 3}, where="sample.")


def test_a_config_sample_section_is_checked_at_build():
    with pytest.raises(InputError, match=r"sample\.steps: the VQGenerationPath does not take this sampling option"):
        with torch.device("meta"):
            unimm.build_model("janus_tiny", ["sample.steps=3"])


@pytest.mark.parametrize("flags, message", [
    (["--steps", "3"], "unimm: error: --steps: the VQGenerationPath does not take this option; its flags: --guidance, "
                       "--temperature, --top-k, --top-p"),
    (["--guidance", "-1"], "unimm: error: --guidance = -1.0: must be >= 0.0 (classifier-free guidance weight"),
    (["--top-p", "1.5"], "unimm: error: --top-p = 1.5: must be <= 1.0 (sample within the top-p probability mass)"),
])
def test_cli_sampling_flags_are_checked_against_the_path(flags, message, capsys, tmp_path):
    code = cli_main(["generate", "--prompt", "a red circle", "--num-images", "1", "--out", str(tmp_path), *flags])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


# -- the shared-VQ ablation shares one tokenizer -------------------------------------------------------------------
def test_shared_vq_without_an_autoencoder_shares_the_generation_tokenizer(tmp_path):
    cfg = unimm.load_config("janus_tiny", TIED)
    model = unimm.build_model(cfg)
    assert model.und_encoder.tokenizer is model.generator.autoencoder
    own = unimm.build_model("janus_tiny", [*TIED[:1], "model.und_encoder=@parts/und_encoder/shared_vq_tiny", *TIED[1:]])
    assert own.und_encoder.tokenizer is not own.generator.autoencoder
    names = apply_stage(model, {"name": "s", "trainable": ["und_encoder", "generator"]})
    assert not any(".tokenizer." in n or ".autoencoder." in n for n in names)

    processor = unimm.build_processor(cfg, model)
    with torch.no_grad():
        model.generator.autoencoder.quantize.embedding.weight.normal_()
    unimm.save_pretrained(model, processor, cfg, tmp_path / "tied")
    loaded, _, _ = unimm.load_pretrained(tmp_path / "tied")
    assert loaded.und_encoder.tokenizer is loaded.generator.autoencoder
    assert torch.equal(loaded.und_encoder.tokenizer.quantize.embedding.weight,
                       model.generator.autoencoder.quantize.embedding.weight)


def test_shared_vq_needs_a_discrete_generation_tokenizer_to_share():
    with pytest.raises(ConfigError, match=r"model\.und_encoder\.autoencoder: .*has no codebook"):
        unimm.build_model("janus_tiny", [*TIED[:2], "model.generator=@parts/generator/flow_tiny"])
    with pytest.raises(ConfigError, match=r"model\.und_encoder\.autoencoder: the encoder shares .* no generation path"):
        unimm.build_model("janus_tiny", [*TIED[:2], "model.generator=null"])


def test_aligner_contract_pairs_encoders_and_aligners():
    assert ALIGNERS.get("low_high_hybrid_split_mlp_gelu").input_form == "pair"
    assert ENCODERS.get("sam_siglip").output_form == "pair"
    assert ENCODERS.get("siglip").output_form == ALIGNERS.get("mlp_gelu")(2, 2).input_form == "sequence"


def test_a_part_reports_errors_under_the_path_it_is_built_at():
    with pytest.raises(ConfigError, match=r"^towers\.left\.model_name: timm has no model 'vit_tinny_patch16_224'"):
        ENCODERS.build({"type": "timm", "model_name": "vit_tinny_patch16_224"}, where="towers.left")
    with pytest.raises(ConfigError, match=r"^towers\.right: image_size 30 is not a multiple of patch_size 8"):
        ENCODERS.build({"type": "siglip", "variant": None, "image_size": 30, "patch_size": 8, "width": 16,
                        "layers": 1, "heads": 2, "mlp_ratio": 2.0}, where="towers.right")
