"""Generation paths (registered in ``unimm.registry.GENERATORS``) and the autoencoders they use."""

from .base import GenerationLoss, GenerationPath
from .flow_path import RectifiedFlowPath
from .sampling import filter_logits, sample_next
from .vae import KLAutoencoder
from .vq_path import VQGenerationPath
from .vq_tokenizer import VQTokenizer

__all__ = [
    "GenerationLoss",
    "GenerationPath",
    "KLAutoencoder",
    "RectifiedFlowPath",
    "VQGenerationPath",
    "VQTokenizer",
    "filter_logits",
    "sample_next",
]
