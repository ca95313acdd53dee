"""The unified model: one causal LM that understands images and generates them.

Janus (Chen et al. 2024, arXiv 2410.13848), Janus-Pro (2025, arXiv 2501.17811) and JanusFlow (Ma et al. 2024, arXiv
2411.07975) share this structure, which the slots below make explicit:

* ``und_encoder`` (SigLIP, SAM+SigLIP, the shared VQ encoder...) and ``und_aligner`` turn an image into
  (B, N, D) embeddings that replace the image placeholders of the text;
* ``backbone`` is the causal LM that reads the interleaved sequence;
* ``generator`` is the generation path (VQ tokens or rectified flow) with its own encoders, aligners and head;
* ``und_start_embed`` (JanusFlow only) is a learned embedding placed on ``<begin_of_image>`` for understanding.

Every slot is an ordinary module that can be used alone; this class only wires them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .aligners.base import Aligner
from .backbones.base import Backbone, positions_from_mask
from .devices import module_dtype
from .encoders.base import UnderstandingEncoder
from .generation.base import GenerationLoss, GenerationOutput, GenerationPath
from .registry import InputError

from .processor import IGNORE_INDEX  # noqa: E402  (defined once, by the processor that writes the labels)


class UnifiedModel(nn.Module):
    """Understanding encoder + aligner, causal-LM backbone, and a generation path.

    Args:
        und_encoder: an :class:`~unimm.encoders.base.UnderstandingEncoder`: images (B, 3, S, S) -> features
            (B, N, C) (or a (high, low) pair for a pair encoder).
        und_aligner: an :class:`~unimm.aligners.base.Aligner`: features -> (B, N, D) in the backbone's width.
        backbone: a :class:`~unimm.backbones.base.Backbone`.
        generator: a :class:`~unimm.generation.base.GenerationPath`, or None for an understanding-only model.
        und_start_embed: add JanusFlow's learned begin-of-understanding embedding (1, D).
    """

    def __init__(
        self,
        und_encoder: UnderstandingEncoder,
        und_aligner: Aligner,
        backbone: Backbone,
        generator: GenerationPath | None = None,
        und_start_embed: bool = False,
    ):
        super().__init__()
        self.und_encoder = und_encoder
        self.und_aligner = und_aligner
        self.backbone = backbone
        self.generator = generator
        self.und_start_embed = nn.Parameter(torch.zeros(1, backbone.hidden_size)) if und_start_embed else None

    # -- embedding ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Understanding embeddings of images: (M, 3, S, S) -> (M, N (+1 with und_start_embed), D).

        The pixels (the processor gives float32 on the CPU) are moved and cast to the encoder's device and dtype,
        its features to the aligner's dtype (an encoder built on the image tokenizer, ``shared_vq``, stays float32).
        """
        weight = next(self.und_encoder.parameters(), None)
        if weight is not None:
            pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
        encoded = self.und_encoder(pixel_values)
        dtype = module_dtype(self.und_aligner, default=self.dtype)
        # a pair encoder (sam_siglip) gives a (high, low) tuple
        encoded = tuple(part.to(dtype) for part in encoded) if isinstance(encoded, tuple) else encoded.to(dtype)
        features = self.und_aligner(encoded)
        if self.und_start_embed is not None:
            start = self.und_start_embed.to(features.dtype).expand(features.shape[0], 1, -1)
            features = torch.cat([start, features], dim=1)
        return features

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_emb_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Text embeddings with aligned image features written into the image slots.

        Args:
            input_ids: (B, T).
            pixel_values: (B, n, 3, S, S), or None for text only.
            images_seq_mask: (B, T) True where image features go.
            images_emb_mask: (B, n, N) True for the feature tokens that are real images (not batch padding).

        Returns:
            (B, T, D).
        """
        embeds = self.backbone.embed(input_ids.clamp(min=0))
        if pixel_values is None or images_seq_mask is None or not bool(images_seq_mask.any()):
            return embeds
        batch, n_images = pixel_values.shape[:2]
        used = images_emb_mask.flatten(0, 1).any(-1)  # skip all-padding image slots
        features = self.encode_images(pixel_values.flatten(0, 1)[used].to(embeds.dtype))
        emb_mask = images_emb_mask.flatten(0, 1)[used]
        if int(emb_mask.sum()) != int(images_seq_mask.sum()):
            raise InputError(
                f"the batch has {int(images_seq_mask.sum())} image positions in the text but the images give "
                f"{int(emb_mask.sum())} feature tokens; build batches with the model's own processor"
            )
        embeds = embeds.clone()
        embeds[images_seq_mask] = features[emb_mask].to(embeds.dtype)  # autocast: bf16 features, fp32 table
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        images_seq_mask: torch.Tensor | None = None,
        images_emb_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Text logits (B, T, V) for a processor batch."""
        embeds = self.embed_inputs(input_ids, pixel_values, images_seq_mask, images_emb_mask)
        positions = positions_from_mask(attention_mask) if attention_mask is not None else None
        hidden = self.backbone(embeds, attention_mask=attention_mask, position_ids=positions).hidden_states
        return self.backbone.logits(hidden)

    # -- understanding ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_text(
        self,
        batch: dict[str, Any],
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos_id: int | None = None,
        pad_id: int = 0,
    ) -> torch.Tensor:
        """Answer a processor batch with the KV cache.

        Greedy when ``temperature`` is 0, else sampled with optional top-k / top-p. Rows stop at ``eos_id``
        (kept in the output) or when the next token would sit beyond the backbone's ``max_positions`` (each row by
        its own length, so a left-padded row answers as it would alone); finished rows are filled with ``pad_id``.

        Returns:
            (B, n_new) generated ids, n_new <= max_new_tokens.
        """
        from .generation.decode import decode_text
        from .generation.sampling import sample_next
        from .generation.static_cache import supports_static_cache

        device = self.device
        mask = batch["attention_mask"].to(device)
        embeds = self.embed_inputs(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()})
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        if supports_static_cache(self.backbone):  # a preallocated cache; finished rows leave the batch
            return decode_text(self.backbone, embeds, mask, max_new_tokens=max_new_tokens, eos_id=eos_id,
                               pad_id=pad_id, choose=lambda logits: sample_next(logits, temperature, top_k, top_p,
                                                                                generator))  # fmt: skip
        positions = positions_from_mask(mask)
        out = self.backbone(embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        cache, next_pos = out.past_key_values, positions[:, -1:] + 1
        logits = self.backbone.logits(out.hidden_states[:, -1])
        finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
        limit = self.backbone.max_positions
        tokens = []
        for step in range(max_new_tokens):
            token = sample_next(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            tokens.append(token)
            if eos_id is not None:
                finished |= token == eos_id
            if limit is not None:  # the token just drawn would be read at next_pos: the row's context is full
                finished |= next_pos[:, 0] >= limit
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            # Finished rows still run (as padding); their positions are clamped so learned position tables
            # (GPT-2) are never indexed past their end.
            fed_pos = next_pos if limit is None else next_pos.clamp(max=limit - 1)
            out = self.backbone(self.backbone.embed(token[:, None]), attention_mask=mask, position_ids=fed_pos,
                                past_key_values=cache, use_cache=True)
            cache, next_pos = out.past_key_values, next_pos + 1
            logits = self.backbone.logits(out.hidden_states[:, -1])
        return torch.stack(tokens, dim=1)

    # -- generation -------------------------------------------------------------------------------------------
    def _require_generator(self) -> GenerationPath:
        if self.generator is None:
            raise InputError("this model has no generation path (model.generator is empty); it can only understand")
        return self.generator

    def check_prompt_fits(self, prompt_length: int) -> None:
        """A prompt of ``prompt_length`` tokens and one image fit in the backbone's positions, else InputError."""
        generator = self._require_generator()
        limit = self.backbone.max_positions
        if limit is not None and prompt_length + generator.num_image_tokens > limit:
            raise InputError(
                f"the prompt ({prompt_length} tokens) and the image ({generator.num_image_tokens} tokens) exceed "
                f"the backbone's {limit} positions; shorten the prompt or generate smaller images"
            )

    @torch.no_grad()
    def sample_images(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, pad_id: int,
        seed: int | Sequence[int] | None = None, progress: bool = False, keep_steps: bool = False, **options: Any,
    ) -> GenerationOutput:
        """The generation path's full output for left-padded prompts ending with the generation start token.

        ``options`` are the path's declared sampling options (``generator.sample_options``: guidance, temperature,
        top_k, top_p for VQ; guidance, num_steps for flow), checked before anything runs. ``seed`` is one seed for
        the batch, or one per prompt row: then each row is drawn from its own generator and comes out the same in
        any batch (the server batches requests this way, :mod:`unimm.serving.batcher`).

        Raises:
            InputError: an option the path does not take (naming those it has) or a value out of range.
        """
        generator = self._require_generator()
        options = generator.check_sample_options(options)
        self.check_prompt_fits(prompt_ids.shape[1])
        device = self.device
        if isinstance(seed, Sequence):
            if len(seed) != prompt_ids.shape[0]:
                raise InputError(f"{len(seed)} seeds for {prompt_ids.shape[0]} prompts; give one seed per prompt row")
            rng = [torch.Generator(device).manual_seed(s) for s in seed]
        else:
            rng = torch.Generator(device).manual_seed(seed) if seed is not None else None
        return generator.sample(self.backbone, prompt_ids.to(device), prompt_mask.to(device), pad_id=pad_id,
                                generator=rng, progress=progress, keep_steps=keep_steps, **options)

    def generate_images(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, pad_id: int,
        seed: int | Sequence[int] | None = None,
        progress: bool = False, **options: Any,
    ) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1]: :meth:`sample_images` without the latents."""
        return self.sample_images(prompt_ids, prompt_mask, pad_id=pad_id, seed=seed, progress=progress,
                                  **options).images

    # -- training losses --------------------------------------------------------------------------------------
    def understanding_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy on answer tokens only (``labels`` is -100 elsewhere), next-token shifted."""
        logits = self.forward(**batch)
        return _shifted_cross_entropy(logits, batch["labels"])

    def text_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Language-modelling cross-entropy on a text batch."""
        return _shifted_cross_entropy(self.forward(input_ids, attention_mask), labels)

    def generation_loss(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, images: torch.Tensor,
        generator: torch.Generator | None = None, prompt_positions: torch.Tensor | None = None,
    ) -> GenerationLoss:
        """Text-to-image loss of the generation path (image-token CE for VQ, velocity MSE (+REPA) for flow).

        Args:
            prompt_ids, prompt_mask: (B, L) left-padded prompts ending with the generation start token.
            images: (B, 3, H, W) targets in [-1, 1] at the generation path's resolution.
            prompt_positions: (B, L) the prompt's positions, from training batches (:class:`unimm.data.MixtureLoader`),
                whose dropped captions hold the path's unconditional prompt; default: from ``prompt_mask``.
        """
        path = self._require_generator()
        prompt_embeds = self.backbone.embed(prompt_ids)
        und_features = None
        if path.uses_und_features:
            with torch.no_grad():
                und_features = self.und_encoder.alignment_features(images)
        return path.loss(self.backbone, prompt_embeds, prompt_mask, images, und_features=und_features,
                         generator=generator, prompt_positions=prompt_positions)


def _shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(logits.device)
    if not bool((shift_labels != IGNORE_INDEX).any()):
        raise InputError("the batch has no target tokens (every label is -100); check the answer masking")
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)
