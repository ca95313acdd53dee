"""The contract every generation path meets, so the unified model can swap VQ tokens for rectified flow.

A generation path owns everything between the backbone's hidden states and pixels: for Janus the VQ tokenizer,
the generation embedding + aligner and the image head; for JanusFlow the VAE, the ConvNeXt encoder/decoder and
their aligners. The unified model hands it the backbone and the text prompt; the path runs its own loop.

Prompts reach a path as token ids that end with the path's "start generating" token (``<begin_of_image>`` for
Janus, ``<|begin_of_generation|>`` for JanusFlow), left-padded in a batch:

* ``prompt_ids``  (B, L) long, ``prompt_mask`` (B, L) with 1 for real tokens.

Each path builds its own unconditional rows for classifier-free guidance, because Janus and JanusFlow do it
differently (Janus pads the prompt and still attends to it; JanusFlow pads it and masks it out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import InputError


@dataclass
class GenerationLoss:
    """Losses of one generation training step.

    Attributes:
        loss: the total to back-propagate.
        parts: named scalar components (``ce``, ``flow``, ``repa`` ...), detached, for logging.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


def check_left_padded(prompt_mask: torch.Tensor, start_token: str) -> None:
    """Every prompt row must end with a real token (the generation start ``start_token``): batches are left padded."""
    if not bool(prompt_mask[:, -1].all()):
        raise InputError(
            f"every prompt must end with a real token ({start_token}): pad batches on the left, not on the right "
            "(prompt_mask[:, -1] must be all ones)"
        )


class GenerationPath(nn.Module):
    """Base class of generation paths (see the module docstring for the prompt convention).

    Subclasses set ``num_image_tokens`` (LLM positions one image occupies) and ``image_size`` (pixels).
    """

    num_image_tokens: int
    image_size: int

    @property
    def uses_und_features(self) -> bool:
        """Whether :meth:`loss` wants the understanding encoder's features of the clean images (REPA)."""
        return getattr(self, "repa_layer", None) is not None

    def sample(
        self,
        backbone: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        pad_id: int,
        guidance: float,
        generator: torch.Generator | None = None,
        progress: bool = False,
        **options,
    ) -> torch.Tensor:
        """Generate one image per prompt row. Returns (B, 3, H, W) in [-1, 1]."""
        raise NotImplementedError

    def loss(
        self,
        backbone: nn.Module,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        images: torch.Tensor,
        *,
        und_features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> GenerationLoss:
        """Training loss for text-to-image.

        Args:
            backbone: the causal LM.
            prompt_embeds: (B, L, D) embedded prompt ending with the start-generation token.
            prompt_mask: (B, L) 1 for real tokens (left padding).
            images: (B, 3, H, W) targets in [-1, 1].
            und_features: (B, N, C) the understanding encoder's features of the clean images, for
                representation alignment (REPA); paths that do not use it ignore it.
            generator: random source for noise / time draws.
        """
        raise NotImplementedError

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> the path's latent form (VQ codes (B, N) or VAE latents)."""
        raise NotImplementedError

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_images`: latents -> images (B, 3, H, W) in [-1, 1]."""
        raise NotImplementedError
