"""Released deepseek-ai checkpoints (Janus, Janus-Pro, JanusFlow) -> unimm configs and state dicts.

A released folder holds ``config.json`` with ``"model_type": "multi_modality"`` and either

* the Janus / Janus-Pro parts: ``vision_config``, ``aligner_config``, ``gen_vision_config``, ``gen_aligner_config``,
  ``gen_head_config``, ``language_config``; or
* the JanusFlow parts: ``vision_und_enc_config``, ``vision_gen_enc_config``, ``vision_gen_dec_config``,
  ``language_config`` (the SDXL VAE is a separate diffusers folder).

``config_from_released`` maps the first onto unimm's slots; ``convert_released`` maps the weights, delegating each
part's names to the converter that lives beside the part. Both are pure functions, tested on the golden cases and
on the full-size manifests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..encoders.siglip import convert_siglip, from_released_params
from ..generation.flow_path import convert_janusflow_gen
from ..generation.vq_path import convert_janus_gen, janus_generator_config
from ..registry import CheckpointError

# Language-config fields that describe the released run, not the architecture.
_LANGUAGE_DROP = {"_name_or_path", "architectures", "torch_dtype", "dtype", "_attn_implementation_autoset",
                  "transformers_version", "model_type"}


def released_kind(config: dict[str, Any]) -> str:
    """"janus" or "janusflow" for a released ``config.json``; raises for anything else."""
    if config.get("model_type") != "multi_modality":
        raise CheckpointError(
            f"config.json has model_type {config.get('model_type')!r}; unimm reads released 'multi_modality' "
            f"checkpoints (Janus, Janus-Pro, JanusFlow), transformers' 'janus' folders or its own (config.yaml)"
        )
    if "vision_gen_enc_config" in config:
        return "janusflow"
    if "gen_vision_config" in config:
        return "janus"
    raise CheckpointError("config.json is multi_modality but has neither Janus nor JanusFlow generation configs")


def _backbone_config(config: dict[str, Any]) -> dict[str, Any]:
    language = dict(config["language_config"])
    model_type = language.get("model_type", "llama")
    if model_type != "llama":
        raise CheckpointError(f"released language model type {model_type!r}: expected llama (DeepSeek-LLM)")
    return {"type": "llama", **{k: v for k, v in language.items() if k not in _LANGUAGE_DROP}}


def _aligner_config(params: dict[str, Any]) -> dict[str, Any]:
    kind = params.get("projector_type", "mlp_gelu")
    out: dict[str, Any] = {"type": kind}
    if kind == "mlp_gelu":
        out["depth"] = params.get("depth", 1)
    if "input_dim" in params:
        out["in_dim"] = params["input_dim"]
    if "n_embed" in params:
        out["out_dim"] = params["n_embed"]
    return out


def config_from_released(config: dict[str, Any], folder: str | Path | None = None) -> dict[str, Any]:
    """A unimm config (``model`` + ``processor`` sections) for a released ``config.json``.

    The generated image size is not stored in released configs; it is taken as the understanding encoder's
    input size (384 for every released model), and can be overridden with ``model.generator.image_size``.
    """
    kind = released_kind(config)
    vision_key = "vision_config" if kind == "janus" else "vision_und_enc_config"
    encoder = {"type": "siglip", **from_released_params(config[vision_key]["params"])}
    image_size = encoder.get("image_size") or 384
    model: dict[str, Any] = {"und_encoder": encoder, "backbone": _backbone_config(config)}
    if kind == "janus":
        model["und_aligner"] = _aligner_config(config["aligner_config"]["params"])
        model["generator"] = janus_generator_config(config, image_size=image_size)
    else:
        vae_folder = Path(folder) / "vae" if folder is not None else None
        autoencoder: dict[str, Any] = {"type": "autoencoder_kl"}
        if vae_folder is not None and (vae_folder / "config.json").is_file():
            autoencoder["path"] = str(vae_folder)
        model["und_aligner"] = {"type": "linear"}
        model["und_start_embed"] = True
        model["generator"] = {
            "type": "rectified_flow",
            "autoencoder": autoencoder,
            "encoder": dict(config["vision_gen_enc_config"]["params"]),
            "decoder": dict(config["vision_gen_dec_config"]["params"]),
            "image_size": image_size,
            "rms_norm_eps": config["language_config"].get("rms_norm_eps", 1e-6),
        }
    processor: dict[str, Any] = {}
    if folder is not None:
        from ..processor import released_processor_settings

        if (Path(folder) / "processor_config.json").is_file():
            settings = released_processor_settings(folder)
            settings.pop("learned_image_start", None)
            processor = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
        processor["tokenizer"] = str(folder)
    return {"name": Path(folder).name if folder else kind, "model": model, "processor": processor}


def _take(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def convert_released(state_dict: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """Released Janus (``kind="janus"``) or JanusFlow (``"janusflow"``) weights -> unimm names.

    Raises:
        CheckpointError: listing every key that belongs to no known part.
    """
    out: dict[str, torch.Tensor] = {}
    if kind == "janus":
        vision_prefix, aligner_prefix = "vision_model.", "aligner."
        gen_prefixes = ("gen_vision_model.", "gen_embed.", "gen_aligner.", "gen_head.")
        gen = {k: v for k, v in state_dict.items() if k.startswith(gen_prefixes)}
        out.update({f"generator.{k}": v for k, v in convert_janus_gen(gen).items()})
        known = (vision_prefix, aligner_prefix, "language_model.") + gen_prefixes
    elif kind == "janusflow":
        vision_prefix, aligner_prefix = "vision_und_enc_model.", "vision_und_enc_aligner."
        out.update({f"generator.{k}": v for k, v in convert_janusflow_gen(state_dict).items()})
        if "beg_of_und_embed" in state_dict:
            out["und_start_embed"] = state_dict["beg_of_und_embed"]
        known = (vision_prefix, aligner_prefix, "language_model.", "vision_gen_", "beg_of_und_embed")
    else:
        raise CheckpointError(f"unknown released checkpoint kind {kind!r}")
    out.update({f"und_encoder.{k}": v for k, v in convert_siglip(_take(state_dict, vision_prefix)).items()})
    aligner = _take(state_dict, aligner_prefix)
    if kind == "janusflow":  # a bare nn.Linear there; unimm's linear aligner keeps it in `layers`
        aligner = {f"layers.{k}": v for k, v in aligner.items()}
    out.update({f"und_aligner.{k}": v for k, v in aligner.items()})
    out.update({f"backbone.lm.{k}": v for k, v in _take(state_dict, "language_model.").items()})
    stray = sorted(k for k in state_dict if not k.startswith(known))
    if stray:
        raise CheckpointError(f"{len(stray)} released key(s) belong to no known part: {stray[:20]}")
    return out
