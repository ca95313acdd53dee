"""unimm: interchangeable parts for unified multimodal models (Janus, Janus-Pro, JanusFlow).

    import unimm
    model, processor, cfg = unimm.load_pretrained("path/to/Janus-Pro-1B")      # released or unimm folder
    model = unimm.build_model("janus_pro_1b", overrides=["model.backbone.num_hidden_layers=2"])

The names below are imported on first use (``import unimm`` alone imports no torch).
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "ALL_REGISTRIES",
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Pretrained",
    "Processor",
    "UnifiedModel",
    "build_model",
    "build_processor",
    "count_parameters",
    "load_config",
    "load_pretrained",
    "save_pretrained",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_model": ".build", "build_processor": ".build", "count_parameters": ".build",
    "load_config": ".config",
    "UnifiedModel": ".model",
    "Pretrained": ".pretrained", "load_pretrained": ".pretrained", "save_pretrained": ".pretrained",
    "Processor": ".processor",
    "ALL_REGISTRIES": ".registry", "CheckpointError": ".registry", "ConfigError": ".registry",
    "InputError": ".registry",
})
