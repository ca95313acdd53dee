"""What ``unimm reproduce`` makes once before the experiments: the benchmark splits, the autoencoders, and the
pre-trained understanding encoder.

* :func:`prepare_data`: exports the train and test splits (and the drawn-elsewhere set) into ``OUT/data``.
* :func:`autoencoder_jobs` / :func:`train_one_autoencoder`: each autoencoder type the experiments use (the VQ
  tokenizer, the KL VAE) is trained on the training split's text-to-image targets into
  ``OUT/autoencoders/<type>`` and its reconstructions scored with the checker (the ceiling for generation
  through it).
* :func:`encoder_job` / :func:`pretrain_und_encoder`: if an experiment asks for ``pretrained_und_encoder``, the
  understanding encoder is pre-trained once on the training images' object labels into
  ``OUT/encoders/und_encoder``.

Each keeps a ``result.json`` beside what it trained; a rerun reads it instead of training again, unless the
experiments file now asks for other settings or the training split was made otherwise (then it trains anew,
:func:`train_data`). They are shared by
every seed of every experiment (as the papers take their tokenizer and SigLIP as given), so they are trained with
the first seed of ``budget.seeds``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..images import save_grid
from ..registry import ENCODERS, ConfigError
from .spec import architectures, plain_config

SPLITS = ("train", "test", "elsewhere")


def prepare_data(spec: DictConfig, out: Path, force: bool = False) -> dict[str, Path]:
    """Export the splits (kept if already there, made the same way: :func:`unimm.bench.export.split_info`); returns
    split -> folder.

    ``elsewhere`` (test scenes drawn by another method, :mod:`unimm.bench.elsewhere`) is exported when
    ``data.elsewhere`` > 0; ``data.variations`` varies what should not matter in the train and test renders, and
    ``data.plain_targets`` draws the text-to-image targets on the plain ground (``ShapesConfig.plain_targets``)
    and ``data.where_questions`` adds the first-order position questions to the training split
    (:func:`unimm.bench.shapes.where_questions`).
    """
    from ..bench.export import export_split, split_info
    from ..bench.shapes import ShapesConfig

    folders = {}
    variations = bool(spec.data.get("variations", False))
    plain_targets = bool(spec.data.get("plain_targets", False))
    where = bool(spec.data.get("where_questions", False))
    for split in SPLITS:
        n = int(spec.data.get(split) or 0)
        if n <= 0:
            if split != "elsewhere":
                raise ConfigError(f"data.{split} must be a number of images >= 1, got {spec.data.get(split)!r}")
            continue
        folder = out / "data" / split
        config = ShapesConfig(variations=variations and split != "elsewhere",
                              plain_targets=plain_targets and split != "elsewhere",
                              where_questions=where and split == "train")  # training questions only
        info = json.loads((folder / "info.json").read_text()) if (folder / "info.json").is_file() else {}
        wanted = {"n": n, **split_info(split, int(spec.data.seed), config)}  # a change of drawing re-exports
        if force or {k: info.get(k) for k in wanted} != wanted:
            export_split(folder, split, n, seed=wanted["seed"], config=config, overwrite=True)
        folders[split] = folder
    return folders


def train_data(data: dict[str, Path]) -> dict[str, Any]:
    """How the training images were made (their ``info.json``): a part trained on other images is trained again.
    The questions asked about them (``where_questions``) are left out: the parts trained here never read them."""
    info = json.loads((data["train"] / "info.json").read_text())
    info.get("config", {}).pop("where_questions", None)
    return info


def generation_targets(folder: Path) -> list[Path]:
    """The text-to-image target of each image of an exported split, in order (what an autoencoder will encode)."""
    from ..bench.export import read_jsonl

    return [folder / r["image"] for r in read_jsonl(folder / "t2i.jsonl")]


def image_size(folder: Path) -> int:
    """The model-side image size of an exported split (autoencoders train at it; larger renders are resized)."""
    return int(json.loads((folder / "info.json").read_text())["config"]["image_size"])


# ----------------------------------------------------------------------------------------------------------------
# Autoencoders
# ----------------------------------------------------------------------------------------------------------------


def autoencoder_jobs(spec: DictConfig) -> dict[str, dict]:
    """Autoencoder type -> its slot, over all experiments; one architecture per type (one trained model serves all)."""
    slots: dict[str, dict] = {}
    for name in spec.experiments:
        for kind, plain in architectures(spec, name).items():
            if kind in slots and slots[kind] != plain:
                raise ConfigError(
                    f"experiments use two different '{kind}' autoencoders ({slots[kind]} and {plain}); "
                    "give them the same architecture so one trained autoencoder serves all"
                )
            slots[kind] = plain
    return slots


def train_one_autoencoder(spec: DictConfig, kind: str, slot: dict, out: Path, data: dict[str, Path],
                          force: bool = False) -> dict[str, Any]:
    """Train the ``kind`` autoencoder on the training split's text-to-image targets (what it will encode); returns
    its wall time and its reconstruction scores on the test split's targets."""
    from ..bench import evaluate_generation, load_specs
    from ..registry import AUTOENCODERS
    from ..train.autoencoder import load_image_tensor, reconstruct, train_autoencoder

    folder = out / "autoencoders" / kind
    kept = None if force else kept_autoencoder(spec, kind, out, data)
    if kept is not None:
        return kept
    settings = dict(OmegaConf.to_container(spec.autoencoders.get(kind) or {}))
    started = time.time()
    size = image_size(data["train"])
    images = load_image_tensor(generation_targets(data["train"]), size)
    start = time.perf_counter()
    train_autoencoder(slot, images, folder, seed=int(spec.budget.seeds[0]), **settings)
    seconds = time.perf_counter() - start
    model = AUTOENCODERS.build({"type": kind, "path": str(folder)}, where=f"autoencoders.{kind}",
                               inferred={"image_size": size} if kind == "llamagen_vq" else {})
    tests = load_specs(data["test"])
    test_images = load_image_tensor(generation_targets(data["test"]), size)
    recon = reconstruct(model, test_images)
    scores = evaluate_generation(recon, [s for _, s, _ in tests], value_range=(-1, 1))
    shown = min(16, len(test_images))  # test images on top, their reconstructions below
    save_grid(torch.cat([test_images[:shown], recon[:shown]]), out / "grids" / f"autoencoder_{kind}.png", nrow=shown)
    result = {"seconds": round(seconds, 1), "settings": settings, "data": train_data(data),
              "mse": float(((recon - test_images) ** 2).mean()), "checker": scores["accuracy"],
              "started": round(started, 1), "finished": round(time.time(), 1)}
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def kept_autoencoder(spec: DictConfig, kind: str, out: Path, data: dict[str, Path]) -> dict[str, Any] | None:
    """The ``kind`` autoencoder's kept result if it was trained as the file now asks, on this training split;
    else None (it is trained again)."""
    settings = dict(OmegaConf.to_container(spec.autoencoders.get(kind) or {}))
    return _kept_part(out / "autoencoders" / kind / "result.json", settings, data)


