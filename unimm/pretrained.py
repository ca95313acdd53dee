"""Load and save whole models: released deepseek-ai folders and unimm's own format.

unimm's format is a folder with ``config.yaml`` (the resolved config), ``model.safetensors`` (every weight, VAE
included) and the tokenizer files. ``load_pretrained`` also reads released Janus / Janus-Pro / JanusFlow folders
(``config.json`` of type ``multi_modality`` with ``model.safetensors``, ``pytorch_model.bin`` or sharded ``.bin``
files and an index), converting names with the tested converters in :mod:`unimm.checkpoint`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .build import build_model, build_processor
from .checkpoint.io import load_into, load_weights
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


#: (config slot, module) of the parts that may load their weights from a folder of their own (``path``).
PART_FOLDER_SLOTS = (
    ("generator.autoencoder", "generator.autoencoder"),
    ("und_encoder.autoencoder", "und_encoder.tokenizer"),  # the shared-VQ understanding encoder
    ("und_encoder", "und_encoder"),  # a pre-trained SigLIP (unimm.train.encoder)
)


def _external_prefixes(cfg: DictConfig) -> tuple[str, ...]:
    """Weights that may come from outside the checkpoint: parts loaded from their own folder (``path``)."""
    return tuple(f"{module}." for slot, module in PART_FOLDER_SLOTS
                 if (OmegaConf.select(cfg.model, slot) or {}).get("path"))


def released_config(folder: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> DictConfig:
    """The unimm config for a released folder, with ``overrides`` applied."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    cfg = apply_overrides(OmegaConf.create(config_from_released(raw, folder)), overrides)
    validate_sections(cfg)
    return cfg


def load_pretrained(
    path: str | Path, overrides: tuple[str, ...] | list[str] = (), device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Pretrained:
    """Load a model folder (released Janus / Janus-Pro / JanusFlow layout, or unimm's) with its processor.

    Args:
        path: the folder.
        overrides: dotlist config overrides applied before building (``model.generator.image_size=256``).
        device, dtype: where and in what precision to put the weights.

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
    model = build_model(cfg)
    processor = build_processor(cfg, model)
    load_into(model, state, source=source, ignore_missing=_external_prefixes(cfg))
    model.to(device=device, dtype=dtype).eval()
    return Pretrained(model, processor, cfg)


def save_pretrained(model: UnifiedModel, processor: Processor, cfg: DictConfig, path: str | Path) -> Path:
    """Write ``model`` in unimm's format: ``config.yaml``, ``model.safetensors`` and the tokenizer files.

    A part loaded from a folder of its own (``path``: a diffusers VAE, a trained VQ tokenizer, a pre-trained
    encoder) is saved with the rest, so the folder no longer depends on that one; its architecture is written into
    the config instead of the path.
    """
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for slot_name, module_name in PART_FOLDER_SLOTS:
        slot = OmegaConf.select(cfg.model, slot_name)
        if slot is None or not slot.get("path"):
            continue
        part = model.get_submodule(module_name)
        slot.path = None
        if hasattr(part, "vae"):
            slot.config = {k: v for k, v in dict(part.vae.config).items() if not k.startswith("_")}
        else:
            slot.update(part.architecture)
    # A timm encoder may start from weights outside the checkpoint (a file, a folder, a hub name); they are saved
    # with the rest, so its slot is rewritten to rebuild it without them (resolved sizes and normalisation).
    standalone_config = getattr(model.und_encoder, "standalone_config", None)
    if standalone_config is not None:
        cfg.model.und_encoder.update(standalone_config())
    cfg.processor = {**OmegaConf.to_container(cfg.get("processor") or {}), **processor.settings(), "tokenizer": "."}
    processor.tokenizer.save_pretrained(str(folder))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return folder
