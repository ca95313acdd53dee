"""Sampling speed: unimm's decode loops against the loops people run today, on the same random weights.

One run builds a Janus-style model at random (a Llama backbone, by default width 1024 with 8 layers; a 16384-code
image head; 576 image tokens) and measures, in interleaved pairs so a busy machine slows both sides alike:

* VQ images with guidance, 1 and 4 at a time: tokens/s of ``UnifiedModel.sample_images`` (the preallocated cache,
  :mod:`unimm.generation.decode`), of the reference's loop (written below as the released Janus ``generate`` does
  it: a growing transformers cache, embeddings concatenated for the guidance rows), and of transformers'
  ``JanusForConditionalGeneration.generate(generation_mode="image")`` on the same weights written in its layout
  (``unimm.checkpoint.hf_janus``; "not available" without it);
* JanusFlow: ODE steps/s of ``RectifiedFlowPath.sample`` (prompt cached once) against the released demo's loop,
  which runs the prompt again at every step (``use_prompt_cache=False``);
* answers: time to the first token and per token of ``generate_text`` against transformers' ``generate`` on the
  language model (the reference's way), for an image question (576 image tokens in the prompt);
* peak memory of each unimm run beside the weights and the preallocated cache.

It prints a table and writes JSON. Quick run (a minute): ``python benchmarks/sampling.py --width 256 --layers 2
--image-tokens 64 --flow-steps 2 --answer-tokens 8``. The figures and commands are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

import unimm
import unimm.generation.flow_path  # noqa: F401  (registers rectified_flow)
from unimm.registry import GENERATORS


# -- memory -----------------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on Linux the process's peak resident set (reset through
    /proc/self/clear_refs, so each block is measured alone); ``rise`` is the peak above the memory before it."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self.rise = device, None, None

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
        else:
            self.before = self._rss("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.before = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.before is not None:
            self.peak = self._rss("VmHWM")
        if self.peak is not None and self.before is not None:
            self.rise = self.peak - self.before

    @staticmethod
    def _rss(field: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.0f}"


# -- the model ------------------------------------------------------------------------------------------------
def build(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    """A Janus-style UnifiedModel at random, its processor, and a JanusFlow path on the same backbone."""
    grid = math.isqrt(args.image_tokens)
    if grid * grid != args.image_tokens:
        raise SystemExit(f"--image-tokens {args.image_tokens}: give a square number (576 = 24 x 24)")
    heads = max(1, args.width // 64)
    overrides = [
        f"model.backbone.hidden_size={args.width}", f"model.backbone.intermediate_size={args.width * 11 // 4}",
        f"model.backbone.num_hidden_layers={args.layers}", f"model.backbone.num_attention_heads={heads}",
        f"model.backbone.num_key_value_heads={heads}", f"model.backbone.head_dim={args.width // heads}",
        f"model.backbone.max_position_embeddings={4 * args.image_tokens + 1024}",
        f"model.backbone.vocab_size={args.vocab}",
        f"model.generator.image_size={2 * grid}",  # the tiny tokenizer downsamples 2x
        f"model.generator.autoencoder.codebook_size={args.codebook}",
        f"model.und_encoder.image_size={8 * grid}",  # 8 px patches: as many understanding tokens as image tokens
    ]
    torch.manual_seed(0)
    cfg = unimm.load_config("janus_tiny", overrides)
    model = unimm.build_model(cfg).eval()
    processor = unimm.build_processor(cfg, model)
    flow = GENERATORS.build({
        "type": "rectified_flow", "image_size": 4 * grid,  # the tiny VAE and the encoder's patchify halve it each
        "autoencoder": {"type": "autoencoder_kl", "config": {"block_out_channels": [32, 32], "layers_per_block": 1}},
        "encoder": {"input_channels": 4, "stride": 2, "kernel_size": 2, "block_out_channels": [64]},
        "decoder": {"in_channels": 64, "out_channels": 4, "block_out_channels": [64], "upsamples": 1},
    }, where="model.generator", inferred={"hidden_size": args.width}).eval()  # fmt: skip
    return model.to(device, dtype), processor, flow.to(device, dtype)


# -- the loops people run today ------------------------------------------------------------------------------------
@torch.no_grad()
def reference_vq_loop(model, prompt_ids: torch.Tensor, pad_id: int, guidance: float, temperature: float):
    """The released Janus ``generate`` loop: rows [cond, uncond] interleaved, the unconditional prompt padded
    between its first and last token, a growing transformers cache, no mask or positions (prompts of one length)."""
    lm, path = model.backbone.decoder, model.generator
    batch, steps = prompt_ids.shape[0], path.num_image_tokens
    tokens = prompt_ids.repeat_interleave(2, dim=0)
    tokens[1::2, 1:-1] = pad_id
    inputs = model.backbone.embed(tokens)
    codes = torch.zeros(batch, steps, dtype=torch.long, device=prompt_ids.device)
    cache = None
    for i in range(steps):
        out = lm(inputs_embeds=inputs, use_cache=True, cache=cache)
        cache = out.cache
        logits = path.head(out.last_hidden_state[:, -1, :])
        logits = logits[1::2] + guidance * (logits[0::2] - logits[1::2])
        probs = torch.softmax(logits / temperature, dim=-1)
        token = torch.multinomial(probs, num_samples=1)
        codes[:, i] = token.squeeze(-1)
        token = torch.cat([token, token], dim=1).view(-1)
        inputs = path.embed_codes(token).unsqueeze(1)
    return path.decode_latents(codes)


def hf_janus(model, processor, folder: Path):
    """transformers' JanusForConditionalGeneration on the same weights, or the reason it is not available."""
    try:
        from unimm.checkpoint.hf_janus import save_hf
    except ImportError:
        return None, "not available (unimm.checkpoint.hf_janus is not in this checkout)"
    from transformers import JanusForConditionalGeneration

    save_hf(model, processor, folder)
    hf = JanusForConditionalGeneration.from_pretrained(str(folder), dtype=model.dtype).to(model.device).eval()
    return hf, ""


