"""The language backbone: any transformers causal LM, from config fields or a pretrained folder, behind one contract.

Janus, Janus-Pro and JanusFlow use DeepSeek-LLM, a Llama architecture (1.3B: 24 layers, width 2048; 7B: 30 layers,
width 4096). Nothing here is Llama-specific: ``model_type`` picks any causal-LM family that transformers knows,
and the keys after it are that family's config fields, checked against its config class so a misspelled key
fails instead of being silently stored. Three ways to get a backbone:

* config fields only (random weights): ``{type: hf_causal_lm, model_type: qwen2, hidden_size: 64, ...}``;
* a local transformers folder (``config.json``, weights, tokenizer files): ``{type: hf_causal_lm, pretrained:
  FOLDER}``, loaded with ``AutoModelForCausalLM.from_pretrained`` and nothing downloaded. Fields given beside
  ``pretrained`` must agree with the folder's config, except those in ``RUNTIME_FIELDS`` (attention kernel,
  gradient checkpointing, dropout), which may change. Under ``with torch.device("meta")`` only the folder's
  ``config.json`` is read;
* a model built outside unimm: ``CausalLMBackbone.from_model(AutoModelForCausalLM.from_config(...))``.

The backbone contract: what the unified model and the generation paths use, and nothing else
-------------------------------------------------------------------------------------------
(B batch, T new positions, T_past cached positions, D ``hidden_size``, V ``vocab_size``)

* ``embed(input_ids)``: token embeddings, (B, T) long -> (B, T, D).
* ``forward(inputs_embeds, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False,
  output_hidden_states=False) -> BackboneOutput``: the decoder on embeddings (B, T, D). ``attention_mask``
  (B, T_past + T) is 1 on real tokens (batches are left padded); ``position_ids`` (B, T) (see
  :func:`positions_from_mask`); ``past_key_values`` the cache a previous call returned. The output's
  ``hidden_states`` (B, T, D) are after the final norm; ``past_key_values`` is the updated cache when
  ``use_cache``; ``all_hidden_states`` the ``num_layers + 1`` states (embeddings first) when
  ``output_hidden_states`` (JanusFlow's REPA reads one of them).
* ``logits(hidden_states)``: the LM head, (..., D) -> (..., V).
* ``hidden_size`` (D), ``vocab_size`` (V, rows of the embedding table), ``num_layers``.

:class:`CausalLMBackbone` also offers ``resize_vocab`` (the processor grows the table for added image tokens),
``set_grad_checkpointing`` and ``folded_config`` (what ``save_pretrained`` writes for a backbone from a folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import BACKBONES, CheckpointError, ConfigError, InputError
from ..registry.errors import did_you_mean
from .base import Backbone, BackboneOutput, positions_from_mask  # noqa: F401  (re-exported)

# Config fields every transformers config accepts but that say nothing about the architecture.
_ALWAYS_ALLOWED = {"torch_dtype", "dtype", "_attn_implementation_autoset", "transformers_version", "architectures"}
#: Fields that may differ from a pretrained folder's config: they change how the model runs or trains, not its
#: weights (``attn_implementation`` and ``gradient_checkpointing`` are the backbone's own arguments).
RUNTIME_FIELDS = {"attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "use_cache"}
#: Weight files ``from_pretrained`` reads, one of which a pretrained folder must hold.
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def _config_class(model_type: str, where: str):
    """transformers' config class for ``model_type``; an unknown type suggests the closest one."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        names = sorted(CONFIG_MAPPING.keys())
        hint = did_you_mean(model_type, names)
        raise ConfigError(f"{where}.model_type: transformers has no model type '{model_type}'.{hint}")
    return CONFIG_MAPPING[model_type]


def _check_fields(model_type: str, fields: dict[str, Any], where: str) -> tuple[type, dict[str, Any]]:
    """Reject fields that ``model_type``'s config class does not define, suggesting the closest one.

    Returns:
        The config class and its default fields.
    """
    config_class = _config_class(model_type, where)
    # to_dict() names the family's own fields; attribute_map adds the common aliases (hidden_size for gpt2's n_embd)
    defaults = config_class().to_dict()
    known = set(defaults) | set(getattr(config_class, "attribute_map", {})) | _ALWAYS_ALLOWED
    for key in fields:
        if key not in known:
            hint = did_you_mean(key, sorted(known))
            raise ConfigError(f"{where}.{key}: not a field of transformers' {model_type} config.{hint}")
    return config_class, defaults


def _hf_config(model_type: str, fields: dict[str, Any], where: str):
    """Build a transformers config for ``model_type``, rejecting fields its config class does not define."""
    from transformers import AutoConfig

    config_class, defaults = _check_fields(model_type, fields, where)
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


