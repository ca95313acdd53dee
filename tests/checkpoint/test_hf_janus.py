"""transformers' Janus layout: the name rules both ways, config.json refusals, ``unimm convert --to hf`` refusals,
and the round trip released folder -> unimm -> transformers -> unimm with identical weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import unimm
from conftest import GOLDEN, OFFICIAL
from unimm.checkpoint.hf_janus import RULES, config_from_hf, from_hf, hf_config, to_hf
from unimm.cli import main
from unimm.registry import CheckpointError

JANUS = GOLDEN / "janus_tiny"
GEN_16 = "model.generator.image_size=16"  # the tiny model's understanding grid (4x4) times the VQ's downsampling


# -- the rule table ----------------------------------------------------------------------------------------------
def test_every_rule_maps_both_ways_with_the_names_transformers_uses():
    """One name per rule, with its transformers name written out by hand (from JanusForConditionalGeneration)."""
    qkv = torch.arange(12.0).view(6, 2)
    unimm_state = {
        "und_encoder.vit.patch_embed.proj.weight": torch.zeros(1),
        "und_encoder.vit.pos_embed": torch.arange(6.0).view(1, 3, 2),
        "und_encoder.vit.blocks.1.norm1.bias": torch.zeros(1),
        "und_encoder.vit.blocks.1.norm2.weight": torch.zeros(1),
        "und_encoder.vit.blocks.1.attn.qkv.weight": qkv,
        "und_encoder.vit.blocks.1.attn.proj.bias": torch.zeros(1),
        "und_encoder.vit.blocks.1.mlp.fc2.weight": torch.zeros(1),
        "und_encoder.vit.norm.weight": torch.zeros(1),
        "und_aligner.layers.0.weight": torch.zeros(1),
        "und_aligner.layers.4.bias": torch.zeros(1),
        "generator.autoencoder.decoder.up.0.block.2.conv1.weight": torch.zeros(1),
        "generator.autoencoder.decoder.up.2.upsample.conv.bias": torch.zeros(1),
        "generator.autoencoder.decoder.mid.attn_1.q.weight": torch.zeros(1),
        "generator.autoencoder.encoder.down.1.block.0.nin_shortcut.weight": torch.zeros(1),
        "generator.autoencoder.quantize.embedding.weight": torch.zeros(1),
        "generator.embed.weight": torch.zeros(1),
        "generator.aligner.layers.2.weight": torch.zeros(1),
        "generator.head.output_mlp_projector.bias": torch.zeros(1),
        "generator.head.vision_head.weight": torch.zeros(1),
        "backbone.lm.model.layers.0.self_attn.o_proj.weight": torch.zeros(1),
        "backbone.lm.lm_head.weight": torch.zeros(1),
    }
    hf = to_hf(unimm_state)
    assert sorted(hf) == sorted([
        "model.vision_model.embeddings.patch_embedding.weight",
        "model.vision_model.embeddings.position_embedding.weight",
        "model.vision_model.encoder.layers.1.layer_norm1.bias",
        "model.vision_model.encoder.layers.1.layer_norm2.weight",
        "model.vision_model.encoder.layers.1.self_attn.q_proj.weight",
        "model.vision_model.encoder.layers.1.self_attn.k_proj.weight",
        "model.vision_model.encoder.layers.1.self_attn.v_proj.weight",
        "model.vision_model.encoder.layers.1.self_attn.projection_layer.bias",
        "model.vision_model.encoder.layers.1.mlp.fc2.weight",
        "model.vision_model.post_layernorm.weight",
        "model.aligner.fc1.weight",
        "model.aligner.hidden_layers.1.bias",
        "model.vqmodel.decoder.up.2.block.2.conv1.weight",  # three levels: taming's up.0 is transformers' up.2
        "model.vqmodel.decoder.up.0.upsample.conv.bias",
        "model.vqmodel.decoder.mid.attn_1.q.weight",
        "model.vqmodel.encoder.down.1.block.0.nin_shortcut.weight",
        "model.vqmodel.quantize.embedding.weight",
        "model.generation_embeddings.weight",
        "model.generation_aligner.hidden_layers.0.weight",
        "model.generation_head.proj_out.bias",
        "model.generation_head.vision_head.weight",
        "model.language_model.layers.0.self_attn.o_proj.weight",
        "lm_head.weight",
    ])
    assert torch.equal(hf["model.vision_model.encoder.layers.1.self_attn.k_proj.weight"], qkv[2:4])
    assert hf["model.vision_model.embeddings.position_embedding.weight"].shape == (3, 2)
    back = from_hf(hf)
    assert sorted(back) == sorted(unimm_state)
    assert all(torch.equal(back[k], unimm_state[k]) for k in unimm_state)
    assert {rule.unimm for rule in RULES} <= {_rule_of(k) for k in unimm_state}  # every rule was exercised


def _rule_of(key: str) -> str:
    from unimm.checkpoint.hf_janus import _COMPILED

    return next(rule.unimm for rule, pattern, _ in _COMPILED if pattern.fullmatch(key))


def test_attention_pool_is_dropped_and_strays_are_refused():
    assert to_hf({"und_encoder.vit.attn_pool.latent": torch.zeros(1)}) == {}
    with pytest.raises(CheckpointError, match=r"1 unimm key\(s\) have no place .*'und_start_embed'"):
        to_hf({"und_start_embed": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"belong to no part unimm builds: \['model.vision_model.head.w'\]"):
        from_hf({"model.vision_model.head.w": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"only the \['k', 'q'\] projections of q, k, v"):
        from_hf({f"model.vision_model.encoder.layers.0.self_attn.{p}_proj.weight": torch.zeros(1) for p in "qk"})


# -- config.json -------------------------------------------------------------------------------------------------
def hf_config_json(**changes):
    config = {"model_type": "janus", "image_token_id": 421, "tie_word_embeddings": False,
              "text_config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176,
                              "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 427},
              "vision_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "image_size": 64, "patch_size": 16, "projection_dim": 64, "num_image_tokens": 16},
              "vq_config": {"embed_dim": 8, "num_embeddings": 64, "latent_channels": 32, "base_channels": 32,
                            "channel_multiplier": [1, 1, 2], "projection_dim": 64, "image_token_embed_dim": 64}}
    for path, value in changes.items():
        section, key = path.split("__")
        config[section][key] = value
    return config


def test_config_maps_every_width():
    model = config_from_hf(hf_config_json())
    assert model["und_encoder"] | {} == {
        "type": "siglip", "variant": None, "image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "heads": 4,
        "mlp_ratio": 4.0, "attention_pool": False, "image_processor": "transformers"}
    assert model["und_aligner"] == {"type": "mlp_gelu", "depth": 2}
    assert model["generator"]["autoencoder"] == {"type": "llamagen_vq", "ch": 32, "ch_mult": [1, 1, 2],
                                                 "z_channels": 32, "num_res_blocks": 2, "codebook_size": 64,
                                                 "codebook_embed_dim": 8}
    assert model["generator"]["image_size"] == 16  # a 4x4 code grid, 4 pixels a code
    assert model["backbone"]["hidden_size"] == 64 and model["backbone"]["tie_word_embeddings"] is False


@pytest.mark.parametrize("change, message", [
    ({"text_config__model_type": "qwen2"}, "config.json text_config.model_type = 'qwen2': transformers' Janus layout "
                                           "is read with a Llama backbone only"),
    ({"vision_config__use_qk_norm": True}, "config.json vision_config.use_qk_norm = True: unimm builds only False"),
    ({"vq_config__double_latent": True}, "config.json vq_config.double_latent = True: unimm builds only False"),
    ({"vision_config__num_image_tokens": 576}, "vision_config.num_image_tokens = 576: transformers decodes a 4x4 grid"),
    ({"vq_config__projection_dim": 32}, "config.json vq_config.projection_dim = 32: must equal "
                                        "text_config.hidden_size = 64"),
    ({"vision_config__hidden_act": "relu"}, "config.json vision_config.hidden_act = 'relu': unimm builds only 'gelu'"),
])
def test_config_fields_unimm_cannot_build_are_named(change, message):
    with pytest.raises(CheckpointError) as err:
        config_from_hf(hf_config_json(**change))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_folder_is_one_line_from_the_cli(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(hf_config_json(text_config__model_type="qwen2")))
    assert main(["convert", str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "text_config.model_type = 'qwen2'" in err and "Traceback" not in err


# -- convert --to hf: refusals -----------------------------------------------------------------------------------
@pytest.mark.parametrize("src, overrides, message", [
    (GOLDEN / "janusflow_tiny", [], "--to hf: model.generator cannot be written in transformers' Janus layout: it is "
                                    "RectifiedFlowPath; transformers' Janus generates with the VQ path only"),
    (JANUS, [], "model.generator.image_size cannot be written in transformers' Janus layout: 64 gives a 16x16 code "
                "grid, but transformers decodes the understanding grid (4x4); convert with --override "
                "model.generator.image_size=16"),
    (JANUS, [GEN_16, "processor.system_prompt=Be brief."], "processor.system_prompt cannot be written in "
                                                           "transformers' Janus layout: JanusProcessor adds its "
                                                           "default system prompt or none"),
])
def test_convert_refuses_parts_transformers_cannot_hold(tmp_path, capsys, src, overrides, message):
    argv = ["convert", str(src), str(tmp_path / "out"), "--to", "hf"]
    assert main(argv + [x for o in overrides for x in ("--override", o)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("overrides, message", [
    (["model.backbone=@parts/backbone/qwen2_tiny"], "model.backbone cannot be written in transformers' Janus layout: "
                                                    "it is a qwen2 model"),
    (["model.und_encoder=@parts/und_encoder/sam_siglip_tiny", "model.und_aligner=@parts/und_aligner/"
      "hybrid_split_mlp_gelu"], "model.und_encoder cannot be written in transformers' Janus layout: it is a "
                                "HybridEncoder; transformers' JanusVisionModel is a SigLIP ViT"),
    (["model.und_aligner.type=linear", "model.generator.image_size=8"],
     r"model.und_aligner cannot be written in transformers' Janus layout: it is a bare Linear \(type linear\); "
     r"transformers holds Linear \+ \(GELU, Linear\) stacks: use type mlp_gelu"),
    (["model.generator.head.embed_dim=32"], "model.generator.head cannot be written in transformers' Janus layout: "
                                            "transformers' image head has the language model's width inside"),
])
def test_other_backbones_and_encoders_are_refused(overrides, message):
    from unimm.build import build_model, build_processor
    from unimm.config import load_config

    cfg = load_config("janus_tiny", overrides)
    model = build_model(cfg)
    with pytest.raises(CheckpointError, match=message):
        hf_config(model, build_processor(cfg, model).image_id)


# -- (e) round trip ----------------------------------------------------------------------------------------------
@torch.no_grad()
def test_released_to_unimm_to_transformers_to_unimm_keeps_every_weight(tmp_path, capsys):
    from transformers import JanusForConditionalGeneration, JanusProcessor

    released, _, _ = unimm.load_pretrained(JANUS, overrides=[GEN_16])
    dst = tmp_path / "hf"
    assert main(["convert", str(JANUS), str(dst), "--to", "hf", "--override", GEN_16]) == 0
    assert capsys.readouterr().out.strip() == str(dst)

    hf, info = JanusForConditionalGeneration.from_pretrained(str(dst), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf_processor = JanusProcessor.from_pretrained(str(dst))
    assert hf_processor.num_image_tokens == 16 and hf_processor.image_token == "<image_placeholder>"
    # transformers, running the converted weights, gives the released reference's own logits (golden case)
    golden = load_file(str(JANUS / "cases.safetensors"))
    logits = hf(input_ids=golden["und.input_ids"], attention_mask=golden["und.attention_mask"],
                pixel_values=golden["und.pixel_values"][:, 0]).logits
    torch.testing.assert_close(logits, golden["und.logits"], atol=1e-4, rtol=1e-4)

    again, processor, cfg = unimm.load_pretrained(dst)
    before = {k: v for k, v in released.state_dict().items() if ".attn_pool." not in k}  # transformers has no pool
    after = again.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert cfg.model.und_encoder.image_processor == "transformers"
    assert processor.roles == ("<|User|>", "<|Assistant|>") and processor.system_prompt  # the default one

    # ... and on to unimm's own format, which keeps the transformers-layout settings
    assert main(["convert", str(dst), str(tmp_path / "unimm")]) == 0
    saved, saved_processor, saved_cfg = unimm.load_pretrained(tmp_path / "unimm")
    assert all(torch.equal(saved.state_dict()[k], before[k]) for k in before)
    assert saved_cfg.model.und_encoder.image_processor == "transformers"
    assert saved_processor.settings() == processor.settings()


def test_the_written_chat_template_is_the_processors_format(tmp_path):
    """The template ``--to hf`` writes renders a multi-turn conversation (image, answer, follow-up) as unimm's
    processor formats it."""
    from transformers import JanusProcessor

    from unimm.checkpoint.hf_janus import save_hf

    model, processor, _ = unimm.load_pretrained(JANUS, overrides=[GEN_16])
    hf = JanusProcessor.from_pretrained(str(save_hf(model, processor, tmp_path / "hf")))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A square."}]},
                {"role": "user", "content": [{"type": "text", "text": "Which colour?"}]}]
    turns = [{"role": "user", "content": "<image_placeholder>\nWhat is it?"},
             {"role": "assistant", "content": "A square."},
             {"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": ""}]
    text, _ = processor.format_conversation(turns, system_prompt="")
    assert hf.apply_chat_template(messages, add_generation_prompt=True) == text
    assert text.count("<｜end▁of▁sentence｜>") == 1 and text.endswith("Which colour?\n\n<|Assistant|>:")


def test_convert_does_not_write_over_a_unimm_folder(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: {}\n")
    assert main(["convert", str(JANUS), str(tmp_path), "--to", "hf", "--override", GEN_16]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a unimm model (config.yaml)" in err
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize("name", ["Janus-1.3B", "Janus-Pro-1B", "Janus-Pro-7B"])
def test_full_size_released_models_fit_transformers_janus(name):
    """On the meta device: a released model, built by unimm, gives transformers' JanusConfig fields whose model has
    exactly the converted names and shapes; Janus-Pro-1B's vision and VQ sizes are JanusConfig's own defaults."""
    from transformers import JanusConfig, JanusForConditionalGeneration

    from unimm.checkpoint.released import config_from_released

    released = json.loads((OFFICIAL / name / "config.json").read_text())
    with torch.device("meta"):
        model = unimm.build_model(config_from_released(released))
        fields = hf_config(model, image_token_id=100581)
        hf = JanusForConditionalGeneration(JanusConfig(**fields))
    expected = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in to_hf(model.state_dict()).items()}
    assert got == expected
    if name == "Janus-Pro-1B":
        defaults = JanusConfig().to_dict()
        for section in ("vision_config", "vq_config"):
            ours = JanusConfig(**fields).to_dict()[section]
            assert {k: ours[k] for k in fields[section]} == {k: defaults[section][k] for k in fields[section]}
