"""Next-token sampling shared by text and image generation: temperature, top-k and nucleus (top-p) filtering.

Temperature scaling, top-k (Fan et al., 2018) and nucleus sampling (Holtzman et al., "The Curious Case of
Neural Text Degeneration", 2020) applied to one step's logits. Written here rather than taken from transformers'
logits processors so that text and image paths, which run their own loops (classifier-free guidance combines
two rows before sampling), share one small, tested function with an explicit ``torch.Generator``.

Shapes: logits (B, V) -> ids (B,) long.

A random source is one ``torch.Generator`` for the batch, or a sequence of them, one per row: then each row's
draws depend only on its own generator, so a row gives the same result in any batch (a server batches requests
with different seeds; :func:`randn_rows` does the same for noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..registry import InputError


def _check(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise InputError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must lie in (0, 1] or be None, got {top_p!r}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass ``top_p``; (B, V) -> (B, V).

    Top-k keeps the k largest logits of each row (ties with the k-th are kept). Top-p keeps the smallest set of
    most likely tokens whose probability sums to at least ``top_p`` (the most likely token is always kept),
    computed after top-k. ``None`` disables a filter.
    """
    _check(0.0, top_k, top_p)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # mass strictly before each token: a token is dropped once the tokens ranked above it already reach top_p
        before = probs.cumsum(dim=-1) - probs
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """Pick one token per row of ``logits`` (B, V); returns (B,) long.

    ``temperature`` 0 takes the argmax (and ignores top-k / top-p); otherwise the logits are divided by the
    temperature, filtered with :func:`filter_logits`, and one token is drawn with ``generator`` (one for the
    batch, or a sequence of B, one per row).
    """
    _check(temperature, top_k, top_p)
    if logits.ndim != 2:
        raise InputError(f"expected logits of shape (B, V), got {tuple(logits.shape)}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    if isinstance(generator, Sequence):
        _check_rows(generator, probs.shape[0])
        return torch.cat([torch.multinomial(row[None], 1, generator=g)[0] for row, g in zip(probs, generator)])
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def randn_rows(
    shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None = None, **kwargs
) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, **kwargs)``; with a sequence of generators, row i (of
    ``shape[0]``) is drawn from generator i alone."""
    if not isinstance(generator, Sequence):
        return torch.randn(shape, generator=generator, **kwargs)
    _check_rows(generator, shape[0])
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, **kwargs) for g in generator])


def _check_rows(generators: Sequence[torch.Generator], rows: int) -> None:
    if len(generators) != rows:
        raise InputError(f"{len(generators)} random generators for {rows} rows; give one per row")
