"""Training a small image autoencoder - the VQ tokenizer of the Janus path or the KL VAE of the JanusFlow path.

Janus and JanusFlow take their autoencoders ready-made (LlamaGen VQ-16, the SDXL VAE). At laptop scale there is no
such model for the data at hand, so this trains one: the slot's architecture, random weights, pixels in [-1, 1].

Any part that meets the autoencoder contract (:mod:`unimm.generation.autoencoder`) trains here: each step
minimises its own ``reconstruction_loss`` (the VQ tokenizer: L1 + L2 plus codebook and commitment terms; the VAE:
L1 + L2 plus ``kl_weight`` x the KL), then ``calibrate`` sets its data-dependent constants (the VAE's latent scale)
and ``save`` writes its folder.

The result is a folder the slot can point at with ``path:`` - ``config.json`` + ``model.safetensors`` for the VQ
tokenizer, a diffusers folder for the VAE - and ``train_log.jsonl`` with the losses.

Entry point: :func:`train_autoencoder`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..registry import AUTOENCODERS, ConfigError, to_plain
from .optim import shuffled_batches, warmup_cosine

logger = logging.getLogger(__name__)


def load_image_tensor(paths: Sequence[str | Path], image_size: int) -> torch.Tensor:
    """Images as one tensor (N, 3, image_size, image_size) in [-1, 1] (short side resized, centre crop)."""
    from ..data.images import GenerationImageTransform
    from ..encoders.transforms import load_image

    if not paths:
        raise ConfigError("no training images given to the autoencoder trainer")
    transform = GenerationImageTransform(image_size)
    return torch.stack([transform(load_image(p)) for p in paths])


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> reconstructions through the (trained) autoencoder, clamped to [-1, 1]."""
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        out.append(model.decode(model.encode(chunk)))
    return torch.cat(out).clamp(-1, 1)


def train_autoencoder(
    slot: Mapping[str, Any],
    images: torch.Tensor,
    out: str | Path,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    log_every: int = 50,
) -> Path:
    """Train the autoencoder that ``slot`` describes on ``images`` and save it to ``out``.

    Args:
        slot: a ``generator.autoencoder`` config: ``{type: llamagen_vq, ch: ..., ...}`` or
            ``{type: autoencoder_kl, config: {...}}``; ``path`` must not be set (that is what this produces).
        images: (N, 3, H, W) in [-1, 1] (see :func:`load_image_tensor`).
        out: folder to write; ``slot`` plus ``path: out`` then loads the trained weights.
        steps, batch_size, lr: AdamW steps (cosine decay after a 5% warm-up), images per step, peak rate.
        kl_weight: weight of the per-pixel KL term (VAE only).
        seed: seeds the weights and the batch order.

    Returns:
        ``out``.
    """
    slot = dict(to_plain(slot))
    kind = slot.get("type")
    if slot.get("path"):
        raise ConfigError("the autoencoder slot to train already has a 'path'; remove it to train from scratch")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    torch.manual_seed(seed)
    # Inferred values a part does not take are ignored: the VQ tokenizer has no kl_weight, the VAE no image_size.
    model = AUTOENCODERS.build(slot, where="autoencoder", inferred={"image_size": images.shape[-1], "trainable": True,
                                                                    "kl_weight": kl_weight})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    scheduler = warmup_cosine(optimizer, steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "train_log.jsonl").open("w")
    start = time.perf_counter()
    for step, index in enumerate(shuffled_batches(len(images), batch_size, steps, seed), start=1):
        batch = images[index]
        loss, parts = model.reconstruction_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % log_every == 0 or step == steps:
            record = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "seconds": round(time.perf_counter() - start, 2)}
            log.write(json.dumps(record) + "\n")
            log.flush()
    log.close()
    model.eval()
    model.calibrate(images)
    model.save(out)
    logger.info("trained %s for %d steps in %.0f s -> %s", kind, steps, time.perf_counter() - start, out)
    return out
