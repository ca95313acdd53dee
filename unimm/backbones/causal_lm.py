"""The language backbone: any transformers causal LM, built from its config, behind one small interface.

Janus, Janus-Pro and JanusFlow use DeepSeek-LLM, a Llama architecture (1.3B: 24 layers, width 2048; 7B: 30 layers,
width 4096). Nothing here is Llama-specific: ``model_type`` picks any causal-LM family that transformers knows,
and the keys after it are that family's config fields, checked against its config class so a misspelled key
fails instead of being silently stored.

Shapes: ``embed(ids)`` (B, T) -> (B, T, D); ``forward(inputs_embeds)`` (B, T, D) -> ``BackboneOutput`` with the
final-norm hidden states (B, T, D); ``logits(hidden)`` (..., D) -> (..., V).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..registry import BACKBONES, ConfigError

# Config fields every transformers config accepts but that say nothing about the architecture.
_ALWAYS_ALLOWED = {"torch_dtype", "dtype", "_attn_implementation_autoset", "transformers_version", "architectures"}


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: 0 at each row's first real token (pads get 0 too). (B, T) -> (B, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class BackboneOutput:
    """What one backbone call returns.

    Attributes:
        hidden_states: (B, T, D) after the final norm.
        past_key_values: the KV cache (a transformers ``Cache``) when ``use_cache`` was set, else None.
        all_hidden_states: tuple of (B, T, D), the embeddings then each layer's output, when asked for.
    """

    hidden_states: torch.Tensor
    past_key_values: Any = None
    all_hidden_states: tuple[torch.Tensor, ...] | None = None


def _hf_config(model_type: str, fields: dict[str, Any], where: str):
    """Build a transformers config for ``model_type``, rejecting fields its config class does not define."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        names = sorted(CONFIG_MAPPING.keys())
        match = difflib.get_close_matches(model_type, names, n=1)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise ConfigError(f"{where}.model_type: transformers has no model type '{model_type}'.{hint}")
    config_class = CONFIG_MAPPING[model_type]
    # to_dict() names the family's own fields; attribute_map adds the common aliases (hidden_size for gpt2's n_embd)
    defaults = config_class().to_dict()
    known = set(defaults) | set(getattr(config_class, "attribute_map", {})) | _ALWAYS_ALLOWED
    for key in fields:
        if key not in known:
            match = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            raise ConfigError(f"{where}.{key}: not a field of transformers' {model_type} config.{hint}")
    fields = {k: v for k, v in fields.items() if k not in _ALWAYS_ALLOWED}
    _check_architecture(config_class, defaults, fields, where)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except _config_rejections() as err:  # transformers' own validation of types and of its cross-field rules
        raise ConfigError(_rejection_message(err, config_class, model_type, fields, where)) from None


#: The architecture sizes every causal-LM family has, under their common names (a family's own names for them,
#: such as gpt2's ``n_embd``, come from its config class's ``attribute_map``). Each must be a positive integer.
_POSITIVE_SIZES = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings",
)


