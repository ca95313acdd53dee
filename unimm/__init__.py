"""unimm: interchangeable parts for unified multimodal models (Janus, Janus-Pro, JanusFlow)."""

__version__ = "0.1.0"
