"""Errors unimm raises for bad input. Each message says what was wrong and how to fix it."""


class UnimmError(Exception):
    """Base class for every error unimm raises on purpose."""


class ConfigError(UnimmError, ValueError):
    """A config names an unknown part, misspells a key, gives a wrong type or contradicts itself."""


class CheckpointError(UnimmError, ValueError):
    """A checkpoint folder or state dict does not match the model: missing, unexpected or misshapen keys."""


class InputError(UnimmError, ValueError):
    """An input (image, prompt, batch) cannot be processed as given."""


def closest(name: str, choices, *, n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The up to ``n`` entries of ``choices`` closest to ``name`` (difflib's ratio), best first."""
    import difflib

    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)


def did_you_mean(name: str, choices, *, cutoff: float = 0.6) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""`` when none is close.

    The one spelling-suggestion helper: every "unknown key / part / file" message appends its result.
    """
    match = closest(name, choices, cutoff=cutoff)
    return f" Did you mean '{match[0]}'?" if match else ""