# -- timing -----------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the order reversed every other round."""
    best = {name: math.inf for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def cache_bytes(model, rows: int, length: int) -> int:
    config = model.backbone.lm.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * model.dtype.itemsize
    return rows * length * per_position


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="LLM width (heads of 64)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--image-tokens", type=int, default=576, help="a square number (576 = 24 x 24)")
    parser.add_argument("--codebook", type=int, default=16384, help="image head size (Janus: 16384)")
    parser.add_argument("--vocab", type=int, default=32000, help="text vocabulary (LM head rows)")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4], help="images sampled in parallel")
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--flow-steps", type=int, default=30, help="JanusFlow ODE steps")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of each pair (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", action="store_true", help="also time unimm with the compiled step")
    parser.add_argument("--skip", nargs="*", default=[], choices=["vq", "hf", "flow", "answer"])
    parser.add_argument("--json", default="sampling.json", help="where to write the figures")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, processor, flow = build(args, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.backbone.parameters())
    result: dict[str, Any] = {"settings": vars(args), "backbone_weights_mib": weights / 2**20, "vq": [],
                              "flow": None, "answer": None}  # fmt: skip
    print(f"device={device} dtype={args.dtype} threads={args.threads} width={args.width} layers={args.layers} "
          f"image_tokens={args.image_tokens} codebook={args.codebook} backbone weights {mib(weights)} MiB")

    hf, hf_reason = (None, "skipped") if "hf" in args.skip else hf_janus(model, processor, Path(tempfile.mkdtemp()))
    n = model.generator.num_image_tokens
    for batch in [] if "vq" in args.skip else args.images:
        ids, mask = processor.generation_prompts(["a red circle above a blue square"] * batch)
        ids, mask = ids.to(device), mask.to(device)
        options = {"pad_id": processor.pad_id, "guidance": args.guidance, "temperature": 1.0}
        fns = {
            "unimm": lambda: model.sample_images(ids, mask, seed=0, **options),
            "reference": lambda: reference_vq_loop(model, ids, processor.pad_id, args.guidance, 1.0),
        }
        if args.compile:
            fns["unimm_compiled"] = lambda: model.sample_images(ids, mask, seed=0, compile=True, **options)
            fns["unimm_compiled"]()  # compile outside the timing
        if hf is not None:
            fns["transformers_janus"] = lambda: hf.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                                            generation_mode="image", guidance_scale=args.guidance)
        with torch.no_grad():
            times = interleaved(fns, args.repeats, device)
            with PeakMemory(device) as memory:
                fns["unimm"]()
        row = {"images": batch, **{f"{k}_tokens_per_s": batch * n / t for k, t in times.items()},
               "unimm_peak_mib": None if memory.peak is None else memory.peak / 2**20,
               "unimm_peak_rise_mib": None if memory.rise is None else memory.rise / 2**20,
               "cache_mib": cache_bytes(model, 2 * batch, ids.shape[1] + n - 1) / 2**20}  # fmt: skip
        row["speedup_vs_reference"] = times["reference"] / times["unimm"]
        if "transformers_janus" in times:
            row["speedup_vs_transformers_janus"] = times["transformers_janus"] / times["unimm"]
        result["vq"].append(row)
        print(f"  VQ, {batch} image(s): " + ", ".join(f"{k} {batch * n / t:.1f} tokens/s" for k, t in times.items()),
              flush=True)
    result["transformers_janus"] = "measured" if hf is not None else hf_reason

    if "flow" not in args.skip:
        ids, mask = processor.generation_prompts(["a red circle above a blue square"])
        ids, mask = ids.to(device), mask.to(device)
        noise = torch.randn(1, 4, flow.latent_size, flow.latent_size, device=device)
        kw = {"pad_id": processor.pad_id, "num_steps": args.flow_steps, "noise": noise}
        with torch.no_grad():
            times = interleaved({
                "unimm": lambda: flow.sample(model.backbone, ids, mask, **kw),
                "recompute_prompt": lambda: flow.sample(model.backbone, ids, mask, use_prompt_cache=False, **kw),
            }, args.repeats, device)  # fmt: skip
        result["flow"] = {"steps": args.flow_steps, "image_tokens": flow.num_image_tokens,
                          **{f"{k}_steps_per_s": args.flow_steps / t for k, t in times.items()},
                          "speedup": times["recompute_prompt"] / times["unimm"]}  # fmt: skip
        print("  JanusFlow: " + ", ".join(f"{k} {args.flow_steps / t:.3f} steps/s" for k, t in times.items()),
              flush=True)

    if "answer" not in args.skip:
        image = Image.new("RGB", (64, 64), (200, 30, 30))
        batch = processor([{"role": "user", "content": "<image_placeholder>\nWhat colour is the picture?"},
                           {"role": "assistant", "content": ""}], [image])  # fmt: skip
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.no_grad():
            embeds = model.embed_inputs(**batch)

        def unimm_answer(k: int):
            return lambda: model.generate_text(batch, max_new_tokens=k, eos_id=None)

        def reference_answer(k: int):  # the reference: transformers' generate on the language model
            return lambda: model.backbone.lm.generate(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=k, min_new_tokens=k,
                do_sample=False, use_cache=True, pad_token_id=processor.pad_id)

        k = args.answer_tokens
        with torch.no_grad():
            first = interleaved({"unimm": unimm_answer(1), "reference": reference_answer(1)}, args.repeats, device)
            full = interleaved({"unimm": unimm_answer(k), "reference": reference_answer(k)}, args.repeats, device)
        per = {name: (full[name] - first[name]) / (k - 1) for name in full}
        result["answer"] = {"prompt_tokens": int(batch["attention_mask"].shape[1]), "new_tokens": k,
                            **{f"{name}_first_token_s": t for name, t in first.items()},
                            **{f"{name}_per_token_ms": 1e3 * t for name, t in per.items()},
                            "per_token_speedup": per["reference"] / per["unimm"]}  # fmt: skip

    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


