"""Next-token sampling: greedy, temperature, top-k and top-p filtering, seeding and input checks."""

from __future__ import annotations

import math

import pytest
import torch

from unimm.generation.sampling import filter_logits, sample_next
from unimm.registry import InputError

NEG_INF = float("-inf")


def _logits_from_probs(*rows: list[float]) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in row] for row in rows])


def test_temperature_zero_is_argmax_and_ignores_filters():
    logits = torch.randn(4, 10)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=0, top_k=3, top_p=0.1), logits.argmax(-1))


def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0], [9.0, 0.0, 8.0, -1.0]])
    out = filter_logits(logits, top_k=2)
    expected = torch.tensor([[NEG_INF, 5.0, NEG_INF, 4.0], [9.0, NEG_INF, 8.0, NEG_INF]])
    assert torch.equal(out, expected)
    assert torch.equal(filter_logits(logits, top_k=4), logits)
    assert torch.equal(filter_logits(logits, top_k=100), logits)


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    # probabilities in a shuffled vocabulary order, to check the mask lands on the right ids
    probs = [0.15, 0.5, 0.05, 0.3]
    logits = _logits_from_probs(probs)
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.3) == [1]  # the top token alone reaches 0.3
    assert kept(0.5) == [1]  # 0.5 reached exactly by the top token
    assert kept(0.7) == [1, 3]  # 0.5 < 0.7 <= 0.8
    assert kept(0.9) == [0, 1, 3]  # 0.8 < 0.9 <= 0.95
    assert kept(0.99) == [0, 1, 2, 3]
    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(1e-6) == [1]  # the most likely token always survives
    # kept logits are unchanged
    out = filter_logits(logits, top_p=0.7)
    assert torch.equal(out[0, [1, 3]], logits[0, [1, 3]])


def test_top_p_applies_after_top_k_and_per_row():
    logits = _logits_from_probs([0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4])
    # after top_k=2 the first row renormalises to 4/7, 3/7: top_p=0.5 keeps only the first token
    out = filter_logits(logits, top_k=2, top_p=0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False], [False, False, False, True]]
    # without top-k, 0.5 needs two tokens
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).sum(-1).tolist() == [2, 2]


def test_sampling_draws_from_softmax_of_scaled_logits():
    logits = torch.randn(3, 7)
    for temperature in (0.5, 1.0, 2.0):
        ours = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(7))
        probs = torch.softmax(logits / temperature, dim=-1)
        reference = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(7)).squeeze(-1)
        assert torch.equal(ours, reference)


def test_sampling_respects_filters_and_seed():
    logits = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]).repeat(2000, 1)
    draws = sample_next(logits, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 4, 5}
    draws = sample_next(logits, temperature=1.0, top_p=0.3, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {4, 5}  # p(5) = 0.211 < 0.3 <= p(5) + p(4) = 0.402
    a = sample_next(logits[:50], generator=torch.Generator().manual_seed(3))
    b = sample_next(logits[:50], generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (50,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"top_k": 2.5}, "top_k must be a positive integer"),
        ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
    ],
)
def test_bad_settings_are_explained(kwargs, message):
    with pytest.raises(InputError, match=message):
        sample_next(torch.zeros(1, 4), **kwargs)


def test_bad_logits_shape_is_explained():
    with pytest.raises(InputError, match=r"\(B, V\)"):
        sample_next(torch.zeros(4), temperature=0)
