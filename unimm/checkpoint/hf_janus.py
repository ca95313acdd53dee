"""transformers' Janus layout (``model_type: "janus"``), both ways: read it into unimm, write it from unimm.

transformers 5 ships Janus / Janus-Pro as ``JanusForConditionalGeneration`` with its own folder layout:
``config.json`` (``text_config`` a Llama config, ``vision_config``, ``vq_config``, ``image_token_id``),
``model.safetensors`` (names below), ``generation_config.json``, and the ``JanusProcessor`` files
(``processor_config.json`` with ``num_image_tokens`` and the image processor's settings, the chat template, a
tokenizer whose ``extra_special_tokens`` name ``image_token`` / ``boi_token`` / ``eoi_token``).

* :func:`config_from_hf` maps ``config.json`` onto unimm's slots (SigLIP encoder, ``mlp_gelu`` aligners, the VQ
  path, a Llama backbone), every width taken from the config; anything transformers can hold but unimm cannot
  build is refused naming the field.
* :func:`from_hf` / :func:`to_hf` rename weights with one table of rules, :data:`RULES`, read in both directions.
* :func:`save_hf` writes the layout from a unimm model, refusing parts it cannot express, naming the part.

Where transformers computes differently from the released code, a folder read from this layout follows
transformers (the released folders keep following the reference): its image transform is transformers' own
``JanusImageProcessor`` (``und_encoder.image_processor: transformers``). The guidance rows need no setting: its rule
(keep BOS and BOI, pad the rest) equals the reference's on unimm's prompts, which start with BOS and end with BOI,
and stacking the rows [cond; uncond] instead of interleaving them changes no number. Tokenizing images (training)
keeps the reference's l2-normalised nearest code in both layouts; transformers' ``JanusVQVAE.encode`` takes the raw
nearest code. ``tests/parity/test_hf_janus_parity.py`` pins each of these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..registry import CheckpointError, InputError

# -- weight names ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One name rule: ``unimm`` and ``hf`` templates whose ``{fields}`` carry over (see :data:`FIELDS`).

    ``split``: the unimm tensor is the concatenation of the HF tensors named by replacing ``{qkv}`` with each of
    ``q``, ``k``, ``v`` (timm's fused attention input vs transformers' three projections), along dim 0.
    ``unsqueeze``: the unimm tensor has an extra leading dimension of 1 (timm's ``pos_embed`` (1, N, D)).
    """

    unimm: str
    hf: str
    split: bool = False
    unsqueeze: bool = False


@dataclass(frozen=True)
class Field:
    """A template field: the regex it matches on each side and how its value maps (``levels`` = VQ levels)."""

    unimm: str
    hf: str
    to_hf: Callable[[str, int], str] = lambda value, levels: value
    to_unimm: Callable[[str, int], str] = lambda value, levels: value


def _mlp_to_hf(index: str, levels: int) -> str:
    """``nn.Sequential`` index of an MLP aligner's Linear (0, 2, 4 ...; GELUs between) -> transformers' name."""
    return "fc1" if index == "0" else f"hidden_layers.{int(index) // 2 - 1}"


def _mlp_to_unimm(name: str, levels: int) -> str:
    return "0" if name == "fc1" else str(2 * (int(name.split(".")[1]) + 1))


def _flip_level(level: str, levels: int) -> str:
    """taming stores decoder level i at ``up.i`` (i = 0 highest resolution); transformers in running order
    (``up.0`` lowest resolution), like the released ``conv_blocks``."""
    return str(levels - 1 - int(level))


FIELDS: dict[str, Field] = {
    "n": Field(r"\d+", r"\d+"),
    "p": Field(r"weight|bias", r"weight|bias"),
    "rest": Field(r".+", r".+"),
    "mlp": Field(r"\d*[02468]", r"fc1|hidden_layers\.\d+", _mlp_to_hf, _mlp_to_unimm),
    "level": Field(r"\d+", r"\d+", _flip_level, _flip_level),
}

