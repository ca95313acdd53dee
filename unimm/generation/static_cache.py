"""A preallocated KV cache written in place, and the attention masks and positions of a decode loop, made once.

The growing cache transformers uses by default (``DynamicCache``) concatenates every layer's keys and values with
the new ones at each step: a copy of the whole cache per token, quadratic in the sequence length (45% of a VQ
sampling step in a profile of 576-token images). :class:`PreallocatedCache` allocates (B, H, max_length, d)
buffers once, writes each step's keys and values into them in place, and hands the attention the filled part
only, a view ``[:, :, :filled]``.

Why hand-written rather than transformers' ``StaticCache``: ``StaticCache`` returns the whole preallocated length
at every step (the unfilled tail masked out), which is what ``torch.compile`` and CUDA graphs need (fixed shapes)
but makes every eager step attend over the longest sequence; on CPU that costs more than it saves (see
docs/performance.md). ``StaticCache`` is still the cache of the compiled step (:func:`new_cache` with
``fixed_shapes=True``).

To the model the cache looks like a ``DynamicCache`` (same ``get_seq_length`` / ``get_mask_sizes``), so 2D
padding masks keep working; a decode loop can also pass a precomputed 4D mask (:func:`decode_mask`), which
transformers uses as it is, so no mask is built and no host synchronisation happens per token.

Shapes: keys / values (B, H, T, d) per layer; masks (B, 1, 1, max_length) for one-token steps.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from ..registry import InputError


class PreallocatedLayer(CacheLayerMixin):
    """One layer's keys and values in (B, H, max_length, d) buffers, allocated at the first write."""

    is_compileable = False  # the filled part grows: shapes change every step (use StaticCache to compile)
    is_croppable = True
    is_sliding = False

    def __init__(self, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.filled = 0
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, key_dim = key_states.shape
        self.device = key_states.device
        self._keys = key_states.new_zeros(batch, heads, self.max_length, key_dim)
        self._values = value_states.new_zeros(batch, heads, self.max_length, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        """Write (B, H, T, d) keys and values after the filled part; return the filled part (B, H, filled, d)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.filled + key_states.shape[-2]
        if end > self.max_length:
            raise InputError(f"the KV cache holds {self.max_length} positions, {end} were written; size it to the "
                             "prompt plus every generated token")  # fmt: skip
        self._keys[:, :, self.filled : end].copy_(key_states)
        self._values[:, :, self.filled : end].copy_(value_states)
        self.filled = end
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.filled + query_length, 0

    def get_seq_length(self) -> int:
        return self.filled

    def get_max_length(self) -> int:
        return self.max_length

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` positions (they are overwritten by the next write)."""
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number: how many positions to remove from the end")
        self.filled += tokens_to_remove

    def reset(self) -> None:
        self.filled = 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (a copy of the kept rows: done when answers finish, not per token)."""
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self.keys, self.values = self._keys[:, :, : self.filled], self._values[:, :, : self.filled]


class PreallocatedCache(Cache):
    """A KV cache of ``num_layers`` :class:`PreallocatedLayer` s holding up to ``max_length`` positions."""

    def __init__(self, num_layers: int, max_length: int):
        super().__init__(layers=[PreallocatedLayer(max_length) for _ in range(num_layers)])
        self.max_length = max_length


def supports_static_cache(backbone: Any) -> bool:
    """Whether ``backbone`` is a transformers causal LM whose layers all use full attention, the case the
    preallocated cache and the precomputed masks are written for (sliding-window or linear-attention layers keep
    transformers' own cache and masks; such backbones are sampled with the growing cache)."""
    lm = getattr(backbone, "lm", None)
    config = getattr(lm, "config", None)
    if config is None or not hasattr(backbone, "num_layers"):
        return False
    text = config.get_text_config(decoder=True)
    kinds = getattr(text, "layer_types", None)
    if kinds is None:  # families without per-layer types (gpt2): a sliding window would be a config field
        return getattr(text, "sliding_window", None) is None
    return all(kind == "full_attention" for kind in kinds)


def new_cache(backbone: Any, max_length: int, fixed_shapes: bool = False) -> Cache:
    """An empty cache for ``max_length`` positions: :class:`PreallocatedCache`, or transformers' ``StaticCache``
    (whole-length keys and values at every step) with ``fixed_shapes`` for a compiled step."""
    if fixed_shapes:
        from transformers import StaticCache

        return StaticCache(config=backbone.lm.config, max_cache_len=max_length)
    return PreallocatedCache(backbone.num_layers, max_length)


def attention_kind(backbone: Any) -> str:
    """The backbone's attention kernel ("sdpa", "eager", "flash_attention_2", ...)."""
    return backbone.lm.config._attn_implementation


def decode_mask(mask: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor | None:
    """The 4D attention mask of one-token steps, made once: (B, L) 1 on real tokens -> (B, 1, 1, L).

    A step at position ``p`` (0-based, over the filled part) passes ``mask[..., : p + 1]``, a view. sdpa takes a
    boolean mask (True = attend), eager an additive one (0 or the dtype's minimum); other kernels (flash) take the
    2D mask, so None is returned for them and the loop passes 2D slices instead.
    """
    keep = mask.bool()[:, None, None, :]
    if kind == "sdpa":
        return keep
    if kind == "eager":
        return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)
    return None


__all__ = ["PreallocatedCache", "PreallocatedLayer", "attention_kind", "decode_mask", "new_cache",
           "supports_static_cache"]
