"""Aligners: projections between parts of different widths (registered in ``unimm.registry.ALIGNERS``)."""

from .mlp import IdentityAligner, MLPAligner, linear, mlp_gelu

__all__ = ["IdentityAligner", "MLPAligner", "linear", "mlp_gelu"]