#: unimm name <-> transformers name, first match wins (so specific rules come before the ``{rest}`` ones).
RULES: tuple[Rule, ...] = (
    # SigLIP ViT (timm names) <-> JanusVisionModel; timm's attention-pool head has no counterpart (see to_hf).
    Rule("und_encoder.vit.patch_embed.proj.{p}", "model.vision_model.embeddings.patch_embedding.{p}"),
    Rule("und_encoder.vit.pos_embed", "model.vision_model.embeddings.position_embedding.weight", unsqueeze=True),
    Rule("und_encoder.vit.blocks.{n}.norm1.{p}", "model.vision_model.encoder.layers.{n}.layer_norm1.{p}"),
    Rule("und_encoder.vit.blocks.{n}.norm2.{p}", "model.vision_model.encoder.layers.{n}.layer_norm2.{p}"),
    Rule("und_encoder.vit.blocks.{n}.attn.qkv.{p}", "model.vision_model.encoder.layers.{n}.self_attn.{qkv}_proj.{p}",
         split=True),
    Rule("und_encoder.vit.blocks.{n}.attn.proj.{p}",
         "model.vision_model.encoder.layers.{n}.self_attn.projection_layer.{p}"),
    Rule("und_encoder.vit.blocks.{n}.mlp.{rest}", "model.vision_model.encoder.layers.{n}.mlp.{rest}"),
    Rule("und_encoder.vit.norm.{p}", "model.vision_model.post_layernorm.{p}"),
    Rule("und_aligner.layers.{mlp}.{p}", "model.aligner.{mlp}.{p}"),
    # VQ path: taming's encoder / decoder names are transformers' too, except the decoder's level order.
    Rule("generator.autoencoder.decoder.up.{level}.{rest}", "model.vqmodel.decoder.up.{level}.{rest}"),
    Rule("generator.autoencoder.{rest}", "model.vqmodel.{rest}"),
    Rule("generator.embed.weight", "model.generation_embeddings.weight"),
    Rule("generator.aligner.layers.{mlp}.{p}", "model.generation_aligner.{mlp}.{p}"),
    Rule("generator.head.output_mlp_projector.{p}", "model.generation_head.proj_out.{p}"),
    Rule("generator.head.vision_head.{p}", "model.generation_head.vision_head.{p}"),
    # Llama: unimm keeps the whole LlamaForCausalLM; transformers keeps its LlamaModel and the head apart.
    Rule("backbone.lm.model.{rest}", "model.language_model.{rest}"),
    Rule("backbone.lm.lm_head.weight", "lm_head.weight"),
)

#: unimm weights transformers' layout does not hold: SigLIP's attention-pool head, which Janus never reads.
DROPPED_TO_HF = re.compile(r"und_encoder\.vit\.attn_pool\..+")
_QKV = ("q", "k", "v")


def _regex(template: str, side: str) -> re.Pattern:
    """A template's regex on one side (``"unimm"`` or ``"hf"``): each ``{field}`` a named group, ``{qkv}`` one of
    q, k, v."""
    pattern = re.escape(template).replace(r"\{qkv\}", "{qkv}")
    for name, field in FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{getattr(field, side)})")
    return re.compile(pattern.replace("{qkv}", "(?P<qkv>[qkv])"))


_COMPILED = [(rule, _regex(rule.unimm, "unimm"), _regex(rule.hf, "hf")) for rule in RULES]


def _fill(template: str, values: dict[str, str], direction: str, levels: int) -> str:
    """The other side's template with the matched ``values``, each mapped by its field (``direction`` is
    ``"to_hf"`` or ``"to_unimm"``)."""
    out = template
    for name, value in values.items():
        if name in FIELDS:
            value = getattr(FIELDS[name], direction)(value, levels)
        out = out.replace("{" + name + "}", value)
    return out


