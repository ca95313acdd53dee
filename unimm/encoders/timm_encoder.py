"""Any timm vision model as the understanding encoder: ViTs (DINOv2, SigLIP, CLIP, EVA...), CNNs (ConvNeXt, ResNet,
EfficientNet...) and the hybrids in between.

timm (Wightman, "PyTorch Image Models") builds the network; this module only picks which of its feature maps the
language model reads, and turns it into a token sequence:

* ViTs and other models with prefix tokens (a class token, DINOv2's register tokens: ``num_prefix_tokens``) give
  their patch tokens, prefix tokens dropped;
* CNNs give their feature map flattened row by row;
* ``layer`` picks an entry of the model's ``feature_info`` (a block of a ViT, a stage of a CNN); the default is the
  last one. The network is cut after that layer (timm's ``prune_intermediate_layers``, which also drops the
  classifier head) and the model's final norm is applied to the chosen layer's output, the way Janus truncates
  SigLIP at ``select_layer``. Features come from timm's ``forward_intermediates``, so every timm family that has
  it works without model-specific code.

Token count and width are measured by one forward pass on the meta device (no memory, no compute), so they are
exact for the image size and also known when the whole model is built on the meta device (``unimm config show``).

Shapes: ``forward(pixel_values)`` (B, 3, S, S) normalised -> (B, h * w, C), where h x w is the chosen layer's grid
(S / stride per side) and C its channels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..registry import ENCODERS, CheckpointError, ConfigError, InputError, UnimmError
from ..registry.errors import closest
from .base import UnderstandingEncoder

#: Weight files a local ``pretrained`` path may name, and the names looked for inside a folder.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
#: ``create_model`` arguments this encoder sets itself: model_args may not give them.
RESERVED_ARGS = {
    "img_size": "set model.und_encoder.image_size instead",
    "pretrained": "set model.und_encoder.pretrained instead",
    "num_classes": "the encoder returns features, never class scores",
    "features_only": "choose a feature map with model.und_encoder.layer instead",
    "checkpoint_path": "set model.und_encoder.pretrained instead",
    "pretrained_cfg_overlay": "set model.und_encoder.pretrained / pixel_mean / pixel_std instead",
}


@ENCODERS.register("timm")
class TimmEncoder(UnderstandingEncoder):
    """A timm vision model returning one token per cell of a feature map (prefix tokens dropped).

    Args:
        model_name: a timm architecture, optionally with a pretrained tag (``vit_small_patch14_reg4_dinov2``,
            ``convnext_tiny.fb_in22k``); ``timm.list_models()`` lists them.
        image_size: input side in pixels. Models that take ``img_size`` (ViTs) are built for it; None uses the
            model's own default. It must be a multiple of the chosen layer's stride (a ViT's patch size).
        pretrained: weights to start from: a local ``.safetensors`` / ``.bin`` / ``.pth`` file of a timm state
            dict, a folder written by ``timm.models.save_for_hf`` (``config.json`` + ``model.safetensors``; its
            saved ``model_args`` and preprocessing are used), or ``hf-hub:ORG/NAME`` (downloaded by timm, needs a
            network). None: random initialisation. Local weights go through the model's own timm checkpoint
            filter (position embeddings resampled to ``image_size``, foreign layouts such as OpenAI CLIP mapped)
            and must then match the network exactly (classifier weights are dropped).
        model_args: more ``timm.create_model`` arguments (``depth``, ``embed_dim``, ``drop_path_rate``...); they
            override the variant's defaults.
        layer: which ``feature_info`` entry to read (ViT block / CNN stage), negative counting from the end;
            None: the last.
        pixel_mean, pixel_std: normalisation of the image transform; default: the model's pretrained config
            (ImageNet statistics for most, 0.5 for SigLIP and ``vit_*_augreg``).

    Input: (B, 3, image_size, image_size) normalised pixels. Output: (B, num_tokens, out_dim).
    """

    def __init__(
        self,
        model_name: str,
        image_size: int | None = None,
        pretrained: str | None = None,
        model_args: dict | None = None,
        layer: int | None = None,
        pixel_mean: list | None = None,
        pixel_std: list | None = None,
        *,
        where: str = "model.und_encoder",
    ):
        super().__init__()
        import timm

        self.where = where
        self.model_name = _checked_name(model_name, where)
        source = _WeightSource.resolve(pretrained, where)
        model_args = _checked_model_args(model_args, where)
        if image_size is not None and image_size < 1:
            raise ConfigError(f"{where}.image_size must be a positive number of pixels, got {image_size}")
        # A folder's saved architecture arguments are defaults that the slot's own model_args override.
        saved_args = {k: v for k, v in source.model_args.items() if k not in RESERVED_ARGS}
        self.model_args = {**saved_args, **model_args}
        if image_size is None:
            image_size = _square_side(source.model_args.get("img_size"), source.label, where)
        if source.architecture is not None and source.architecture != _architecture(self.model_name):
            raise ConfigError(
                f"{where}.model_name is '{self.model_name}' but {source.label} holds a '{source.architecture}'; "
                f"set model_name: {source.architecture}"
            )

        # Check everything on a meta-device twin first: no memory is allocated and no weights are read until the
        # name, arguments, layer and image size are known to work.
        with torch.device("meta"):
            probe, self._img_size_arg = self._create(source, image_size, load=False)
            self.layer = _checked_layer(probe, layer, self.model_name, where)
            probe.prune_intermediate_layers([self.layer], prune_norm=False, prune_head=True)
            self.image_size = image_size if image_size is not None else _default_image_size(timm, probe)
            _check_stride(probe, self.layer, self.image_size, self.model_name, where)
            grid = _dry_run(probe, self.layer, self.image_size, self.model_name, where)
        if source.kind == "hub":  # timm read the architecture and its arguments from the hub's config.json
            hub_arch = probe.pretrained_cfg.get("architecture")
            if hub_arch and hub_arch != _architecture(self.model_name):
                raise ConfigError(f"{where}.model_name is '{self.model_name}' but {source.label} holds a "
                                  f"'{hub_arch}'; set model_name: {hub_arch}")
            hub_args = getattr(probe, "pretrained_model_args", None) or {}
            self.model_args = {**{k: v for k, v in hub_args.items() if k not in RESERVED_ARGS}, **self.model_args}
        self._out_dim, self._num_tokens = int(grid.shape[1]), int(grid.shape[2] * grid.shape[3])

        # Under ``torch.device("meta")`` (``unimm config show``) nothing can hold weights: do not read them.
        load = source.kind != "none" and torch.empty(()).device.type != "meta"
        source.classifier = probe.pretrained_cfg.get("classifier") or "head"
        self.model, _ = self._create(source, image_size, load=load, img_size_arg=self._img_size_arg)
        self.source_path = pretrained  # a file, folder or hub name; None for random weights
        self.model.pretrained_cfg.pop("state_dict", None)  # the loaded tensors now live in the parameters
        self.model.prune_intermediate_layers([self.layer], prune_norm=False, prune_head=True)
        #: Prefix tokens (class, registers) the model prepends and this encoder drops.
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)

        data_cfg = timm.data.resolve_data_config({}, model=self.model)
        self.pixel_mean = (_channels(pixel_mean, "pixel_mean", where) if pixel_mean is not None
                           else tuple(data_cfg["mean"]))
        self.pixel_std = _channels(pixel_std, "pixel_std", where) if pixel_std is not None else tuple(data_cfg["std"])
        if any(s <= 0 for s in self.pixel_std):
            raise ConfigError(f"{where}.pixel_std must be positive, got {list(self.pixel_std)}")

    def _create(self, source: _WeightSource, image_size: int | None, *, load: bool,
                img_size_arg: bool | None = None) -> tuple[nn.Module, bool]:
        """``timm.create_model`` for this slot; returns the network and whether it took ``img_size``.

        timm has no way to ask a model whether it takes ``img_size`` (ViTs do, CNNs do not), so with
        ``img_size_arg=None`` it is tried first and dropped when the model's constructor refuses it.
        """
        import timm

        where = self.where
        name = source.hub_name if source.kind == "hub" else self.model_name
        kwargs: dict[str, Any] = dict(num_classes=0, **self.model_args)
        if load:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=source.overlay())
        elif source.kind == "local":
            kwargs.update(pretrained_cfg_overlay=source.overlay(with_weights=False))
        try_img_size = image_size is not None and img_size_arg is not False
        try:
            try:
                return timm.create_model(name, **kwargs, **({"img_size": image_size} if try_img_size else {})), \
                    try_img_size
            except TypeError as err:
                if not try_img_size or img_size_arg or "'img_size'" not in str(err):
                    raise
                return timm.create_model(name, **kwargs), False
        except UnimmError:
            raise
        except Exception as err:
            if load:  # the same arguments built the meta-device twin, so the weights are what failed
                raise CheckpointError(f"{where}.pretrained: {source.label} does not fit timm's {self.model_name} "
                                      f"with these model_args: {_one_line(err)}") from err
            if isinstance(err, TypeError):  # an argument the model's constructor does not have
                match = re.search(r"unexpected keyword argument '(\w+)'", str(err))
                key = f".{match.group(1)}" if match else ""
                raise ConfigError(f"{where}.model_args{key}: timm's {self.model_name} does not take it "
                                  f"({err})") from err
            if source.kind == "hub":
                raise CheckpointError(f"{where}.pretrained: timm could not fetch '{source.hub_name}' "
                                      f"({_one_line(err)}); without a network give a local file or folder") from err
            raise ConfigError(f"{where}: timm cannot build {self.model_name} with model_args {self.model_args}: "
                              f"{_one_line(err)}") from err

    # -- the contract ---------------------------------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        """Channels of the chosen layer (a ViT's embedding width, a CNN stage's channels)."""
        return self._out_dim

    @property
    def num_tokens(self) -> int:
        """Cells of the chosen layer's grid for ``image_size`` (prefix tokens not counted)."""
        return self._num_tokens

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, num_tokens, out_dim) tokens of the chosen layer, row by row."""
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, self.image_size, self.image_size):
            raise InputError(f"the timm encoder takes (B, 3, {self.image_size}, {self.image_size}) pixels, got "
                             f"{tuple(pixel_values.shape)}; prepare images with its transform()")
        (grid,) = self.model.forward_intermediates(
            pixel_values, indices=[self.layer], norm=True, intermediates_only=True, output_fmt="NCHW"
        )  # (B, C, h, w), prefix tokens already dropped
        return grid.flatten(2).transpose(1, 2)

    def fsdp_units(self) -> list[nn.Module]:
        """The timm model's ``blocks`` (ViTs) when it has them, then the encoder; otherwise the encoder alone."""
        blocks = getattr(self.model, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
            return [*blocks, self]
        return super().fsdp_units()

    def folded_config(self) -> dict | None:
        """Slot values that rebuild this encoder without its ``pretrained`` source (``unimm.save_pretrained``
        writes the weights themselves into the checkpoint): the resolved size, arguments and normalisation; None
        when it started from random weights."""
        if self.source_path is None:
            return None
        return dict(image_size=self.image_size, model_args=dict(self.model_args),
                    pixel_mean=list(self.pixel_mean), pixel_std=list(self.pixel_std))


class _WeightSource:
    """Where ``pretrained`` points: nothing, a timm hub name, or a local file / folder (read here)."""

    def __init__(self, kind: str, where: str, label: str = "", path: Path | None = None, hub_name: str = "",
                 folder_cfg: dict | None = None):
        self.kind, self.where, self.label, self.path, self.hub_name = kind, where, label, path, hub_name
        folder_cfg = folder_cfg or {}
        self.architecture: str | None = folder_cfg.get("architecture")
        self.model_args: dict = dict(folder_cfg.get("model_args") or {})
        self.pretrained_cfg: dict = dict(folder_cfg.get("pretrained_cfg") or {})
        #: The model's classifier module name(s) (timm's ``pretrained_cfg["classifier"]``), whose weights are dropped.
        self.classifier: str | Sequence[str] = "head"

    @classmethod
    def resolve(cls, pretrained: str | None, where: str) -> _WeightSource:
        if pretrained is None:
            return cls("none", where)
        if pretrained.startswith("hf-hub:"):
            return cls("hub", where, label=pretrained, hub_name=pretrained)
        path = Path(pretrained).expanduser()
        hint = ("give a .safetensors / .bin / .pth file of a timm state dict, a folder with config.json and "
                "model.safetensors (timm.models.save_for_hf), or 'hf-hub:ORG/NAME'")
        if path.is_dir():
            weights = next((path / n for n in FOLDER_WEIGHTS if (path / n).is_file()), None)
            if weights is None:
                raise CheckpointError(f"{where}.pretrained: {path} has no {' or '.join(FOLDER_WEIGHTS)}; {hint}")
            folder_cfg = {}
            if (path / "config.json").is_file():
                try:
                    folder_cfg = json.loads((path / "config.json").read_text())
                except (OSError, ValueError) as err:
                    raise CheckpointError(f"{where}.pretrained: cannot read {path / 'config.json'}: {err}") from err
            return cls("local", where, label=str(weights), path=weights, folder_cfg=folder_cfg)
        if not path.is_file():
            raise CheckpointError(f"{where}.pretrained: {path} does not exist; {hint}")
        if path.suffix not in WEIGHT_SUFFIXES:
            raise CheckpointError(f"{where}.pretrained: {path} is not a weight file ({', '.join(WEIGHT_SUFFIXES)}); "
                                  f"{hint}")
        return cls("local", where, label=str(path), path=path)

    def overlay(self, with_weights: bool = True) -> dict:
        """``pretrained_cfg_overlay`` for timm: a folder's preprocessing, and the state dict to load.

        timm's own file loading drops the classifier weights and then loads non-strictly, so wrong keys would go
        unnoticed; here the file is read with timm's reader, the classifier keys are dropped, and timm is given
        the state dict with no classifier to drop, so its load (after the model's checkpoint filter) is strict.
        """
        overlay = {k: v for k, v in self.pretrained_cfg.items()
                   if k in ("mean", "std", "input_size", "interpolation", "crop_pct", "crop_mode")}
        if self.kind == "hub" or not with_weights:
            return overlay
        import timm

        where = self.where
        try:
            state = timm.models.load_state_dict(str(self.path))
        except Exception as err:  # truncated file, not a checkpoint, pickled objects refused by weights_only
            raise CheckpointError(f"{where}.pretrained: cannot read {self.label}: {_one_line(err)}") from err
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise CheckpointError(f"{where}.pretrained: {self.label} does not hold a state dict of tensors")
        heads = (self.classifier,) if isinstance(self.classifier, str) else tuple(self.classifier)
        state = {k: v for k, v in state.items() if not any(k in (f"{h}.weight", f"{h}.bias") for h in heads)}
        return {**overlay, "state_dict": state, "source": None, "file": None, "num_classes": 0, "classifier": None}


# -- checks ------------------------------------------------------------------------------------------------------
def _architecture(model_name: str) -> str:
    """``convnext_tiny.fb_in22k`` -> ``convnext_tiny``."""
    return model_name.split(".", 1)[0]


def _checked_name(model_name: str, where: str) -> str:
    import timm

    if ":" in model_name or "/" in model_name:
        raise ConfigError(
            f"{where}.model_name '{model_name}' is a hub name or a path; model_name is a timm architecture "
            f"(e.g. vit_small_patch14_reg4_dinov2) and the weights go in {where}.pretrained"
        )
    if not timm.is_model(_architecture(model_name)):
        close = closest(_architecture(model_name), timm.list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"{where}.model_name: timm has no model '{model_name}'.{hint} "
                          f"timm.list_models('*pattern*') lists the {len(timm.list_models())} names")
    return model_name


def _checked_model_args(model_args: dict | None, where: str) -> dict:
    model_args = dict(model_args or {})
    for key, fix in RESERVED_ARGS.items():
        if key in model_args:
            raise ConfigError(f"{where}.model_args.{key}: not allowed here; {fix}")
    return model_args


def _checked_layer(model: nn.Module, layer: int | None, model_name: str, where: str) -> int:
    """The non-negative ``feature_info`` index for ``layer`` (None: the last)."""
    if not hasattr(model, "forward_intermediates") or not hasattr(model, "prune_intermediate_layers"):
        raise ConfigError(f"{where}.model_name: timm's {model_name} has no forward_intermediates, which unimm "
                          "reads features with; choose another timm model")
    count = len(model.feature_info)
    if layer is None:
        return count - 1
    if not -count <= layer < count:
        raise ConfigError(f"{where}.layer {layer} is out of range: timm's {model_name} has {count} feature layers "
                          f"(blocks or stages), so layer is in {-count}..{count - 1}")
    return layer % count


def _default_image_size(timm, model: nn.Module) -> int:
    """The input side a model was built for when the slot gives none (its data config's ``input_size``)."""
    return int(timm.data.resolve_data_config({}, model=model)["input_size"][-1])


def _check_stride(model: nn.Module, layer: int, image_size: int, model_name: str, where: str) -> None:
    stride = int(model.feature_info[layer].get("reduction", 1))
    if image_size % stride:
        fit = max(stride, round(image_size / stride) * stride)
        raise ConfigError(f"{where}.image_size {image_size} is not a multiple of {stride}, the stride of timm's "
                          f"{model_name} at layer {layer} (for a ViT: its patch size); use e.g. {fit}")


def _dry_run(model: nn.Module, layer: int, image_size: int, model_name: str, where: str) -> torch.Tensor:
    """One forward pass of a meta-device model: the chosen layer's (1, C, h, w) grid, shapes only."""
    try:
        (grid,) = model.forward_intermediates(torch.empty(1, 3, image_size, image_size, device="meta"),
                                              indices=[layer], norm=True, intermediates_only=True, output_fmt="NCHW")
    except Exception as err:
        raise ConfigError(f"{where}.image_size: timm's {model_name} cannot take {image_size} px images "
                          f"({_one_line(err)}); give the size it was built for, or one its strides divide") from err
    if grid.ndim != 4 or grid.shape[-1] * grid.shape[-2] == 0:
        raise ConfigError(f"{where}.image_size: {image_size} px leaves timm's {model_name} no feature grid at layer "
                          f"{layer} (got {tuple(grid.shape)}); use a larger image_size")
    return grid


def _square_side(img_size: int | Sequence[int] | None, label: str, where: str) -> int | None:
    """A folder's saved ``img_size`` (an int, or timm's [h, w]) as one side; unimm's images are square."""
    if img_size is None or isinstance(img_size, int):
        return img_size
    if len(img_size) == 2 and img_size[0] == img_size[1]:
        return int(img_size[0])
    raise ConfigError(f"{where}.image_size: {label} was saved for {list(img_size)} images, which are not square; "
                      "set image_size to the square side to build it at")


def _channels(values: Sequence[float], key: str, where: str) -> tuple[float, float, float]:
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}.{key} must be three numbers (R, G, B), got {list(values)}")
    return tuple(float(v) for v in values)


def _one_line(err: BaseException) -> str:
    """An exception's message on one line, shortened (timm's load errors list every key)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:400] + " ..."


__all__ = ["TimmEncoder"]
