"""Language backbones (registered in ``unimm.registry.BACKBONES``)."""

from .causal_lm import BackboneOutput, CausalLMBackbone

__all__ = ["BackboneOutput", "CausalLMBackbone"]
