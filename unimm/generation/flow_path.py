"""JanusFlow's generation path: rectified flow in a VAE latent space, with the language model as velocity network.

Paper: Ma et al. 2024, "JanusFlow: Harmonizing Autoregression and Rectified Flow for Unified Multimodal
Understanding and Generation", arXiv 2411.07975. Rectified flow: Liu et al. 2022 (arXiv 2209.03003).

How one velocity is computed (``RectifiedFlowPath``)::

    z_t (B, C, h, w) --encoder--> tokens (B, W_enc, g, g), t_emb (B, D), skip
    tokens --flatten, encoder_aligner--> (B, g*g, D)
    LLM([prompt without its last token, t_emb, tokens])  # the begin-of-generation token's slot holds t_emb
    hidden states at the g*g image positions --decoder_aligner_norm, decoder_aligner--> (B, W_dec, g, g)
    decoder(features, skip, t_emb) --> v (B, C, h, w)

Time runs from t=0 (noise) to t=1 (data): ``z_t = t * x1 + (1 - t) * x0`` with x1 the VAE latent of the image and
x0 Gaussian noise; the target velocity is ``x1 - x0``. The networks see ``t * 1000``.

Sampling follows the released JanusFlow demo exactly (Euler steps ``t_k = k / steps``; classifier-free guidance
``v = w * v_cond - (w - 1) * v_uncond``; unconditional rows keep only the first real prompt token, the rest are set
to pad and masked out of attention) with one improvement: the prompt runs through the language model once and its
KV cache is reused by every step (the demo means to, but its cache list is empty, so it recomputes the prompt).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from ..backbones.causal_lm import positions_from_mask
from ..registry import AUTOENCODERS, GENERATORS, CheckpointError, ConfigError, InputError
from ..devices import module_dtype
from ..registry.registry import build_child
from .autoencoder import ImageAutoencoder
from .base import GenerationLoss, GenerationOutput, GenerationPath, SampleOption
from .sampling import randn_rows
from .uvit import ShallowUViTDecoder, ShallowUViTEncoder

#: The networks take time on the 0..1000 scale used in training the released model.
TIME_SCALE = 1000.0

#: JanusFlow-1.3B's generation encoder and decoder (``vision_gen_enc_config.params`` / ``vision_gen_dec_config``).
JANUSFLOW_ENCODER: dict[str, Any] = {
    "input_channels": 4, "stride": 2, "kernel_size": 2, "padding": 0, "block_out_channels": [768],
    "layers_in_middle": 2, "elementwise_affine": True, "use_bias": True, "norm_eps": 1e-6, "use_mid_block": True,
}  # fmt: skip
JANUSFLOW_DECODER: dict[str, Any] = {
    "in_channels": 768, "out_channels": 4, "block_out_channels": [768], "upsamples": 1, "layers_in_middle": 2,
    "elementwise_affine": True, "use_bias": True, "norm_eps": 1e-6, "use_mid_block": True,
}  # fmt: skip


class RectifiedFlowPath(GenerationPath):
    """JanusFlow's rectified-flow generation path (see the module docstring for the computation).

    Args:
        hidden_size: the language model's width (inferred from the backbone).
        autoencoder: the VAE, a built :class:`~unimm.generation.autoencoder.ImageAutoencoder` (config:
            ``AUTOENCODERS`` slot, default the SDXL VAE architecture, frozen).
        encoder: a built :class:`ShallowUViTEncoder` (config: its keyword arguments, the released
            ``vision_gen_enc_config.params``, ``hidden_size`` filled in; default JanusFlow-1.3B's).
        decoder: a built :class:`ShallowUViTDecoder` (config: ``vision_gen_dec_config.params``; default 1.3B's).
        image_size: generated image side in pixels (384).
        rms_norm_eps: epsilon of ``decoder_aligner_norm`` (the language model's ``rms_norm_eps``).
        num_steps: default number of Euler steps (30, the released demo's).
        guidance: default classifier-free guidance weight w (2.0, the released demo's).
        time_sampling: training-time distribution of t: "logit_normal" (sigmoid of a normal) or "uniform".
        logit_normal_mean, logit_normal_std: parameters of the logit-normal distribution.
        repa_layer: index into the backbone's hidden-state tuple (0 = embeddings, i = output of layer i) whose
            states at the image positions are aligned to the understanding encoder (REPA); None turns REPA off.
        repa_weight: weight of the REPA term in the loss.
        repa_dim: the understanding encoder's feature width (inferred by the model); required with REPA.

    Submodules: ``autoencoder``, ``encoder``, ``encoder_aligner`` (Linear W_enc -> D), ``decoder_aligner_norm``
    (RMSNorm(D)), ``decoder_aligner`` (Linear D -> W_dec), ``decoder`` and, with REPA, ``repa_projector``
    (MLP D -> D -> D -> repa_dim).

    Sizes: latent side ``image_size / autoencoder.downsample``; token grid ``g`` from the encoder's patchify;
    ``num_image_tokens = g * g`` (576 for JanusFlow-1.3B at 384 px).
    """

    child_slots: ClassVar[dict] = {"autoencoder": AUTOENCODERS}
    config_defaults: ClassVar[dict] = {"autoencoder": {"type": "autoencoder_kl"}, "encoder": JANUSFLOW_ENCODER,
                                       "decoder": JANUSFLOW_DECODER}
    sample_options: ClassVar[dict[str, SampleOption]] = {
        "guidance": SampleOption(float, None, min=0.0, help="classifier-free guidance weight w (1 = unguided; "
                                 "default: the path's guidance)"),
        "num_steps": SampleOption(int, None, min=1, help="Euler steps of the ODE (default: the path's num_steps)"),
    }
    start_token = "the begin-of-generation token"

    def __init__(
        self,
        hidden_size: int,
        autoencoder: ImageAutoencoder,
        encoder: ShallowUViTEncoder,
        decoder: ShallowUViTDecoder,
        image_size: int = 384,
        rms_norm_eps: float = 1e-6,
        num_steps: int = 30,
        guidance: float = 2.0,
        time_sampling: str = "logit_normal",
        logit_normal_mean: float = 0.0,
        logit_normal_std: float = 1.0,
        repa_layer: int | None = None,
        repa_weight: float = 1.0,
        repa_dim: int | None = None,
        *,
        where: str = "model.generator",
    ):
        super().__init__()
        self.where = where
        if time_sampling not in ("logit_normal", "uniform"):
            raise ConfigError(f"{where}.time_sampling = {time_sampling!r}: choose 'logit_normal' or 'uniform'")
        if repa_layer is not None and repa_dim is None:
            raise ConfigError(
                f"{where}.repa_dim: REPA is on (repa_layer set) but the understanding encoder's width is unknown; "
                "give repa_dim or build the path through the model, which infers it"
            )
        self.hidden_size = hidden_size
        self.image_size = image_size
        self.num_steps, self.guidance = num_steps, guidance
        self.time_sampling = time_sampling
        self.logit_normal_mean, self.logit_normal_std = logit_normal_mean, logit_normal_std
        self.repa_layer, self.repa_weight, self.repa_dim = repa_layer, repa_weight, repa_dim

        self.autoencoder, self.encoder, self.decoder = autoencoder, encoder, decoder
        self._check_sizes()
        self.encoder_aligner = nn.Linear(self.encoder.out_channels, hidden_size)
        self.decoder_aligner_norm = LlamaRMSNorm(hidden_size, eps=rms_norm_eps)
        self.decoder_aligner = nn.Linear(hidden_size, self.decoder.in_channels)
        if repa_layer is not None:
            # REPA (Yu et al. 2024) projects with a 3-layer SiLU MLP; JanusFlow calls it "a small trainable MLP".
            self.repa_projector = nn.Sequential(
                nn.Linear(hidden_size, hidden_size), nn.SiLU(),
                nn.Linear(hidden_size, hidden_size), nn.SiLU(),
                nn.Linear(hidden_size, repa_dim),
            )  # fmt: skip
        else:
            self.repa_projector = None

    @property
    def uses_und_features(self) -> bool:
        """REPA is on: :meth:`loss` aligns an LLM layer to the understanding encoder's features."""
        return self.repa_projector is not None

    @classmethod
    def from_config(cls, kwargs: dict[str, Any], *, where: str) -> RectifiedFlowPath:
        """Build the VAE and the U-ViT encoder / decoder (their ``hidden_size`` is the LLM's), then the path."""
        kwargs = dict(kwargs)
        hidden_size = kwargs["hidden_size"]
        kwargs["autoencoder"] = AUTOENCODERS.build(kwargs["autoencoder"], where=f"{where}.autoencoder")
        for name, part in (("encoder", ShallowUViTEncoder), ("decoder", ShallowUViTDecoder)):
            params = dict(kwargs[name])
            if params.get("hidden_size") not in (None, hidden_size):
                raise ConfigError(
                    f"{where}.{name}.hidden_size = {params['hidden_size']} contradicts the language model width "
                    f"{hidden_size}: the time embedding enters the language model as a token; remove the key"
                )
            params["hidden_size"] = hidden_size
            kwargs[name] = build_child(part, params, where=f"{where}.{name}", label=part.__name__)
        return cls(**kwargs, where=where)

    def _check_sizes(self) -> None:
        """Every width and grid that one part fixes for another must agree; say which numbers differ."""
        ae, enc, dec, where = self.autoencoder, self.encoder, self.decoder, self.where
        if self.image_size % ae.downsample:
            raise ConfigError(
                f"{where}.image_size = {self.image_size} is not divisible by the VAE's downsampling {ae.downsample}"
            )
        self.latent_size = self.image_size // ae.downsample
        for name, got in (("encoder.input_channels", enc.input_channels), ("decoder.out_channels", dec.out_channels)):
            if got != ae.latent_channels:
                raise ConfigError(f"{where}.{name} = {got} but the VAE has {ae.latent_channels} latent channels")
        if dec.skip_channels != enc.out_channels:
            raise ConfigError(
                f"{where}.decoder.block_out_channels = [{dec.skip_channels}] must equal the encoder's width "
                f"[{enc.out_channels}] (the skip connection)"
            )
        self.grid_size = enc.grid_size(self.latent_size)
        if self.grid_size * 2**dec.upsamples != self.latent_size:
            raise ConfigError(
                f"{where}: the encoder turns a {self.latent_size}x{self.latent_size} latent into a "
                f"{self.grid_size}x{self.grid_size} grid, but the decoder's {dec.upsamples} 2x upsampling(s) give "
                f"{self.grid_size * 2**dec.upsamples}; change encoder.stride or decoder.upsamples"
            )
        self.num_image_tokens = self.grid_size**2

    # -- pieces shared by sampling and training -------------------------------------------------------------
    def _generation_embeds(self, z: torch.Tensor, t: torch.Tensor):
        """Latents (B, C, h, w) and t (B,) in [0, 1] -> LLM inputs [t_emb, tokens] (B, 1 + N, D), t_emb, skip."""
        tokens, t_emb, skip = self.encoder(z, t * TIME_SCALE)
        tokens = self.encoder_aligner(tokens.flatten(2).transpose(1, 2))
        return torch.cat([t_emb.unsqueeze(1), tokens], dim=1), t_emb, skip

    def _velocity(self, hidden: torch.Tensor, skip: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """LLM hidden states at the image positions (B, N, D) -> velocity (B, C, h, w)."""
        x = self.decoder_aligner(self.decoder_aligner_norm(hidden))
        x = x.transpose(1, 2).reshape(x.shape[0], -1, self.grid_size, self.grid_size)
        return self.decoder(x, skip, t_emb)

    def unconditional_prompt(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guidance prompt, as JanusFlow builds it: each row keeps its first real token (BOS); every later
        token becomes ``pad_id`` and is masked out of attention. (B, L) -> (B, L) ids and mask."""
        cols = torch.arange(prompt_ids.shape[1], device=prompt_ids.device)
        first = prompt_mask.long().argmax(dim=-1, keepdim=True)
        keep = cols <= first
        uncond_ids = torch.where(keep, prompt_ids, torch.full_like(prompt_ids, pad_id))
        return uncond_ids, prompt_mask * keep.to(prompt_mask.dtype)

    def default_sample_options(self) -> dict[str, Any]:
        """Guidance and steps default to this path's own settings (its config's ``guidance`` / ``num_steps``)."""
        return {**super().default_sample_options(), "guidance": self.guidance, "num_steps": self.num_steps}

    def fsdp_units(self) -> list[nn.Module]:
        """The VAE (frozen), the ConvNeXt encoder and decoder, then the path (aligners, REPA projector)."""
        return [self.autoencoder, self.encoder, self.decoder, self]

    # -- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        backbone: nn.Module,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        pad_id: int,
        guidance: float | None = None,
        num_steps: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = False,
        keep_steps: bool = False,
        noise: torch.Tensor | None = None,
        use_prompt_cache: bool = True,
        static_cache: bool = True,
    ) -> GenerationOutput:
        """Generate one image per prompt by Euler integration of the guided velocity from t=0 to t=1.

        Args:
            backbone: a ``CausalLMBackbone`` (``embed``, ``forward`` with KV cache).
            prompt_ids: (B, L) left-padded prompts ending with the begin-of-generation token.
            prompt_mask: (B, L) 1 for real tokens.
            pad_id: the tokenizer's pad id, written into the unconditional rows.
            guidance: CFG weight w (default ``self.guidance``); w = 1 is unguided.
            num_steps: Euler steps (default ``self.num_steps``).
            generator: random source of the initial noise.
            progress: show a progress bar.
            keep_steps: record in ``steps``: ``tokens`` (2B, L), ``attention_mask`` (2B, L + N), ``t_emb`` (per step
                (2B, D)), ``v_cond``, ``v_uncond`` (per step (B, C, h, w)) and ``decoded`` (the unclamped VAE decode).
            noise: (B, C, h, w) initial latent instead of drawing one.
            use_prompt_cache: run the prompt once and reuse its KV cache (default); False recomputes it at every
                step like the released demo (same result, slower; kept for benchmarks and tests).
            static_cache: keep the prompt in a preallocated KV cache (:mod:`unimm.generation.static_cache`) when the
                backbone allows it (default), so a step writes its positions in place instead of copying the
                prompt's keys and values; False uses transformers' growing cache.

        Returns:
            images (B, 3, H, W) clamped to [-1, 1]; ``latents`` the final ODE state z (B, C, h, w), float32.
        """
        self.check_prompt(prompt_ids, prompt_mask)
        guidance = self.guidance if guidance is None else guidance
        num_steps = self.num_steps if num_steps is None else num_steps
        if num_steps < 1:
            raise InputError(f"num_steps must be at least 1, got {num_steps}")
        batch, length = prompt_ids.shape
        n = self.num_image_tokens
        device = prompt_ids.device
        dtype = self.encoder_aligner.weight.dtype
        latent_shape = (batch, self.autoencoder.latent_channels, self.latent_size, self.latent_size)
        if noise is None:
            z = randn_rows(latent_shape, generator, device=device, dtype=dtype).float()  # the ODE state in float32
        elif tuple(noise.shape) != latent_shape:
            raise InputError(f"noise must have shape {latent_shape}, got {tuple(noise.shape)}")
        else:
            z = noise.to(device=device, dtype=torch.float32)

        # Conditional rows then unconditional rows, as JanusFlow stacks them.
        uncond_ids, uncond_mask = self.unconditional_prompt(prompt_ids, prompt_mask.long(), pad_id)
        ids, mask = torch.cat([prompt_ids, uncond_ids]), torch.cat([prompt_mask.long(), uncond_mask])
        # The begin-of-generation token is dropped; its slot (and position) goes to the time embedding.
        prefix_embeds = backbone.embed(ids[:, :-1])
        prefix_mask = mask[:, :-1]
        attention_mask = torch.cat([prefix_mask, prefix_mask.new_ones(2 * batch, 1 + n)], dim=1)
        # Both halves use the conditional prompt's positions: masking the unconditional prompt does not move
        # the image, exactly as in the released demo.
        positions = positions_from_mask(prompt_mask).repeat(2, 1)
        prefix_pos = positions[:, :-1]
        gen_pos = positions[:, -1:] + torch.arange(1 + n, device=device)

        cache = None
        if use_prompt_cache:
            # the prompt is cached once; each step writes its 1 + N positions after it and crops them off again
            from .static_cache import new_cache, supports_static_cache  # transformers' Cache, needed only here

            cache = new_cache(backbone, length + n) if static_cache and supports_static_cache(backbone) else None
            cache = backbone(prefix_embeds, attention_mask=prefix_mask, position_ids=prefix_pos, past_key_values=cache,
                             use_cache=True).past_key_values  # fmt: skip
        trace: dict[str, Any] = {"tokens": ids, "attention_mask": attention_mask, "t_emb": [], "v_cond": [],
                                 "v_uncond": []}
        steps = range(num_steps)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="rectified flow")
        dt = 1.0 / num_steps
        for k in steps:
            t = torch.full((2 * batch,), k * dt, device=device, dtype=dtype)
            gen_embeds, t_emb, skip = self._generation_embeds(torch.cat([z, z]).to(dtype), t)
            if cache is not None:
                hidden = backbone(
                    gen_embeds, attention_mask=attention_mask, position_ids=gen_pos, past_key_values=cache,
                    use_cache=True,
                ).hidden_states  # fmt: skip
                cache.crop(-gen_embeds.shape[1])  # back to the prompt for the next step
            else:
                hidden = backbone(
                    torch.cat([prefix_embeds, gen_embeds], dim=1), attention_mask=attention_mask,
                    position_ids=torch.cat([prefix_pos, gen_pos], dim=1),
                ).hidden_states  # fmt: skip
            v_cond, v_uncond = self._velocity(hidden[:, -n:], skip, t_emb).float().chunk(2)
            z = z + dt * (guidance * v_cond - (guidance - 1.0) * v_uncond)  # the ODE state and guidance in float32
            if keep_steps:
                for key, value in (("t_emb", t_emb), ("v_cond", v_cond), ("v_uncond", v_uncond)):
                    trace[key].append(value)
        decoded = self.autoencoder.decode(z.to(module_dtype(self.autoencoder)))  # it may be kept float32
        images = decoded.clamp(-1.0, 1.0)
        return GenerationOutput(images, z, {**trace, "decoded": decoded} if keep_steps else {})

    # -- training -------------------------------------------------------------------------------------------
    def sample_time(self, batch: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """Draw t (B,) in (0, 1) from the configured distribution."""
        if self.time_sampling == "uniform":
            return torch.rand(batch, generator=generator, device=device)
        normal = torch.randn(batch, generator=generator, device=device)
        return torch.sigmoid(self.logit_normal_mean + self.logit_normal_std * normal)

    def _resample_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, M, C) understanding features on a square grid -> (B, N, C) on the image-token grid (bilinear)."""
        batch, m, channels = features.shape
        if m == self.num_image_tokens:
            return features
        side = math.isqrt(m)
        if side * side != m:
            raise InputError(f"und_features has {m} tokens, not a square grid; cannot resample to {self.grid_size}^2")
        grid = features.transpose(1, 2).reshape(batch, channels, side, side)
        grid = F.interpolate(grid, size=(self.grid_size, self.grid_size), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

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
        """Rectified-flow loss, plus representation alignment (REPA) when ``repa_layer`` is set.

        From the paper (Sec. 3): ``L_RF = E ||v(z_t, t | prompt) - (x1 - x0)||^2`` with ``z_t = t x1 + (1 - t) x0``,
        x1 the VAE latent, x0 ~ N(0, I); ``L_REPA = -E sim(stop_grad(f_enc(x1 image)), h_phi(q_theta(z_t)))`` with
        sim the cosine similarity, f_enc the understanding encoder, q_theta an intermediate LLM representation at the
        image positions and h_phi a small trainable MLP; the generation loss is their sum. Not fixed here by the
        paper and therefore settings: the distribution of t (default logit-normal(0, 1), the choice of
        Esser et al. 2024 for rectified flow), the LLM layer (``repa_layer``), the weight (``repa_weight``, 1 gives
        the paper's plain sum) and the projector's shape (REPA's 3-layer SiLU MLP). REPA is written as
        ``1 - cos``, which differs from ``-cos`` by a constant.

        Args:
            backbone: the causal LM.
            prompt_embeds: (B, L, D) prompt embeddings ending with the begin-of-generation token (its slot is
                taken by the time embedding, as in sampling). Caption dropout is the data pipeline's job: a
                dropped caption's row holds :meth:`unconditional_prompt`.
            prompt_mask: (B, L) 1 for real tokens (left padding).
            images: (B, 3, H, W) in [-1, 1], H = W = ``image_size``.
            und_features: (B, M, repa_dim) understanding-encoder features of the clean images; required with REPA
                (resampled bilinearly to the token grid when M differs from ``num_image_tokens``).
            generator: random source of the noise and time draws.
            prompt_positions: (B, L) the prompt's positions (default: from ``prompt_mask``); an unconditional row
                takes its conditional prompt's, as in :meth:`sample`.

        Returns:
            ``GenerationLoss`` with ``parts`` ``flow`` and, with REPA, ``repa``.
        """
        self.check_prompt(prompt_embeds, prompt_mask, prompt_positions)
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise InputError(f"images must be {self.image_size}x{self.image_size}, got {tuple(images.shape[-2:])}")
        if self.repa_projector is not None and und_features is None:
            raise InputError("REPA is on (repa_layer set): pass und_features, the understanding encoder's features")
        batch, device, n = images.shape[0], images.device, self.num_image_tokens

        x1 = self.autoencoder.encode(images.to(module_dtype(self.autoencoder)), generator=generator)
        x1 = x1.to(prompt_embeds.dtype)
        x0 = torch.randn(x1.shape, generator=generator, device=device, dtype=x1.dtype)
        t = self.sample_time(batch, generator=generator, device=device).to(x1.dtype)
        z_t = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
        gen_embeds, t_emb, skip = self._generation_embeds(z_t, t)

        mask = prompt_mask.long()
        positions = positions_from_mask(mask) if prompt_positions is None else prompt_positions
        out = backbone(
            torch.cat([prompt_embeds[:, :-1], gen_embeds], dim=1),
            attention_mask=torch.cat([mask[:, :-1], mask.new_ones(batch, 1 + n)], dim=1),
            position_ids=torch.cat([positions[:, :-1], positions[:, -1:] + torch.arange(1 + n, device=device)], 1),
            output_hidden_states=self.repa_projector is not None,
        )
        v = self._velocity(out.hidden_states[:, -n:], skip, t_emb)
        flow = F.mse_loss(v.float(), (x1 - x0).float())
        parts = {"flow": flow.detach()}
        total = flow
        if self.repa_projector is not None:
            states = out.all_hidden_states
            if not 0 <= self.repa_layer < len(states):
                raise ConfigError(
                    f"{self.where}.repa_layer = {self.repa_layer}: the backbone has hidden states 0..{len(states) - 1}"
                )
            if und_features.shape[-1] != self.repa_dim:
                raise InputError(f"und_features width {und_features.shape[-1]} != repa_dim {self.repa_dim}")
            predicted = self.repa_projector(states[self.repa_layer][:, -n:])
            target = self._resample_features(und_features.detach().to(predicted.dtype))
            repa = (1 - F.cosine_similarity(predicted.float(), target.float(), dim=-1)).mean()
            parts["repa"] = repa.detach()
            total = total + self.repa_weight * repa
        return GenerationLoss(loss=total, parts=parts)

    # -- latents --------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled VAE latents (B, C, H/8, W/8)."""
        return self.autoencoder.encode(images.to(module_dtype(self.autoencoder)))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents -> images (B, 3, H, W), clamped to [-1, 1]."""
        return self.autoencoder.decode(latents.to(module_dtype(self.autoencoder))).clamp(-1.0, 1.0)

    # -- released checkpoints -------------------------------------------------------------------------------
    def load_janusflow_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a released JanusFlow checkpoint's ``vision_gen_*`` weights (strict; the VAE is loaded apart).

        Raises:
            CheckpointError: listing missing, unexpected or misshapen keys.
        """
        converted = convert_janusflow_gen(state_dict)
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(("autoencoder.", "repa_projector."))}
        missing = sorted(set(own) - set(converted))
        unexpected = sorted(set(converted) - set(own))
        misshapen = [
            f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
            for k in sorted(set(own) & set(converted))
            if converted[k].shape != own[k].shape
        ]
        if missing or unexpected or misshapen:
            raise CheckpointError(
                "JanusFlow generation weights do not match the path: "
                f"missing {missing or 'none'}; unexpected {unexpected or 'none'}; misshapen {misshapen or 'none'}"
            )
        self.load_state_dict(converted, strict=False)


# -- converter ----------------------------------------------------------------------------------------------------
_RELEASED_PREFIXES = (
    ("vision_gen_enc_model.", "encoder."),
    ("vision_gen_enc_aligner.", "encoder_aligner."),
    ("vision_gen_dec_model.", "decoder."),
    ("vision_gen_dec_aligner_norm.", "decoder_aligner_norm."),
    ("vision_gen_dec_aligner.", "decoder_aligner."),
)


def convert_janusflow_gen(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released JanusFlow names -> ``RectifiedFlowPath`` names (relative to the path).

    Only ``vision_gen_*`` keys are taken; the rest of a full checkpoint (language model, understanding encoder)
    belongs to other parts and is ignored. The only change besides prefixes: the global response norm's released
    (1, 1, 1, C) weights become timm's (C,). The VAE is not in the released checkpoint.

    Raises:
        CheckpointError: a ``vision_gen_*`` key of no known part, or no ``vision_gen_*`` key at all.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if not key.startswith("vision_gen_"):
            continue
        for old, new in _RELEASED_PREFIXES:
            if key.startswith(old):
                name = new + key[len(old) :]
                if ".channelwise_norm." in name:
                    value = value.reshape(-1)
                converted[name] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unknown JanusFlow generation keys: {sorted(unknown)}")
    if not converted:
        raise CheckpointError(
            "no JanusFlow generation weights (vision_gen_enc_model.*, vision_gen_dec_model.*, ...) in the state dict"
        )
    return converted


# -- registered variants ------------------------------------------------------------------------------------------
GENERATORS.register("rectified_flow")(RectifiedFlowPath)
