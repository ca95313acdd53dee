"""Pre-training an understanding encoder on labelled images: SigLIP's sigmoid loss, at laptop scale.

Janus starts from SigLIP-Large, which was pre-trained on image-text pairs with a sigmoid loss; its understanding
path then has a ready semantic encoder and mostly learns the aligner. At laptop scale there is no such encoder for
the data at hand, and learning one only through the LLM's answer tokens is slow: on the shapes benchmark a 1.5 M
model trained 7,000 steps that way still told circles, squares and triangles apart only 47.5% of the time. This
gives the slot's encoder the pre-training SigLIP had, against a closed set of label phrases instead of free
captions:

* each image is pooled into one embedding by the encoder's own pooling head (SigLIP's attention pool);
* each label ("red circle") has a learned embedding and bias (together a linear layer over the pooled embedding);
* every (image, label) pair is one binary decision: positive when the label describes the image (sigmoid loss);
* optionally (``patch_labels``), each patch token also says what it shows (``"red circle"`` or the ground), one
  softmax over the labels and the ground per token. Pooled labels alone ask nothing of each token (on the shapes
  benchmark its tokens kept little of where they are); the per-token labels keep what each token shows local,
  which is what an LLM needs to answer about one object or its place (docs/reproduce.md, "Known limits"). There
  (40,000 images, 6,000 steps) they also raised the held-out share of images with every pooled label right from
  94.5% to 99.5%, with 98.9% of held-out patches right.

The result is a folder the slot loads with ``path:`` (``config.json`` with the sizes and the label set,
``model.safetensors`` with the encoder's weights) and ``train_log.jsonl`` with the losses.

Entry point: :func:`pretrain_encoder`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..encoders.base import PretrainableEncoder
from ..registry import ENCODERS, ConfigError, to_plain
from .optim import shuffled_batches, warmup_cosine

logger = logging.getLogger(__name__)


def label_targets(labels: Sequence[Sequence[str]], names: Sequence[str]) -> torch.Tensor:
    """Per-image label lists -> (N, len(names)) 0/1 targets; a label not in ``names`` fails, naming it."""
    index = {name: k for k, name in enumerate(names)}
    targets = torch.zeros(len(labels), len(names))
    for i, image_labels in enumerate(labels):
        for label in image_labels:
            if label not in index:
                raise ConfigError(f"image {i} has label {label!r}, which is not one of the {len(names)} label names")
            targets[i, index[label]] = 1.0
    return targets


def patch_targets(patch_labels: Sequence[Sequence[str | None]], names: Sequence[str], tokens: int) -> torch.Tensor:
    """Per-image, per-token labels (None: the ground) -> (N, tokens) class ids, ``len(names)`` for the ground."""
    index = {name: k for k, name in enumerate(names)}
    targets = torch.full((len(patch_labels), tokens), len(names), dtype=torch.long)
    for i, image_labels in enumerate(patch_labels):
        if len(image_labels) != tokens:
            raise ConfigError(f"image {i} has {len(image_labels)} patch labels but the encoder gives {tokens} tokens; "
                              "give one label (or None) per patch, row by row")
        for t, label in enumerate(image_labels):
            if label is not None:
                if label not in index:
                    raise ConfigError(f"image {i}, patch {t}: label {label!r} is not one of the {len(names)} names")
                targets[i, t] = index[label]
    return targets


def _normalise(encoder, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> the encoder's input normalisation."""
    mean = torch.tensor(encoder.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.pixel_std).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


@torch.no_grad()
def label_accuracy(encoder, head: torch.nn.Linear, images: torch.Tensor, targets: torch.Tensor,
                   patch_head: torch.nn.Linear | None = None, patches: torch.Tensor | None = None,
                   batch_size: int = 256) -> dict[str, float]:
    """``exact``: share of images whose whole label set is predicted right; ``label``: share of (image, label)
    decisions that are right; with ``patch_head`` and ``patches`` (N, T) also ``patch``: share of patch tokens
    labelled right. ``images`` (N, 3, S, S) in [-1, 1], ``targets`` (N, L) 0/1."""
    was_training = encoder.training
    encoder.eval()
    predicted, patch_predicted = [], []
    for chunk in images.split(batch_size):
        tokens = encoder(_normalise(encoder, chunk))
        predicted.append(head(encoder.pool(tokens)) > 0)
        if patch_head is not None:
            patch_predicted.append(patch_head(tokens).argmax(-1))
    encoder.train(was_training)
    right = torch.cat(predicted) == targets.bool()
    scores = {"exact": right.all(dim=1).float().mean().item(), "label": right.float().mean().item()}
    if patch_head is not None and patches is not None:
        scores["patch"] = (torch.cat(patch_predicted) == patches).float().mean().item()
    return scores


