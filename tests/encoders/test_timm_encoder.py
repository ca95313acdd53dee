"""The timm understanding encoder: a plain ViT, a ViT with register tokens and a CNN (tiny, random weights, no
download) as Janus's understanding encoder; token counts, weights from local files and folders, every user error."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import unimm
from unimm.encoders.base import UnderstandingEncoder
from unimm.encoders.timm_encoder import TimmEncoder
from unimm.registry import ENCODERS, CheckpointError, ConfigError, InputError

VIT_ARGS = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
CONVNEXT_ARGS = dict(dims=[8, 8, 16, 32], depths=[1, 1, 1, 1])
#: kind -> (slot file, timm name, image size, model_args, expected (tokens, width, prefix tokens dropped))
KINDS = {
    "vit": ("timm_vit_tiny", "vit_tiny_patch16_224", 32, VIT_ARGS, (16, 32, 1)),
    "vit_registers": ("timm_vit_reg_tiny", "vit_small_patch14_reg4_dinov2", 32, VIT_ARGS, (16, 32, 5)),
    "convnext": ("timm_convnext_tiny", "convnext_atto", 128, CONVNEXT_ARGS, (16, 32, 0)),
}


def reference_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What the encoder must return, from timm's plain ``forward_features``: patch tokens without the prefix
    tokens (ViTs), or the final feature map flattened row by row (CNNs)."""
    features = model.forward_features(pixels)
    if features.ndim == 4:  # (B, C, h, w)
        return features.flatten(2).transpose(1, 2)
    return features[:, model.num_prefix_tokens:]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    image = Image.fromarray((np.random.default_rng(0).random((20, 28, 3)) * 255).astype("uint8"))
    return [{"conversations": [{"role": "user", "content": "<image> What is this?"},
                               {"role": "assistant", "content": "A small picture."}], "images": [image]}]


# -- the encoder alone --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_tokens_and_width_match_the_forward_output_and_timm_itself(kind):
    _, name, size, args, (tokens, width, prefix) = KINDS[kind]
    torch.manual_seed(0)
    encoder = ENCODERS.build({"type": "timm", "model_name": name, "image_size": size, "model_args": args},
                             where="model.und_encoder").eval()
    assert isinstance(encoder, UnderstandingEncoder)
    pixels = torch.randn(2, 3, size, size)
    out = encoder(pixels)
    assert out.shape == (2, encoder.num_tokens, encoder.out_dim) == (2, tokens, width)
    assert encoder.num_prefix_tokens == prefix

    # The same weights in timm's own model give the same tokens (prefix tokens dropped, grid flattened).
    source = timm.create_model(name, num_classes=0, **({"img_size": size} if "vit" in kind else {}), **args).eval()
    source.load_state_dict(encoder.model.state_dict(), strict=False)
    torch.testing.assert_close(out, reference_features(source, pixels))


