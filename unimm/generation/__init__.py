"""Generation paths (registered in ``unimm.registry.GENERATORS``) and the autoencoders they use.

Each name is imported on first use, so the VQ path does not import diffusers nor the flow path taming.
"""

from .._lazy import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, {
    "GenerationLoss": ".base", "GenerationPath": ".base", "RectifiedFlowPath": ".flow_path",
    "filter_logits": ".sampling", "sample_next": ".sampling", "KLAutoencoder": ".vae",
    "VQGenerationPath": ".vq_path", "VQTokenizer": ".vq_tokenizer",
})