def _check_causal_lm(hf_config, where: str, source: str) -> None:
    """Fail in one line when transformers has no causal LM for this config (a vision model, an encoder-only one)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(hf_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"{where}: {source} is a {hf_config.model_type!r} model, for which transformers has no "
                          "causal LM (AutoModelForCausalLM); choose a decoder family such as llama, qwen2 or gpt2")


def _plain(value: Any) -> Any:
    """Tuples as lists, so a YAML list compares equal to the same values read from a config.json."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _pretrained_config(folder: Path, model_type: str | None, fields: dict[str, Any], where: str):
    """The folder's transformers config, after checking that ``fields`` agree with it.

    Raises:
        CheckpointError: no such folder, or no ``config.json`` / weights in it.
        ConfigError: an unknown field, or one that contradicts the folder (both values named).
    """
    from transformers import AutoConfig

    if not folder.is_dir():
        raise CheckpointError(f"{where}.pretrained: no folder {folder}; give a local transformers model folder")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{where}.pretrained: {folder} has no config.json; give a transformers model folder "
                              "(written by save_pretrained)")  # fmt: skip
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{where}.pretrained: {folder} has no weights ({', '.join(WEIGHT_FILES)})")
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{where}.pretrained: cannot read {folder}/config.json ({reason})") from err
    _check_causal_lm(hf_config, where, f"{folder}")
    folder_type = hf_config.model_type
    if model_type is not None and model_type != folder_type:
        raise ConfigError(f"{where}: {folder} holds a {folder_type!r} model but the slot asks for {model_type!r}; "
                          "use type: hf_causal_lm without model_type to take the folder's")  # fmt: skip
    _check_fields(folder_type, fields, where)
    for key, value in fields.items():
        if key in _ALWAYS_ALLOWED or key in RUNTIME_FIELDS:
            continue
        folder_value = getattr(hf_config, key, None)
        if _plain(value) != _plain(folder_value):
            raise ConfigError(f"{where}.{key} = {value!r} contradicts {folder}/config.json, which has {key} = "
                              f"{folder_value!r}; remove the key to use the folder's value")  # fmt: skip
    for key in RUNTIME_FIELDS & set(fields):
        setattr(hf_config, key, fields[key])
    return hf_config


def _load_pretrained(folder: Path, hf_config, attn_implementation: str, where: str) -> nn.Module:
    """The folder's causal LM with its weights, or its bare architecture under ``torch.device("meta")``."""
    from pickle import UnpicklingError

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if torch.get_default_device().type == "meta":  # config show / a big model's skeleton: read no weights
        hf_config._attn_implementation = attn_implementation
        return AutoModelForCausalLM.from_config(hf_config)
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            str(folder), config=hf_config, local_files_only=True, dtype=torch.get_default_dtype(),
            attn_implementation=attn_implementation, output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, SafetensorError, UnpicklingError) as err:  # unreadable weight files
        raise CheckpointError(f"{where}.pretrained: cannot load the weights in {folder} "
                              f"({str(err).strip().splitlines()[0]})") from err  # fmt: skip
    missing = sorted(info["missing_keys"]) + sorted(info["mismatched_keys"])
    if missing:
        raise CheckpointError(f"{where}.pretrained: the weights in {folder} lack or mis-size {len(missing)} "
                              f"tensor(s) of its model, e.g. {missing[0]}; is the folder complete?")  # fmt: skip
    return lm


