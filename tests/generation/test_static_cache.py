"""The preallocated KV cache and the decode loops on it: the same codes, velocities and answers as the growing
transformers cache on the swap matrix's backbones (llama, qwen2, gpt2), keys written in place, no host
synchronisation per image token, float32 sampling maths for bfloat16 weights, and the compile fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from unimm.generation import decode
from unimm.generation.decode import decode_text, guided_logits
from unimm.generation.static_cache import PreallocatedCache, new_cache, supports_static_cache
from unimm.registry import BACKBONES, GENERATORS, InputError

PARTS = Path(__file__).resolve().parents[2] / "configs" / "parts"
FAMILIES = ("llama", "qwen2", "gpt2")


def _part(kind: str, name: str, **inferred):
    cfg = yaml.safe_load((PARTS / kind / f"{name}.yaml").read_text())
    registry = BACKBONES if kind == "backbone" else GENERATORS
    return registry.build(cfg, where=f"model.{kind}", inferred=inferred).eval()


def _backbone(family: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return _part("backbone", f"{family}_tiny").to(dtype)


def _vq(backbone, image_size: int = 8):
    torch.manual_seed(1)  # 8 px through the 2x tokenizer: 4 x 4 = 16 image tokens
    path = GENERATORS.build({**yaml.safe_load((PARTS / "generator" / "vq_tiny.yaml").read_text()),
                             "image_size": image_size}, where="model.generator",
                            inferred={"hidden_size": backbone.hidden_size})  # fmt: skip
    return path.eval().to(next(backbone.parameters()).dtype)


def _left_padded(pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts of 9 and 5 tokens, the second left padded."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 400, (2, 9), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = pad, 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_vq_codes_equal_the_growing_cache_loop(family):
    backbone = _backbone(family)
    path = _vq(backbone)
    assert supports_static_cache(backbone)
    for ids, mask in (_left_padded(), (torch.randint(5, 400, (3, 6)), torch.ones(3, 6, dtype=torch.long))):
        kwargs = {"pad_id": 0, "guidance": 4.0, "temperature": 0, "keep_steps": True}
        fast = path.sample(backbone, ids, mask, **kwargs)
        slow = path.sample(backbone, ids, mask, static_cache=False, **kwargs)
        assert torch.equal(fast.latents, slow.latents)
        assert fast.latents.unique().numel() > 2  # the codes really vary
        torch.testing.assert_close(fast.steps["logits"], slow.steps["logits"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.images, slow.images)


@pytest.mark.parametrize("family", FAMILIES)
def test_flow_velocities_equal_the_growing_cache(family):
    backbone = _backbone(family)
    torch.manual_seed(2)
    path = _part("generator", "flow_tiny", hidden_size=backbone.hidden_size)
    ids, mask = _left_padded()
    kwargs = {"pad_id": 0, "guidance": 2.0, "num_steps": 3, "keep_steps": True, "noise": torch.randn(2, 4, 8, 8)}
    fast = path.sample(backbone, ids, mask, **kwargs)
    slow = path.sample(backbone, ids, mask, static_cache=False, **kwargs)
    for key in ("v_cond", "v_uncond"):
        torch.testing.assert_close(torch.stack(fast.steps[key]), torch.stack(slow.steps[key]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.latents, slow.latents, rtol=1e-5, atol=1e-5)


def _answers(backbone, embeds, mask, eos_id, static: bool):
    """Greedy answers through decode_text, or through the growing-cache loop it replaced (kept in the test)."""
    if static:
        return decode_text(backbone, embeds, mask, max_new_tokens=8, choose=lambda x: x.argmax(-1), eos_id=eos_id)
    from unimm.backbones.base import positions_from_mask

    positions = positions_from_mask(mask)
    out = backbone(embeds, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, next_pos, tokens = out.past_key_values, positions[:, -1:] + 1, []
    finished = torch.zeros(len(mask), dtype=torch.bool)
    for _ in range(8):
        token = backbone.logits(out.hidden_states[:, -1]).argmax(-1).masked_fill(finished, 0)
        tokens.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = backbone(backbone.embed(token[:, None]), attention_mask=mask, position_ids=next_pos,
                       past_key_values=cache, use_cache=True)
        cache, next_pos = out.past_key_values, next_pos + 1
    return torch.stack(tokens, dim=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_answers_equal_the_growing_cache_and_finished_rows_leave(family, monkeypatch):
    backbone = _backbone(family)
    ids, mask = _left_padded()
    ids = torch.cat([ids, ids[:1].flip(-1)])
    mask = torch.cat([mask, mask[:1]])
    embeds = backbone.embed(ids)
    free = _answers(backbone, embeds, mask, eos_id=None, static=True)
    assert free.shape == (3, 8)
    eos = int(free[0, 2])  # row 0 ends at its third token (or sooner); the others go on or end elsewhere
    calls = []
    forward = type(backbone).forward
    monkeypatch.setattr(type(backbone), "forward", lambda self, x, **kw: calls.append(len(x)) or forward(self, x, **kw))
    fast = _answers(backbone, embeds, mask, eos, static=True)
    monkeypatch.undo()
    slow = _answers(backbone, embeds, mask, eos, static=False)
    assert torch.equal(fast, slow)
    ended = (fast == eos).any(-1)
    assert ended[0]
    if not ended.all():  # a finished row stopped costing: later steps ran on fewer rows
        assert min(calls) < 3
    else:  # every row ended: the loop stopped before max_new_tokens
        assert fast.shape[1] < 8


def test_cache_writes_in_place_and_returns_the_filled_part():
    cache = PreallocatedCache(num_layers=1, max_length=6)
    k, v = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    keys, values = cache.update(k, v, 0)
    assert keys.shape == (2, 3, 4, 5) and torch.equal(values, v)
    buffer = cache.layers[0]._keys.data_ptr()
    keys, _ = cache.update(k[:, :, :1], v[:, :, :1], 0)
    assert keys.shape[2] == 5 and cache.get_seq_length() == 5 and cache.get_mask_sizes(1, 0) == (6, 0)
    assert keys.data_ptr() == buffer and torch.equal(keys[:, :, 4], k[:, :, 0])
    cache.crop(-2)
    assert cache.get_seq_length() == 3
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.layers[0].keys.shape == (1, 3, 3, 5) and torch.equal(cache.layers[0].keys, k[1:, :, :3])
    with pytest.raises(InputError, match="holds 6 positions, 7 were written"):
        cache.update(k[1:], v[1:], 0)


def _count_host_reads(monkeypatch) -> list:
    """Count every read of a tensor's value on the host (bool(), item(), int(), float(), tolist())."""
    reads = []
    for name in ("__bool__", "item", "__int__", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_image_loop_reads_nothing_on_the_host_per_token(monkeypatch):
    backbone = _backbone("llama")
    counts = {}
    for size in (4, 8):  # 4 and 16 image tokens
        path = _vq(backbone, image_size=size)
        ids, mask = _left_padded()
        rows = torch.stack([ids, ids], 1).flatten(0, 1)
        rows_mask = mask.repeat_interleave(2, 0)
        reads = _count_host_reads(monkeypatch)
        decode.sample_vq_codes(path, backbone, rows, rows_mask, guidance=3.0, choose=lambda x: x.argmax(-1))
        monkeypatch.undo()
        counts[path.num_image_tokens] = len(reads)
    assert counts[4] == counts[16], counts


def test_sampling_maths_are_float32_for_bfloat16_weights():
    cond = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)
    uncond = cond + torch.tensor([[0.0078125, 0.0]], dtype=torch.bfloat16)  # one bfloat16 step apart at 1.0
    guided = guided_logits(torch.cat([cond, uncond]), guidance=5.0)
    assert guided.dtype == torch.float32
    exact = uncond.double() + 5.0 * (cond.double() - uncond.double())
    torch.testing.assert_close(guided.double(), exact, rtol=0, atol=1e-7)  # bfloat16 maths would round to 0.96875

    backbone = _backbone("llama", torch.bfloat16)
    path = _vq(backbone)
    ids, mask = _left_padded()
    out = path.sample(backbone, ids, mask, pad_id=0, guidance=3.0, temperature=1.0, top_k=8, top_p=0.9,
                      generator=torch.Generator().manual_seed(0), keep_steps=True)
    assert out.steps["logits"].dtype == torch.float32 and out.latents.shape == (2, 16)
    flow = _part("generator", "flow_tiny", hidden_size=backbone.hidden_size).to(torch.bfloat16)
    z = flow.sample(backbone, ids, mask, pad_id=0, num_steps=2).latents
    assert z.dtype == torch.float32 and torch.isfinite(z).all()


