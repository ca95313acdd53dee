"""Training-step time, throughput and peak memory under full training, LoRA, gradient checkpointing and bf16, and
the estimated memory of a Janus-Pro-1B / -7B step under each.

**Measured** (random weights; ``janus_tiny`` and ``medium``, janus_tiny with a 768-wide, 4-layer Llama and 24x24
image tokens): one optimiser step = forward + backward + AdamW on one generation micro-batch
(``generation_loss``: prompt + image tokens; the VQ encoder frozen), ``--batch`` images. Each (model, mode, round)
runs in a fresh process, interleaved over ``--repeats`` rounds so that load from other processes hits every mode
alike; each process builds the model, runs 1 untimed step, then ``--steps`` timed ones (on one CPU thread: on
shared cores more threads made the times scatter tenfold), and reports its step times and its peak resident memory
(``ru_maxrss``, i.e. ``VmHWM``; on a GPU also ``torch.cuda.max_memory_allocated``). The table gives the median of
all steps of all rounds (and the fastest), tokens/s (prompt + image tokens per second) at the median, and the median
peak memory. Modes:

* ``full``: ``und_aligner``, ``backbone`` and ``generator`` train (the autoencoder stays frozen), float32;
* ``lora``: peft adapters (r=16) on the backbone's q/k/v/o and every Linear of the image head, nothing else trains;
* ``gc``: ``full`` with the backbone's gradient checkpointing;
* ``bf16``: ``full`` under ``torch.autocast(bfloat16)`` (float32 weights and optimiser, as accelerate's bf16);
* ``lora+gc+bf16``: the small-GPU recipe: the base cast to bfloat16, float32 adapters, checkpointing, autocast.

**Estimated** for the released sizes (parameter counts from the configs built on the meta device)::

    weights     = P * w              (w = 4 bytes float32, 2 bytes for a bfloat16 base)
    gradients   = T * 4               T = trainable parameters (float32)
    optimiser   = T * 8               AdamW's two float32 moments
    activations = b * s * L * (10 h + 4 i) * a      saved per decoder layer and token (a = bytes per activation)
                  (gc: b * s * L * h * a + one layer's b * s * (10 h + 4 i) * a, recomputed in the backward pass)
                + b * s * V * 4 * 2                 float32 logits and their gradient (V: text vocabulary)

with ``b`` the batch, ``s`` the sequence length (``--seq``), ``L`` layers, ``h`` width, ``i`` MLP width. Per
layer and token a Llama layer keeps its two norms' inputs and outputs (4h), q, k, v and the rotated q, k (5h), the
attention output (h, SDPA keeps no attention matrix) and the MLP's gate, up, SiLU and product (4i). Frozen
encoders keep nothing (their inputs need no gradient); CUDA context and allocator slack (~1-2 GB) come on top.

    python benchmarks/train_step.py --repeats 3 --steps 5        # about 4 minutes on 2 CPU cores

**Profile** (``--profile``): where the time of a real training step goes, for the shapes benchmark's Janus
(``configs/shapes/janus.yaml`` with ``configs/recipes/shapes.yaml``, the ViT frozen as in ``unimm reproduce``):
the Trainer runs ``--steps`` steps on a freshly exported split (varied, plain targets) under cProfile, and the
table gives each part's share of the training thread's time (the data column is the time spent *waiting* for the
next batch, which is built in a background thread)::

    python benchmarks/train_step.py --profile --steps 60         # about a minute (--bf16: under bf16 autocast)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "lora", "gc", "bf16", "lora+gc+bf16")
MODELS = {
    "janus_tiny": [],
    "medium": ["model.backbone.hidden_size=768", "model.backbone.intermediate_size=2048",
               "model.backbone.num_hidden_layers=4", "model.backbone.num_attention_heads=12",
               "model.backbone.num_key_value_heads=12", "model.backbone.head_dim=64", "model.generator.image_size=48",
               "model.backbone.max_position_embeddings=1024"],
}
LORA = {"parts": ["backbone", "generator.head"], "r": 16, "alpha": 32}
FULL = {"name": "full", "trainable": ["und_aligner", "backbone", "generator"]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model_name: str, mode: str, batch: int, steps: int, device: str) -> dict:
    """One (model, mode): build, 1 warm-up step, ``steps`` timed ones (run in a process of its own)."""
    import torch

    import unimm
    from unimm.config import load_config
    from unimm.train import apply_stage
    from unimm.train.lora import add_adapters, apply_lora_stage

    torch.manual_seed(0)
    if device == "cpu":  # one thread: on shared cores, more spin-wait on each other and the times scatter tenfold
        torch.set_num_threads(1)
    cfg = load_config("janus_tiny", MODELS[model_name])
    model = unimm.build_model(cfg)
    if "bf16" in mode and "lora" in mode:
        model.to(torch.bfloat16)  # the base in bfloat16; the adapters below stay float32
        model.generator.autoencoder.float()
    if "lora" in mode:
        add_adapters(model, LORA)  # float32 adapters, also on a bfloat16 base
        apply_lora_stage(model, {"trainable": []})
    else:
        apply_stage(model, FULL)
    model.backbone.set_grad_checkpointing("gc" in mode)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    size = model.generator.image_size
    prompt = torch.randint(0, 400, (batch, 16), device=device)
    mask = torch.ones_like(prompt)
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    tokens = batch * (prompt.shape[1] + model.generator.num_image_tokens)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled="bf16" in mode)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(1 + steps):
        start = time.perf_counter()
        with autocast:
            loss = model.generation_loss(prompt, mask, images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= 1:
            times.append(time.perf_counter() - start)
    out = {"model": model_name, "mode": mode, "step_s": times, "tokens": tokens, "peak_rss_mb": peak_rss_mb(),
           "trainable": sum(p.numel() for p in params), "params": sum(p.numel() for p in model.parameters()),
           "loss": float(loss.detach())}
    if device.startswith("cuda"):
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# -- estimates ------------------------------------------------------------------------------------------------
def estimate(config: str, batch: int, seq: int, r: int = 16) -> list[dict]:
    """Estimated GB of one step of a released size under each mode (the module docstring's formula)."""
    import torch

    from unimm.build import build_model
    from unimm.config import load_config

    cfg = load_config(config)
    with torch.device("meta"):
        model = build_model(cfg)
    lm = model.backbone.lm.config
    h, i, layers, vocab = lm.hidden_size, lm.intermediate_size, lm.num_hidden_layers, lm.vocab_size
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("und_encoder.", "generator.auto")))
    full = total - frozen
    lora = sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and (n.startswith("generator.head.") or n.rsplit(".", 1)[-1] in
                                                      ("q_proj", "k_proj", "v_proj", "o_proj")))
    per_layer = batch * seq * (10 * h + 4 * i)  # activations per layer (elements)
    logits = batch * seq * vocab * 4 * 2
    rows = []
    for mode, w, trainable, a, gc in (("full", 4, full, 4, False), ("lora", 4, lora, 4, False),
                                      ("gc", 4, full, 4, True), ("bf16", 4, full, 2, False),
                                      ("lora+gc+bf16", 2, lora, 2, True)):
        acts = (batch * seq * layers * h + per_layer) * a if gc else per_layer * layers * a
        parts = {"weights": total * w, "gradients": trainable * 4, "optimiser": trainable * 8,
                 "activations": acts + logits}
        rows.append({"config": config, "mode": mode, "params": total, "trainable": trainable,
                     **{k: v / 1e9 for k, v in parts.items()}, "total_gb": sum(parts.values()) / 1e9})
    return rows


