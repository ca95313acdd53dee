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
from typing import Any

import torch
from torch import nn

from ..registry import BACKBONES, ConfigError
from .base import Backbone, BackboneOutput, positions_from_mask  # noqa: F401  (re-exported)

# Config fields every transformers config accepts but that say nothing about the architecture.
_ALWAYS_ALLOWED = {"torch_dtype", "dtype", "_attn_implementation_autoset", "transformers_version", "architectures"}


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
    known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {})) | _ALWAYS_ALLOWED
    for key in fields:
        if key not in known:
            match = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            raise ConfigError(f"{where}.{key}: not a field of transformers' {model_type} config.{hint}")
    fields = {k: v for k, v in fields.items() if k not in _ALWAYS_ALLOWED}
    return AutoConfig.for_model(model_type, **fields)


class CausalLMBackbone(Backbone):
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
    def max_positions(self) -> int | None:
        """The config's ``max_position_embeddings`` (gpt2: ``n_positions``), or None."""
        return getattr(self.lm.config, "max_position_embeddings", None)

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