def _check_architecture(config_class: type, defaults: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    """The checks transformers lacks (it builds a model with 0 heads or a negative width, then fails deep inside).

    Sizes must be positive integers, the attention heads must split into whole key/value groups and, unless the
    head size is given, the width into whole heads; the pad id must be a row of the embedding table. Other fields'
    types are left to transformers' own field validation (see :func:`_rejection_message`).
    """
    aliases = getattr(config_class, "attribute_map", {}) or {}
    key_of = {common: common if common in fields else aliases.get(common, common) for common in _POSITIVE_SIZES}
    given = {common: fields[key] for common, key in key_of.items() if key in fields}

    def name(common: str) -> str:  # the key as the user wrote it (hidden_size or gpt2's n_embd)
        return f"{where}.{key_of[common]}"

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for common, value in given.items():
        if value is not None and (not is_int(value) or value < 1):  # an alias (gpt2's hidden_size) has no type check
            raise ConfigError(f"{name(common)} = {value!r}: must be a positive integer")
    value = {c: given.get(c, defaults.get(key_of[c])) for c in _POSITIVE_SIZES}
    heads, width = value["num_attention_heads"], value["hidden_size"]
    kv_heads = given.get("num_key_value_heads")  # the default follows the number of heads
    if is_int(heads) and is_int(kv_heads) and heads % kv_heads:
        raise ConfigError(
            f"{name('num_key_value_heads')} = {kv_heads} does not divide {name('num_attention_heads')} = {heads}: "
            f"each key/value head serves a whole group of query heads; use a divisor of {heads}"
        )
    if given.get("head_dim") is None and is_int(heads) and is_int(width) and width % heads:
        raise ConfigError(
            f"{name('hidden_size')} = {width} is not a multiple of {name('num_attention_heads')} = {heads}: "
            f"the width is split into equal heads; change one of them (e.g. {heads * max(1, round(width / heads))})"
        )
    pad, vocab = fields.get("pad_token_id", defaults.get("pad_token_id")), value["vocab_size"]
    if is_int(pad) and is_int(vocab) and not 0 <= pad < vocab:
        raise ConfigError(
            f"{where}.pad_token_id = {pad} is not a row of the embedding table ({name('vocab_size')} = {vocab}); "
            f"set it between 0 and {vocab - 1}, or to null"
        )


def _config_rejections() -> tuple[type[Exception], ...]:
    """The errors by which a transformers config class refuses values (its strict-dataclass field and class
    validators, or a plain ValueError / TypeError in families without them)."""
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # an older huggingface_hub without strict dataclasses
        return (ValueError, TypeError)
    return (StrictDataclassError, ValueError, TypeError)


def _rejection_message(err: Exception, config_class: type, model_type: str, fields: dict[str, Any], where: str) -> str:
    """One line naming the field transformers rejected (``Validation error for field 'x'``) and its reason."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(err).__name__
    match = re.search(r"field '(\w+)'", lines[0] if lines else "")
    field = match.group(1) if match else None
    if field is None:  # a check across fields: name the first field the reason mentions ("The hidden size ...")
        spoken = reason.lower().replace(" ", "_")
        field = next((key for key in fields if key.lower() in spoken), None)
    aliases = {family: common for common, family in (getattr(config_class, "attribute_map", {}) or {}).items()}
    if field is not None and field not in fields and aliases.get(field) in fields:
        field = aliases[field]  # the user wrote the common name (hidden_size) for the family's field (n_embd)
    location = f"{where}.{field}" if field else where
    fix = f"Change it to a value {config_class.__name__} accepts."
    return f"{location}: transformers' {model_type} config rejects it: {reason} {fix}"


class CausalLMBackbone(nn.Module):
    """A transformers causal LM (decoder, final norm, LM head) used as the unified model's backbone.

    Args:
        model_type: transformers model type ("llama", "qwen2", "gpt_neox", ...).
        gradient_checkpointing: recompute each layer's activations in the backward pass to save memory.
        attn_implementation: "sdpa" (default) or "eager".
        **config: the family's config fields (hidden_size, num_hidden_layers, vocab_size, ...).
    """

    def __init__(
        self,
        model_type: str = "llama",
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        **config: Any,
    ):
        super().__init__()
        from transformers import AutoModelForCausalLM

        hf_config = _hf_config(model_type, config, where="model.backbone")
        hf_config._attn_implementation = attn_implementation
        self.lm = AutoModelForCausalLM.from_config(hf_config)
        self.model_type = model_type
        if gradient_checkpointing:
            self.set_grad_checkpointing(True)

    # -- sizes ----------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm.get_input_embeddings().num_embeddings

    @property
    def num_layers(self) -> int:
        return self.lm.config.num_hidden_layers

    @property
    def decoder(self) -> nn.Module:
        """The transformer without its LM head (``LlamaModel`` for Llama)."""
        return self.lm.get_decoder()

    # -- compute --------------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings, (B, T) -> (B, T, D)."""
        return self.lm.get_input_embeddings()(input_ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
    ) -> BackboneOutput:
        """Run the decoder on embeddings (B, T, D). ``attention_mask`` (B, T_past + T) marks real tokens with 1."""
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        return BackboneOutput(
            hidden_states=out.last_hidden_state,
            past_key_values=out.past_key_values if use_cache else None,
            all_hidden_states=out.hidden_states if output_hidden_states else None,
        )

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Text logits, (..., D) -> (..., V)."""
        return self.lm.get_output_embeddings()(hidden_states)

    # -- training helpers -----------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the decoder layers on or off."""
        if enable:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_disable()

    def resize_vocab(self, vocab_size: int) -> None:
        """Grow (or shrink) the input embeddings and LM head to ``vocab_size`` rows."""
        if vocab_size != self.vocab_size:
            self.lm.resize_token_embeddings(vocab_size, mean_resizing=False)


@BACKBONES.register("llama", aliases=("deepseek_llm",))
def llama(**config: Any) -> CausalLMBackbone:
    """Llama-architecture causal LM (DeepSeek-LLM 1.3B / 7B in Janus, Janus-Pro, JanusFlow)."""
    model_type = config.pop("model_type", "llama")  # released language configs repeat it
    if model_type != "llama":
        raise ConfigError(f"model.backbone.model_type = {model_type!r} under type 'llama'; use type: hf_causal_lm")
    return CausalLMBackbone("llama", **config)


@BACKBONES.register("hf_causal_lm")
def hf_causal_lm(model_type: str, **config: Any) -> CausalLMBackbone:
    """Any transformers causal-LM family named by ``model_type`` (qwen2, phi3, gpt_neox, ...)."""
    return CausalLMBackbone(model_type, **config)
