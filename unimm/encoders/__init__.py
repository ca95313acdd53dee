"""Understanding encoders (registered in ``unimm.registry.ENCODERS``) and their image transforms."""

from .hybrid import HybridEncoder
from .sam import SAMEncoder
from .shared_vq import SharedVQEncoder
from .siglip import SigLIPEncoder
from .transforms import PadToSquare, load_image

__all__ = ["HybridEncoder", "PadToSquare", "SAMEncoder", "SharedVQEncoder", "SigLIPEncoder", "load_image"]
