"""A pretrained transformers folder as the backbone, and plain causal LMs wrapped for the generation paths.

Each test folder is a tiny causal LM made here with transformers' own classes and ``save_pretrained``, with a
tokenizer beside it: Qwen2 and GPT-2 with their own tokenizer classes on a small byte-level BPE that lacks the image
tags (GPT-2 has no pad token either), so the processor adds them and the embeddings grow; Llama with the bundled
``tiny`` tokenizer, which has the tags, padding with its end-of-sentence token. The tests prove: unimm's text
logits equal the folder's own model's; fields beside ``pretrained`` must agree with the folder; a missing folder,
config or weights fails naming the folder; the meta device reads no weights; ``save_pretrained`` writes a folder
that loads without the original; and both generation paths sample and train on a plain ``AutoModelForCausalLM``
through ``CausalLMBackbone.from_model``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import unimm
from unimm.backbones import CausalLMBackbone
from unimm.cli import main as cli_main
from unimm.config import find_config
from unimm.processor import BUNDLED_TOKENIZERS, load_tokenizer
from unimm.registry import GENERATORS, CheckpointError, ConfigError, InputError

TEXTS = ["a photo of a cat on a mat", "hello"]  # different lengths: the batch is left padded


def family_tokenizer(folder: Path, family: str):
    """The family's own tokenizer class (``GPT2Tokenizer`` / ``Qwen2Tokenizer``) on a small byte-level BPE.

    Its only special token is ``<|endoftext|>``: no image tags; GPT-2 has no pad token, Qwen2 pads with it.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    bpe.train_from_iterator(TEXTS + ["what is in the image?", "a red square"], trainer)
    files = folder / "bpe"
    files.mkdir()
    bpe.model.save(str(files))  # vocab.json and merges.txt, the files the family's tokenizer class reads
    tokenizer_class = GPT2Tokenizer if family == "gpt2" else Qwen2Tokenizer
    tokenizer = tokenizer_class(str(files / "vocab.json"), str(files / "merges.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def make_folder(folder: Path, family: str) -> Path:
    """Write a tiny causal LM of ``family`` and its tokenizer into ``folder`` (weights scaled up to O(1) logits)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    folder.mkdir(parents=True)
    if family == "gpt2":
        tokenizer = family_tokenizer(folder, family)
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=128, vocab_size=len(tokenizer),
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    else:
        if family == "qwen2":
            tokenizer = family_tokenizer(folder, family)
        else:  # the bundled tokenizer, which has the image tags already, padding with its end-of-sentence token
            tokenizer = load_tokenizer(BUNDLED_TOKENIZERS / "tiny")
            tokenizer.pad_token = tokenizer.eos_token  # as many Llama-family releases do
            tokenizer.save_pretrained(folder)
        config_class = LlamaConfig if family == "llama" else Qwen2Config
        config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, vocab_size=len(tokenizer),
                              tie_word_embeddings=False)  # fmt: skip
    config.initializer_range = 0.3
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {family: make_folder(root / family, family) for family in ("qwen2", "llama", "gpt2")}


def config_with(backbone: dict, generator: bool = False):
    """janus_tiny with ``backbone`` as its backbone slot and no processor tokenizer (the folder brings one)."""
    cfg = unimm.load_config("janus_tiny", ["model.generator=null"] if not generator else [])
    cfg.model.backbone = backbone
    cfg.processor.tokenizer = None
    return cfg


def folder_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """The folder's own model's logits on one unpadded row: (T,) -> (T, V)."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).eval()
    with torch.no_grad():
        return lm(ids[None]).logits[0]


# -- loading ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2"])
def test_text_logits_equal_the_folders_model(family, folders):
    folder = folders[family]
    cfg = config_with({"type": "hf_causal_lm", "pretrained": str(folder)})
    model = unimm.build_model(cfg).eval()
    folder_vocab = model.backbone.vocab_size
    processor = unimm.build_processor(cfg, model)  # the folder's tokenizer, image tags added where missing

    assert model.backbone.model_type == family and model.backbone.pretrained == folder
    for tag in ("<image_placeholder>", "<begin_of_image>", "<end_of_image>"):
        assert processor.tokenizer(tag)["input_ids"][-1] == processor.token_id(tag)
    assert model.backbone.vocab_size == processor.vocab_size
    if family == "gpt2":  # no image tags, no pad token: three image tags and a pad added, the tied table grown
        assert processor.vocab_size == folder_vocab + 4 and processor.pad_id >= folder_vocab
        assert model.backbone.lm.get_output_embeddings().weight is model.backbone.lm.get_input_embeddings().weight
    else:  # the family's own pad token is the processor's; Qwen2 lacks the three image tags, the tiny one has them
        assert processor.pad_id == processor.tokenizer.pad_token_id < folder_vocab
        assert processor.vocab_size == folder_vocab + (3 if family == "qwen2" else 0)

    batch = processor.text_batch(TEXTS)
    assert not bool(batch["attention_mask"].all())
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape[-1] == processor.vocab_size
    for row in range(len(TEXTS)):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, -length:]
        expected = folder_logits(folder, ids)
        assert expected.std() > 0.5  # not near-zero logits that any model would match
        torch.testing.assert_close(logits[row, -length:, :folder_vocab], expected, rtol=0, atol=1e-5)


def test_llama_type_loads_a_llama_folder_and_refuses_another_family(folders):
    backbone = unimm.registry.BACKBONES.build({"type": "llama", "pretrained": str(folders["llama"])},
                                              where="model.backbone")  # fmt: skip
    assert type(backbone.decoder).__name__ == "LlamaModel"
    with pytest.raises(ConfigError, match=r"model\.backbone: .*qwen2.* holds a 'qwen2' model but the slot asks for "
                                          r"'llama'; use type: hf_causal_lm"):  # fmt: skip
        unimm.registry.BACKBONES.build({"type": "llama", "pretrained": str(folders["qwen2"])}, where="model.backbone")


def test_fields_beside_pretrained_must_agree_with_the_folder(folders):
    folder = str(folders["qwen2"])
    with pytest.raises(ConfigError, match=r"model\.backbone\.hidden_size = 48 contradicts .*config\.json, which has "
                                          r"hidden_size = 32; remove the key"):  # fmt: skip
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": folder, "hidden_size": 48}))
    with pytest.raises(ConfigError, match=r"model\.backbone\.num_hiden_layers: not a field of transformers' qwen2 "
                                          r"config\. Did you mean 'num_hidden_layers'\?"):  # fmt: skip
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": folder, "num_hiden_layers": 2}))
    with pytest.raises(ConfigError, match=r"holds a 'qwen2' model but the slot asks for 'gpt2'"):
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": folder, "model_type": "gpt2"}))

    # Agreeing fields and the runtime ones are accepted; the runtime ones take effect.
    model = unimm.build_model(config_with({
        "type": "hf_causal_lm", "pretrained": folder, "model_type": "qwen2", "hidden_size": 32,
        "attention_dropout": 0.25, "attn_implementation": "eager", "gradient_checkpointing": True,
    }))  # fmt: skip
    lm = model.backbone.lm
    assert lm.config.attention_dropout == 0.25 and lm.config._attn_implementation == "eager"
    assert lm.is_activation_checkpointing


def test_missing_folder_config_or_weights_fail_naming_the_folder(folders, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=rf"model\.backbone\.pretrained: no folder {missing}"):
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": str(missing)}))

    no_config = tmp_path / "no_config"
    shutil.copytree(folders["qwen2"], no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match=rf"{no_config} has no config\.json"):
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": str(no_config)}))

    no_weights = tmp_path / "no_weights"
    shutil.copytree(folders["qwen2"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=rf"{no_weights} has no weights"):
        unimm.build_model(config_with({"type": "hf_causal_lm", "pretrained": str(no_weights)}))

    without_both = config_with({"type": "hf_causal_lm"})
    with pytest.raises(ConfigError, match=r"model\.backbone\.model_type: required without 'pretrained'"):
        unimm.build_model(without_both)


def test_a_model_that_is_not_a_causal_lm_fails_in_one_line(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                       image_size=16, patch_size=8)).save_pretrained(tmp_path / "vit")  # fmt: skip
    for backbone in ({"type": "hf_causal_lm", "pretrained": str(tmp_path / "vit")},
                     {"type": "hf_causal_lm", "model_type": "vit"}):  # fmt: skip
        with torch.device("meta"), pytest.raises(ConfigError, match=r"model\.backbone: .*'vit' model, for which "
                                                                     r"transformers has no causal LM"):  # fmt: skip
            unimm.build_model(config_with(backbone))


def test_a_folder_without_tokenizer_needs_processor_tokenizer(folders, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folders["qwen2"] / name, bare / name)
    cfg = config_with({"type": "hf_causal_lm", "pretrained": str(bare)})
    model = unimm.build_model(cfg)
    with pytest.raises(ConfigError, match=rf"processor\.tokenizer: not given, and the backbone's folder {bare} has "
                                          r"no tokenizer files"):  # fmt: skip
        unimm.build_processor(cfg, model)
    cfg.processor.tokenizer = "tiny"  # an explicit tokenizer wins over the folder's
    assert unimm.build_processor(cfg, model).vocab_size == 427


def test_cli_reports_a_missing_folder_in_one_line(tmp_path, capsys):
    code = cli_main(["config", "show", "janus_tiny", "model.backbone.type=hf_causal_lm",
                     f"model.backbone.pretrained={tmp_path / 'nowhere'}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("unimm: error: model.backbone.pretrained: no folder") and "Traceback" not in err


def test_meta_device_build_reads_no_weights(folders, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders["qwen2"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")  # reading it would fail
    cfg = config_with({"type": "hf_causal_lm", "pretrained": str(broken)})
    with torch.device("meta"):
        model = unimm.build_model(cfg)
    backbone = model.backbone
    assert all(p.device.type == "meta" for p in backbone.parameters())
    folder_config = json.loads((broken / "config.json").read_text())
    assert (backbone.hidden_size, backbone.num_layers, backbone.vocab_size) == (32, 2, folder_config["vocab_size"])
    with pytest.raises(CheckpointError, match=rf"model\.backbone\.pretrained: cannot load the weights in {broken}"):
        unimm.build_model(cfg)

    code = cli_main(["config", "show", "janus_tiny", "model.backbone.type=hf_causal_lm",
                     f"model.backbone.pretrained={broken}"])  # fmt: skip
    assert code == 0


# -- saving -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "llama", "gpt2"])
def test_saved_model_loads_without_the_original_folder(family, folders, tmp_path):
    original = tmp_path / "lm"
    shutil.copytree(folders[family], original)
    cfg = config_with({"type": "hf_causal_lm", "pretrained": str(original)}, generator=True)
    torch.manual_seed(0)
    model = unimm.build_model(cfg).eval()
    processor = unimm.build_processor(cfg, model)
    folded = model.backbone.folded_config()
    assert folded["model_type"] == family and "pretrained" not in folded
    assert folded["vocab_size"] == processor.vocab_size  # the grown table, for gpt2

    saved = unimm.save_pretrained(model, processor, cfg, tmp_path / "saved")
    shutil.rmtree(original)
    written = OmegaConf.load(saved / "config.yaml").model.backbone
    assert written.get("pretrained") is None and written.type == "hf_causal_lm"

    loaded, loaded_processor, _ = unimm.load_pretrained(saved)
    assert loaded.backbone.pretrained is None
    batch = processor.text_batch(TEXTS)
    assert torch.equal(loaded_processor.text_batch(TEXTS)["input_ids"], batch["input_ids"])
    assert loaded_processor.pad_id == processor.pad_id
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch["input_ids"], batch["attention_mask"]),
                                   model(batch["input_ids"], batch["attention_mask"]), rtol=0, atol=0)  # fmt: skip
    lm = loaded.backbone.lm
    assert (lm.get_output_embeddings().weight is lm.get_input_embeddings().weight) == (family == "gpt2")  # tie kept


# -- the adapter for a model built outside unimm -------------------------------------------------------------------
def plain_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=427, max_position_embeddings=128))  # fmt: skip


def test_from_model_wraps_the_same_module():
    lm = plain_llama().eval()
    backbone = CausalLMBackbone.from_model(lm)
    assert backbone.lm is lm and backbone.pretrained is None and backbone.folded_config() is None
    sizes = (backbone.hidden_size, backbone.vocab_size, backbone.num_layers, backbone.model_type)
    assert sizes == (32, 427, 2, "llama")
    ids = torch.randint(0, 427, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone(backbone.embed(ids), output_hidden_states=True)
        torch.testing.assert_close(backbone.logits(out.hidden_states), lm(ids).logits, rtol=0, atol=0)
    assert len(out.all_hidden_states) == backbone.num_layers + 1


def test_from_model_refuses_a_model_without_lm_head():
    from transformers import AutoModel

    with pytest.raises(InputError, match=r"from_model needs a transformers causal LM with an LM head .* got "
                                         r"LlamaModel"):  # fmt: skip
        CausalLMBackbone.from_model(AutoModel.from_config(plain_llama().config))


@pytest.mark.parametrize("slot", ["vq_tiny", "flow_tiny"])
def test_generation_paths_run_on_a_plain_causal_lm(slot):
    lm = plain_llama()
    backbone = CausalLMBackbone.from_model(lm)
    slot_cfg = OmegaConf.to_container(OmegaConf.load(find_config(f"parts/generator/{slot}")))
    if slot == "vq_tiny":
        slot_cfg["image_size"] = 4  # 2 x 2 codes: four sampling steps
    torch.manual_seed(0)
    path = GENERATORS.build(slot_cfg, where="model.generator", inferred={"hidden_size": backbone.hidden_size})
    tokenizer = load_tokenizer("tiny")
    start = "<begin_of_image>" if slot == "vq_tiny" else "<｜begin▁of▁generation｜>"
    rows = [tokenizer("a red square")["input_ids"], tokenizer("blue")["input_ids"]]
    width = max(len(r) for r in rows) + 1
    prompt_ids = torch.tensor([[0] * (width - len(r) - 1) + r + [tokenizer.convert_tokens_to_ids(start)] for r in rows])
    prompt_mask = torch.tensor([[0] * (width - len(r) - 1) + [1] * (len(r) + 1) for r in rows])

    images = torch.rand(2, 3, path.image_size, path.image_size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    loss = path.loss(backbone, backbone.embed(prompt_ids), prompt_mask, images, generator=torch.Generator()).loss
    assert torch.isfinite(loss)
    loss.backward()
    embed_grad = lm.get_input_embeddings().weight.grad  # the gradient reaches the user's own module
    assert embed_grad is not None and embed_grad.abs().sum() > 0

    options = {"num_steps": 2} if slot == "flow_tiny" else {}
    with torch.no_grad():
        pad_id = tokenizer.convert_tokens_to_ids("<｜▁pad▁｜>")
        sampled = path.sample(backbone, prompt_ids, prompt_mask, pad_id=pad_id,
                              generator=torch.Generator().manual_seed(0), **options).images  # fmt: skip
    assert sampled.shape == (2, 3, path.image_size, path.image_size) and torch.isfinite(sampled).all()