def test_compile_falls_back_with_one_line(monkeypatch, capsys):
    backbone = _backbone("llama")
    path = _vq(backbone)
    ids, mask = _left_padded()
    expected = path.sample(backbone, ids, mask, pad_id=0, guidance=3.0, temperature=0).latents

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found\nlong trace")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    got = path.sample(backbone, ids, mask, pad_id=0, guidance=3.0, temperature=0, compile=True).latents
    assert torch.equal(got, expected)  # the fixed-shape cache, run without compiling, gives the same codes
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["unimm: compiling the decode step is not available here (no C++ compiler found); sampling "
                     "without it"]


def test_fixed_shape_cache_gives_the_same_codes():
    backbone = _backbone("qwen2")
    path = _vq(backbone)
    ids, mask = _left_padded()
    rows, rows_mask = torch.stack([ids, ids], 1).flatten(0, 1), mask.repeat_interleave(2, 0)
    greedy = {"guidance": 3.0, "choose": lambda x: x.argmax(-1), "keep_steps": True}
    filled, logits = decode.sample_vq_codes(path, backbone, rows, rows_mask, **greedy)
    monkeypatch_free = decode._compile_step
    decode._compile_step = lambda step, device: step  # "compiled" = the step itself, on the fixed-shape cache
    try:
        fixed, fixed_logits = decode.sample_vq_codes(path, backbone, rows, rows_mask, compile=True, **greedy)
    finally:
        decode._compile_step = monkeypatch_free
    assert torch.equal(filled, fixed)
    torch.testing.assert_close(logits, fixed_logits, rtol=1e-5, atol=1e-5)
    assert type(new_cache(backbone, 8, fixed_shapes=True)).__name__ == "StaticCache"


def test_compile_option_is_checked(capsys, tmp_path):
    from unimm.cli import main
    from unimm.generation.flow_path import RectifiedFlowPath
    from unimm.generation.vq_path import VQGenerationPath

    assert VQGenerationPath.check_sample_options({"compile": True}) == {"compile": True}
    with pytest.raises(InputError, match="sample.compile: expected bool, got str 'yes'"):
        VQGenerationPath.check_sample_options({"compile": "yes"}, where="sample.")
    with pytest.raises(InputError, match="sample.compile: the RectifiedFlowPath does not take this sampling option"):
        RectifiedFlowPath.check_sample_options({"compile": True}, where="sample.")
    code = main(["generate", "--prompt", "x", "--num-images", "1", "--out", str(tmp_path), "--compile",
                 "--override", "sample.compile=maybe"])  # fmt: skip
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == ["unimm: error: sample.compile: expected bool, got str 'maybe'"]
