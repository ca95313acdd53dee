"""Other image sizes: generation at another size, understanding with resampled position embeddings, and the
limits (the tokenizer's grid, the backbone's positions) as one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from unimm.cli import main as cli_main
from unimm.encoders.siglip import SigLIPEncoder

TINY_VIT = dict(variant=None, patch_size=8, width=16, layers=1, heads=2, mlp_ratio=2.0)


def test_generate_at_another_size(tmp_path: Path, capsys):
    assert cli_main(["generate", "--prompt", "a red circle", "--num-images", "1", "--out", str(tmp_path),
                     "--image-size", "48"]) == 0  # the shipped model was trained at 32 px
    with Image.open(tmp_path / "image_000.png") as image:
        assert image.size == (48, 48)


@pytest.mark.parametrize("size, message", [
    ("30", "model.generator.image_size: image size 30 is not a positive multiple of the autoencoder's downsampling "
           "factor 4"),
    ("64", "model.generator.image_size = 64 gives 256 image tokens, but the backbone reads at most 256 positions"),
])
def test_sizes_the_model_cannot_take_fail_in_one_line(size, message, tmp_path: Path, capsys):
    assert cli_main(["generate", "--prompt", "a red circle", "--out", str(tmp_path), "--image-size", size]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"unimm: error: {message}")


def test_understand_at_another_size(tmp_path: Path, capsys):
    picture = tmp_path / "circle.png"
    Image.new("RGB", (40, 40), (255, 0, 0)).save(picture)
    assert cli_main(["understand", "--image", str(picture), "--question", "what colour is the circle?",
                     "--image-size", "48", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()


def test_position_embeddings_are_resampled_to_the_new_size():
    from timm.layers import resample_abs_pos_embed

    small, large = SigLIPEncoder(image_size=16, **TINY_VIT), SigLIPEncoder(image_size=32, **TINY_VIT)
    state = {f"enc.{k}": v for k, v in small.state_dict().items()}
    adapted = large.adapt_checkpoint(state, "enc.")
    expected = resample_abs_pos_embed(small.vit.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=0)
    assert adapted["enc.vit.pos_embed"].shape == large.vit.pos_embed.shape == (1, 16, 16)
    torch.testing.assert_close(adapted["enc.vit.pos_embed"], expected)
    assert small.adapt_checkpoint(state, "enc.") is state  # same size: nothing changes
