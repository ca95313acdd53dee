"""Language backbones (registered in ``unimm.registry.BACKBONES``); the contract is :mod:`unimm.backbones.base`."""

from .base import Backbone, BackboneOutput, positions_from_mask
from .causal_lm import CausalLMBackbone

__all__ = ["Backbone", "BackboneOutput", "CausalLMBackbone", "positions_from_mask"]
