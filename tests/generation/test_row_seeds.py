"""One random generator per row: a row's draws (tokens, flow noise, whole images) do not depend on its batch.

This is what lets ``unimm serve`` batch requests with different seeds and still give each request the images it
would get alone (tests/serving/test_api.py checks that through HTTP).
"""

import pytest
import torch

from unimm.backbones.causal_lm import llama
from unimm.generation.sampling import randn_rows, sample_next
from unimm.pretrained import DEFAULT_MODEL, load_pretrained
from unimm.registry import GENERATORS, InputError


def _gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_sample_next_rows_follow_their_own_generator():
    logits = torch.randn(3, 40)
    batched = sample_next(logits, temperature=1.0, generator=_gens(1, 2, 3))
    alone = [sample_next(logits[i : i + 1], temperature=1.0, generator=_gens(s))[0] for i, s in enumerate((1, 2, 3))]
    assert batched.tolist() == [int(a) for a in alone]
    draws = {tuple(sample_next(logits, temperature=1.0, generator=_gens(s, s + 1, s + 2)).tolist()) for s in range(5)}
    assert len(draws) > 1  # the seeds matter


def test_randn_rows_row_equals_row_alone():
    noise = randn_rows((3, 2, 4, 4), _gens(7, 8, 9))
    for i, seed in enumerate((7, 8, 9)):
        assert torch.equal(noise[i : i + 1], torch.randn((1, 2, 4, 4), generator=_gens(seed)[0]))
    assert torch.equal(randn_rows((2, 3), _gens(4)[0]), torch.randn((2, 3), generator=_gens(4)[0]))


def test_wrong_number_of_generators_is_an_input_error():
    with pytest.raises(InputError, match="2 random generators for 3 rows"):
        sample_next(torch.randn(3, 10), temperature=1.0, generator=_gens(1, 2))
    with pytest.raises(InputError, match="2 random generators for 3 rows"):
        randn_rows((3, 4), _gens(1, 2))


def test_shipped_vq_model_rows_equal_each_prompt_alone():
    model, processor, _ = load_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")
    captions, seeds = ["a red circle", "a blue square on the left", "a red circle"], [11, 12, 13]
    ids, mask = processor.generation_prompts(captions)
    batched = model.sample_images(ids, mask, pad_id=processor.pad_id, seed=seeds, temperature=1.0).latents
    for i, (caption, seed) in enumerate(zip(captions, seeds)):
        one_ids, one_mask = processor.generation_prompts([caption])
        alone = model.sample_images(one_ids, one_mask, pad_id=processor.pad_id, seed=[seed], temperature=1.0)
        assert torch.equal(batched[i], alone.latents[0]), caption
    assert not torch.equal(batched[0], batched[2])  # same caption, other seed: other codes
    with pytest.raises(InputError, match="2 seeds for 3 prompts"):
        model.sample_images(ids, mask, pad_id=processor.pad_id, seed=[1, 2])


def test_flow_path_rows_equal_each_prompt_alone():
    torch.manual_seed(0)
    backbone = llama(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=50).eval()
    path = GENERATORS.build({
        "type": "rectified_flow", "image_size": 16,
        "autoencoder": {"type": "autoencoder_kl", "config": {"block_out_channels": [32, 32], "layers_per_block": 1}},
        "encoder": {"input_channels": 4, "stride": 2, "kernel_size": 2, "block_out_channels": [16],
                    "layers_in_middle": 1},
        "decoder": {"in_channels": 16, "out_channels": 4, "block_out_channels": [16], "upsamples": 1,
                    "layers_in_middle": 1},
    }, where="model.generator", inferred={"hidden_size": 32}).eval()  # fmt: skip
    ids = torch.randint(3, 50, (2, 6))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        batched = path.sample(backbone, ids, mask, pad_id=2, num_steps=2, generator=_gens(3, 4)).images
        for i, seed in enumerate((3, 4)):
            alone = path.sample(backbone, ids[i : i + 1], mask[i : i + 1], pad_id=2, num_steps=2,
                                generator=_gens(seed)).images
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])
