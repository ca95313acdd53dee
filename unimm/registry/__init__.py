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

Parts of your own register into the same tables from your own modules: see :mod:`unimm.registry.plugins`
(``imports:`` in a config, ``--import`` on the command line, the ``unimm.parts`` entry-point group).
"""

from .errors import CheckpointError, ConfigError, InputError, UnimmError
from .registry import Registry, to_plain

ENCODERS = Registry("understanding encoder")
ALIGNERS = Registry("aligner")
BACKBONES = Registry("backbone")
GENERATORS = Registry("generation path")
AUTOENCODERS = Registry("image autoencoder")
HEADS = Registry("head")

ALL_REGISTRIES = {
    "encoders": ENCODERS,
    "aligners": ALIGNERS,
    "backbones": BACKBONES,
    "generators": GENERATORS,
    "autoencoders": AUTOENCODERS,
    "heads": HEADS,
}

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
