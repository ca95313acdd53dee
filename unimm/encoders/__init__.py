"""Understanding encoders (registered in ``unimm.registry.ENCODERS``) and their image transforms.

Each name is imported on first use, so ``from unimm.encoders.siglip import SigLIPEncoder`` does not import taming.
"""

from .._lazy import lazy_exports

__all__ = ["HybridEncoder", "PadToSquare", "SAMEncoder", "SharedVQEncoder", "SigLIPEncoder", "load_image"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "HybridEncoder": ".hybrid", "SAMEncoder": ".sam", "SharedVQEncoder": ".shared_vq", "SigLIPEncoder": ".siglip",
    "PadToSquare": ".transforms", "load_image": ".transforms",
})
