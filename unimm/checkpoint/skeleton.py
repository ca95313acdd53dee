"""Building a model without its weights: parameters on the meta device, everything else computed for real.

``load_pretrained`` builds the model inside :func:`skeleton` and then hands each parameter the checkpoint's own
tensor (``load_state_dict(..., assign=True)`` in :func:`unimm.checkpoint.io.load_into`), so no random weights are
drawn and no second copy of the weights is made::

    with skeleton():
        model = build_model(cfg)           # parameters: meta tensors (shapes only); buffers: real values
    load_into(model, load_weights(folder))  # memory-mapped checkpoint tensors become the parameters

Why not ``with torch.device("meta")``: under it *every* tensor a module's ``__init__`` makes is a meta tensor, so
the buffers a checkpoint does not hold (``register_buffer(..., persistent=False)``: rotary ``inv_freq``, pixel
mean / std constants) would have no values, and each part would need a hook to re-create them. Here only the
parameters move to meta, as each is registered (what accelerate's ``init_empty_weights(include_buffers=False)``
does), and every buffer is computed by the module's own code exactly as in a normal build. It is written here
rather than taken from accelerate because a part that loads a folder of its own (a slot with ``path:`` or
``pretrained:``: a diffusers VAE, a trained VQ tokenizer or encoder, a transformers backbone) must be built for
real in the middle of the skeleton build, and accelerate's context cannot be paused for it: the registry pauses
this one (:data:`unimm.registry.registry.SKELETON`) while it builds such a part.

A parameter's random initialisation (``reset_parameters``, transformers' ``_init_weights``) runs on meta
tensors and so costs nothing; the plain ``torch.empty`` a layer allocates before registering its parameter is
never written and is freed at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..registry.registry import SKELETON


@contextmanager
def skeleton() -> Iterator[None]:
    """Within the block, parameters are created on the meta device (plain ``nn.Parameter`` ones; a subclass is
    left as it is) except inside parts that load their own folder; buffers and other tensors stay real."""
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if SKELETON.get() and param is not None and type(param) is nn.Parameter and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    token = SKELETON.set(True)
    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = original
        SKELETON.reset(token)


__all__ = ["skeleton"]
