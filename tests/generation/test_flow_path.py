"""JanusFlow's rectified-flow path: reference parity, the prompt cache, left padding, the loss, loading, sizes."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimm.backbones.base import positions_from_mask
from unimm.backbones.causal_lm import llama
from unimm.generation.flow_path import RectifiedFlowPath, convert_janusflow_gen
from unimm.registry import GENERATORS, CheckpointError, ConfigError, InputError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
FLOW_FOLDERS = sorted(
    p.parent for p in GOLDEN.glob("*/cases.json") if json.loads(p.read_text()).get("kind") == "janusflow"
)
CLOSE = {"rtol": 1e-4, "atol": 1e-4}


def _backbone(language_config: dict):
    # ``model_type`` names the family; ``llama(...)`` fixes it already.
    return llama(**{k: v for k, v in language_config.items() if k != "model_type"})


def _pad_id(folder: Path) -> int:
    """The tokenizer's pad id, read from the folder's own tokenizer files."""
    pad = json.loads((folder / "special_tokens_map.json").read_text())["pad_token"]
    pad = pad["content"] if isinstance(pad, dict) else pad
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    return next(t["id"] for t in added if t["content"] == pad)


def test_reference_cases_are_found():
    assert FLOW_FOLDERS, f"no janusflow case folder under {GOLDEN}"


# -- reference parity ---------------------------------------------------------------------------------------------
@pytest.mark.parity
@pytest.mark.parametrize("folder", FLOW_FOLDERS, ids=[f.name for f in FLOW_FOLDERS])
def test_sampling_matches_reference(folder):
    config = json.loads((folder / "config.json").read_text())
    cases = json.loads((folder / "cases.json").read_text())
    golden = load_file(folder / "cases.safetensors")
    weights = load_file(folder / "model.safetensors")

    backbone = _backbone(config["language_config"])
    prefix = "language_model."
    backbone.load_state_dict({"lm." + k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    path = GENERATORS.build(
        {
            "type": "rectified_flow",
            "autoencoder": {"type": "autoencoder_kl", "path": str(folder / "vae")},
            "encoder": config["vision_gen_enc_config"]["params"],
            "decoder": config["vision_gen_dec_config"]["params"],
            "image_size": cases["settings"]["img"],
        },
        where="model.generator",
        inferred={"hidden_size": backbone.hidden_size, "rms_norm_eps": backbone.lm.config.rms_norm_eps},
    )
    path.load_janusflow_state_dict(weights)
    backbone.eval(), path.eval()
    assert path.num_image_tokens == cases["flow_gen_tokens"]
    assert path.latent_size == cases["flow_latent"]

    batch, steps = cases["flow_batch"], cases["flow_steps"]
    prompt = golden["flow.tokens"][:batch]
    out = path.sample(
        backbone, prompt, torch.ones_like(prompt), pad_id=_pad_id(folder), guidance=cases["flow_cfg_weight"],
        num_steps=steps, noise=golden["flow.z0"], keep_steps=True,
    )  # fmt: skip
    images, trace = out.images, out.steps
    assert torch.equal(trace["tokens"], golden["flow.tokens"])
    assert torch.equal(trace["attention_mask"].long(), golden["flow.attention_mask"].long())
    for step in (0, steps - 1):
        for name in ("t_emb", "v_cond", "v_uncond"):
            torch.testing.assert_close(trace[name][step], golden[f"flow.step{step}.{name}"], **CLOSE)
    torch.testing.assert_close(out.latents, golden["flow.z_final"], **CLOSE)
    torch.testing.assert_close(trace["decoded"], golden["flow.decoded"], **CLOSE)
    torch.testing.assert_close(images, golden["flow.decoded"].clamp(-1, 1), **CLOSE)


def test_full_size_path_on_meta_has_the_released_names_and_shapes():
    official = GOLDEN / "official" / "JanusFlow-1.3B"
    config = json.loads((official / "config.json").read_text())
    manifest = json.loads((official / "manifest.json").read_text())["state_dict"]
    released = {k: torch.empty(shape, device="meta") for k, shape in manifest.items() if k.startswith("vision_gen_")}
    with torch.device("meta"):
        path = _flow(hidden=config["language_config"]["hidden_size"], encoder=config["vision_gen_enc_config"]["params"],
                     decoder=config["vision_gen_dec_config"]["params"])
    assert path.num_image_tokens == 576 and path.latent_size == 48
    ours = {k: tuple(v.shape) for k, v in path.state_dict().items() if not k.startswith("autoencoder.")}
    assert ours == {k: tuple(v.shape) for k, v in convert_janusflow_gen(released).items()}
    path.load_janusflow_state_dict(released)  # strict: raises on any difference


# -- the sampler on a tiny random model ---------------------------------------------------------------------------
TINY_LM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 50}  # fmt: skip
TINY_VAE = {"type": "autoencoder_kl", "config": {"block_out_channels": [32, 32], "layers_per_block": 1}}
TINY_ENC = {"input_channels": 4, "stride": 2, "kernel_size": 2, "block_out_channels": [16], "layers_in_middle": 1}
TINY_DEC = {"in_channels": 16, "out_channels": 4, "block_out_channels": [16], "upsamples": 1, "layers_in_middle": 1}


def _flow(hidden: int = 32, **cfg) -> RectifiedFlowPath:
    """A flow path built from its config, as the model builds it."""
    return GENERATORS.build({"type": "rectified_flow", **cfg}, where="model.generator",
                            inferred={"hidden_size": hidden})


def _tiny(seed: int = 0, **options):
    torch.manual_seed(seed)
    backbone = llama(**TINY_LM).eval()
    path = _flow(autoencoder=TINY_VAE, encoder=TINY_ENC, decoder=TINY_DEC, image_size=16, **options)
    with torch.no_grad():  # the global response norms start at zero; give them values so they are exercised
        for name, p in path.named_parameters():
            if "channelwise_norm" in name:
                p.normal_(0, 0.1)
    return backbone, path.eval()


def test_prompt_cache_equals_recomputing_the_prompt():
    backbone, path = _tiny()
    ids = torch.randint(3, 50, (2, 7))
    mask = torch.ones_like(ids)
    noise = torch.randn(2, 4, 8, 8)
    kwargs = {"pad_id": 2, "guidance": 3.0, "num_steps": 3, "noise": noise, "keep_steps": True}
    out = path.sample(backbone, ids, mask, use_prompt_cache=True, **kwargs)
    cached, trace = out.images, out.steps
    fresh = path.sample(backbone, ids, mask, use_prompt_cache=False, **kwargs).images
    torch.testing.assert_close(cached, fresh, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trace["v_cond"][-1], trace["v_uncond"][-1])  # guidance does work
    other = path.sample(backbone, torch.randint(3, 50, (2, 7)), mask, **kwargs).images
    assert not torch.allclose(cached, other)  # the prompt matters


def test_left_padded_batch_equals_each_prompt_alone():
    backbone, path = _tiny()
    long, short = torch.randint(3, 50, (1, 8)), torch.randint(3, 50, (1, 5))
    ids = torch.cat([long, torch.cat([torch.full((1, 3), 2), short], dim=1)])
    mask = torch.tensor([[1] * 8, [0, 0, 0] + [1] * 5])
    noise = torch.randn(2, 4, 8, 8)
    kwargs = {"pad_id": 2, "guidance": 2.0, "num_steps": 2, "keep_steps": True}
    out = path.sample(backbone, ids, mask, noise=noise, **kwargs)
    batched = out.steps
    alone = path.sample(backbone, short, torch.ones_like(short), noise=noise[1:], **kwargs)
    torch.testing.assert_close(out.latents[1:], alone.latents, rtol=1e-5, atol=1e-5)
    # the unconditional row of the padded prompt keeps only its first real token
    assert batched["tokens"][3].tolist() == [2, 2, 2, short[0, 0].item(), 2, 2, 2, 2]
    assert batched["attention_mask"][3, :7].tolist() == [0, 0, 0, 1, 0, 0, 0]


def test_sample_draws_noise_from_the_generator_and_checks_inputs():
    backbone, path = _tiny()
    ids = torch.randint(3, 50, (1, 4))
    mask = torch.ones_like(ids)
    a = path.sample(backbone, ids, mask, pad_id=2, num_steps=1, generator=torch.Generator().manual_seed(3)).images
    b = path.sample(backbone, ids, mask, pad_id=2, num_steps=1, generator=torch.Generator().manual_seed(3)).images
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b) and a.abs().max() <= 1
    with pytest.raises(InputError, match="left"):
        path.sample(backbone, ids, torch.tensor([[1, 1, 1, 0]]), pad_id=2)
    with pytest.raises(InputError, match="L >= 2"):
        path.sample(backbone, ids[:, :1], mask[:, :1], pad_id=2)
    with pytest.raises(InputError, match="noise must have shape"):
        path.sample(backbone, ids, mask, pad_id=2, noise=torch.zeros(1, 4, 4, 4))


# -- training -----------------------------------------------------------------------------------------------------
def test_loss_trains_every_new_part_and_not_the_vae():
    backbone, path = _tiny(repa_layer=1, repa_dim=24, repa_weight=0.5)
    path.train()
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    und = torch.randn(2, 4, 24)  # a 2x2 grid, resampled to the 4x4 token grid
    out = path.loss(backbone, backbone.embed(ids), mask, images, und_features=und,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.isfinite(out.loss) and set(out.parts) == {"flow", "repa"}
    torch.testing.assert_close(out.loss, out.parts["flow"] + 0.5 * out.parts["repa"])
    out.loss.backward()
    for part in ("encoder", "encoder_aligner", "decoder_aligner_norm", "decoder_aligner", "decoder", "repa_projector"):
        grads = [p.grad for p in getattr(path, part).parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is None for p in path.autoencoder.parameters())
    assert backbone.lm.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_loss_on_an_unconditional_row_is_the_samplers_unconditional_velocity():
    """A dropped caption trains what guidance samples: the loss on the path's unconditional prompt, at the
    conditional prompt's positions and t = 0, predicts the velocity that sampling's unconditional rows give for
    the same noise."""
    backbone, path = _tiny()
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    uncond_ids, uncond_mask = path.unconditional_prompt(ids, mask, pad_id=2)
    assert uncond_mask[:, -1].sum() == 0  # JanusFlow masks the text out: not a left-padded prompt
    path.sample_time = lambda batch, generator=None, device=None: torch.zeros(batch)  # t = 0: z_t is the noise
    seen = {}
    embeds, velocity = path._generation_embeds, path._velocity
    path._generation_embeds = lambda z, t: seen.setdefault("noise", z) is not None and embeds(z, t)
    path._velocity = lambda *args: seen.setdefault("v", velocity(*args))
    with torch.no_grad():
        path.loss(backbone, backbone.embed(uncond_ids), uncond_mask, torch.rand(2, 3, 16, 16) * 2 - 1,
                  generator=torch.Generator().manual_seed(3), prompt_positions=positions_from_mask(mask))
    path._generation_embeds, path._velocity = embeds, velocity
    trace = path.sample(backbone, ids, mask, pad_id=2, guidance=3.0, num_steps=2, noise=seen["noise"],
                        keep_steps=True).steps
    torch.testing.assert_close(seen["v"], trace["v_uncond"][0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(trace["v_cond"][0], trace["v_uncond"][0])
    with pytest.raises(InputError, match="left"):  # without the positions, an unconditional row is refused
        path.loss(backbone, backbone.embed(uncond_ids), uncond_mask, torch.zeros(2, 3, 16, 16))


def test_loss_target_is_the_straight_line_velocity():
    """With the decoder replaced by the target itself, the flow loss is zero: checks z_t and x1 - x0."""
    backbone, path = _tiny(time_sampling="uniform")
    ids = torch.randint(3, 50, (1, 5))
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    x1 = path.encode_images(images)
    gen = torch.Generator().manual_seed(7)
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.rand(1, generator=gen)
    seen = {}

    def fake_velocity(hidden, skip, t_emb):
        seen["t_emb"] = t_emb
        return x1 - x0

    path._velocity = fake_velocity
    out = path.loss(backbone, backbone.embed(ids), torch.ones_like(ids), images,
                    generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(seen["t_emb"], path.encoder.time_embed(path.encoder.time_proj(t * 1000)))


def test_time_distributions():
    _, path = _tiny()
    t = path.sample_time(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - 0.5) < 0.02 and t.std().item() < 0.25  # logit-normal(0, 1) is peaked at 0.5
    path.time_sampling = "uniform"
    u = path.sample_time(20000, generator=torch.Generator().manual_seed(0))
    assert abs(u.std().item() - (1 / 12) ** 0.5) < 0.01


# -- loading and configuration ------------------------------------------------------------------------------------
def test_converter_and_loader_report_bad_keys():
    _, path = _tiny()
    released = {
        "vision_gen_enc_aligner.weight": torch.zeros(32, 16),
        "vision_gen_dec_model.mid_block.res_blocks.0.channelwise_norm.weight": torch.zeros(1, 1, 1, 128),
        "language_model.model.norm.weight": torch.zeros(32),  # other parts' keys are ignored
    }
    converted = convert_janusflow_gen(released)
    assert set(converted) == {"encoder_aligner.weight", "decoder.mid_block.res_blocks.0.channelwise_norm.weight"}
    assert converted["decoder.mid_block.res_blocks.0.channelwise_norm.weight"].shape == (128,)
    with pytest.raises(CheckpointError, match="vision_gen_extra.weight"):
        convert_janusflow_gen({**released, "vision_gen_extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no JanusFlow generation weights"):
        convert_janusflow_gen({"language_model.model.norm.weight": torch.zeros(32)})
    with pytest.raises(CheckpointError, match="missing.*encoder.in_conv.weight"):
        path.load_janusflow_state_dict(released)
    # a full released state dict made from the path's own weights loads back exactly
    inverse = {"encoder.": "vision_gen_enc_model.", "encoder_aligner.": "vision_gen_enc_aligner.",
               "decoder.": "vision_gen_dec_model.", "decoder_aligner_norm.": "vision_gen_dec_aligner_norm.",
               "decoder_aligner.": "vision_gen_dec_aligner."}  # fmt: skip
    full = {}
    for key, value in path.state_dict().items():
        head = key.split(".", 1)[0] + "."
        if head in inverse:
            grn = ".channelwise_norm." in key
            full[inverse[head] + key[len(head) :]] = value.reshape(1, 1, 1, -1) if grn else value
    _, other = _tiny(seed=1)
    other.load_janusflow_state_dict({k: v.clone() for k, v in full.items()})
    for key, value in path.state_dict().items():
        if not key.startswith("autoencoder."):
            assert torch.equal(other.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match=r"misshapen.*encoder_aligner.weight: checkpoint \(16, 32\) vs model"):
        path.load_janusflow_state_dict({**full, "vision_gen_enc_aligner.weight": torch.zeros(16, 32)})


def test_bad_configs_are_explained():
    base = {"autoencoder": TINY_VAE, "encoder": TINY_ENC, "decoder": TINY_DEC, "image_size": 16}
    with pytest.raises(ConfigError, match="hidden_size = 64 contradicts the language model width 32"):
        _flow(**{**base, "encoder": {**TINY_ENC, "hidden_size": 64}})
    with pytest.raises(ConfigError, match="4x4 grid, but the decoder's 2 2x upsampling"):
        _flow(**{**base, "decoder": {**TINY_DEC, "upsamples": 2}})
    with pytest.raises(ConfigError, match="not divisible by the VAE's downsampling 2"):
        _flow(**{**base, "image_size": 15})
    with pytest.raises(ConfigError, match="skip connection"):
        _flow(**{**base, "decoder": {**TINY_DEC, "block_out_channels": [8]}})
    with pytest.raises(ConfigError, match="latent channels"):
        _flow(**{**base, "encoder": {**TINY_ENC, "input_channels": 3}})
    with pytest.raises(ConfigError, match="strides: unknown key"):
        _flow(**{**base, "encoder": {**TINY_ENC, "strides": 2}})
    with pytest.raises(ConfigError, match="repa_dim"):
        _flow(**base, repa_layer=3)
    with pytest.raises(ConfigError, match="'logit_normal' or 'uniform'"):
        _flow(**base, time_sampling="cosine")
    backbone, path = _tiny(repa_layer=1, repa_dim=8)
    ids = torch.randint(3, 50, (1, 4))
    with pytest.raises(InputError, match="und_features"):
        path.loss(backbone, backbone.embed(ids), torch.ones_like(ids), torch.zeros(1, 3, 16, 16))
