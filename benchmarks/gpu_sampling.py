"""Sampling on one GPU at Janus-Pro-1B size, measured against the weight-bandwidth bound.

Builds Janus-Pro-1B's architecture (``configs/janus_pro_1b.yaml``: a 24-layer Llama of width 2048, SigLIP-L, the
VQ-16 tokenizer and its image head) with random weights directly on the device, in bfloat16, and measures

* one 576-token image with classifier-free guidance (2 rows), with and without ``--compile`` (CUDA graphs), and
  the reference's growing-cache loop on the same weights;
* 16 images in parallel (32 rows);
* an answer to an image question (576 image tokens in the prompt): time to first token and per token.

Each decode step has to read every weight of the language model (and the image head) once, so a step cannot be
faster than ``weight bytes / memory bandwidth``; the script prints that bound (the bandwidth measured here with a
device-to-device copy) beside each figure. Goals (issue 13): one image within 2x of the bound, 16 images in under
3x the time of one.

    python benchmarks/gpu_sampling.py --compile --json gpu_sampling.json      # one GPU, a few minutes
    python benchmarks/gpu_sampling.py --tiny                                   # any machine: a tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from PIL import Image

import unimm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import PeakMemory, reference_vq_loop  # noqa: E402  (the reference loop, written once)

#: --tiny: the tiny Janus config at 16 image tokens, so the script's every path runs on a CPU in seconds.
TINY = ["model.generator.image_size=8", "model.und_encoder.image_size=32"]


def bandwidth(device: torch.device) -> float:
    """Device memory bandwidth in bytes/s from timing a copy of 1 GiB (each byte read once and written once)."""
    n = 2**30 if device.type == "cuda" else 2**26
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def nbytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny Janus config (runs anywhere, for checking)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 (float32 with --tiny)")
    parser.add_argument("--parallel", type=int, default=16, help="images sampled together")
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the compiled step (CUDA graphs)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference's growing-cache loop")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. model.backbone.num_hidden_layers=2 for a smaller check")
    parser.add_argument("--json", default="gpu_sampling.json")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    torch.manual_seed(0)
    # The released folders bring DeepSeek's tokenizer; random weights take the bundled one (its ids are all
    # within the 102,400-row embedding table, whose LM head the answers still pay for in full).
    config, overrides = ("janus_tiny", TINY) if args.tiny else ("janus_pro_1b", ["processor.tokenizer=tiny"])
    cfg = unimm.load_config(config, overrides + args.override)
    start = time.perf_counter()
    with torch.device(device):  # random weights made where they run: no host copy of 2 B parameters
        model = unimm.build_model(cfg)
    model = model.to(dtype).eval()
    processor = unimm.build_processor(cfg, model)
    built_s = time.perf_counter() - start

    path, backbone = model.generator, model.backbone
    step_bytes = nbytes(backbone.decoder) - nbytes(backbone.lm.get_input_embeddings()) + nbytes(path.head)
    answer_bytes = nbytes(backbone.decoder) - nbytes(backbone.lm.get_input_embeddings()) + nbytes(
        backbone.lm.get_output_embeddings())
    bw = bandwidth(device)
    n = path.num_image_tokens
    result = {"settings": vars(args), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "dtype": str(dtype), "build_s": built_s, "bandwidth_gb_s": bw / 1e9, "image_tokens": n,
              "step_weight_gb": step_bytes / 1e9, "image_bound_s": n * step_bytes / bw}  # fmt: skip
    print(f"{result['device']}: {config}, {dtype}, built in {built_s:.1f} s; memory bandwidth {bw / 1e9:.0f} GB/s; "
          f"{step_bytes / 1e9:.2f} GB of weights read per image step")

    def images(count: int, **options):
        ids, mask = processor.generation_prompts(["a red circle above a blue square"] * count)
        ids, mask = ids.to(device), mask.to(device)
        return lambda: model.sample_images(ids, mask, pad_id=processor.pad_id, guidance=5.0, temperature=1.0,
                                           seed=0, **options)  # fmt: skip

    with torch.no_grad():
        one = images(1)
        one()  # warm-up (kernels, allocator)
        with PeakMemory(device) as memory:
            result["one_image_s"] = timed(one, device, args.repeats)
        result["one_image_peak_gb"] = None if memory.peak is None else memory.peak / 1e9
        result["weights_gb"] = nbytes(model) / 1e9
        if args.compile:
            compiled = images(1, compile=True)
            start = time.perf_counter()
            compiled()
            result["compile_first_run_s"] = time.perf_counter() - start
            result["one_image_compiled_s"] = timed(compiled, device, args.repeats)
        if not args.no_reference:
            ids, _ = processor.generation_prompts(["a red circle above a blue square"])
            result["one_image_reference_s"] = timed(
                lambda: reference_vq_loop(model, ids.to(device), processor.pad_id, 5.0, 1.0), device, 1)
        many = images(args.parallel)
        many()
        result["parallel_images"] = args.parallel
        result["parallel_s"] = timed(many, device, args.repeats)

        image = Image.new("RGB", (64, 64), (200, 30, 30))
        batch = processor([{"role": "user", "content": "<image_placeholder>\nWhat colour is the picture?"},
                           {"role": "assistant", "content": ""}], [image])  # fmt: skip
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        k = args.answer_tokens
        first = timed(lambda: model.generate_text(batch, max_new_tokens=1, eos_id=None), device, args.repeats)
        full = timed(lambda: model.generate_text(batch, max_new_tokens=k, eos_id=None), device, args.repeats)
        result.update(answer_prompt_tokens=int(batch["attention_mask"].shape[1]), answer_first_token_s=first,
                      answer_per_token_ms=1e3 * (full - first) / max(k - 1, 1),
                      answer_token_bound_ms=1e3 * answer_bytes / bw)  # fmt: skip

    best_one = min(result["one_image_s"], result.get("one_image_compiled_s", math.inf))
    print(f"one image ({n} tokens, guidance): {result['one_image_s']:.2f} s"
          + (f", compiled {result['one_image_compiled_s']:.2f} s (first run {result['compile_first_run_s']:.0f} s)"
             if args.compile else "")
          + (f", reference loop {result['one_image_reference_s']:.2f} s" if not args.no_reference else "")
          + f"; weight-bandwidth bound {result['image_bound_s']:.2f} s -> {best_one / result['image_bound_s']:.1f}x "
          "the bound (goal: within 2x)")
    print(f"{args.parallel} images: {result['parallel_s']:.2f} s = {result['parallel_s'] / result['one_image_s']:.2f}x "
          "one image (goal: under 3x)")
    print(f"answer ({result['answer_prompt_tokens']}-token prompt): first token {first:.3f} s, "
          f"{result['answer_per_token_ms']:.1f} ms per token (bound {result['answer_token_bound_ms']:.2f} ms)")
    if result["one_image_peak_gb"] is not None:
        print(f"peak memory sampling one image {result['one_image_peak_gb']:.2f} GB; all weights "
              f"{result['weights_gb']:.2f} GB")
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
