"""Output heads (registered in ``unimm.registry.HEADS``)."""

from .image_head import VQImageHead

__all__ = ["VQImageHead"]