def print_table(result: dict) -> None:
    print("\n| measure | unimm | reference loop | transformers Janus | unimm / reference |")
    print("|---|---:|---:|---:|---:|")
    for row in result["vq"]:
        hf = row.get("transformers_janus_tokens_per_s")
        hf = f"{hf:.1f}" if hf else result["transformers_janus"].split(" (")[0]
        print(f"| VQ image tokens/s, {row['images']} image(s), guidance | {row['unimm_tokens_per_s']:.1f} | "
              f"{row['reference_tokens_per_s']:.1f} | {hf} | {row['speedup_vs_reference']:.2f}x |")
        if "unimm_compiled_tokens_per_s" in row:
            print(f"| ... with --compile | {row['unimm_compiled_tokens_per_s']:.1f} | | | |")
    if result["flow"]:
        f = result["flow"]
        print(f"| JanusFlow steps/s ({f['image_tokens']} tokens, {f['steps']} steps) | {f['unimm_steps_per_s']:.3f} | "
              f"{f['recompute_prompt_steps_per_s']:.3f} (prompt recomputed) | - | {f['speedup']:.2f}x |")
    if result["answer"]:
        a = result["answer"]
        print(f"| answer: first token, s ({a['prompt_tokens']}-token prompt) | {a['unimm_first_token_s']:.3f} | "
              f"{a['reference_first_token_s']:.3f} (generate) | - | "
              f"{a['reference_first_token_s'] / a['unimm_first_token_s']:.2f}x |")
        print(f"| answer: per token, ms | {a['unimm_per_token_ms']:.1f} | {a['reference_per_token_ms']:.1f} | - | "
              f"{a['per_token_speedup']:.2f}x |")
    for row in result["vq"]:
        print(f"memory, {row['images']} image(s): peak {mib(row['unimm_peak_mib'] and row['unimm_peak_mib'] * 2**20)}"
              f" MiB, rise while sampling {mib(row['unimm_peak_rise_mib'] and row['unimm_peak_rise_mib'] * 2**20)} "
              f"MiB; backbone weights {result['backbone_weights_mib']:.0f} MiB, KV cache {row['cache_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
