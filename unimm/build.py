"""Build a unified model and its processor from a config.

Order: check every slot's ``type`` and keys, nested part slots included (nothing built yet); build the backbone;
then the understanding encoder and the generation path - the path first when the encoder shares its autoencoder
(the shared-VQ ablation), else the encoder first so that the path can infer its REPA width from it; then the
understanding aligner, whose widths follow from the encoder and the backbone. A config value that contradicts an
inferred width fails with both numbers. The parts meet only through their contracts (``unimm.*.base``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from .config import load_config
from .model import UnifiedModel
from .processor import Processor, load_tokenizer
from .registry import ALIGNERS, BACKBONES, ENCODERS, GENERATORS, ConfigError, Registry, to_plain
from .registry.plugins import import_config_modules

SLOTS: dict[str, Registry] = {
    "und_encoder": ENCODERS,
    "und_aligner": ALIGNERS,
    "backbone": BACKBONES,
    "generator": GENERATORS,
}


def check_slots(model_cfg: dict) -> None:
    """Check each slot's type, keys and value types before anything is built, nested part slots included."""
    for slot, registry in SLOTS.items():
        if model_cfg.get(slot) is not None:
            registry.check(model_cfg[slot], where=f"model.{slot}")


def build_model(cfg: DictConfig | dict | str, overrides: tuple[str, ...] = ()) -> UnifiedModel:
    """Build the model a config describes (random weights). Use ``with torch.device("meta"):`` for big ones."""
    if not isinstance(cfg, DictConfig):
        cfg = load_config(cfg, overrides)
    import_config_modules(cfg)  # a config made in code has not been through load_config
    if cfg.get("model") is None:
        raise ConfigError("the config has no 'model' section; add one, or load its train.init_from folder with "
                          "unimm.load_pretrained")
    model_cfg = to_plain(cfg.model)
    check_slots(model_cfg)
    backbone = BACKBONES.build(model_cfg["backbone"], where="model.backbone")
    encoder_cfg, generator_cfg = model_cfg["und_encoder"], model_cfg.get("generator")
    encoder_class = ENCODERS.get(encoder_cfg["type"], where="model.und_encoder")
    shares = encoder_class.needs_generation_autoencoder({k: v for k, v in encoder_cfg.items() if k != "type"})
    generator = None
    if shares:
        if not generator_cfg:
            raise ConfigError(
                "model.und_encoder.autoencoder: the encoder shares the generation path's autoencoder, but the model "
                "has no generation path; give the encoder its own autoencoder"
            )
        generator = _build_generator(generator_cfg, backbone, repa_dim=None)
        encoder = ENCODERS.build(encoder_cfg, where="model.und_encoder",
                                 context={"generation_autoencoder": generator.image_autoencoder()})
    else:
        encoder = ENCODERS.build(encoder_cfg, where="model.und_encoder")
        if generator_cfg:
            generator = _build_generator(generator_cfg, backbone, repa_dim=encoder.out_dim)
    aligner = ALIGNERS.build(
        model_cfg["und_aligner"], where="model.und_aligner",
        inferred={"in_dim": encoder.out_dim, "out_dim": backbone.hidden_size},
    )
    _check_pairing(encoder, aligner)
    _check_positions(backbone, encoder, generator)
    if generator is not None and cfg.get("sample"):
        generator.check_sample_options(to_plain(cfg.sample), where="sample.")
    return UnifiedModel(encoder, aligner, backbone, generator,
                        und_start_embed=bool(model_cfg.get("und_start_embed", False)))


def _build_generator(cfg: dict, backbone, repa_dim: int | None):
    inferred: dict[str, Any] = {"hidden_size": backbone.hidden_size}
    if repa_dim is not None:
        inferred["repa_dim"] = repa_dim
    return GENERATORS.build(cfg, where="model.generator", inferred=inferred)


def _check_pairing(encoder, aligner) -> None:
    """A pair encoder (the hybrid's (high, low) tokens) needs a pair aligner, and a sequence encoder the others."""
    if encoder.output_form != aligner.input_form:
        fix = "hybrid_split_mlp_gelu" if encoder.output_form == "pair" else "mlp_gelu"
        raise ConfigError(
            f"model.und_aligner: the {type(encoder).__name__} gives a {encoder.output_form} of token sequences but "
            f"the {type(aligner).__name__} reads a {aligner.input_form}; "
            f"e.g. model.und_aligner=@parts/und_aligner/{fix}"
        )


def _check_positions(backbone, encoder, generator) -> None:
    """An image must fit in the backbone's positions, with room for a prompt: a size beyond fails here, naming it."""
    limit = backbone.max_positions
    if limit is None:
        return
    for slot, part, tokens in (("und_encoder", encoder, encoder.num_tokens),
                               ("generator", generator, generator.num_image_tokens if generator else 0)):
        if part is not None and tokens >= limit:
            raise ConfigError(
                f"model.{slot}.image_size = {part.image_size} gives {tokens} image tokens, but the backbone reads at "
                f"most {limit} positions (max_position_embeddings) with the prompt; choose a smaller image size"
            )


def build_processor(cfg: DictConfig, model: UnifiedModel, tokenizer_path: str | Path | None = None) -> Processor:
    """The processor for ``model``: the config's template settings, the encoder's transform and token count.

    With no ``processor.tokenizer``, a backbone loaded from a pretrained folder brings that folder's tokenizer.
    If the tokenizer has more ids than the backbone's embedding table (image tags added), the table is grown.
    """
    settings: dict[str, Any] = dict(to_plain(cfg.get("processor") or {}))
    path = tokenizer_path or settings.pop("tokenizer", None)
    settings.pop("tokenizer", None)
    if path is None:
        tokenizer = _backbone_tokenizer(model, settings)
    else:
        tokenizer = load_tokenizer(path)
    encoder = model.und_encoder
    settings.setdefault("max_length", model.backbone.max_positions)
    processor = Processor(
        tokenizer,
        image_transform=encoder.transform(),
        num_image_tokens=encoder.num_tokens,
        learned_image_start=model.und_start_embed is not None,
        **settings,
    )
    if processor.vocab_size > model.backbone.vocab_size:
        model.backbone.resize_vocab(processor.vocab_size)
    return processor


def _backbone_tokenizer(model: UnifiedModel, settings: dict[str, Any]):
    """The tokenizer of the backbone's pretrained folder; its pad token becomes ``pad_tag`` unless one is set.

    A family without a pad token (GPT-2) keeps the processor's default pad tag, which the processor adds.
    """
    folder = model.backbone.tokenizer_folder()
    if folder is None:
        raise ConfigError("processor.tokenizer: no tokenizer folder given; set it in the config or load a checkpoint")
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ConfigError(f"processor.tokenizer: not given, and the backbone's folder {folder} has no tokenizer "
                          "files (tokenizer.json / tokenizer_config.json); set processor.tokenizer")  # fmt: skip
    tokenizer = load_tokenizer(folder)
    if "pad_tag" not in settings and tokenizer.pad_token is not None:
        settings["pad_tag"] = tokenizer.pad_token
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    """Total parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
