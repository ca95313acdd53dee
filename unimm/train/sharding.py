"""Sharded training (FSDP2): the parts declare their FSDP units, and this file turns them into a wrapping.

FSDP gathers one *unit* (a submodule) at a time, runs it and frees it again, so which submodules are units decides
the peak memory and the overlap of communication with compute. Each part says which of its submodules are units
through its contract's ``fsdp_units()`` (``unimm/*/base.py``): the backbone its decoder layers (transformers'
``_no_split_modules``), the SigLIP encoder its blocks, the generation path its autoencoder and ConvNeXt stages,
aligners and heads themselves. Frozen parts are units of their own (the autoencoder is a ``frozen_children``), so a
unit rarely mixes frozen and trained weights; FSDP2 (``fully_shard``) handles that mix anyway, FSDP1 cannot.

One function, :func:`accelerate_fsdp_settings`, turns the declared units into the settings of accelerate's
``FullyShardedDataParallelPlugin`` (FSDP2, wrapping by those classes). The trainer applies them when it runs under
``accelerate launch`` with FSDP (:func:`configure_accelerate_fsdp`); :func:`shard_model` feeds the very same
settings through accelerate's own wrapping policy into ``torch.distributed.fsdp.fully_shard``, which is how the
tests shard the model on CPU processes (accelerate never picks FSDP for CPU processes).

Checkpoints: :func:`save_sharded` / :func:`load_sharded` write and read model and optimiser shards with
``torch.distributed.checkpoint`` in accelerate's layout (``pytorch_model_fsdp_0/`` holding ``{"model": ...}``,
``optimizer_0/`` holding ``{"optimizer": ...}``), which is what ``accelerator.save_state`` writes in the trainer
under FSDP with ``SHARDED_STATE_DICT``; :func:`full_state_dict` gathers the whole model on rank 0 for
``unimm.save_pretrained``.

Also here, for the trainer: :func:`sharding_engine` (which engine ``accelerate launch`` set up),
:func:`check_one_stage_per_launch`, and :func:`configure_accelerate_deepspeed` (batch sizes, ZeRO-3 gathering).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from ..aligners.base import Aligner
from ..backbones.base import Backbone
from ..encoders.base import UnderstandingEncoder
from ..generation.autoencoder import ImageAutoencoder
from ..generation.base import GenerationPath
from ..heads.base import ImageHead
from ..registry import ConfigError

#: The contracts whose ``fsdp_units()`` are read; any part that meets one of them declares its units.
PART_CONTRACTS = (Backbone, UnderstandingEncoder, GenerationPath, Aligner, ImageHead)
#: Methods the rest of unimm calls on a part instead of ``forward`` in training. FSDP2 gathers a unit's parameters
#: in hooks around ``forward`` only, so these are registered to run the same hooks (``register_fsdp_forward_method``).
#: Only outermost entry points: a registered method that calls another one of its own unit would find the unit
#: resharded when the inner one returns (so a path's ``encode_images``, which its ``loss`` calls, is not listed).
FORWARD_METHODS: dict[type, tuple[str, ...]] = {
    Backbone: ("embed", "logits"),
    GenerationPath: ("loss", "sample"),
    ImageAutoencoder: ("encode", "decode", "tokenize", "decode_codes"),
}
#: accelerate's folder names for sharded states (``accelerate.utils.constants``), kept so both writers agree.
MODEL_DIR, OPTIMIZER_DIR = "pytorch_model_fsdp_0", "optimizer_0"


def fsdp_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every unit the model's parts declare, innermost first (the order ``fully_shard`` needs).

    The model itself is not listed: it is always the root unit and holds whatever no part claims.
    """
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[int, tuple[str, nn.Module]] = {}
    for _, part in model.named_modules():
        if isinstance(part, PART_CONTRACTS):
            for unit in part.fsdp_units():
                if id(unit) not in names:
                    raise ValueError(f"{type(part).__name__}.fsdp_units() names a module outside the model")
                if names[id(unit)]:
                    found.setdefault(id(unit), (names[id(unit)], unit))
    return sorted(found.values(), key=lambda item: -item[0].count("."))  # stable: deeper names first


