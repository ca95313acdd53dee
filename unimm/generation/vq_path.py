"""Janus / Janus-Pro image generation: the language model predicts VQ codes one by one, with classifier-free guidance.

Wu et al., "Janus: Decoupling Visual Encoding for Unified Multimodal Understanding and Generation" (2024) and
Chen et al., "Janus-Pro" (2025). An image is a 24x24 grid of LlamaGen VQ-16 codes, read in raster order. To
generate, the prompt (ending with ``<begin_of_image>``) runs through the LLM; the image head turns the last
hidden state into logits over the codebook; the chosen code is embedded with a generation embedding table and an
MLP aligner and fed back as the next input. Classifier-free guidance (Ho & Salimans, 2022) runs an unconditional
copy of each prompt, its text replaced by pad tokens (still attended to), in the same batch, and samples from
``uncond + w * (cond - uncond)``. Training is next-code cross-entropy with teacher forcing.

Parts (``GENERATORS`` name ``vq``): ``autoencoder`` (a ``VQTokenizer``, frozen), ``embed`` (codebook_size ->
code width), ``aligner`` (code width -> LLM width), ``head`` (LLM width -> codebook_size). Released names:
``gen_vision_model``, ``gen_embed``, ``gen_aligner``, ``gen_head`` (see :func:`convert_janus_gen`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.causal_lm import positions_from_mask
from ..registry import ALIGNERS, AUTOENCODERS, GENERATORS, HEADS, CheckpointError, ConfigError, InputError
from ..aligners.base import Aligner
from ..devices import module_dtype
from ..heads.base import ImageHead
from .autoencoder import DiscreteAutoencoder
from .base import GenerationLoss, GenerationOutput, GenerationPath, SampleOption
from .sampling import sample_next
from .vq_tokenizer import convert_janus_vq


class VQGenerationPath(GenerationPath):
    """Autoregressive VQ-token generation path (Janus, Janus-Pro).

    Args:
        autoencoder: the VQ tokenizer, a built :class:`~unimm.generation.autoencoder.DiscreteAutoencoder`
            (from a config: ``AUTOENCODERS`` slot ``{"type": "llamagen_vq", "variant": "vq_16"}``).
        aligner: a built aligner from the code width to the LLM width (config: ``ALIGNERS`` slot, widths inferred).
        head: a built image head from the LLM width to the codebook (config: ``HEADS`` slot, sizes inferred).
        hidden_size: LLM width (the unified model infers it from the backbone).
        image_size: generated image side in pixels (384 for Janus); ``num_image_tokens`` = (image_size / 16)^2.

    The tokenizer is frozen (``requires_grad`` off) and only ever run without gradients; ``embed``, ``aligner``
    and ``head`` are trainable. From a config, :meth:`from_config` builds the three children first.
    """

    child_slots: ClassVar[dict] = {"autoencoder": AUTOENCODERS, "aligner": ALIGNERS, "head": HEADS}
    sample_options: ClassVar[dict[str, SampleOption]] = {
        "guidance": SampleOption(float, 5.0, min=0.0, help="classifier-free guidance weight w (1 = unguided)"),
        "temperature": SampleOption(float, 1.0, min=0.0, help="softmax temperature (0 = argmax)"),
        "top_k": SampleOption(int, None, min=1, optional=True, help="sample among the k most likely codes"),
        "top_p": SampleOption(float, None, min=0.0, max=1.0, min_exclusive=True, optional=True,
                              help="sample within the top-p probability mass"),
        "compile": SampleOption(bool, False, help="compile the one-token decode step (torch.compile with fixed "
                                "shapes; CUDA graphs on CUDA)"),
    }

    def __init__(
        self,
        autoencoder: DiscreteAutoencoder,
        aligner: Aligner,
        head: ImageHead,
        hidden_size: int,
        image_size: int = 384,
        *,
        where: str = "model.generator",
    ):
        super().__init__()
        _require_discrete(autoencoder, where)
        for name, got, want in (("aligner", aligner.in_dim, autoencoder.embed_dim),
                                ("head", head.codebook_size, autoencoder.codebook_size)):
            if got != want:
                raise ConfigError(f"{where}.{name}: {got} does not match the tokenizer's {want}")
        self.autoencoder = autoencoder
        self.autoencoder.requires_grad_(False)
        self.embed = nn.Embedding(autoencoder.codebook_size, autoencoder.embed_dim)
        self.aligner = aligner
        self.head = head
        self.hidden_size = hidden_size
        self.image_size = image_size
        try:
            self.grid_size = autoencoder.latent_grid(image_size)
        except InputError as err:
            raise ConfigError(f"{where}.image_size: {err}") from None
        self.num_image_tokens = self.grid_size**2

    @classmethod
    def from_config(cls, kwargs: dict[str, Any], *, where: str) -> VQGenerationPath:
        """Build the tokenizer, then the aligner and head whose sizes follow from it, then the path."""
        image_size, hidden_size = kwargs.get("image_size", 384), kwargs["hidden_size"]
        # The tokenizer is convolutional: the path's image_size, not the tokenizer's nominal one, sets the grid.
        autoencoder = AUTOENCODERS.build(kwargs["autoencoder"], where=f"{where}.autoencoder")
        _require_discrete(autoencoder, where)
        aligner = ALIGNERS.build(kwargs["aligner"], where=f"{where}.aligner",
                                 inferred={"in_dim": autoencoder.embed_dim, "out_dim": hidden_size})
        head = HEADS.build(kwargs["head"], where=f"{where}.head",
                           inferred={"hidden_size": hidden_size, "codebook_size": autoencoder.codebook_size})
        return cls(autoencoder, aligner, head, hidden_size, image_size, where=where)

    @property
    def codebook_size(self) -> int:
        return self.autoencoder.codebook_size

    def train(self, mode: bool = True) -> VQGenerationPath:
        """Switch the trainable parts; the frozen tokenizer stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    # -- pieces --------------------------------------------------------------------------------------------------
    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, N) -> LLM input embeddings (B, N, hidden_size) through ``embed`` and ``aligner``."""
        return self.aligner(self.embed(codes))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> codes (B, h*w) with the frozen tokenizer (no gradient)."""
        return self.autoencoder.tokenize(images.to(module_dtype(self.autoencoder)))  # it may be kept float32

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Codes (B, N), N a square number -> images (B, 3, H, W) in [-1, 1] (not clamped)."""
        return self.autoencoder.decode_codes(latents)

    def unconditional_prompt(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guidance prompt, as the Janus reference builds it: every token strictly between a row's first real
        token and its last set to pad.

        (B, L) -> (B, L) ids and mask. The first real token (``<bos>``) and the last (``<begin_of_image>``) are
        kept; left padding is left as it is, and the padded text is still attended to, so the mask is the
        conditional row's.
        """
        index = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        first = prompt_mask.long().argmax(dim=-1, keepdim=True)
        inside = (index > first) & (index < prompt_ids.shape[1] - 1)
        return prompt_ids.masked_fill(inside, pad_id), prompt_mask

    # -- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        backbone: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        pad_id: int,
        guidance: float = 5.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        keep_steps: bool = False,
        compile: bool = False,
        static_cache: bool = True,
    ) -> GenerationOutput:
        """Generate one image per prompt row with classifier-free guidance and a KV cache.

        Args:
            backbone: the causal LM (``CausalLMBackbone``).
            prompt_ids: (B, L) left-padded prompts ending with ``<begin_of_image>``.
            prompt_mask: (B, L) 1 for real tokens.
            pad_id: the tokenizer's pad id, written over the unconditional prompts' text.
            guidance: classifier-free guidance weight w (1 = no guidance).
            temperature, top_k, top_p: see :func:`unimm.generation.sampling.sample_next`; 0 = argmax.
            generator: random source for sampling.
            progress: show a progress bar over the image tokens.
            keep_steps: also keep every step's guided logits, as ``steps["logits"]`` (B, N, codebook_size).
            compile: compile the one-token step (:func:`unimm.generation.decode.sample_vq_codes`).
            static_cache: decode on a preallocated KV cache (:mod:`unimm.generation.static_cache`) when the
                backbone allows it (default); False keeps the growing transformers cache (tests, benchmarks).

        Returns:
            images (B, 3, H, W) in [-1, 1] and ``latents`` the codes (B, N).
        """
        self.check_prompt(prompt_ids, prompt_mask)
        batch, length = prompt_ids.shape
        steps = self.num_image_tokens
        mask = prompt_mask.long()
        # Rows alternate conditional / unconditional, as in the reference, so one forward serves both.
        uncond_ids, uncond_mask = self.unconditional_prompt(prompt_ids, mask, pad_id)
        ids = torch.stack([prompt_ids, uncond_ids], dim=1).flatten(0, 1)
        mask = torch.stack([mask, uncond_mask], dim=1).flatten(0, 1)
        # Imported here: the preallocated cache builds on transformers' Cache, which importing the part does not need.
        from .decode import sample_vq_codes
        from .static_cache import supports_static_cache

        if static_cache and supports_static_cache(backbone):
            codes, kept = sample_vq_codes(
                self, backbone, ids, mask, guidance=guidance, keep_steps=keep_steps, compile=compile,
                progress=progress, choose=lambda logits: sample_next(logits, temperature, top_k, top_p, generator),
            )  # fmt: skip
            images = self.autoencoder.decode_codes(codes, (self.grid_size, self.grid_size))
            return GenerationOutput(images, codes, {"logits": kept} if keep_steps else {})
        full_mask = torch.cat([mask, mask.new_ones(2 * batch, steps - 1)], dim=1)
        positions = positions_from_mask(mask)
        next_position = mask.sum(dim=-1, keepdim=True)  # (2B, 1) position of the first image token

        inputs = backbone.embed(ids)
        codes = torch.empty(batch, steps, dtype=torch.long, device=prompt_ids.device)
        all_logits = [] if keep_steps else None
        cache = None
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="image tokens")
        for step in iterator:
            out = backbone(
                inputs,
                attention_mask=full_mask[:, : length + step],
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            )
            cache = out.past_key_values
            logits = self.head(out.hidden_states[:, -1]).float()
            cond, uncond = logits[0::2], logits[1::2]
            guided = uncond + guidance * (cond - uncond)
            token = sample_next(guided, temperature, top_k, top_p, generator)
            codes[:, step] = token
            if all_logits is not None:
                all_logits.append(guided)
            if step + 1 < steps:  # the last code is never fed back
                inputs = self.embed_codes(token).to(inputs.dtype).repeat_interleave(2, dim=0).unsqueeze(1)
                positions = next_position + step
        images = self.autoencoder.decode_codes(codes, (self.grid_size, self.grid_size))
        steps_kept = {"logits": torch.stack(all_logits, dim=1)} if keep_steps else {}
        return GenerationOutput(images, codes, steps_kept)

    # -- training ------------------------------------------------------------------------------------------------
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
        """Next-code cross-entropy with teacher forcing.

        The input is the prompt (ending with ``<begin_of_image>``) followed by the embedded codes 0..N-2; the
        hidden state at prompt position L-1 predicts code 0 and image position i predicts code i+1.
        ``und_features`` and ``generator`` are not used by this path; ``prompt_positions`` (B, L) default to the
        mask's (this path's unconditional prompt keeps the mask, so they are the same).

        Returns:
            ``GenerationLoss(loss, {"ce": ...})``.
        """
        self.check_prompt(prompt_embeds, prompt_mask, prompt_positions)
        if images.shape[0] != prompt_embeds.shape[0]:
            raise InputError(
                f"{images.shape[0]} images for {prompt_embeds.shape[0]} prompts; give one image per prompt"
            )
        codes = self.encode_images(images)
        length = prompt_embeds.shape[1]
        image_inputs = self.embed_codes(codes[:, :-1]).to(prompt_embeds.dtype)
        inputs = torch.cat([prompt_embeds, image_inputs], dim=1)
        mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones(codes.shape[0], codes.shape[1] - 1).long()], dim=1)
        if prompt_positions is None:
            prompt_positions = positions_from_mask(prompt_mask.long())
        image_positions = prompt_positions[:, -1:] + torch.arange(1, codes.shape[1], device=mask.device)
        positions = torch.cat([prompt_positions, image_positions], dim=1)
        hidden = backbone(inputs, attention_mask=mask, position_ids=positions).hidden_states
        logits = self.head(hidden[:, length - 1 :])
        ce = F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten())
        return GenerationLoss(ce, {"ce": ce.detach()})