# -- profile ----------------------------------------------------------------------------------------------------
PROFILED = {  # part -> the function whose cumulative time it is (file suffix, function name)
    "waiting for data": ("unimm/data/prefetch.py", "next_batch"),
    "forward, understanding": ("unimm/model.py", "understanding_loss"),
    "  of which the frozen ViT": ("unimm/model.py", "encode_images"),
    "forward, generation": ("unimm/model.py", "generation_loss"),
    "  of which the frozen VQ tokenizer": ("unimm/generation/autoencoder.py", "tokenize"),
    "  LLM forward (both tasks)": ("unimm/backbones/causal_lm.py", "forward"),
    "backward": ("torch/autograd/__init__.py", "backward"),
    "gradient clipping": ("accelerate/accelerator.py", "clip_grad_norm_"),
    "AdamW": ("torch/optim/adam.py", "step"),  # torch.optim.AdamW is an Adam
}


def profile_shapes(steps: int, threads: int, bf16: bool = False) -> None:
    """cProfile of ``steps`` training steps of the shapes Janus (see the module docstring)."""
    import cProfile
    import pstats
    import tempfile

    import torch

    from unimm.bench.export import export_split
    from unimm.bench.shapes import ShapesConfig
    from unimm.config import load_config
    from unimm.train import Trainer

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = export_split(Path(tmp) / "train", "train", 512, seed=0,
                            config=ShapesConfig(variations=True, plain_targets=True))  # as the reproduction
        cfg = load_config("shapes/janus", [
            "train=@recipes/shapes", f"train.output_dir={tmp}/run", f"train.stages.0.steps={steps}",
            "train.stages.0.trainable=[und_aligner,backbone,generator]", "train.log_every=1000000",
            f"train.mixed_precision={'bf16' if bf16 else 'no'}",
            f"train.data.sources.und.jsonl={data / 'und.jsonl'}", f"train.data.sources.t2i.jsonl={data / 't2i.jsonl'}"])
        trainer = Trainer(cfg)
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        trainer.run_stage(0, trainer.settings["stages"][0])
        profiler.disable()
        total = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    print(f"shapes Janus (batch {cfg.train.batch_size}, und : t2i = 1 : 1, {'bf16 autocast' if bf16 else 'float32'}), "
          f"{steps} steps, {threads} torch thread(s): {total / steps * 1000:.0f} ms a step")
    print("| part | share of the step |")
    print("|---|---:|")
    for part, (suffix, name) in PROFILED.items():
        seconds = max((v[3] for (file, _, func), v in stats.items() if file.endswith(suffix) and func == name),
                      default=0.0)
        print(f"| {part} | {100 * seconds / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--seq", type=int, default=1024, help="sequence length of the estimates (576 image tokens "
                        "+ prompt for generation at 384 px)")
    parser.add_argument("--estimate-batch", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile the shapes Janus's training step instead")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of --profile (default: 1)")
    parser.add_argument("--bf16", action="store_true", help="--profile under bfloat16 autocast")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile:
        profile_shapes(args.steps, args.threads, args.bf16)
        return
    if args.child:
        print(json.dumps(measure(*args.child, args.batch, args.steps, args.device)))
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.repeats):
        for name in args.models:
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--child", name, mode, "--batch", str(args.batch), "--steps",
                       str(args.steps), "--device", args.device]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                results.setdefault((name, mode), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    gpu = args.device.startswith("cuda")
    print(f"measured on {args.device}, batch {args.batch}, {args.repeats} rounds x {args.steps} steps: the median "
          "step (the fastest), tokens/s at the median, the median peak RSS")
    print("| model | mode | params | trainable | step s | tokens/s | peak RSS MB |" + (" CUDA max MB |" if gpu else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for (name, mode), runs in results.items():
        times = [t for r in runs for t in r["step_s"]]  # every timed step of every round
        step, fastest = statistics.median(times), min(times)
        row = (f"| {name} | {mode} | {runs[0]['params'] / 1e6:.2f}M | {runs[0]['trainable'] / 1e6:.2f}M | "
               f"{step:.3f} ({fastest:.3f}) | {runs[0]['tokens'] / step:.0f} | "
               f"{statistics.median(r['peak_rss_mb'] for r in runs):.0f} |")
        print(row + (f" {statistics.median(r['cuda_max_allocated_mb'] for r in runs):.0f} |" if gpu else ""))
    print(f"\nestimated GB of one step, batch {args.estimate_batch}, sequence {args.seq} (module docstring: "
          "weights = P*w, gradients = T*4, optimiser = T*8, activations = b*s*L*(10h+4i)*a [gc: b*s*L*h*a + one "
          "layer] + b*s*V*8)")
    print("| model | mode | P | T | weights | gradients | optimiser | activations | total |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in ("janus_pro_1b", "janus_pro_7b"):
        for row in estimate(config, args.estimate_batch, args.seq):
            print(f"| {config} | {row['mode']} | {row['params'] / 1e9:.2f}B | {row['trainable'] / 1e6:.1f}M | "
                  f"{row['weights']:.1f} | {row['gradients']:.2f} | {row['optimiser']:.2f} | "
                  f"{row['activations']:.2f} | {row['total_gb']:.1f} |")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
