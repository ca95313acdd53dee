"""Model building: part pairings that cannot work fail at build time with the fix in the message."""

import pytest
import torch

import unimm
from unimm.encoders.transforms import PadToSquare


def test_hybrid_encoder_needs_the_split_aligner():
    with pytest.raises(unimm.ConfigError, match=r"HybridEncoder gives a pair of token sequences but the MLPAligner "
                                                r"reads a sequence; e\.g\. model\.und_aligner=@parts/und_aligner/hybrid"):
        unimm.build_model("janus_tiny", ["model.und_encoder=@parts/und_encoder/sam_siglip_tiny"])


def test_split_aligner_needs_the_hybrid_encoder():
    with pytest.raises(unimm.ConfigError, match=r"SigLIPEncoder gives a sequence .* HybridSplitAligner reads a pair.*und_aligner/mlp_gelu"):
        unimm.build_model("janus_tiny", ["model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu"])


def test_tiny_transforms_never_exceed_their_size():
    out = PadToSquare(8)(torch.rand(3, 1, 40))  # a 1-pixel strip would be padded to min_size 14 without the cap
    assert out.shape == (3, 8, 8)
