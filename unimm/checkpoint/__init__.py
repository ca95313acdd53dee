"""Checkpoint I/O and converters from released deepseek-ai layouts to unimm names."""

from .io import load_into, load_weights
from .released import config_from_released, convert_released, released_kind

__all__ = ["config_from_released", "convert_released", "load_into", "load_weights", "released_kind"]
