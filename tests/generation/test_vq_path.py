"""The Janus VQ generation path: classifier-free-guided sampling against the reference, the training loss,
left-padded batches, the converter and the full-size shapes."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import golden_cases

from unimm.backbones.causal_lm import llama
from unimm.checkpoint.io import load_weights
from unimm.generation.base import GenerationLoss
from unimm.generation.base import GenerationOutput
from unimm.generation.vq_path import VQGenerationPath, convert_janus_gen, janus_generator_config
from unimm.registry import GENERATORS, CheckpointError, ConfigError, InputError

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "official"
GEN_PREFIXES = ("gen_vision_model.", "gen_embed.", "gen_aligner.", "gen_head.")


JANUS_CASES = golden_cases("janus")
OFFICIAL_VQ = [
    pytest.param(p.parent, id=p.parent.name)
    for p in sorted(OFFICIAL.glob("*/config.json"))
    if json.loads(p.read_text()).get("gen_vision_config", {}).get("cls") == "VQ-16"
]


def pad_id(folder: Path) -> int:
    tag = json.loads((folder / "processor_config.json").read_text())["pad_tag"]
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in added if t["content"] == tag)


@functools.lru_cache(maxsize=None)
def build_case(folder: Path) -> tuple[nn.Module, VQGenerationPath]:
    """Backbone and VQ path of a golden Janus case, with the released weights loaded strictly."""
    config = json.loads((folder / "config.json").read_text())
    cases = json.loads((folder / "cases.json").read_text())
    state = load_weights(folder)
    # llama() fixes model_type itself and (for now) rejects it as a duplicate argument
    language = {k: v for k, v in config["language_config"].items() if k != "model_type"}
    backbone = llama(**language).eval()
    lm = {"lm." + k[len("language_model.") :]: v for k, v in state.items() if k.startswith("language_model.")}
    backbone.load_state_dict(lm, strict=True)
    path = GENERATORS.build(
        janus_generator_config(config, image_size=cases["settings"]["gen_size"]),
        where="model.generator",
        inferred={"hidden_size": backbone.hidden_size},
    ).eval()
    path.load_state_dict(convert_janus_gen({k: v for k, v in state.items() if k.startswith(GEN_PREFIXES)}), strict=True)
    assert path.num_image_tokens == cases["t2i_image_tokens"]
    return backbone, path


@pytest.mark.parity
@pytest.mark.parametrize("folder", JANUS_CASES, )
def test_guided_sampling_matches_reference(folder: Path):
    cases = json.loads((folder / "cases.json").read_text())
    golden = load_file(folder / "cases.safetensors")
    backbone, path = build_case(folder)
    prompt_ids = golden["t2i.tokens"][0::2]
    mask = torch.ones_like(prompt_ids)
    assert torch.equal(path.unconditional_prompt(prompt_ids, mask, pad_id(folder))[0], golden["t2i.tokens"][1::2])
    out = path.sample(
        backbone, prompt_ids, mask, pad_id=pad_id(folder), guidance=cases["t2i_cfg_weight"], temperature=0,
        keep_steps=True,
    )
    assert isinstance(out, GenerationOutput)
    torch.testing.assert_close(out.steps["logits"], golden["t2i.cfg_logits"], rtol=1e-4, atol=1e-4)
    assert torch.equal(out.latents, golden["t2i.generated"])
    torch.testing.assert_close(out.images, golden["t2i.decoded"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(path.decode_latents(out.latents), golden["t2i.decoded"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("folder", JANUS_CASES, )
def test_left_padded_batch_matches_single_prompts(folder: Path):
    backbone, path = build_case(folder)
    pad = pad_id(folder)
    long_prompt = load_file(folder / "cases.safetensors")["t2i.tokens"][0]
    short_prompt = torch.cat([long_prompt[:2], long_prompt[-4:]])  # <bos> <|User|> ... <begin_of_image>
    alone = [
        path.sample(backbone, p[None], torch.ones(1, len(p), dtype=torch.long), pad_id=pad, guidance=3.0,
                    temperature=0, keep_steps=True)
        for p in (long_prompt, short_prompt)
    ]
    ids = torch.full((2, len(long_prompt)), pad)
    mask = torch.zeros_like(ids)
    ids[0], mask[0] = long_prompt, 1
    ids[1, -len(short_prompt) :], mask[1, -len(short_prompt) :] = short_prompt, 1
    uncond, uncond_mask = path.unconditional_prompt(ids, mask, pad)
    assert torch.equal(uncond_mask, mask)  # Janus still attends to the padded text
    expected_uncond = torch.tensor([short_prompt[0]] + [pad] * 4 + [short_prompt[-1]])
    assert torch.equal(uncond[1, -len(short_prompt) :], expected_uncond)
    batched = path.sample(backbone, ids, mask, pad_id=pad, guidance=3.0, temperature=0, keep_steps=True)
    assert not torch.equal(alone[0].latents, alone[1].latents)  # the two prompts really differ
    for row, single in enumerate(alone):
        assert torch.equal(batched.latents[row], single.latents[0])
        torch.testing.assert_close(batched.steps["logits"][row], single.steps["logits"][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("folder", JANUS_CASES, )
def test_sampling_with_temperature_is_seeded(folder: Path):
    backbone, path = build_case(folder)
    prompt = load_file(folder / "cases.safetensors")["t2i.tokens"][:1]
    mask = torch.ones_like(prompt)

    def draw(seed: int) -> torch.Tensor:
        out = path.sample(backbone, prompt, mask, pad_id=pad_id(folder), temperature=1.0, top_k=20, top_p=0.9,
                          generator=torch.Generator().manual_seed(seed), keep_steps=True)
        assert out.images.shape == (1, 3, path.image_size, path.image_size)
        return out.latents

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def _tiny_path(hidden: int = 32) -> tuple[nn.Module, VQGenerationPath]:
    torch.manual_seed(0)
    backbone = llama(hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, vocab_size=50)
    path = GENERATORS.build({
        "type": "vq",
        "autoencoder": {"type": "llamagen_vq", "ch": 32, "ch_mult": [1, 2], "z_channels": 32, "codebook_size": 16,
                        "codebook_embed_dim": 4},
        "aligner": {"type": "mlp_gelu", "depth": 2},
        "head": {"type": "vq_image_head"},
        "image_size": 8,
    }, where="model.generator", inferred={"hidden_size": hidden})
    return backbone, path


def test_loss_trains_embed_aligner_head_and_not_the_tokenizer():
    backbone, path = _tiny_path()
    path.train()
    assert path.head.training and not path.autoencoder.training  # the frozen tokenizer stays in eval mode
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    ids = torch.randint(3, 50, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = path.loss(backbone, backbone.embed(ids), mask, images)
    assert isinstance(out, GenerationLoss) and set(out.parts) == {"ce"}
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert not out.parts["ce"].requires_grad
    out.loss.backward()
    for name in ("embed", "aligner", "head"):
        grads = [p.grad for p in getattr(path, name).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None and not p.requires_grad for p in path.autoencoder.parameters())
    assert backbone.lm.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_loss_is_next_code_cross_entropy():
    """Teacher forcing by hand: position L-1 predicts code 0, image position i predicts code i+1."""
    backbone, path = _tiny_path()
    images = torch.rand(1, 3, 8, 8) * 2 - 1
    ids = torch.randint(3, 50, (1, 4))
    codes = path.encode_images(images)
    assert codes.shape == (1, path.num_image_tokens)
    with torch.no_grad():
        total, seq = 0.0, backbone.embed(ids)
        for i in range(codes.shape[1]):  # run the growing sequence with no cache: one prediction per code
            logits = path.head(backbone(seq).hidden_states[:, -1])
            total += torch.nn.functional.cross_entropy(logits, codes[:, i])
            seq = torch.cat([seq, path.embed_codes(codes[:, i : i + 1])], dim=1)
        expected = total / codes.shape[1]
        got = path.loss(backbone, backbone.embed(ids), torch.ones_like(ids), images).loss
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_converter_maps_every_released_prefix():
    backbone, path = _tiny_path()
    ours = path.state_dict()
    released = {}
    for key, value in ours.items():
        part, rest = key.split(".", 1)
        if part == "autoencoder":
            continue
        released[{"embed": "gen_embed", "aligner": "gen_aligner", "head": "gen_head"}[part] + "." + rest] = value
    from unimm.generation.vq_tokenizer import to_janus_vq

    autoencoder = {k[len("autoencoder.") :]: v for k, v in ours.items() if k.startswith("autoencoder.")}
    released.update({"gen_vision_model." + k: v for k, v in to_janus_vq(autoencoder).items()})
    assert "gen_head.output_mlp_projector.weight" in released and "gen_aligner.layers.2.bias" in released
    converted = convert_janus_gen(released)
    assert set(converted) == set(ours)
    with pytest.raises(CheckpointError, match="1 key.*language_model.model.norm.weight"):
        convert_janus_gen({**released, "language_model.model.norm.weight": torch.zeros(1)})


@pytest.mark.parametrize("folder", OFFICIAL_VQ)
def test_full_size_meta_shapes_match_release(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())["state_dict"]
    released = {k: torch.empty(s, device="meta") for k, s in manifest.items() if k.startswith(GEN_PREFIXES)}
    with torch.device("meta"):
        path = GENERATORS.build(janus_generator_config(config), where="model.generator",
                                inferred={"hidden_size": config["language_config"]["hidden_size"]})
    assert path.num_image_tokens == 576
    ours = {k: tuple(v.shape) for k, v in path.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in convert_janus_gen(released).items()} == ours


def test_input_errors():
    backbone, path = _tiny_path()
    ids = torch.randint(3, 50, (1, 4))
    with pytest.raises(InputError, match="pad batches on the left"):
        path.sample(backbone, ids, torch.tensor([[1, 1, 1, 0]]), pad_id=0, temperature=0)
    with pytest.raises(InputError, match=r"prompt_mask must be \(B, L\)"):
        path.sample(backbone, ids, torch.ones(1, 3), pad_id=0, temperature=0)
    with pytest.raises(InputError, match="2 images for 1 prompts"):
        path.loss(backbone, backbone.embed(ids), torch.ones_like(ids), torch.zeros(2, 3, 8, 8))
    with pytest.raises(InputError, match="temperature must be >= 0"):
        path.sample(backbone, ids, torch.ones_like(ids), pad_id=0, temperature=-1)


def test_config_contradictions_name_both_numbers():
    with pytest.raises(ConfigError, match=r"model.generator.head.codebook_size = 10 contradicts the value 16"):
        GENERATORS.build({
            "type": "vq",
            "autoencoder": {"type": "llamagen_vq", "ch": 32, "ch_mult": [1, 2], "z_channels": 32, "codebook_size": 16,
                            "codebook_embed_dim": 4},
            "aligner": {"type": "mlp_gelu"}, "head": {"type": "vq_image_head", "codebook_size": 10}, "image_size": 8,
        }, where="model.generator", inferred={"hidden_size": 32})
    with pytest.raises(ConfigError, match="model.generator.autoencoder.type: unknown image autoencoder 'llamagen'"):
        GENERATORS.build({"type": "vq", "autoencoder": {"type": "llamagen"}, "aligner": {"type": "mlp_gelu"},
                          "head": {"type": "vq_image_head"}}, where="model.generator", inferred={"hidden_size": 32})
