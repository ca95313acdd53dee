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


def test_count_parameters_works_on_the_meta_device():
    from torch import nn

    from unimm.build import count_parameters
    from unimm.train.freeze import count_parameters as reexported

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    assert count_parameters(model) == (12 + 4) + (8 + 2)
    assert reexported is count_parameters


def test_shared_helpers_are_defined_once():
    """One IGNORE_INDEX, one count_parameters, one image loader: a second copy would drift from the first."""
    import re
    from pathlib import Path

    package = Path(unimm.__file__).parent
    for pattern, home in [(r"^IGNORE_INDEX\s*=", "processor.py"), (r"^def count_parameters\(", "build.py"),
                          (r"^def load_image\(", "encoders/transforms.py")]:
        found = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
                 if re.search(pattern, p.read_text(), flags=re.M)]
        assert found == [home], pattern