def test_sizes_are_known_on_the_meta_device_and_follow_the_image_size():
    with torch.device("meta"):
        encoder = TimmEncoder("vit_small_patch14_reg4_dinov2", image_size=48, model_args=VIT_ARGS)
    assert next(encoder.parameters()).is_meta
    assert (encoder.num_tokens, encoder.out_dim) == ((48 // 8) ** 2, 32)
    # A CNN's grid follows its total stride (32 for ConvNeXt).
    assert TimmEncoder("convnext_atto", image_size=64, model_args=CONVNEXT_ARGS).num_tokens == 2 * 2


def test_layer_reads_an_intermediate_block_or_stage_and_drops_the_rest():
    torch.manual_seed(0)
    vit = TimmEncoder("vit_tiny_patch16_224", image_size=32, model_args={**VIT_ARGS, "depth": 3}, layer=-2).eval()
    assert vit.layer == 1 and len(vit.model.blocks) == 2  # the last block is not built into the encoder
    pixels = torch.randn(1, 3, 32, 32)
    full = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **{**VIT_ARGS, "depth": 3}).eval()
    full.load_state_dict(vit.model.state_dict(), strict=False)
    tokens = full.norm(full.blocks[:2](full._pos_embed(full.patch_embed(pixels))))[:, 1:]  # block 1, final norm
    torch.testing.assert_close(vit(pixels), tokens)

    cnn = TimmEncoder("convnext_atto", image_size=64, model_args=CONVNEXT_ARGS, layer=2)
    assert (cnn.num_tokens, cnn.out_dim) == ((64 // 16) ** 2, 16)  # third stage: stride 16, 16 channels
    assert cnn(torch.randn(1, 3, 64, 64)).shape == (1, 16, 16)


def test_mean_and_std_come_from_the_pretrained_config_unless_given():
    assert TimmEncoder("vit_tiny_patch16_224", image_size=32, model_args=VIT_ARGS).pixel_mean == (0.5, 0.5, 0.5)
    dinov2 = TimmEncoder("vit_small_patch14_reg4_dinov2", image_size=32, model_args=VIT_ARGS)
    assert dinov2.pixel_mean == (0.485, 0.456, 0.406) and dinov2.pixel_std == (0.229, 0.224, 0.225)
    given = TimmEncoder("vit_small_patch14_reg4_dinov2", image_size=32, model_args=VIT_ARGS,
                        pixel_mean=[0.5, 0.5, 0.5], pixel_std=[0.25, 0.25, 0.25])
    assert given.pixel_mean == (0.5, 0.5, 0.5)
    # The image transform normalises with them: a mid-grey picture becomes 0 under mean 0.5, std 0.25.
    grey = np.full((10, 10, 3), 128, np.uint8)
    assert given.transform()(grey).shape == (3, 32, 32)
    torch.testing.assert_close(given.transform()(grey), torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.25))


def test_freeze_stops_every_gradient():
    encoder = TimmEncoder("convnext_atto", image_size=64, model_args=CONVNEXT_ARGS)
    encoder(torch.randn(1, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())  # no unused (head) parameters left behind
    encoder.freeze()
    assert not any(p.requires_grad for p in encoder.parameters())


# -- inside janus_tiny ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_janus_tiny_with_a_timm_encoder_trains_and_round_trips(kind, records, tmp_path):
    slot_file, _, size, _, (tokens, width, _) = KINDS[kind]
    torch.manual_seed(0)
    cfg = unimm.load_config("janus_tiny", [f"model.und_encoder=@parts/und_encoder/{slot_file}",
                                           "model.und_aligner=@parts/und_aligner/mlp_gelu"])
    model = unimm.build_model(cfg)
    processor = unimm.build_processor(cfg, model)
    assert isinstance(model.und_encoder, TimmEncoder) and model.und_aligner.in_dim == width

    # The processor writes as many image placeholders as the encoder gives tokens, at the encoder's size.
    batch = processor.understanding_batch(records)
    assert int(batch["images_seq_mask"].sum()) == model.und_encoder.num_tokens == tokens
    assert batch["pixel_values"].shape[-2:] == (size, size)

    # One training step: the understanding loss reaches the aligner through the image features.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model.understanding_loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    assert next(model.und_aligner.parameters()).grad.abs().sum() > 0
    assert next(model.und_encoder.parameters()).grad is not None
    optimizer.step()

    model.eval()
    with torch.no_grad():
        logits = model(**batch)
    unimm.save_pretrained(model, processor, cfg, tmp_path / "saved")
    loaded, loaded_processor, _ = unimm.load_pretrained(tmp_path / "saved")
    assert loaded_processor.num_image_tokens == tokens
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), logits)


# -- weights from local files and folders ---------------------------------------------------------------------------
@pytest.mark.parametrize("file_name", ["weights.safetensors", "weights.pth"])
def test_weights_from_a_local_file_give_the_source_models_features(file_name, tmp_path):
    torch.manual_seed(1)
    # A classifier head in the file is dropped (the encoder has none); everything else must load.
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=10, img_size=32, **VIT_ARGS).eval()
    path = tmp_path / file_name
    if path.suffix == ".safetensors":
        save_file(source.state_dict(), str(path))
    else:
        torch.save(source.state_dict(), path)
    torch.manual_seed(2)  # a different random init: only the file can make the features equal
    encoder = TimmEncoder("vit_small_patch14_reg4_dinov2", image_size=32, pretrained=str(path),
                          model_args=VIT_ARGS).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), reference_features(source, pixels))


def test_cnn_weights_from_a_bin_file(tmp_path):
    source = timm.create_model("convnext_atto", **CONVNEXT_ARGS).eval()  # with its 1000-class head
    torch.save(source.state_dict(), tmp_path / "convnext.bin")
    encoder = TimmEncoder("convnext_atto", image_size=64, pretrained=str(tmp_path / "convnext.bin"),
                          model_args=CONVNEXT_ARGS).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), reference_features(source, pixels))


def test_weights_and_architecture_from_a_timm_folder(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=32, **VIT_ARGS).eval()
    folder = tmp_path / "dinov2-tiny"
    timm.models.save_for_hf(source, str(folder), model_args=dict(img_size=32, **VIT_ARGS), safe_serialization=True)
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()

    # The folder's saved model_args and image size are used: the slot only names the model and the folder.
    encoder = TimmEncoder("vit_small_patch14_reg4_dinov2", pretrained=str(folder)).eval()
    assert encoder.image_size == 32 and encoder.num_tokens == 16
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), reference_features(source, pixels))
    saved = encoder.folded_config()
    assert saved["model_args"]["depth"] == 2 and saved["image_size"] == 32


