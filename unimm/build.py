"""Build a unified model and its processor from a config.

Order: check every top-level slot's ``type`` and keys (nothing built yet), build the understanding encoder and
the backbone, then the parts whose widths follow from them (the understanding aligner's ``in_dim``/``out_dim``;
the generation path's ``hidden_size`` and REPA width). A config value that contradicts an inferred width fails
with both numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import parts  # noqa: F401  (registers every built-in part)
from .config import load_config
from .model import UnifiedModel
from .processor import Processor, load_tokenizer
from .registry import ALIGNERS, AUTOENCODERS, BACKBONES, ENCODERS, GENERATORS, HEADS, ConfigError, Registry, to_plain
from .registry.plugins import import_config_modules

SLOTS: dict[str, Registry] = {
    "und_encoder": ENCODERS,
    "und_aligner": ALIGNERS,
    "backbone": BACKBONES,
    "generator": GENERATORS,
}
#: Sub-slots that a part builds through a registry of its own (the generation path's autoencoder, aligner, head).
NESTED_SLOTS: dict[str, Registry] = {"autoencoder": AUTOENCODERS, "aligner": ALIGNERS, "head": HEADS}


def check_slots(model_cfg: dict) -> None:
    """Check each slot's type, keys and value types before anything is built, nested part slots included."""
    for slot, registry in SLOTS.items():
        if model_cfg.get(slot) is not None:
            _check_tree(registry, model_cfg[slot], f"model.{slot}")


def _check_tree(registry: Registry, cfg: Any, where: str) -> None:
    registry.check(cfg, where=where)
    for key, nested_registry in NESTED_SLOTS.items():
        value = cfg.get(key) if isinstance(cfg, dict) else None
        if isinstance(value, dict) and "type" in value:
            _check_tree(nested_registry, value, f"{where}.{key}")


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
    encoder = ENCODERS.build(model_cfg["und_encoder"], where="model.und_encoder")
    backbone = BACKBONES.build(model_cfg["backbone"], where="model.backbone")
    aligner = ALIGNERS.build(
        model_cfg["und_aligner"], where="model.und_aligner",
        inferred={"in_dim": encoder.out_dim, "out_dim": backbone.hidden_size},
    )
    _check_pairing(encoder, aligner)
    generator = None
    if model_cfg.get("generator"):
        generator = GENERATORS.build(
            model_cfg["generator"], where="model.generator",
            inferred={"hidden_size": backbone.hidden_size, "repa_dim": encoder.out_dim},
        )
    return UnifiedModel(encoder, aligner, backbone, generator,
                        und_start_embed=bool(model_cfg.get("und_start_embed", False)))


def _check_pairing(encoder, aligner) -> None:
    """The hybrid encoder yields (high, low) token pairs, which only the split aligner can read."""
    from .aligners.hybrid_split import HybridSplitAligner
    from .encoders.hybrid import HybridEncoder

    if isinstance(encoder, HybridEncoder) != isinstance(aligner, HybridSplitAligner):
        raise ConfigError(
            f"model.und_aligner: a {type(encoder).__name__} needs "
            f"{'the' if isinstance(encoder, HybridEncoder) else 'a single-sequence aligner, not the'} "
            f"low_high_hybrid_split_mlp_gelu aligner, got {type(aligner).__name__}; e.g. "
            f"model.und_aligner=@parts/und_aligner/{'hybrid_split_mlp_gelu' if isinstance(encoder, HybridEncoder) else 'mlp_gelu'}"
        )


def build_processor(cfg: DictConfig, model: UnifiedModel, tokenizer_path: str | Path | None = None) -> Processor:
    """The processor for ``model``: the config's template settings, the encoder's transform and token count.

    If the tokenizer has more ids than the backbone's embedding table (image tags added), the table is grown.
    """
    settings: dict[str, Any] = dict(to_plain(cfg.get("processor") or {}))
    path = tokenizer_path or settings.pop("tokenizer", None)
    settings.pop("tokenizer", None)
    if path is None:
        raise ConfigError("processor.tokenizer: no tokenizer folder given; set it in the config or load a checkpoint")
    tokenizer = load_tokenizer(path)
    encoder = model.und_encoder
    settings.setdefault("max_length", getattr(model.backbone.lm.config, "max_position_embeddings", None))
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


def count_parameters(model: torch.nn.Module) -> int:
    """Total parameters (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
