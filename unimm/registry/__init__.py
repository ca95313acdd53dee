"""Registries, one per kind of part, and the errors unimm raises.

=================  ======================================================  ==========================
registry           what it holds                                           config slot
=================  ======================================================  ==========================
``ENCODERS``       understanding encoders (SigLIP, SAM+SigLIP, shared VQ)  ``model.und_encoder``
``ALIGNERS``       projections from one width to another                   ``model.und_aligner`` ...
``BACKBONES``      causal language models (Llama, Qwen2, ...)              ``model.backbone``
``GENERATORS``     generation paths (VQ tokens, rectified flow)            ``model.generator``
``AUTOENCODERS``   image autoencoders a generation path uses (VQ, VAE)     ``model.generator.autoencoder``
``HEADS``          output heads (the VQ image-token head)                  ``model.generator.head``
=================  ======================================================  ==========================

Each registry names its contract (``unimm.encoders.base.UnderstandingEncoder``, ``unimm.aligners.base.Aligner``,
``unimm.backbones.base.Backbone``, ``unimm.generation.base.GenerationPath``,
``unimm.generation.autoencoder.ImageAutoencoder``, ``unimm.heads.base.ImageHead``): every part it builds is an
instance of that base class, and the rest of the library reads only the members the contract documents.

Parts of your own register into the same tables from your own modules: see :mod:`unimm.registry.plugins`
(``imports:`` in a config, ``--import`` on the command line, the ``unimm.parts`` entry-point group).
"""

from .errors import CheckpointError, ConfigError, InputError, UnimmError
from .registry import Registry, to_plain

# Each kind of part has one written contract, a base class in the folder of that kind.
ENCODERS = Registry("understanding encoder", contract="unimm.encoders.base:UnderstandingEncoder")
ALIGNERS = Registry("aligner", contract="unimm.aligners.base:Aligner")
BACKBONES = Registry("backbone", contract="unimm.backbones.base:Backbone")
GENERATORS = Registry("generation path", contract="unimm.generation.base:GenerationPath")
AUTOENCODERS = Registry("image autoencoder", contract="unimm.generation.autoencoder:ImageAutoencoder")
HEADS = Registry("head", contract="unimm.heads.base:ImageHead")

ALL_REGISTRIES = {
    "encoders": ENCODERS,
    "aligners": ALIGNERS,
    "backbones": BACKBONES,
    "generators": GENERATORS,
    "autoencoders": AUTOENCODERS,
    "heads": HEADS,
}

# Built-in parts, by "module:attribute": a lookup imports only the module of the part it names (so a VQ model does
# not import diffusers, and a SigLIP encoder alone does not import taming). Each module's @register fills its entry.
ENCODERS.register_lazy("siglip", "unimm.encoders.siglip:SigLIPEncoder")
ENCODERS.register_lazy("sam", "unimm.encoders.sam:SAMEncoder")
ENCODERS.register_lazy("sam_siglip", "unimm.encoders.hybrid:HybridEncoder")
ENCODERS.register_lazy("shared_vq", "unimm.encoders.shared_vq:SharedVQEncoder")
ENCODERS.register_lazy("timm", "unimm.encoders.timm_encoder:TimmEncoder")
ALIGNERS.register_lazy("mlp_gelu", "unimm.aligners.mlp:mlp_gelu")
ALIGNERS.register_lazy("linear", "unimm.aligners.mlp:linear")
ALIGNERS.register_lazy("identity", "unimm.aligners.mlp:IdentityAligner")
ALIGNERS.register_lazy("low_high_hybrid_split_mlp_gelu", "unimm.aligners.hybrid_split:HybridSplitAligner")
BACKBONES.register_lazy("llama", "unimm.backbones.causal_lm:llama", aliases=("deepseek_llm",))
BACKBONES.register_lazy("hf_causal_lm", "unimm.backbones.causal_lm:hf_causal_lm")
GENERATORS.register_lazy("vq", "unimm.generation.vq_path:VQGenerationPath")
GENERATORS.register_lazy("rectified_flow", "unimm.generation.flow_path:RectifiedFlowPath")
AUTOENCODERS.register_lazy("llamagen_vq", "unimm.generation.vq_tokenizer:llamagen_vq")
AUTOENCODERS.register_lazy("autoencoder_kl", "unimm.generation.vae:autoencoder_kl", aliases=("sdxl_vae",))
HEADS.register_lazy("vq_image_head", "unimm.heads.image_head:VQImageHead")

__all__ = [
    "ALIGNERS",
    "ALL_REGISTRIES",
    "AUTOENCODERS",
    "BACKBONES",
    "ENCODERS",
    "GENERATORS",
    "HEADS",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Registry",
    "UnimmError",
    "to_plain",
]