def pretrain_encoder(
    slot: Mapping[str, Any],
    images: torch.Tensor,
    labels: Sequence[Sequence[str]],
    out: str | Path,
    *,
    steps: int = 5000,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    held_out: tuple | None = None,
    label_names: Sequence[str] | None = None,
    patch_labels: Sequence[Sequence[str | None]] | None = None,
    log_every: int = 100,
) -> dict[str, Any]:
    """Pre-train the understanding encoder that ``slot`` describes and save it to ``out``.

    Args:
        slot: a ``model.und_encoder`` config whose encoder has ``pool`` and ``save`` (``siglip``); ``path``
            must not be set (that is what this produces).
        images: (N, 3, S, S) in [-1, 1] (:func:`unimm.train.autoencoder.load_image_tensor`), S the encoder's size.
        labels: per image, the label phrases that describe it (``["red circle", "blue square"]``).
        out: folder to write; ``slot`` plus ``path: out`` then loads the pre-trained encoder.
        steps, batch_size, lr, weight_decay: AdamW steps (cosine decay after a 5% warm-up), images per step.
        seed: seeds the weights and the batch order.
        held_out: ``(images, labels)`` scored after training (:func:`label_accuracy`); with ``patch_labels``,
            ``(images, labels, patch_labels)`` scores the patch labels too.
        label_names: every phrase there is (default: those in ``labels``); give it when held-out images may show
            a phrase no training image does.
        patch_labels: per image, one label or None (the ground) per patch token, row by row
            (:meth:`unimm.bench.shapes.Scene.patch_labels`): adds the per-token softmax loss to the pooled one.

    Returns:
        ``{"path", "labels", "seconds", "train": accuracy on up to 1024 training images, "held_out": ...}``
        (:func:`label_accuracy`'s scores).
    """
    slot = dict(to_plain(slot))
    if slot.get("path"):
        raise ConfigError("the und_encoder slot to pre-train already has a 'path'; remove it to train from scratch")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images must be (N, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    if len(labels) != len(images):
        raise ConfigError(f"{len(images)} images but {len(labels)} label lists; give one list per image")
    names = sorted(label_names or {label for image_labels in labels for label in image_labels})
    if not names:
        raise ConfigError("no labels given: each image needs the phrases that describe it")
    torch.manual_seed(seed)
    encoder = ENCODERS.build(slot, where="model.und_encoder")
    if not isinstance(encoder, PretrainableEncoder):
        raise ConfigError(f"und_encoder type {slot.get('type')!r} cannot be pre-trained here: it needs a pool "
                          "method and a save method (the 'siglip' encoder has both)")
    if images.shape[-1] != encoder.image_size:
        raise ConfigError(f"images are {images.shape[-1]} px but the encoder takes {encoder.image_size} px")
    targets = label_targets(labels, names)
    head = torch.nn.Linear(encoder.out_dim, len(names))
    patches = patch_head = None
    if patch_labels is not None:
        if len(patch_labels) != len(images):
            raise ConfigError(f"{len(images)} images but {len(patch_labels)} patch label lists; give one per image")
        patches = patch_targets(patch_labels, names, encoder.num_tokens)
        patch_head = torch.nn.Linear(encoder.out_dim, len(names) + 1)  # the labels and the ground
    held_patches = None  # checked before training, so a wrong held-out set costs no training time
    if held_out is not None and patch_head is not None:
        if len(held_out) < 3:
            raise ConfigError("held_out needs (images, labels, patch_labels) when pre-training with patch_labels")
        held_patches = patch_targets(held_out[2], names, encoder.num_tokens)
    heads = [head] if patch_head is None else [head, patch_head]
    parameters = [*encoder.parameters(), *(p for h in heads for p in h.parameters())]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, steps)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    encoder.train()
    start = time.perf_counter()
    with (out / "train_log.jsonl").open("w") as log:
        for step, batch in enumerate(shuffled_batches(len(images), batch_size, steps, seed), start=1):
            tokens = encoder(_normalise(encoder, images[batch]))
            loss = F.binary_cross_entropy_with_logits(head(encoder.pool(tokens)), targets[batch])
            if patch_head is not None:
                loss = loss + F.cross_entropy(patch_head(tokens).flatten(0, 1), patches[batch].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            if step % log_every == 0 or step == steps:
                log.write(json.dumps({"step": step, "loss": loss.item(),
                                      "seconds": round(time.perf_counter() - start, 2)}) + "\n")
                log.flush()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        "path": str(out), "labels": names, "seconds": round(seconds, 1),
        "train": label_accuracy(encoder, head, images[:1024], targets[:1024], patch_head,
                                None if patches is None else patches[:1024]),
    }
    if held_out is not None:
        result["held_out"] = label_accuracy(encoder, head, held_out[0], label_targets(held_out[1], names),
                                            patch_head, held_patches)
    encoder.eval()
    objective = "sigmoid over label phrases" + (" + softmax over patch labels" if patch_head is not None else "")
    encoder.save(out, notes={"pretraining": {"objective": objective, "steps": steps, "labels": names}})
    logger.info("pre-trained %s for %d steps in %.0f s -> %s", slot.get("type"), steps, seconds, out)
    return result
