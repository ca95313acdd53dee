"""Decode loops on a preallocated KV cache: VQ image codes with guidance, and text answers.

Both loops run the prompt once, then one token per step into a cache sized up front (:mod:`.static_cache`):
positions and masks are made once and sliced per step (views), so a step allocates nothing but the model's own
activations. The VQ step is one function from the previous code to the next guided logits (generation embedding,
aligner, backbone, image head, guidance), so it can be compiled as a whole (``compile=True``: ``torch.compile``
with fixed shapes on transformers' ``StaticCache``, CUDA graphs on CUDA). The image loop never reads a device
tensor on the host (no ``.item()`` / ``bool()`` per token); the text loop does once per token, to stop at EOS.

Sampling maths are float32 whatever the weights' dtype: :func:`guided_logits` and
:func:`~unimm.generation.sampling.sample_next` work on float32 logits.

Shapes (B prompts, 2B rows with their unconditional copies, L prompt length, N image tokens, K codebook size):
prompt ids / mask (2B, L) -> codes (B, N) and, when kept, guided logits (B, N, K).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch

from ..backbones.base import positions_from_mask
from .static_cache import attention_kind, decode_mask, new_cache


def guided_logits(logits: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance in float32: rows [cond, uncond] interleaved (2B, K) -> ``uncond + w (cond -
    uncond)`` (B, K), float32 whatever the dtype of ``logits``."""
    logits = logits.float()
    cond, uncond = logits[0::2], logits[1::2]
    return uncond + guidance * (cond - uncond)


class _StepMasks:
    """The attention mask of each one-token step, sliced from masks made once.

    ``None`` when no row has padding (the kernels then need no mask at all), a view of a precomputed 4D mask
    otherwise, or a 2D slice for kernels that only take 2D masks (flash attention). With a ``StaticCache`` (fixed
    shapes) the whole-length 2D mask is passed every step: transformers masks the unfilled tail itself.
    """

    def __init__(self, backbone: Any, full_mask: torch.Tensor, fixed_shapes: bool, dtype: torch.dtype):
        self.full, self.fixed = full_mask, fixed_shapes
        self.padded = not bool(full_mask.all())  # read once, before the loop
        kind = attention_kind(backbone)
        self.four_d = decode_mask(full_mask, kind, dtype) if self.padded and not fixed_shapes else None

    def at(self, filled: int) -> torch.Tensor | None:
        """The mask for a step whose key/value length (cache plus the new token) is ``filled``."""
        if self.fixed:
            return self.full
        if not self.padded:
            return None
        return self.four_d[..., :filled] if self.four_d is not None else self.full[:, :filled]

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.full = self.full[rows]
        self.four_d = self.four_d[rows] if self.four_d is not None else None


def _compile_step(step: Callable, device: torch.device) -> Callable | None:
    """``torch.compile(step)`` with fixed shapes (CUDA graphs on CUDA), or None with a one-line notice where
    compilation is not available."""
    try:
        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("torch.compile does not support this Python / platform")
        mode = "reduce-overhead" if device.type == "cuda" else None
        return torch.compile(step, dynamic=False, mode=mode)
    except Exception as err:  # noqa: BLE001  (any failure means: run the step as it is)
        _compile_notice(err)
        return None


def _compile_notice(err: BaseException) -> None:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    print(f"unimm: compiling the decode step is not available here ({reason}); sampling without it",
          file=sys.stderr)