class CausalLMBackbone(Backbone):
    """A transformers causal LM (decoder, final norm, LM head) used as the unified model's backbone.

    Args:
        model_type: transformers model type ("llama", "qwen2", "gpt_neox", ...); optional with ``pretrained``
            (the folder's config names it).
        gradient_checkpointing: recompute each layer's activations in the backward pass to save memory.
        attn_implementation: "sdpa" (default) or "eager".
        pretrained: a local transformers folder to load the architecture and weights from.
        **config: the family's config fields (hidden_size, num_hidden_layers, vocab_size, ...); with
            ``pretrained`` they must agree with the folder's (``RUNTIME_FIELDS`` excepted).
    """

    def __init__(
        self,
        model_type: str | None = "llama",
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        pretrained: str | Path | None = None,
        **config: Any,
    ):
        super().__init__()
        where = "model.backbone"
        if pretrained is not None:
            folder = Path(pretrained)
            hf_config = _pretrained_config(folder, model_type, config, where)
            lm = _load_pretrained(folder, hf_config, attn_implementation, where)
        else:
            from transformers import AutoModelForCausalLM

            if model_type is None:
                raise ConfigError(f"{where}.model_type: required without 'pretrained'; name a transformers family "
                                  "(llama, qwen2, gpt2, ...) or give pretrained: FOLDER")  # fmt: skip
            hf_config = _hf_config(model_type, config, where=where)
            _check_causal_lm(hf_config, where, f"model_type {model_type!r}")
            hf_config._attn_implementation = attn_implementation
            lm = AutoModelForCausalLM.from_config(hf_config)
        self._attach(lm, folder=Path(pretrained) if pretrained is not None else None)
        if gradient_checkpointing:
            self.set_grad_checkpointing(True)

    def _attach(self, lm: nn.Module, folder: Path | None) -> None:
        self.lm = lm
        self.model_type: str = lm.config.model_type
        #: The transformers folder the weights came from (its tokenizer is the processor's default), or None.
        self.pretrained: Path | None = folder

    @classmethod
    def from_model(cls, model: nn.Module) -> CausalLMBackbone:
        """Wrap a causal LM built outside unimm (``AutoModelForCausalLM.from_config`` / ``from_pretrained``).

        The model is used as it is (same module, same weights, its own attention kernel), so the generation paths
        and :class:`unimm.UnifiedModel` can run on it.

        Raises:
            InputError: ``model`` is not a transformers causal LM with an LM head.
        """
        from transformers import PreTrainedModel

        if not isinstance(model, PreTrainedModel) or model.get_output_embeddings() is None:
            raise InputError(f"CausalLMBackbone.from_model needs a transformers causal LM with an LM head (e.g. "
                             f"AutoModelForCausalLM.from_config(config)), got {type(model).__name__}")  # fmt: skip
        backbone = cls.__new__(cls)  # skip __init__: the language model exists already
        nn.Module.__init__(backbone)
        backbone._attach(model, folder=None)
        return backbone

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
        # transformers 5 names the cache argument and output field ``cache`` (``past_key_values`` still works but
        # warns on every run); the contract keeps unimm's own name.
        out = self.decoder(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        return BackboneOutput(
            hidden_states=out.last_hidden_state,
            past_key_values=out.cache if use_cache else None,
            all_hidden_states=out.hidden_states if output_hidden_states else None,
        )

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Text logits, (..., D) -> (..., V)."""
        return self.lm.get_output_embeddings()(hidden_states)

    # -- training helpers -----------------------------------------------------------------------------------
    def fsdp_units(self) -> list[nn.Module]:
        """The decoder layers (the classes transformers lists in ``_no_split_modules``), then the backbone itself
        (embeddings, final norm, LM head)."""
        names = set(getattr(self.lm, "_no_split_modules", None) or ())
        return [m for m in self.lm.modules() if type(m).__name__ in names] + [self]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn activation checkpointing of the decoder layers on or off."""
        if enable:
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.activation_checkpointing_disable()

    def resize_vocab(self, vocab_size: int) -> None:
        """Grow (or shrink) the input embeddings and LM head to ``vocab_size`` rows."""
        if vocab_size != self.vocab_size:
            self.lm.resize_token_embeddings(vocab_size, mean_resizing=False)

    # -- saving ---------------------------------------------------------------------------------------------
    def tokenizer_folder(self) -> Path | None:
        """The ``pretrained`` folder (its tokenizer files come with the weights), or None."""
        return self.pretrained

    def folded_config(self) -> dict[str, Any] | None:
        """The slot config that rebuilds this backbone without its ``pretrained`` folder, or None if it has none.

        The folder's config fields (with the vocabulary as grown by the processor) replace ``pretrained``; the
        weights themselves go into the saved model's ``model.safetensors``.
        """
        if self.pretrained is None:
            return None
        fields = {k: v for k, v in self.lm.config.to_diff_dict().items()
                  if not k.startswith("_") and k not in _ALWAYS_ALLOWED and k != "model_type"}  # fmt: skip
        fields["vocab_size"] = self.vocab_size
        return {
            "type": "hf_causal_lm",
            "model_type": self.model_type,
            "attn_implementation": self.lm.config._attn_implementation,
            "gradient_checkpointing": bool(self.lm.is_activation_checkpointing),
            **_plain(fields),
        }


@BACKBONES.register("llama", aliases=("deepseek_llm",))
def llama(pretrained: str | None = None, **config: Any) -> CausalLMBackbone:
    """Llama-architecture causal LM (DeepSeek-LLM 1.3B / 7B in Janus, Janus-Pro, JanusFlow)."""
    model_type = config.pop("model_type", "llama")  # released language configs repeat it
    if model_type != "llama":
        raise ConfigError(f"model.backbone.model_type = {model_type!r} under type 'llama'; use type: hf_causal_lm")
    return CausalLMBackbone("llama", pretrained=pretrained, **config)


@BACKBONES.register("hf_causal_lm")
def hf_causal_lm(model_type: str | None = None, pretrained: str | None = None, **config: Any) -> CausalLMBackbone:
    """Any transformers causal-LM family named by ``model_type`` (qwen2, phi3, gpt_neox, ...) or a local folder."""
    return CausalLMBackbone(model_type, pretrained=pretrained, **config)
