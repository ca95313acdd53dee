"""The SigLIP encoder's per-layout options: its attention-pool head and which image processor its transform follows."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import JanusImageProcessor

from unimm.encoders.siglip import SigLIPEncoder
from unimm.encoders.transforms import PadToSquare, TransformersJanusTransform
from unimm.registry import ConfigError

SIZES = dict(variant=None, image_size=32, patch_size=8, width=32, layers=1, heads=2, mlp_ratio=2.0)


def test_without_the_attention_pool_head():
    encoder = SigLIPEncoder(**SIZES, attention_pool=False)
    assert not any(".attn_pool." in f".{k}" for k in encoder.state_dict())
    assert encoder(torch.zeros(1, 3, 32, 32)).shape == (1, 16, 32)
    with pytest.raises(ConfigError, match="no attention-pool head"):
        encoder.pooled(torch.zeros(1, 3, 32, 32))
    assert any(k.startswith("vit.attn_pool.") for k in SigLIPEncoder(**SIZES).state_dict())


def test_the_transform_follows_the_image_processor_named():
    picture = np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8)  # odd sizes: rounding shows
    reference = SigLIPEncoder(**SIZES).transform()
    transformers = SigLIPEncoder(**SIZES, image_processor="transformers").transform()
    assert isinstance(reference, PadToSquare) and isinstance(transformers, TransformersJanusTransform)
    own = JanusImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert torch.equal(transformers(picture), own(Image.fromarray(picture), return_tensors="pt")["pixel_values"][0])
    assert transformers(picture).shape == reference(picture).shape == (3, 32, 32)
    assert not torch.equal(transformers(picture), reference(picture))  # the two layouts' processors differ


def test_an_unknown_image_processor_is_named():
    with pytest.raises(ConfigError, match=r"model.und_encoder.image_processor = 'pil': use one of reference, "
                                          r"transformers"):
        SigLIPEncoder(**SIZES, image_processor="pil")