def vq_levels(state: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of resolution levels of the VQ decoder whose ``up.N`` keys sit under ``prefix``."""
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """unimm weights -> transformers' Janus names. SigLIP's attention-pool head is dropped (:data:`DROPPED_TO_HF`).

    Raises:
        CheckpointError: listing every key no rule covers.
    """
    levels = vq_levels(state, "generator.autoencoder.decoder.up.")
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in state.items():
        if DROPPED_TO_HF.fullmatch(key):
            continue
        rule, match = next(((r, m) for r, u, _ in _COMPILED if (m := u.fullmatch(key))), (None, None))
        if rule is None:
            unknown.append(key)
            continue
        name = _fill(rule.hf, match.groupdict(), "to_hf", levels)
        if rule.split:
            for part, chunk in zip(_QKV, tensor.chunk(3, dim=0)):
                out[name.replace("{qkv}", part)] = chunk.contiguous()
        else:
            out[name] = tensor.squeeze(0) if rule.unsqueeze else tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} unimm key(s) have no place in transformers' Janus layout: "
                              f"{sorted(unknown)[:20]}")
    return out


def from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Janus weights -> unimm names (the inverse of :func:`to_hf`).

    Raises:
        CheckpointError: listing every key no rule covers, or a q/k/v projection without its two siblings.
    """
    levels = vq_levels(state, "model.vqmodel.decoder.up.")
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, tensor in state.items():
        rule, match = next(((r, m) for r, _, h in _COMPILED if (m := h.fullmatch(key))), (None, None))
        if rule is None:
            unknown.append(key)
            continue
        values = {k: v for k, v in match.groupdict().items() if k != "qkv"}
        name = _fill(rule.unimm, values, "to_unimm", levels)
        if rule.split:
            fused.setdefault(name, {})[match.group("qkv")] = tensor
        else:
            out[name] = tensor.unsqueeze(0) if rule.unsqueeze else tensor
    if unknown:
        raise CheckpointError(f"{len(unknown)} key(s) of the transformers Janus checkpoint belong to no part unimm "
                              f"builds: {sorted(unknown)[:20]}")
    for name, parts in fused.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"{name}: the checkpoint has only the {sorted(parts)} projections of q, k, v")
        out[name] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


# -- config.json -> unimm config ---------------------------------------------------------------------------------
# Fields of transformers' sub-configs that unimm's parts fix, with the value they must have: a folder that sets
# another value describes a network unimm does not build, and is refused naming the field.
_VISION_FIXED = {"num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6, "attention_bias": True,
                 "use_qk_norm": False}
_VQ_FIXED = {"double_latent": False, "in_channels": 3, "out_channels": 3, "hidden_act": "gelu"}
_TEXT_DROP = {"_name_or_path", "architectures", "torch_dtype", "dtype", "transformers_version", "model_type",
              "output_attentions", "output_hidden_states", "return_dict", "chunk_size_feed_forward",
              "problem_type", "id2label", "label2id", "is_encoder_decoder", "tokenizer_class"}


def _check_fixed(section: dict[str, Any], fixed: dict[str, Any], where: str) -> None:
    for key, want in fixed.items():
        if key in section and section[key] != want:
            raise CheckpointError(f"config.json {where}.{key} = {section[key]!r}: unimm builds only {want!r} here")


