"""Aligners: projections between parts of different widths (registered in ``unimm.registry.ALIGNERS``)."""

from .hybrid_split import HybridSplitAligner
from .mlp import IdentityAligner, MLPAligner, linear, mlp_gelu

__all__ = ["HybridSplitAligner", "IdentityAligner", "MLPAligner", "linear", "mlp_gelu"]
