"""Load and save whole models: released deepseek-ai folders and unimm's own format.

unimm's format is a folder with ``config.yaml`` (the resolved config), ``model.safetensors`` (every weight, VAE
included) and the tokenizer files. ``load_pretrained`` also reads released Janus / Janus-Pro / JanusFlow folders
(``config.json`` of type ``multi_modality`` with ``model.safetensors``, ``pytorch_model.bin`` or sharded ``.bin``
files and an index), converting names with the tested converters in :mod:`unimm.checkpoint`.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .build import build_model, build_processor
from .backbones.base import Backbone
from .checkpoint.io import load_into, load_weights, tied_aliases
from .checkpoint.skeleton import skeleton
from .encoders.base import UnderstandingEncoder
from .generation.autoencoder import ImageAutoencoder
from .checkpoint.released import config_from_released, convert_released, released_kind
from .config import apply_overrides, load_config, validate_sections
from .model import UnifiedModel
from .processor import Processor
from .registry import CheckpointError

#: The small Janus-style model trained on the shapes benchmark by ``unimm reproduce``, shipped in the package so
#: that ``unimm generate`` / ``unimm understand`` work with no download (README: its measured scores).
DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "models" / "shapes-janus"


@dataclass
class Pretrained:
    """A loaded model with what belongs to it: ``model``, ``processor`` and the resolved ``config``."""

    model: UnifiedModel
    processor: Processor
    config: DictConfig

    def __iter__(self):  # allows `model, processor, cfg = load_pretrained(path)`
        return iter((self.model, self.processor, self.config))


def folded_parts(model: UnifiedModel) -> list[tuple[str, torch.nn.Module, dict]]:
    """(module name, module, slot arguments) of every part loaded from a folder of its own (``path``: a diffusers
    VAE, a trained VQ tokenizer, a pre-trained encoder, a pretrained language model): what each part's contract
    method ``folded_config`` reports."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, (UnderstandingEncoder, ImageAutoencoder, Backbone)):
            folded = module.folded_config()
            if folded is not None:
                found.append((name, module, folded))
    return found


def released_config(folder: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """The unimm config for a released folder, with ``overrides`` applied."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    cfg = apply_overrides(OmegaConf.create(config_from_released(raw, folder)), overrides)
    validate_sections(cfg)
    return cfg


def load_pretrained(
    path: str | Path, overrides: tuple[str, ...] | list[str] = (), device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None, lean: bool = True,
) -> Pretrained:
    """Load a model folder (released Janus / Janus-Pro / JanusFlow layout, or unimm's) with its processor.

    The model is built as a skeleton (:mod:`unimm.checkpoint.skeleton`: parameters on the meta device, buffers
    real, parts with folders of their own loaded from them) and the checkpoint's memory-mapped tensors become its
    parameters, cast one at a time: no random initialisation and no second copy of the weights
    (docs/performance.md has the figures).

    Args:
        path: the folder.
        overrides: dotlist config overrides applied before building (``model.generator.image_size=256``).
        device, dtype: where and in what precision to put the weights (default: the CPU, float32).
        lean: False builds the model with random weights first and copies the checkpoint in (slower, twice the
            memory); for a part of your own whose ``__init__`` computes from its parameters.

    Raises:
        CheckpointError: not a model folder, unreadable weights, or keys that do not match (all listed).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    if (folder / "config.yaml").is_file():
        cfg = load_config(folder / "config.yaml", overrides)
        state = load_weights(folder)
        source = f"unimm checkpoint {folder}"
    elif (folder / "config.json").is_file():
        kind = released_kind(json.loads((folder / "config.json").read_text()))
        cfg = released_config(folder, overrides)
        state = convert_released(load_weights(folder), kind)
        source = f"released {kind} checkpoint {folder}"
    else:
        raise CheckpointError(f"{folder} has neither config.yaml (unimm) nor config.json (released Janus layout)")
    with skeleton() if lean else nullcontext():
        model = build_model(cfg)
    # Outside the skeleton: a grown embedding table stays where the old one is (meta, or a part's real weights).
    processor = build_processor(cfg, model)
    # Parts loaded from their own folder already hold their weights; a checkpoint may leave them out.
    external = tuple(f"{name}." for name, _, _ in folded_parts(model))
    for name, module in model.named_modules():
        if isinstance(module, UnderstandingEncoder):  # e.g. position embeddings saved at another image size
            state = module.adapt_checkpoint(state, f"{name}.")
    load_into(model, state, source=source, ignore_missing=external, dtype=dtype, device=device)
    model.to(device=device, dtype=dtype).eval()  # buffers and folder parts; the loaded weights are there already
    return Pretrained(model, processor, cfg)


def save_pretrained(model: UnifiedModel, processor: Processor, cfg: DictConfig, path: str | Path) -> Path:
    """Write ``model`` in unimm's format: ``config.yaml``, ``model.safetensors`` and the tokenizer files.

    A part loaded from a folder of its own (``path``: a diffusers VAE, a trained VQ tokenizer, a pre-trained
    encoder) is saved with the rest, so the folder no longer depends on that one; its architecture is written into
    the config instead of the path. The same holds for a backbone loaded from a transformers folder
    (``pretrained:``). Each such part says what to write through its contract's ``folded_config()``. A module
    shared by two parts (tied weights) is written once, under its first name.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for _, part, folded in folded_parts(model):
        slot = OmegaConf.select(cfg, part.config_path)
        if slot is not None:
            for key in ("path", "pretrained"):  # the folder the part came from is no longer needed
                if key in slot:
                    slot[key] = None
            slot.update(folded)
    cfg.processor = {**OmegaConf.to_container(cfg.get("processor") or {}), **processor.settings(), "tokenizer": "."}
    processor.tokenizer.save_pretrained(str(folder))
    aliases = tied_aliases(model)  # a shared module is saved once, under its first name
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in aliases}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return folder