def _kept_part(result_file: Path, settings: dict[str, Any], data: dict[str, Path]) -> dict[str, Any] | None:
    """A shared part's ``result.json`` if it holds these settings and this training split, else None."""
    if not result_file.is_file():
        return None
    kept = json.loads(result_file.read_text())
    return kept if kept.get("settings") == settings and kept.get("data") == train_data(data) else None


# ----------------------------------------------------------------------------------------------------------------
# The pre-trained understanding encoder
# ----------------------------------------------------------------------------------------------------------------


def encoder_job(spec: DictConfig) -> dict | None:
    """The und_encoder slot that the experiments with ``pretrained_und_encoder`` share (None if none asks)."""
    slots = {}
    for name, exp in spec.experiments.items():
        if exp.get("pretrained_und_encoder"):
            slot = OmegaConf.to_container(plain_config(spec, name).model.und_encoder)
            # position codes are added to the tokens the LLM reads; pre-training reads the ViT's own
            slots[name] = {k: v for k, v in slot.items() if k not in ("path", "position_codes")}
    if not slots:
        return None
    first = next(iter(slots.values()))
    differing = [name for name, slot in slots.items() if slot != first]
    if differing:
        raise ConfigError(f"experiments {differing} ask for a pre-trained und_encoder of another architecture than "
                          f"{next(iter(slots))}; give them the same one so one pre-trained encoder serves all")
    return first


def pretrain_und_encoder(spec: DictConfig, slot: dict, out: Path, data: dict[str, Path],
                         force: bool = False) -> dict[str, Any]:
    """Pre-train the shared understanding encoder on the training images labelled with their objects
    (``"red circle"``), and with ``patch_labels: true`` each patch with the object under it
    (:meth:`unimm.bench.shapes.Scene.patch_labels`); returns its wall time, settings and label accuracy on the
    test images."""
    from ..bench.export import load_specs
    from ..train.autoencoder import load_image_tensor
    from ..train.encoder import pretrain_encoder

    folder = out / "encoders" / "und_encoder"
    kept = None if force else kept_und_encoder(spec, out, data)
    if kept is not None:
        return kept

    settings = dict(OmegaConf.to_container(spec.und_encoder_pretraining))
    by_patch = bool(settings.get("patch_labels", False))
    grid = math.isqrt(ENCODERS.build(dict(slot), where="model.und_encoder").num_tokens) if by_patch else 0

    def labelled(split: str) -> tuple:
        """(images, label lists) of a split; with patch labels, also each image's per-patch labels."""
        items = load_specs(data[split])
        images = load_image_tensor([p for p, _, _ in items], image_size(data[split]))
        labels = [[shape.name for shape in scene.shapes] for _, _, scene in items]
        return (images, labels, [scene.patch_labels(grid) for _, _, scene in items]) if by_patch else (images, labels)

    started = time.time()
    train = labelled("train")
    benchmark = json.loads((data["train"] / "info.json").read_text())["config"]
    names = [f"{colour} {kind}" for colour in benchmark["colours"] for kind in benchmark["kinds"]]
    result = pretrain_encoder(slot, train[0], train[1], folder, seed=int(spec.budget.seeds[0]),
                              held_out=labelled("test"), label_names=names,
                              patch_labels=train[2] if by_patch else None,
                              **{k: v for k, v in settings.items() if k != "patch_labels"})
    result = {"type": slot["type"], "settings": settings, "data": train_data(data),
              **{k: v for k, v in result.items() if k != "path"},
              "started": round(started, 1), "finished": round(time.time(), 1)}
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def kept_und_encoder(spec: DictConfig, out: Path, data: dict[str, Path]) -> dict[str, Any] | None:
    """The pre-trained understanding encoder's kept result if it was trained as the file now asks, on this
    training split; else None (it is trained again)."""
    settings = dict(OmegaConf.to_container(spec.und_encoder_pretraining))
    return _kept_part(out / "encoders" / "und_encoder" / "result.json", settings, data)
