"""How much the prompt KV cache speeds up JanusFlow sampling.

The released JanusFlow demo runs the whole prompt through the language model at every ODE step (its cache list is
empty). ``RectifiedFlowPath.sample`` runs the prompt once and reuses its KV cache. This script builds a small random
model, samples with and without the cache from the same noise, checks the outputs agree and prints the speed-up.

    python benchmarks/flow_prompt_cache.py --prompt-length 512 --steps 10 --layers 4 --width 256
"""

from __future__ import annotations

import argparse
import time

import torch

from unimm.backbones.causal_lm import llama
from unimm.generation import flow_path  # noqa: F401  (registers rectified_flow)
from unimm.registry import GENERATORS


def build(args: argparse.Namespace):
    torch.manual_seed(0)
    backbone = llama(
        hidden_size=args.width, intermediate_size=args.width * 11 // 4, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, vocab_size=1000,
        max_position_embeddings=args.prompt_length + 4096,
    )  # fmt: skip
    gen_width = max(args.width // 2, 32)
    path = GENERATORS.build({
        "type": "rectified_flow",
        "autoencoder": {"type": "autoencoder_kl", "config": {"block_out_channels": [32, 32], "layers_per_block": 1}},
        "encoder": {"input_channels": 4, "stride": 2, "kernel_size": 2, "block_out_channels": [gen_width]},
        "decoder": {"in_channels": gen_width, "out_channels": 4, "block_out_channels": [gen_width], "upsamples": 1},
        "image_size": args.image_size,
    }, where="model.generator", inferred={"hidden_size": args.width})
    device = torch.device(args.device)
    return backbone.to(device).eval(), path.to(device).eval()


def timed(fns: dict, repeats: int, device: torch.device) -> dict:
    """Best wall time and last output of each function; runs are interleaved so that load from other processes
    on a shared machine hits both alike."""
    results = {name: [float("inf"), None] for name in fns}
    for name, fn in fns.items():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[name] = [min(results[name][0], time.perf_counter() - start), out]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64, help="pixels; the tiny VAE downsamples 2x, U-ViT 2x")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    backbone, path = build(args)
    device = torch.device(args.device)
    ids = torch.randint(3, 1000, (args.batch, args.prompt_length), device=device)
    mask = torch.ones_like(ids)
    gen = torch.Generator(device=device).manual_seed(0)
    noise = torch.randn(args.batch, 4, path.latent_size, path.latent_size, generator=gen, device=device)

    def run(cache: bool):
        return lambda: path.sample(
            backbone, ids, mask, pad_id=2, num_steps=args.steps, noise=noise, use_prompt_cache=cache
        ).images

    results = timed({"cache": run(True), "fresh": run(False)}, args.repeats, device)
    (cached_s, cached), (fresh_s, fresh) = results["cache"], results["fresh"]
    diff = (cached - fresh).abs().max().item()
    print(
        f"device={device} prompt={args.prompt_length} image_tokens={path.num_image_tokens} steps={args.steps} "
        f"layers={args.layers} width={args.width} batch={args.batch} (x2 for guidance)"
    )
    print(f"recompute prompt every step: {fresh_s:.3f} s")
    print(f"prompt KV cache:             {cached_s:.3f} s")
    n, length = path.num_image_tokens, args.prompt_length
    work_fresh, work_cached = args.steps * (length + n), (length - 1) + args.steps * (1 + n)
    print(f"LLM token positions per row: {work_fresh} recomputing vs {work_cached} cached "
          f"({work_fresh / work_cached:.2f}x fewer)")
    print(f"speed-up: {fresh_s / cached_s:.2f}x   max |difference| of the images: {diff:.2e}")
    torch.testing.assert_close(cached, fresh, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    main()