def sample_vq_codes(
    path: Any,
    backbone: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    guidance: float,
    choose: Callable[[torch.Tensor], torch.Tensor],
    keep_steps: bool = False,
    compile: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample a VQ path's codes on a preallocated cache.

    Args:
        path: a :class:`~unimm.generation.vq_path.VQGenerationPath` (``embed_codes``, ``head``,
            ``num_image_tokens``).
        backbone: a causal-LM backbone for which :func:`~.static_cache.supports_static_cache` holds.
        ids, mask: (2B, L) left-padded prompts, conditional and unconditional rows interleaved.
        guidance: classifier-free guidance weight.
        choose: guided float32 logits (B, K) -> codes (B,) (temperature, top-k / top-p, generator).
        keep_steps: also return every step's guided logits.
        compile: compile the one-token step (see the module docstring); falls back with a notice.
        progress: a progress bar over the image tokens.

    Returns:
        codes (B, N) long and, with ``keep_steps``, guided logits (B, N, K) float32 (else None).
    """
    rows, length = ids.shape
    steps = path.num_image_tokens
    max_length = length + steps - 1  # the last code is never fed back
    embeds = backbone.embed(ids)
    dtype = embeds.dtype
    mask = mask.long()
    cache = new_cache(backbone, max_length, fixed_shapes=compile)
    masks = _StepMasks(backbone, torch.cat([mask, mask.new_ones(rows, steps - 1)], dim=1), compile, dtype)
    # position of image token k in each row, for every k at once: (2B, N - 1)
    positions = mask.sum(dim=-1, keepdim=True) + torch.arange(steps - 1, device=ids.device)

    out = backbone(embeds, attention_mask=mask, position_ids=positions_from_mask(mask),
                   past_key_values=cache, use_cache=True)  # fmt: skip
    logits = guided_logits(path.head(out.hidden_states[:, -1]), guidance)

    def step(token: torch.Tensor, position: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Previous codes (B,) -> guided logits (B, K) of the next ones, the cache advanced by one position."""
        inputs = path.embed_codes(token).to(dtype).repeat_interleave(2, dim=0).unsqueeze(1)
        hidden = backbone(inputs, attention_mask=attention_mask, position_ids=position, past_key_values=cache,
                          use_cache=True).hidden_states  # fmt: skip
        return guided_logits(path.head(hidden[:, -1]), guidance)

    run = _compile_step(step, ids.device) if compile else step
    if run is None:
        run = step
    codes = torch.empty(rows // 2, steps, dtype=torch.long, device=ids.device)
    kept = torch.empty(rows // 2, steps, logits.shape[-1], dtype=torch.float32, device=ids.device) if keep_steps \
        else None
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="image tokens")
    for k in iterator:
        if kept is not None:
            kept[:, k] = logits
        token = choose(logits)
        codes[:, k] = token
        if k + 1 == steps:
            continue  # the last code needs no step after it (``continue``, not ``break``: the bar counts it)
        args = (token, positions[:, k : k + 1], masks.at(length + k + 1))
        if run is not step and k == 0:  # the first call compiles: on failure, run the step as it is
            try:
                logits = run(*args).clone()  # CUDA graphs reuse their output buffer at the next replay
                continue
            except Exception as err:  # noqa: BLE001
                _compile_notice(err)
                cache.crop(length - int(cache.get_seq_length()))  # undo a write the failed call may have made
                run = step
        logits = run(*args)
        if run is not step:
            logits = logits.clone()
    return codes, kept


def decode_text(
    backbone: Any,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    eos_id: int | None = None,
    pad_id: int = 0,
) -> torch.Tensor:
    """Answer left-padded prompts on a preallocated cache; rows that reach ``eos_id``, or whose next token would
    sit past the backbone's ``max_positions`` (each row by its own length), leave the batch.

    Args:
        backbone: a causal-LM backbone for which :func:`~.static_cache.supports_static_cache` holds.
        embeds: (B, T, D) prompt embeddings; mask: (B, T) 1 on real tokens (left padding).
        max_new_tokens: the most tokens a row gets.
        choose: float32 logits (b, V) -> tokens (b,).
        eos_id: a row stops after this token (kept in the output); None: every row runs to ``max_new_tokens``.
        pad_id: fills a row after its end.

    Returns:
        (B, n_new) ids, n_new <= max_new_tokens (the loop ends when every row has ended).
    """
    rows, length = mask.shape
    mask = mask.long()
    limit = backbone.max_positions  # each row stops when its next token would sit past it (its own length)
    cache = new_cache(backbone, length + max_new_tokens - 1)
    positions = positions_from_mask(mask)
    out = backbone(embeds, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
    logits = backbone.logits(out.hidden_states[:, -1])
    masks = _StepMasks(backbone, torch.cat([mask, mask.new_ones(rows, max_new_tokens - 1)], dim=1), False,
                       embeds.dtype)
    next_positions = positions[:, -1:] + 1 + torch.arange(max_new_tokens - 1, device=mask.device)
    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=mask.device)
    active = torch.arange(rows, device=mask.device)  # the cache's rows, as rows of the output
    for step in range(max_new_tokens):
        token = choose(logits.float())
        tokens[active, step] = token
        if step + 1 == max_new_tokens:
            break
        going = None  # rows that go on: not at eos_id, and the token just drawn still has a position to sit at
        if eos_id is not None:
            going = token != eos_id
        if limit is not None:
            room = next_positions[:, step] < limit
            going = room if going is None else going & room
        if going is not None:
            if not bool(going.all()):  # once per token: a finished row stops costing, all finished stops the loop
                keep = going.nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                active, token, next_positions = active[keep], token[keep], next_positions[keep]
                cache.batch_select_indices(keep)
                masks.keep_rows(keep)
        out = backbone(backbone.embed(token[:, None]), attention_mask=masks.at(length + step + 1),
                       position_ids=next_positions[:, step : step + 1], past_key_values=cache, use_cache=True)
        logits = backbone.logits(out.hidden_states[:, -1])
    return tokens[:, : step + 1]


__all__ = ["decode_text", "guided_logits", "sample_vq_codes"]