def test_weights_at_another_resolution_have_their_position_embeddings_resampled(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **VIT_ARGS)
    save_file(source.state_dict(), str(tmp_path / "vit32.safetensors"))
    encoder = TimmEncoder("vit_tiny_patch16_224", image_size=48, pretrained=str(tmp_path / "vit32.safetensors"),
                          model_args=VIT_ARGS)
    assert encoder.num_tokens == 36
    torch.testing.assert_close(encoder.model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_a_janus_model_saved_from_a_timm_file_no_longer_needs_the_file(records, tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **{**VIT_ARGS, "depth": 1})
    weights = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(weights))
    cfg = unimm.load_config("janus_tiny", ["model.und_encoder=@parts/und_encoder/timm_vit_tiny",
                                           "model.und_aligner=@parts/und_aligner/mlp_gelu",
                                           f"model.und_encoder.pretrained={weights}"])
    model = unimm.build_model(cfg).eval()
    processor = unimm.build_processor(cfg, model)
    torch.testing.assert_close(model.und_encoder.model.pos_embed, source.pos_embed)
    unimm.save_pretrained(model, processor, cfg, tmp_path / "saved")
    weights.unlink()
    loaded, _, loaded_cfg = unimm.load_pretrained(tmp_path / "saved")
    assert loaded_cfg.model.und_encoder.pretrained is None
    batch = processor.understanding_batch(records)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), model(**batch))


# -- errors ---------------------------------------------------------------------------------------------------------
def _build(**slot):
    return ENCODERS.build({"type": "timm", **slot}, where="model.und_encoder")


@pytest.mark.parametrize("slot, error, message", [
    (dict(model_name="vit_tiny_patch16_22"), ConfigError,
     r"model\.und_encoder\.model_name: timm has no model 'vit_tiny_patch16_22'\. Did you mean 'vit_tiny_patch16_224'"),
    (dict(model_name="hf-hub:timm/vit_tiny_patch16_224"), ConfigError,
     r"model\.und_encoder\.model_name .* weights go in model\.und_encoder\.pretrained"),
    (dict(model_name="vit_tiny_patch16_224", image_size=36, model_args=VIT_ARGS), ConfigError,
     r"model\.und_encoder\.image_size 36 is not a multiple of 8.*use e\.g\. 32"),
    (dict(model_name="vit_tiny_patch16_224", image_size=0), ConfigError, r"model\.und_encoder\.image_size must be"),
    (dict(model_name="convnext_atto", image_size=16, model_args=CONVNEXT_ARGS), ConfigError,
     r"model\.und_encoder\.image_size 16 is not a multiple of 32"),
    (dict(model_name="vit_tiny_patch16_224", image_size=32, model_args=VIT_ARGS, layer=2), ConfigError,
     r"model\.und_encoder\.layer 2 is out of range: .* 2 feature layers .* -2\.\.1"),
    (dict(model_name="convnext_atto", image_size=64, model_args=CONVNEXT_ARGS, layer=-5), ConfigError,
     r"model\.und_encoder\.layer -5 is out of range"),
    (dict(model_name="vit_tiny_patch16_224", model_args={**VIT_ARGS, "dpeth": 3}), ConfigError,
     r"model\.und_encoder\.model_args\.dpeth: timm's vit_tiny_patch16_224 does not take it"),
    (dict(model_name="convnext_atto", model_args={"dims": [8, 16]}), ConfigError,
     r"model\.und_encoder: timm cannot build convnext_atto with model_args"),
    (dict(model_name="vit_tiny_patch16_224", model_args={"img_size": 64}), ConfigError,
     r"model\.und_encoder\.model_args\.img_size: not allowed here; set model\.und_encoder\.image_size"),
    (dict(model_name="vit_tiny_patch16_224", image_size=32, model_args=VIT_ARGS, pixel_mean=[0.5, 0.5]),
     ConfigError, r"model\.und_encoder\.pixel_mean must be three numbers"),
    (dict(model_name="vit_tiny_patch16_224", image_size=32, model_args=VIT_ARGS, pretrained="/no/such/file.pth"),
     CheckpointError, r"model\.und_encoder\.pretrained: /no/such/file\.pth does not exist"),
])  # fmt: skip
def test_config_mistakes_raise_one_line_naming_the_key(slot, error, message):
    with pytest.raises(error, match=message) as caught:
        _build(**slot)
    assert "\n" not in str(caught.value)