def wrap_class_names(model: nn.Module) -> list[str]:
    """The class names of the declared units, for accelerate's by-class (``transformer_based_wrap``) policy.

    accelerate's FSDP2 path can only wrap by class, so a class is usable only when every module of it is a declared
    unit; otherwise wrapping by class would shard more than the parts asked for, and this raises.
    """
    units = fsdp_units(model)
    declared = {id(m) for _, m in units}
    classes = {type(m).__name__ for _, m in units}
    extra = [n for n, m in model.named_modules() if n and type(m).__name__ in classes and id(m) not in declared]
    if extra:
        raise ValueError(f"wrapping by class would also shard {', '.join(extra[:5])}, which no part declares as an "
                         "FSDP unit; give those units a class of their own in fsdp_units()")
    return sorted(classes)


def accelerate_fsdp_settings(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments of accelerate's ``FullyShardedDataParallelPlugin`` that shard ``model`` by its parts'
    units: FSDP2, by-class wrapping of :func:`wrap_class_names`, sharded checkpoints."""
    return {
        "fsdp_version": 2,
        "auto_wrap_policy": "transformer_based_wrap",
        "transformer_cls_names_to_wrap": wrap_class_names(model),
        "reshard_after_forward": True,
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": False,
    }


def mixed_units(model: nn.Module) -> list[str]:
    """Units (``""``: the root) whose own parameters, those in no nested unit, mix trainable and frozen ones."""
    units = [*fsdp_units(model), ("", model)]
    owner: dict[int, str] = {}
    for name, unit in units:  # innermost first: a parameter belongs to the first unit that holds it
        for param in unit.parameters():
            owner.setdefault(id(param), name)
    flags: dict[str, set[bool]] = {}
    for param in model.parameters():
        flags.setdefault(owner[id(param)], set()).add(param.requires_grad)
    return [name or "(the root)" for name, seen in flags.items() if len(seen) == 2]


def check_fsdp_version(model: nn.Module, fsdp_version: int, use_orig_params: bool = False) -> None:
    """FSDP1 flattens each unit's parameters into one tensor, which is either trained or frozen; a unit that mixes
    them is a :class:`ConfigError` with the fix (FSDP2 shards each parameter on its own and takes the mix)."""
    if int(fsdp_version) >= 2 or use_orig_params:
        return
    mixed = mixed_units(model)
    if mixed:
        raise ConfigError(
            f"FSDP1 cannot shard a unit that mixes trainable and frozen parameters ({', '.join(mixed[:3])} in this "
            "stage): use FSDP2, fsdp_version: 2 in the accelerate config (configs/accelerate/fsdp.yaml)"
        )


def configure_accelerate_fsdp(plugin: Any, model: nn.Module) -> None:
    """Give the FSDP plugin that ``accelerate launch`` built from its config the wrapping the parts declare.

    Called by the trainer before ``accelerator.prepare``; ``plugin`` is ``accelerator.state.fsdp_plugin``.
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    version = int(getattr(plugin, "fsdp_version", 1) or 1)
    check_fsdp_version(model, version, bool(getattr(plugin, "use_orig_params", False)))
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    plugin.transformer_cls_names_to_wrap = wrap_class_names(model)


def configure_accelerate_deepspeed(plugin: Any, batch_size: int, grad_accum: int, num_processes: int) -> None:
    """Give the DeepSpeed plugin that ``accelerate launch`` built the micro-batch size and accumulation of
    ``train``: accelerate reads them from a data loader, which the trainer does not hand it, and would otherwise
    replace ``train.grad_accum`` by the accelerate config's value. Under ZeRO-3 the final model is gathered onto the
    main process by DeepSpeed's ``_zero3_consolidated_16bit_state_dict`` (what ``accelerator.get_state_dict``
    calls), which needs ``stage3_gather_16bit_weights_on_model_save``: it is switched on here."""
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = int(batch_size)
    config["gradient_accumulation_steps"] = int(grad_accum)
    config["train_batch_size"] = int(batch_size) * int(grad_accum) * int(num_processes)
    plugin.gradient_accumulation_steps = int(grad_accum)
    if int(plugin.zero_stage) == 3:
        config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
        plugin.zero3_save_16bit_model = True


def register_forward_methods(model: nn.Module) -> int:
    """After sharding: let :data:`FORWARD_METHODS` of every sharded part gather its unit as ``forward`` does.

    The trainer calls this after ``accelerator.prepare``; :func:`shard_model` calls it itself. Returns the count.
    """
    from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

    count = 0
    for module in model.modules():
        if isinstance(module, FSDPModule):
            for contract, methods in FORWARD_METHODS.items():
                if isinstance(module, contract):
                    for method in (m for m in methods if hasattr(module, m)):
                        register_fsdp_forward_method(module, method)
                        count += 1
    return count


def sharding_engine(accelerator: Any) -> str | None:
    """``"fsdp"`` or ``"deepspeed"`` when ``accelerate launch`` set one up for this run, else None."""
    from accelerate.utils import DistributedType

    return {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)


def check_one_stage_per_launch(engine: str | None, stages: list[str]) -> None:
    """Under FSDP or DeepSpeed a launch runs one stage: the model is sharded for that stage's trainable set, and
    freezing other parameters of an already sharded model is not supported. Several stages are a ConfigError."""
    if engine is not None and len(stages) > 1:
        raise ConfigError(
            f"train: {len(stages)} stages ({', '.join(stages)}) would run in one {engine} launch, which shards the "
            f"model for one stage's trainable parts; run one stage per launch: train.only_stages=[{stages[0]}], "
            f"then the next stage with train.only_stages=[{stages[1]}] train.init_from=<output_dir>/final"
        )


def shard_model(model: nn.Module, **fully_shard_kwargs: Any) -> nn.Module:
    """Shard ``model`` in place with torch's ``fully_shard`` exactly as accelerate's FSDP2 path would with
    :func:`accelerate_fsdp_settings`: its own wrapping policy picks the units bottom-up, then the root is sharded.

    Needs an initialised process group; ``fully_shard_kwargs`` go to every call (``mesh``, ``mp_policy`` ...).
    """
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from accelerate.utils.other import get_module_children_bottom_up
    from torch.distributed.fsdp import FSDPModule, fully_shard

    plugin = FullyShardedDataParallelPlugin(**accelerate_fsdp_settings(model))
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    for module in get_module_children_bottom_up(model)[:-1]:
        if policy(module) and not isinstance(module, FSDPModule):
            fully_shard(module, reshard_after_forward=True, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)  # the root, which (like accelerate's) stays gathered after forward
    register_forward_methods(model)
    return model


def save_sharded(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write this process's model and optimiser shards with torch distributed checkpoint (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state}, checkpoint_id=os.path.join(folder, MODEL_DIR))
    dcp.save({"optimizer": optim_state}, checkpoint_id=os.path.join(folder, OPTIMIZER_DIR))


def load_sharded(folder: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read what :func:`save_sharded` wrote into a model sharded the same way and its optimiser (every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    model_box, optim_box = {"model": model_state}, {"optimizer": optim_state}
    dcp.load(model_box, checkpoint_id=os.path.join(folder, MODEL_DIR))
    dcp.load(optim_box, checkpoint_id=os.path.join(folder, OPTIMIZER_DIR))
    set_state_dict(model, optimizer, model_state_dict=model_box["model"], optim_state_dict=optim_box["optimizer"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on rank 0, on the CPU; other ranks get ``{}``. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["FORWARD_METHODS", "PART_CONTRACTS", "accelerate_fsdp_settings", "check_fsdp_version",
           "check_one_stage_per_launch", "configure_accelerate_deepspeed", "configure_accelerate_fsdp",
           "fsdp_units", "full_state_dict", "load_sharded", "mixed_units", "register_forward_methods",
           "save_sharded", "shard_model", "sharding_engine", "wrap_class_names"]
