"""Where a model runs and in what precision: ``--device`` / ``--dtype`` and ``load_pretrained(device=, dtype=)``.

=========  ======================================================================================================
value      meaning
=========  ======================================================================================================
device     ``auto`` (cuda if available, else mps if available, else cpu), ``cpu``, ``cuda``, ``cuda:N``, ``mps``,
           or a ``torch.device``
dtype      ``auto`` (bfloat16 on a GPU that supports it, else float16 on a GPU; float16 on mps; float32 on cpu),
           ``bfloat16``, ``float16``, ``float32``, or a ``torch.dtype``
=========  ======================================================================================================

An unknown or unavailable value is an :class:`~unimm.registry.InputError` naming what this machine has. float16
and bfloat16 are allowed on the CPU: every op of the shipped models runs in both there (checked by the tests), just
slower than float32, which is why ``auto`` picks float32 on the CPU.

:func:`place` moves a model and casts its weights, except the modules that set ``keep_float32 = True`` (the image
autoencoders: the VQ decoder and the VAE write the pixels, are small next to the language model, and the
references' float32 tokenizers are what the golden tests compare against); the generation paths cast latents to
the autoencoder's dtype where they hand them over.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .registry import InputError

if TYPE_CHECKING:  # torch is imported when a model is placed, not by `unimm --help` (which builds the flags)
    import torch
    from torch import nn

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("bfloat16", "float16", "float32")


def available_devices() -> list[str]:
    """The device names this machine can use, e.g. ``["cpu", "cuda", "cuda:0", "cuda:1"]``."""
    import torch

    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(value: str | torch.device | None = "auto", option: str = "device") -> torch.device:
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` (or a ``torch.device``) -> a device this machine has.

    Raises:
        InputError: an unknown name, or a device this machine does not have (naming those it has).
    """
    import torch

    if value is None or value == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    have = ", ".join(["auto"] + available_devices())
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise InputError(f"{option} {value!r}: not a device; use one of {', '.join(DEVICES)} "
                         f"(this machine has: {have})") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"{option} {value}: this machine has no CUDA GPU that torch can use; available: {have}")
        if device.index is not None and device.index >= count:
            raise InputError(f"{option} {value}: there are only {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
                             f"; available: {have}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{option} {value}: Apple's MPS backend is not available here; available: {have}")
        return device
    raise InputError(f"{option} {value}: unimm runs models on {', '.join(DEVICES)}; available here: {have}")


def resolve_dtype(value: str | torch.dtype | None, device: torch.device, option: str = "dtype") -> torch.dtype:
    """``auto`` / ``bfloat16`` / ``float16`` / ``float32`` (or a ``torch.dtype``) -> the weights' dtype on ``device``.

    Raises:
        InputError: an unknown name, a non-floating dtype, or bfloat16 on a GPU without it.
    """
    import torch

    floating = {name: getattr(torch, name) for name in DTYPES}
    if value is None or value == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if isinstance(value, torch.dtype):
        dtype = value
    elif value in floating:
        dtype = floating[value]
    else:
        raise InputError(f"{option} {value!r}: not a dtype unimm runs in; use one of auto, {', '.join(DTYPES)}")
    if dtype not in floating.values():
        raise InputError(f"{option} {value}: weights must be floating point; use one of auto, {', '.join(DTYPES)}")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"{option} bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                         f"use {option} float16 (or auto)")
    return dtype


def place(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Move ``model`` to ``device`` and cast its floating weights and buffers to ``dtype``, except modules with
    ``keep_float32 = True``, which stay float32 (never rounded through ``dtype``: they are not cast at all).
    Returns the model."""
    model.to(device=device)
    _cast(model, dtype)
    return model


def _cast(module: nn.Module, dtype: torch.dtype) -> None:
    """Cast ``module``'s floating tensors to ``dtype``, skipping ``keep_float32`` submodules (``nn.Module.to`` has
    no way to leave a submodule out, so the modules that hold one are cast tensor by tensor)."""
    if getattr(module, "keep_float32", False):
        return
    if not any(getattr(m, "keep_float32", False) for m in module.modules()):
        module.to(dtype=dtype)
        return
    for param in module.parameters(recurse=False):
        if param.is_floating_point():
            param.data = param.data.to(dtype)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer.is_floating_point():
            setattr(module, name, buffer.to(dtype))
    for child in module.children():
        _cast(child, dtype)


def float32_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``"name."`` of every ``keep_float32`` submodule of ``model``: the checkpoint keys that load as float32."""
    return tuple(f"{name}." for name, module in model.named_modules() if getattr(module, "keep_float32", False))


def module_dtype(module: nn.Module, default: torch.dtype | None = None) -> torch.dtype:
    """The dtype of ``module``'s first floating parameter (``default``, else float32, when it has none)."""
    import torch

    return next((p.dtype for p in module.parameters() if p.is_floating_point()), default or torch.float32)


def device_args(p: argparse.ArgumentParser) -> None:
    """Add ``--device`` and ``--dtype`` to a command that runs a model (resolved by :func:`resolve_device` /
    :func:`resolve_dtype` when the model is loaded)."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--dtype", default="auto", metavar="DTYPE",
                   help="auto (bfloat16 on a GPU that has it, float16 on mps, float32 on cpu), bfloat16, float16 "
                   "or float32 (default: auto)")


__all__ = ["DEVICES", "DTYPES", "available_devices", "device_args", "float32_prefixes", "module_dtype", "place",
           "resolve_device", "resolve_dtype"]
