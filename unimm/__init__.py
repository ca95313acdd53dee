"""unimm: interchangeable parts for unified multimodal models (Janus, Janus-Pro, JanusFlow).

    import unimm
    model, processor, cfg = unimm.load_pretrained("path/to/Janus-Pro-1B")      # released or unimm folder
    model = unimm.build_model("janus_pro_1b", overrides=["model.backbone.num_hidden_layers=2"])
"""

__version__ = "0.1.0"

from .build import build_model, build_processor, count_parameters
from .config import load_config
from .model import UnifiedModel
from .pretrained import Pretrained, load_pretrained, save_pretrained
from .processor import Processor
from .registry import ALL_REGISTRIES, CheckpointError, ConfigError, InputError

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