def config_from_hf(config: dict[str, Any]) -> dict[str, Any]:
    """The unimm ``model`` section for transformers' Janus ``config.json`` (the processor is read separately).

    Raises:
        CheckpointError: a field unimm cannot build (another text model type, qk-norm, a double latent...), named.
    """
    from transformers import JanusConfig

    try:  # transformers fills the defaults (Janus-Pro-1B sizes) of every field the file leaves out
        full = JanusConfig(**{k: v for k, v in config.items() if k != "model_type"}).to_dict()
    except Exception as err:  # a value JanusConfig's own checks refuse
        raise CheckpointError(f"config.json is not a valid JanusConfig: {str(err).splitlines()[0]}") from None
    vision, vq, text = full["vision_config"], full["vq_config"], full["text_config"]
    _check_fixed(vision, _VISION_FIXED, "vision_config")
    _check_fixed(vq, _VQ_FIXED, "vq_config")
    if text.get("model_type") != "llama":
        raise CheckpointError(f"config.json text_config.model_type = {text.get('model_type')!r}: transformers' Janus "
                              "layout is read with a Llama backbone only")
    hidden = text["hidden_size"]
    for where, value in (("vision_config.projection_dim", vision["projection_dim"]),
                         ("vq_config.projection_dim", vq["projection_dim"]),
                         ("vq_config.image_token_embed_dim", vq["image_token_embed_dim"])):
        if value != hidden:
            raise CheckpointError(f"config.json {where} = {value}: must equal text_config.hidden_size = {hidden} "
                                  "(the aligners feed the language model and the image head reads it)")
    image_size, patch_size = int(vision["image_size"]), int(vision["patch_size"])  # JanusConfig takes ints only
    grid = image_size // patch_size
    if vision["num_image_tokens"] != grid * grid:
        raise CheckpointError(f"config.json vision_config.num_image_tokens = {vision['num_image_tokens']}: "
                              f"transformers decodes a {grid}x{grid} grid (image_size / patch_size), so it must be "
                              f"{grid * grid}")
    mult = list(vq["channel_multiplier"])
    # The fields the file gives (the rest are Llama's defaults either way), with the head tied as transformers
    # ties it: by the top-level flag.
    given = config.get("text_config") or {}
    backbone = {k: v for k, v in given.items() if k not in _TEXT_DROP and not k.startswith("_")}
    backbone["tie_word_embeddings"] = bool(full["tie_word_embeddings"])
    return {
        "und_encoder": {
            "type": "siglip", "variant": None, "image_size": image_size, "patch_size": patch_size,
            "width": vision["hidden_size"], "layers": vision["num_hidden_layers"],
            "heads": vision["num_attention_heads"], "mlp_ratio": vision["mlp_ratio"],
            "attention_pool": False, "image_processor": "transformers",
        },
        "und_aligner": {"type": "mlp_gelu", "depth": vision["depth"]},
        "backbone": {"type": "llama", **backbone},
        "generator": {
            "type": "vq",
            "autoencoder": {"type": "llamagen_vq", "ch": vq["base_channels"], "ch_mult": mult,
                            "z_channels": vq["latent_channels"], "num_res_blocks": vq["num_res_blocks"],
                            "codebook_size": vq["num_embeddings"], "codebook_embed_dim": vq["embed_dim"]},
            "aligner": {"type": "mlp_gelu", "depth": vq["num_hidden_layers"]},
            "head": {"type": "vq_image_head", "embed_dim": vq["projection_dim"]},
            # transformers decodes image tokens on the understanding grid: image_size / patch_size codes a side
            "image_size": grid * 2 ** (len(mult) - 1),
        },
    }


# -- processor files ---------------------------------------------------------------------------------------------
_PROBE = ("\u00a7question", "\u00a7answer", "\u00a7next")


def _chat_roles(hf_processor) -> tuple[str, str]:
    """The (user, assistant) role names of the folder's chat template, read by rendering a probe conversation:
    the template must write unimm's DeepSeek form ``USER: question\\n\\nASSISTANT: answer<eos>USER: next``.

    The probe ends with a user turn because templates of the hub's form write no separator after the last turn.
    """
    eos = hf_processor.tokenizer.eos_token or ""
    question, answer, follow_up = _PROBE
    probe = [{"role": role, "content": [{"type": "text", "text": text}]}
             for role, text in zip(("user", "assistant", "user"), _PROBE)]
    try:
        text = hf_processor.apply_chat_template(probe, tokenize=False)
    except Exception as err:  # no template, or one that does not render
        raise CheckpointError(f"the folder's chat template does not render a conversation: {err}") from None
    form = rf"(.+?): {question}\n\n(.+?): {answer}{re.escape(eos)}\1: {follow_up}\s*"
    found = re.fullmatch(form, text, re.S)
    if found is None:
        raise CheckpointError(f"the folder's chat template writes {text!r}, not the DeepSeek form "
                              "'USER: question\\n\\nASSISTANT: answer<eos>USER: ...' unimm's processor reproduces")
    return found.group(1), found.group(2)


