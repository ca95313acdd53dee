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
        encoder.pool(encoder(torch.zeros(1, 3, 32, 32)))
    assert any(k.startswith("vit.attn_pool.") for k in SigLIPEncoder(**SIZES).state_dict())


def test_position_codes_add_the_grid_to_the_tokens_and_are_not_weights():
    plain = SigLIPEncoder(**SIZES)
    coded = SigLIPEncoder(**SIZES, position_codes=True)
    assert set(coded.state_dict()) == set(plain.state_dict())  # a checkpoint loads the same with or without
    coded.load_state_dict(plain.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    codes = coded(pixels) - plain(pixels)  # (2, 16, 32): the same for every image, one per patch
    assert torch.allclose(codes[0], codes[1], atol=1e-6)
    assert torch.cdist(codes[0], codes[0]).add(torch.eye(16)).min() > 0.5  # no two patches alike
    # row-major, a row's code and a column's: patches in one row agree on (at least) half of the dimensions,
    # patches in one column on the other half
    grid = codes[0].view(4, 4, 32)
    row_half = (grid[:, :1] - grid).abs().amax(dim=(0, 1)) < 1e-5      # dims every row shares along its columns
    column_half = (grid[:1] - grid).abs().amax(dim=(0, 1)) < 1e-5   # dims every column shares along its rows
    assert row_half.sum() >= 16 and column_half.sum() >= 16 and (row_half | column_half).all()
    assert torch.allclose(plain.pool(plain(pixels)), coded.pool(plain(pixels)))
    with pytest.raises(ConfigError, match="position_codes needs a width divisible by 4, got 30"):
        SigLIPEncoder(**{**SIZES, "width": 30, "heads": 2}, position_codes=True)


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
