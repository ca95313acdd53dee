"""Errors unimm raises for bad input. Each message says what was wrong and how to fix it."""


class UnimmError(Exception):
    """Base class for every error unimm raises on purpose."""


class ConfigError(UnimmError, ValueError):
    """A config names an unknown part, misspells a key, gives a wrong type or contradicts itself."""


class CheckpointError(UnimmError, ValueError):
    """A checkpoint folder or state dict does not match the model: missing, unexpected or misshapen keys."""


class InputError(UnimmError, ValueError):
    """An input (image, prompt, batch) cannot be processed as given."""