def processor_from_hf(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """unimm ``processor`` settings for a folder in transformers' Janus layout, and what its image processor and
    processor config say: ``image_size``, ``pixel_mean``, ``pixel_std`` and ``num_image_tokens``.

    ``JanusProcessor`` itself reads the files (tokenizer with its image tokens, processor config, template).

    Raises:
        CheckpointError: unreadable files, no pad token, a template of another form, or image settings unimm's
            transform does not take (another ``min_size`` or ``rescale_factor``, a non-square size), named.
    """
    from transformers import JanusProcessor
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    try:
        hf = JanusProcessor.from_pretrained(str(folder))
    except Exception as err:  # missing files, or a tokenizer without image_token / boi_token / eoi_token
        raise CheckpointError(f"{folder}: JanusProcessor cannot read the processor files: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    if hf.tokenizer.pad_token is None:
        raise CheckpointError(f"{folder}: the tokenizer has no pad token, which batches and guidance need; "
                              "set pad_token in tokenizer_config.json")
    user, assistant = _chat_roles(hf)
    settings = {
        "tokenizer": str(folder), "roles": [user, assistant],
        "system_prompt": DEFAULT_SYSTEM_PROMPT.strip() if hf.use_default_system_prompt else "",
        "image_tag": hf.image_token, "image_start_tag": hf.image_start_token, "image_end_tag": hf.image_end_token,
        "generation_tag": hf.image_start_token, "pad_tag": hf.tokenizer.pad_token,
    }
    images = hf.image_processor
    for key, want in (("min_size", 14), ("rescale_factor", 1 / 255), ("do_pad", True), ("do_resize", True)):
        if getattr(images, key, want) != want:
            raise CheckpointError(f"{folder}: image processor {key} = {getattr(images, key)!r}; unimm reads {want!r}")
    size = dict(images.size)
    if size.get("height") != size.get("width"):
        raise CheckpointError(f"{folder}: image processor size {size}: unimm reads square images")
    return settings, {"image_size": int(size["height"]), "pixel_mean": [float(x) for x in images.image_mean],
                      "pixel_std": [float(x) for x in images.image_std],
                      "num_image_tokens": int(hf.num_image_tokens)}


def chat_template(roles: tuple[str, str] | list[str], image_tag: str, eos: str) -> str:
    """A Jinja chat template that writes unimm's DeepSeek form with these role names, for ``JanusProcessor``.

    Messages' ``content`` is a string or a list of ``{"type": "text" | "image"}`` parts (an image part becomes
    ``image_tag`` on its own line); a user turn ends with a blank line, an answer with ``eos``; an empty last
    assistant turn, or ``add_generation_prompt``, ends the text with ``ASSISTANT:``.
    """
    user, assistant = (json.dumps(r) for r in roles)
    tag, end = json.dumps(image_tag), json.dumps(eos)
    return (
        "{%- for message in messages -%}"
        "{%- set ns = namespace(text='', last='') -%}"
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}"
        f"{{%- set ns.text = ns.text + ('\\n' if ns.text else '') + {tag} -%}}{{%- set ns.last = 'image' -%}}"
        "{%- else -%}"
        "{%- set ns.text = ns.text + ('\\n' if ns.last == 'image' else (' ' if ns.text else '')) + part['text'] -%}"
        "{%- set ns.last = 'text' -%}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- set text = ns.text | trim -%}"
        f"{{%- set role = {user} if message['role'] | lower == 'user' else {assistant} -%}}"
        "{{ role }}:"
        "{%- if text -%}"
        f"{{{{ ' ' + text }}}}{{{{ '\\n\\n' if message['role'] | lower == 'user' else {end} }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {assistant} }}}}:{{%- endif -%}}"
    )


# -- unimm model -> transformers' layout -------------------------------------------------------------------------
def _refuse(part: str, why: str) -> CheckpointError:
    return CheckpointError(f"--to hf: {part} cannot be written in transformers' Janus layout: {why}")


def _mlp_depth(aligner, part: str) -> int:
    """Linear layers of an MLP aligner (Linear, then GELU + Linear pairs), which transformers' aligners hold."""
    from torch import nn

    from ..aligners.mlp import MLPAligner

    layers = getattr(aligner, "layers", None)
    if not isinstance(aligner, MLPAligner) or not isinstance(layers, nn.Sequential):
        kind = "a bare Linear (type linear)" if isinstance(layers, nn.Linear) else f"a {type(aligner).__name__}"
        raise _refuse(part, f"it is {kind}; transformers holds Linear + (GELU, Linear) stacks: use type mlp_gelu "
                      "(depth 1 is one Linear)")
    return sum(isinstance(layer, nn.Linear) for layer in layers)


def hf_config(model, image_token_id: int) -> dict[str, Any]:
    """The ``JanusConfig`` fields for a unimm model (``image_token_id``: its processor's image placeholder id), after
    checking every part has a place in the layout.

    Raises:
        CheckpointError: naming the first part transformers' Janus cannot hold, and why.
    """
    from ..backbones.causal_lm import CausalLMBackbone
    from ..encoders.siglip import SigLIPEncoder
    from ..generation.vq_path import VQGenerationPath
    from ..generation.vq_tokenizer import VQTokenizer
    from ..heads.image_head import VQImageHead

    encoder, backbone, path = model.und_encoder, model.backbone, model.generator
    if not isinstance(encoder, SigLIPEncoder):
        raise _refuse("model.und_encoder", f"it is a {type(encoder).__name__}; transformers' JanusVisionModel is a "
                      "SigLIP ViT (type siglip)")
    if not isinstance(path, VQGenerationPath):
        kind = "none" if path is None else type(path).__name__
        raise _refuse("model.generator", f"it is {kind}; transformers' Janus generates with the VQ path only "
                      "(JanusFlow's rectified flow is not in transformers)")
    if model.und_start_embed is not None:
        raise _refuse("model.und_start_embed", "JanusFlow's learned begin-of-understanding embedding has no place")
    if not isinstance(backbone, CausalLMBackbone) or backbone.model_type != "llama":
        kind = getattr(backbone, "model_type", type(backbone).__name__)
        raise _refuse("model.backbone", f"it is a {kind} model; transformers' Janus reads a Llama language model")
    vq, head = path.autoencoder, path.head
    if not isinstance(vq, VQTokenizer):
        raise _refuse("model.generator.autoencoder", f"it is a {type(vq).__name__}; transformers holds LlamaGen VQ")
    if not isinstance(head, VQImageHead) or head.output_mlp_projector.out_features != backbone.hidden_size:
        raise _refuse("model.generator.head", "transformers' image head has the language model's width inside "
                      "(embed_dim = hidden_size)")
    grid = encoder.image_size // encoder.patch_size
    if path.grid_size != grid:
        raise _refuse("model.generator.image_size", f"{path.image_size} gives a {path.grid_size}x{path.grid_size} "
                      f"code grid, but transformers decodes the understanding grid ({grid}x{grid}); convert with "
                      f"--override model.generator.image_size={grid * vq.downsample}")
    arch = vq.architecture
    text = {k: v for k, v in backbone.lm.config.to_dict().items() if k not in _TEXT_DROP and not k.startswith("_")}
    text["model_type"] = "llama"
    tied = bool(backbone.lm.config.tie_word_embeddings)
    return dict(
        text_config=text,
        vision_config=dict(
            hidden_size=encoder.out_dim, num_hidden_layers=len(encoder.vit.blocks),
            num_attention_heads=encoder.architecture["heads"], image_size=encoder.image_size,
            patch_size=encoder.patch_size, mlp_ratio=encoder.architecture["mlp_ratio"],
            projection_dim=backbone.hidden_size, depth=_mlp_depth(model.und_aligner, "model.und_aligner"),
            num_image_tokens=grid * grid,
        ),
        vq_config=dict(
            embed_dim=vq.embed_dim, num_embeddings=vq.codebook_size, latent_channels=arch["z_channels"],
            base_channels=arch["ch"], channel_multiplier=list(arch["ch_mult"]),
            num_res_blocks=arch["num_res_blocks"], projection_dim=backbone.hidden_size,
            image_token_embed_dim=backbone.hidden_size,
            num_hidden_layers=_mlp_depth(path.aligner, "model.generator.aligner"),
        ),
        image_token_id=image_token_id,
        tie_word_embeddings=tied,
    )


def save_hf(model, processor, folder: str | Path) -> Path:
    """Write ``model`` and ``processor`` in transformers' Janus layout, loadable with
    ``JanusForConditionalGeneration.from_pretrained(folder)`` and ``JanusProcessor.from_pretrained(folder)``.

    Raises:
        CheckpointError: a part the layout cannot hold (see :func:`hf_config`), or a system prompt
            ``JanusProcessor`` cannot add.
        InputError: ``folder`` holds a unimm model already.
    """
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig, JanusConfig, JanusImageProcessor, JanusProcessor
    from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT

    fields = hf_config(model, processor.image_id)
    system = processor.system_prompt or ""
    if system not in ("", DEFAULT_SYSTEM_PROMPT.strip()):
        raise _refuse("processor.system_prompt", "JanusProcessor adds its default system prompt or none; set "
                      "processor.system_prompt to '' or to that default")
    folder = Path(folder)
    if (folder / "config.yaml").is_file():  # load_pretrained would read that one, not the layout written here
        raise InputError(f"{folder} holds a unimm model (config.yaml); write transformers' layout to another folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = JanusConfig(**fields)
    config.dtype = model.dtype
    config.save_pretrained(str(folder))
    state = to_hf({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})
    if fields["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)  # transformers saves a tied head once, as the input embeddings
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    GenerationConfig(
        bos_token_id=processor.tokenizer.bos_token_id, eos_token_id=processor.eos_id, pad_token_id=processor.pad_id,
        guidance_scale=5.0, generation_kwargs={"boi_token_id": processor.image_start_id},
    ).save_pretrained(str(folder))
    processor.tokenizer.save_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(  # reloaded to carry the image tokens JanusProcessor reads
        str(folder), pad_token=processor.tokenizer.convert_ids_to_tokens(processor.pad_id),
        extra_special_tokens={"image_token": processor.image_tag, "boi_token": processor.image_start_tag,
                              "eoi_token": processor.image_end_tag})
    encoder = model.und_encoder
    image_processor = JanusImageProcessor(size={"height": encoder.image_size, "width": encoder.image_size},
                                          image_mean=list(encoder.pixel_mean), image_std=list(encoder.pixel_std),
                                          min_size=min(14, encoder.image_size))
    JanusProcessor(
        image_processor=image_processor, tokenizer=tokenizer, use_default_system_prompt=bool(system),
        chat_template=chat_template(processor.roles, processor.image_tag, processor.tokenizer.eos_token),
        num_image_tokens=encoder.num_tokens,
    ).save_pretrained(str(folder))
    return folder