def _require_discrete(autoencoder: Any, where: str) -> None:
    if not isinstance(autoencoder, DiscreteAutoencoder):
        raise ConfigError(
            f"{where}.autoencoder: the VQ path needs a discrete autoencoder (a codebook), got "
            f"{type(autoencoder).__name__}; use llamagen_vq"
        )


# -- converter ---------------------------------------------------------------------------------------------------
_RELEASED_PARTS = {"gen_embed.": "embed.", "gen_aligner.": "aligner.", "gen_head.": "head."}


def convert_janus_gen(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released Janus generation weights -> ``VQGenerationPath`` names (relative to the path).

    Takes the released state dict filtered to ``gen_vision_model.*``, ``gen_embed.*``, ``gen_aligner.*`` and
    ``gen_head.*``: the VQ model goes through :func:`convert_janus_vq`, the others only change prefix (the
    aligner's ``layers.0/2`` and the head's ``output_mlp_projector`` / ``vision_head`` keep their names).

    Raises:
        CheckpointError: listing keys with any other prefix, or unknown VQ names.
    """
    vq = {k[len("gen_vision_model.") :]: v for k, v in state_dict.items() if k.startswith("gen_vision_model.")}
    out = {f"autoencoder.{k}": v for k, v in convert_janus_vq(vq).items()}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("gen_vision_model."):
            continue
        prefix = next((p for p in _RELEASED_PARTS if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
        else:
            out[_RELEASED_PARTS[prefix] + key[len(prefix) :]] = value
    if unknown:
        raise CheckpointError(
            f"convert_janus_gen: {len(unknown)} key(s) are not Janus generation weights: {', '.join(sorted(unknown))}. "
            "Pass only gen_vision_model.*, gen_embed.*, gen_aligner.* and gen_head.*"
        )
    return out


def janus_generator_config(config: dict[str, Any], image_size: int = 384) -> dict[str, Any]:
    """The ``model.generator`` config for a released Janus ``config.json`` (its ``gen_*_config`` entries).

    ``gen_vision_config.cls`` "VQ-16" selects the variant; sizes given in its ``params`` win (tiny test models
    carry them). The released config does not store the image size: Janus and Janus-Pro generate at 384.
    """
    vision = config["gen_vision_config"]
    params = vision.get("params", {})
    autoencoder: dict[str, Any] = {"type": "llamagen_vq"}
    if vision.get("cls") == "VQ-16":
        autoencoder["variant"] = "vq_16"
    for key in ("ch", "ch_mult", "z_channels", "num_res_blocks", "codebook_size", "codebook_embed_dim"):
        if key in params:
            autoencoder[key] = params[key]
    if "codebook_size" not in autoencoder and "image_token_size" in params:
        autoencoder["codebook_size"] = params["image_token_size"]
    if "codebook_embed_dim" not in autoencoder and "n_embed" in params:
        autoencoder["codebook_embed_dim"] = params["n_embed"]
    aligner_params = config["gen_aligner_config"].get("params", {})
    head_params = config["gen_head_config"].get("params", {})
    return {
        "type": "vq",
        "autoencoder": autoencoder,
        "aligner": {"type": aligner_params.get("projector_type", "mlp_gelu"), "depth": aligner_params.get("depth", 2)},
        "head": {"type": "vq_image_head", "embed_dim": head_params.get("image_token_embed")},
        "image_size": image_size,
    }


# -- registered variants -----------------------------------------------------------------------------------------
GENERATORS.register("vq")(VQGenerationPath)
