"""The contract every generation path meets, so the unified model can swap VQ tokens for rectified flow.

A generation path owns everything between the backbone's hidden states and pixels: for Janus the VQ tokenizer,
the generation embedding + aligner and the image head; for JanusFlow the VAE, the ConvNeXt encoder/decoder and
their aligners. The unified model hands it the backbone (see :mod:`unimm.backbones.base` for the protocol a path
may use) and the text prompt; the path runs its own loop.

Prompts reach a path as token ids that end with the path's "start generating" token (``<begin_of_image>`` for
Janus, ``<|begin_of_generation|>`` for JanusFlow), left-padded in a batch:

* ``prompt_ids``  (B, L) long, ``prompt_mask`` (B, L) with 1 for real tokens.

Each path defines its own unconditional prompt for classifier-free guidance, because Janus and JanusFlow do it
differently (Janus pads the prompt and still attends to it; JanusFlow pads it and masks it out). The one method,
:meth:`GenerationPath.unconditional_prompt`, serves both sampling (the guidance rows) and training (caption
dropout in :class:`unimm.data.MixtureLoader`), so a model learns the very prompt its sampler guides with.

What the rest of unimm reads from a path, and nothing else:

========================  ==========================================================================================
member                    meaning
========================  ==========================================================================================
``image_size``            side of the generated square images in pixels
``num_image_tokens``      LLM positions one image occupies
``sample_options``        the sampling options :meth:`sample` accepts, with types, defaults and ranges: what the
                          ``sample:`` config section, the CLI flags and servers may set (:class:`SampleOption`)
``unconditional_prompt``  (ids, mask) -> the guidance prompt: sampling's unconditional rows, training's dropped
                          captions
``uses_und_features``     whether :meth:`loss` wants the understanding encoder's features of the clean images (REPA)
``frozen_children``       names of submodules that stay frozen in training unless a stage names them (autoencoders)
``fsdp_units()``          submodules FSDP shards as one unit each (default: the frozen children, then the path)
``sample(...)``           -> :class:`GenerationOutput`
``loss(...)``             -> :class:`GenerationLoss`
``encode_images/decode_latents``  images <-> the path's latent form (codes, VAE latents)
========================  ==========================================================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..registry import ConfigError, InputError
from ..registry.errors import did_you_mean


@dataclass
class GenerationLoss:
    """Losses of one generation training step.

    Attributes:
        loss: the total to back-propagate.
        parts: named scalar components (``ce``, ``flow``, ``repa`` ...), detached, for logging.
    """

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


@dataclass
class GenerationOutput:
    """What :meth:`GenerationPath.sample` returns.

    Attributes:
        images: (B, 3, H, W) in [-1, 1].
        latents: the path's latent form of the images before decoding: VQ codes (B, N) for Janus, the final ODE
            state (B, C, h, w) for JanusFlow.
        steps: per-step records when ``keep_steps=True`` was passed (VQ: the guided logits (B, N, K) as one
            tensor under ``"logits"``; flow: ``"t_emb"``, ``"v_cond"``, ``"v_uncond"`` lists and the prompt rows),
            else empty.
    """

    images: torch.Tensor
    latents: torch.Tensor
    steps: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SampleOption:
    """One sampling option a generation path accepts (``guidance``, ``temperature``, ``num_steps`` ...).

    Attributes:
        type: ``float``, ``int`` or ``bool``; an int is accepted for a float option.
        default: the value used when the option is not given (None: the path's own default, e.g. a config value).
        min, max: inclusive bounds, or None.
        min_exclusive: the lower bound itself is not allowed (top_p > 0).
        optional: None is a valid value (top_k: None = no top-k).
        help: one line for ``--help``, the docs and the demo.
    """

    type: type
    default: Any = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    optional: bool = False
    help: str = ""

    def check(self, name: str, value: Any, where: str) -> Any:
        """``value`` if it is valid for this option, converted to ``type``; else a one-line error naming ``where``."""
        if value is None:
            if self.optional:
                return None
            raise InputError(f"{where}{name}: a value is required ({self.help})")
        allowed = (int, float) if self.type is float else (self.type,)
        if isinstance(value, bool) and self.type is not bool or not isinstance(value, allowed):
            raise InputError(f"{where}{name}: expected {self.type.__name__}, got {type(value).__name__} {value!r}")
        if self.min is not None and (value < self.min or (self.min_exclusive and value == self.min)):
            bound = f"> {self.min}" if self.min_exclusive else f">= {self.min}"
            raise InputError(f"{where}{name} = {value!r}: must be {bound} ({self.help})")
        if self.max is not None and value > self.max:
            raise InputError(f"{where}{name} = {value!r}: must be <= {self.max} ({self.help})")
        return self.type(value)


def check_left_padded(prompt_mask: torch.Tensor, start_token: str) -> None:
    """Every prompt row must end with a real token (the generation start ``start_token``): batches are left padded."""
    if not bool(prompt_mask[:, -1].all()):
        raise InputError(
            f"every prompt must end with a real token ({start_token}): pad batches on the left, not on the right "
            "(prompt_mask[:, -1] must be all ones)"
        )


class GenerationPath(nn.Module, ABC):
    """Base class of generation paths (see the module docstring for the members the library reads).

    Subclasses set ``image_size`` and ``num_image_tokens``, declare ``sample_options`` and implement
    :meth:`sample`, :meth:`loss`, :meth:`encode_images` and :meth:`decode_latents`.
    """

    image_size: int
    num_image_tokens: int
    #: The options :meth:`sample` accepts besides the prompt, ``pad_id``, ``generator`` and ``progress``.
    sample_options: ClassVar[Mapping[str, SampleOption]] = {}
    #: Submodules (attribute names) frozen in training unless a stage names them: the pre-trained autoencoder.
    frozen_children: ClassVar[tuple[str, ...]] = ("autoencoder",)
    #: The begin-of-generation token's name, for error messages about prompts.
    start_token: ClassVar[str] = "<begin_of_image>"

    @property
    def uses_und_features(self) -> bool:
        """Whether :meth:`loss` wants ``und_features`` (the understanding encoder's features of the clean images)."""
        return False

    def image_autoencoder(self) -> nn.Module | None:
        """The autoencoder the path works in (its ``autoencoder`` submodule, an
        :class:`~unimm.generation.autoencoder.ImageAutoencoder`), or None for a path without one."""
        return self._modules.get("autoencoder")

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules that FSDP shards as one unit each (:mod:`unimm.train.sharding`), innermost first. Default:
        each of :attr:`frozen_children` (a frozen autoencoder is its own unit, never mixed with trained weights),
        then the path itself (whatever is left: embeddings, small projections). Paths add their big parts."""
        children = [getattr(self, name, None) for name in self.frozen_children]
        return [m for m in children if isinstance(m, nn.Module)] + [self]

    @classmethod
    def check_sample_options(cls, options: Mapping[str, Any], where: str = "") -> dict[str, Any]:
        """Check sampling options against :attr:`sample_options` before anything runs.

        Args:
            options: name -> value (None values are dropped: "not given").
            where: prefix naming the source in messages (``"sample."``, ``"--"``).

        Returns:
            The given options, converted to their declared types.

        Raises:
            InputError: an option this path does not take (naming the ones it has) or a bad value.
        """
        checked = {}
        for name, value in options.items():
            if name not in cls.sample_options:
                names = sorted(cls.sample_options)
                hint = did_you_mean(name, names)
                raise InputError(
                    f"{where}{name}: the {cls.__name__} does not take this sampling option.{hint} "
                    f"Its options: {', '.join(names) or '(none)'}"
                )
            if value is None and not cls.sample_options[name].optional:
                continue
            checked[name] = cls.sample_options[name].check(name, value, where)
        return checked

    def default_sample_options(self) -> dict[str, Any]:
        """Each declared option's value when nothing sets it: its declared default. A path whose defaults are its
        own settings (the flow path's ``guidance`` and ``num_steps``) overrides this."""
        return {name: option.default for name, option in self.sample_options.items()}

    @classmethod
    def configured_sample_options(cls, section: Mapping[str, Any] | None) -> dict[str, Any]:
        """A model config's ``sample:`` section (or None), checked as :meth:`check_sample_options` does under
        ``sample.``: the defaults every sampler (``unimm generate``, the server, the demo) starts from."""
        from omegaconf import OmegaConf

        if section is None:
            return {}
        if OmegaConf.is_config(section):
            section = OmegaConf.to_container(section, resolve=True)
        return cls.check_sample_options(section, where="sample.")

    def check_prompt(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None,
                     prompt_positions: torch.Tensor | None = None) -> None:
        """Prompts are ids (B, L) or embeddings (B, L, D) with a (B, L) mask, L >= 2, left padded (every row ends
        with :attr:`start_token`); anything else is an :class:`InputError` that says so. A training batch that
        gives its ``prompt_positions`` (B, L) may hold unconditional prompts (dropped captions), which need not
        end with a real token."""
        shape = "(B, L, D) embeddings" if prompt.ndim == 3 else "(B, L) ids"
        if prompt.ndim not in (2, 3) or prompt.shape[1] < 2:
            raise InputError(
                f"prompts must be (B, L) ids or (B, L, D) embeddings with L >= 2 (at least BOS and "
                f"{self.start_token}), got shape {tuple(prompt.shape)}"
            )
        if prompt_mask is None or tuple(prompt_mask.shape) != tuple(prompt.shape[:2]):
            got = None if prompt_mask is None else tuple(prompt_mask.shape)
            raise InputError(f"prompt_mask must be (B, L) = {tuple(prompt.shape[:2])} for {shape}, got {got}")
        if prompt_positions is None:
            check_left_padded(prompt_mask, self.start_token)
        elif tuple(prompt_positions.shape) != tuple(prompt_mask.shape):
            raise InputError(f"prompt_positions must be (B, L) = {tuple(prompt_mask.shape)}, got "
                             f"{tuple(prompt_positions.shape)}")

    def unconditional_prompt(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional prompt of classifier-free guidance for each prompt row: (B, L) ids and mask -> (B, L)
        ids and mask (its last token need not be attended to). :meth:`sample` guides with it and caption dropout
        trains on it, so the two cannot drift. A path without guidance leaves this as it is."""
        raise ConfigError(
            f"{type(self).__name__} has no unconditional prompt (it takes no guidance), so its captions cannot be "
            "dropped: remove caption_dropout from train.data.sources"
        )

    @abstractmethod
    def sample(
        self,
        backbone: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        pad_id: int,
        generator: torch.Generator | None = None,
        progress: bool = False,
        keep_steps: bool = False,
        **options: Any,
    ) -> GenerationOutput:
        """Generate one image per prompt row.

        Args:
            backbone: the causal LM (:class:`unimm.backbones.base.Backbone`).
            prompt_ids, prompt_mask: (B, L) left-padded prompts ending with :attr:`start_token`.
            pad_id: the tokenizer's pad id, for the unconditional rows of guidance.
            generator: random source: one for the batch, or a sequence of B, one per row (each row's draws then
                depend on its generator alone: :func:`unimm.generation.sampling.randn_rows`, ``sample_next``).
            progress: show a progress bar.
            keep_steps: record every step in :attr:`GenerationOutput.steps` (tests, analysis; costs memory).
            **options: values for :attr:`sample_options`.
        """

    @abstractmethod
    def loss(
        self,
        backbone: nn.Module,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        images: torch.Tensor,
        *,
        und_features: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prompt_positions: torch.Tensor | None = None,
    ) -> GenerationLoss:
        """Training loss for text-to-image.

        Args:
            backbone: the causal LM.
            prompt_embeds: (B, L, D) embedded prompt ending with the start-generation token.
            prompt_mask: (B, L) 1 for real tokens (left padding).
            images: (B, 3, H, W) targets in [-1, 1].
            und_features: (B, N, C) the understanding encoder's features of the clean images, for
                representation alignment (REPA); given only when :attr:`uses_und_features`.
            generator: random source for noise / time draws.
            prompt_positions: (B, L) positions of the prompt tokens; default: from ``prompt_mask``. Training
                batches give them, because a dropped caption's row holds :meth:`unconditional_prompt`, whose mask
                may hide tokens that still take their places (as in :meth:`sample`).
        """

    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> the path's latent form (VQ codes (B, N) or VAE latents)."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode_images`: latents -> images (B, 3, H, W) in [-1, 1]."""


__all__ = [
    "GenerationLoss",
    "GenerationOutput",
    "GenerationPath",
    "SampleOption",
    "check_left_padded",
]