def test_checkpoint_mistakes_name_the_file(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, **VIT_ARGS)
    save_file(source.state_dict(), str(tmp_path / "vit.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "weights.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    slot = dict(model_name="vit_tiny_patch16_224", image_size=32)
    cases = [
        (dict(model_args={**VIT_ARGS, "depth": 3}, pretrained=str(tmp_path / "vit.safetensors")),
         r"vit\.safetensors does not fit timm's vit_tiny_patch16_224 .*Missing key.*blocks\.2"),
        (dict(model_args={**VIT_ARGS, "embed_dim": 64}, pretrained=str(tmp_path / "vit.safetensors")),
         r"vit\.safetensors does not fit .*size mismatch"),
        (dict(model_args=VIT_ARGS, pretrained=str(tmp_path / "broken.safetensors")),
         r"cannot read .*broken\.safetensors"),
        (dict(model_args=VIT_ARGS, pretrained=str(tmp_path / "weights.txt")), r"weights\.txt is not a weight file"),
        (dict(model_args=VIT_ARGS, pretrained=str(tmp_path / "empty")), r"empty has no model\.safetensors"),
    ]
    for extra, message in cases:
        with pytest.raises(CheckpointError, match=r"model\.und_encoder\.pretrained: .*" + message) as caught:
            _build(**slot, **extra)
        assert "\n" not in str(caught.value)


def test_a_folder_of_another_architecture_is_refused(tmp_path):
    source = timm.create_model("vit_small_patch14_reg4_dinov2", num_classes=0, img_size=32, **VIT_ARGS)
    timm.models.save_for_hf(source, str(tmp_path / "dinov2"), safe_serialization=True)
    with pytest.raises(ConfigError, match=r"model_name is 'vit_tiny_patch16_224' but .* holds a "
                                          r"'vit_small_patch14_reg4_dinov2'; set model_name"):
        _build(model_name="vit_tiny_patch16_224", pretrained=str(tmp_path / "dinov2"))


def test_hub_names_go_to_timm(monkeypatch):
    """``hf-hub:`` names are timm's to fetch (no network here: the call is recorded, and its failure reported)."""
    calls = []

    def offline_create_model(name, **kwargs):
        calls.append(name)
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    with pytest.raises(CheckpointError, match=r"timm could not fetch 'hf-hub:timm/vit_tiny_patch16_224\.augreg'"):
        _build(model_name="vit_tiny_patch16_224", pretrained="hf-hub:timm/vit_tiny_patch16_224.augreg")
    assert calls == ["hf-hub:timm/vit_tiny_patch16_224.augreg"]


def test_wrong_pixels_raise_input_error():
    encoder = TimmEncoder("vit_tiny_patch16_224", image_size=32, model_args=VIT_ARGS)
    with pytest.raises(InputError, match=r"takes \(B, 3, 32, 32\) pixels, got \(1, 3, 16, 16\)"):
        encoder(torch.randn(1, 3, 16, 16))


def test_config_show_reports_a_mistake_in_one_line(capsys):
    from unimm.cli import main as cli_main

    code = cli_main(["config", "show", "janus_tiny", "model.und_encoder=@parts/und_encoder/timm_vit_tiny",
                     "model.und_aligner=@parts/und_aligner/mlp_gelu", "model.und_encoder.layer=5"])
    assert code == 2
    assert "unimm: error: model.und_encoder.layer 5 is out of range" in capsys.readouterr().err


def test_timm_features_are_janusflows_repa_targets():
    """REPA reads the encoder's features of the generation images, normalised with the timm model's own statistics."""
    torch.manual_seed(0)
    cfg = unimm.load_config("janus_tiny", ["model.und_encoder=@parts/und_encoder/timm_vit_reg_tiny",
                                           "model.und_aligner=@parts/und_aligner/mlp_gelu",
                                           "model.generator=@parts/generator/flow_tiny",
                                           "model.generator.repa_layer=1"])
    model = unimm.build_model(cfg)
    processor = unimm.build_processor(cfg, model)
    assert model.generator.repa_projector[-1].out_features == model.und_encoder.out_dim
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    encoder = model.und_encoder
    x = torch.nn.functional.interpolate((images + 1) / 2, size=(encoder.image_size,) * 2, mode="bicubic").clamp(0, 1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (encoder.pixel_mean, encoder.pixel_std))
    with torch.no_grad():
        torch.testing.assert_close(encoder.alignment_features(images), encoder((x - mean) / std))
    assert encoder.pixel_mean != (0.5, 0.5, 0.5)  # the timm model's own statistics, not the contract's default
    prompt_ids, prompt_mask = processor.generation_prompts(["a red square", "blue"])
    loss = model.generation_loss(prompt_ids, prompt_mask, images, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    assert next(model.generator.repa_projector.parameters()).grad.abs().sum() > 0
