"""The ``unimm`` command.

    unimm list                                   every registered part, by kind
    unimm config show CONFIG [key=value ...]     the resolved config and the model it builds
    unimm understand [--model M] --image F --question Q
    unimm understand [--model M] --batch QUESTIONS.jsonl --out ANSWERS.jsonl
    unimm chat [--model M]                       a conversation on standard input (/image PATH, /reset, /quit)
    unimm generate [--model M] --prompt P [--num-images K] [--out DIR]
    unimm serve [--model M] [--host H] [--port P] [--max-batch N]   a JSON API (README "Serve an API")
    unimm convert SRC DST [--to unimm|hf]        a model folder -> unimm's format, or transformers' Janus layout
    unimm train --config CONFIG [key=value ...]  (see docs/training.md; `accelerate launch -m unimm.cli train ...`)
    unimm bench export ...                       write the synthetic shapes benchmark to disk
    unimm bench evaluate [--model M] DATA        score a model on an exported split
    unimm reproduce [--out DIR] ...              Janus vs JanusFlow on the shapes benchmark (docs/reproduce.md)
    unimm eval geneval --prompts F --out DIR     GenEval's sample folders (evaluation_metadata.jsonl)
    unimm demo [--model M] [--host H] [--port P] a Gradio page: chat about images, generate (unimm.serving.demo)
    unimm merge-lora SRC DST                     a LoRA fine-tune's adapters folded into a plain model folder

``--import MODULE`` (repeatable) on the commands that build or load a model imports a module of yours first, so
the parts it registers can be named in a config (:mod:`unimm.registry.plugins`).

``--device`` / ``--dtype`` on the commands that run a model (understand, chat, generate, serve, demo, bench
evaluate, eval geneval) say where and in what precision (:mod:`unimm.devices`; default ``auto``).

``--model`` is a model folder (released Janus / Janus-Pro / JanusFlow layout, transformers' Janus layout, or one
saved by unimm); without it
the small shapes model shipped in the package is used (:data:`unimm.pretrained.DEFAULT_MODEL`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .devices import device_args
from .registry import UnimmError
from .registry.plugins import import_modules, record_imports


def _load(model: str | None, overrides: list[str], args: argparse.Namespace):
    """The model folder (default: the shipped model) on the command's ``--device`` / ``--dtype``; a command without
    them (``convert``) loads on the CPU in float32, so what it writes does not depend on the machine."""
    from .pretrained import DEFAULT_MODEL, load_pretrained

    placement = _placement(args) if hasattr(args, "device") else {"device": "cpu", "dtype": "float32"}
    return load_pretrained(model or DEFAULT_MODEL, overrides=overrides, **placement)


def _placement(args: argparse.Namespace) -> dict:
    """``--device`` / ``--dtype`` (added by :func:`unimm.devices.device_args`) resolved, so a bad value names the
    flag; call it before loading anything."""
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(args.device, option="--device")
    return {"device": device, "dtype": resolve_dtype(args.dtype, device, option="--dtype")}


#: Sampling flags of ``generate`` / ``bench evaluate`` -> the generation path's option names.
SAMPLE_FLAGS = {"--guidance": "guidance", "--temperature": "temperature", "--top-k": "top_k", "--top-p": "top_p",
                "--steps": "num_steps"}
SAMPLE_FLAGS["--compile"] = "compile"  # VQ models: compile the one-token decode step (unimm.generation.decode)


def _sample_options(model, cfg, args: argparse.Namespace) -> dict:
    """The model config's ``sample`` defaults, then the flags given, each checked against the generation path's
    declared options (a flag the path does not take fails naming the flags it has)."""
    from .registry import InputError

    path = model.generator
    given = {flag: getattr(args, name) for flag, name in SAMPLE_FLAGS.items() if getattr(args, name) is not None}
    if path is None:
        if given:
            raise InputError(f"{', '.join(given)}: this model has no generation path, so it takes no sampling options")
        return {}
    options = path.configured_sample_options(cfg.get("sample"))
    accepted = [flag for flag, name in SAMPLE_FLAGS.items() if name in path.sample_options]
    for flag, value in given.items():
        name = SAMPLE_FLAGS[flag]
        if name not in path.sample_options:
            raise InputError(f"{flag}: the {type(path).__name__} does not take this option; its flags: "
                             f"{', '.join(accepted)}")
        options[name] = path.sample_options[name].check(flag, value, where="")
    return options


def cmd_list(args: argparse.Namespace) -> None:
    from .registry import ALL_REGISTRIES

    for kind, registry in ALL_REGISTRIES.items():
        registry.load_all()  # the descriptions are the parts' docstrings
        print(f"{kind} ({registry.kind}):")
        for name in registry.names():
            print(f"  {name:<34} {registry.describe(name)}")


def cmd_config_show(args: argparse.Namespace) -> None:
    import torch

    from .build import build_model, count_parameters
    from .config import load_config, to_yaml

    cfg = load_config(args.config, args.overrides)
    record_imports(cfg, args.imports)
    print(to_yaml(cfg), end="")
    if not args.no_build:
        with torch.device("meta"):
            model = build_model(cfg)
        print("# built:")
        for slot in ("und_encoder", "und_aligner", "backbone", "generator"):
            part = getattr(model, slot)
            if part is not None:
                print(f"#   {slot:<12} {type(part).__name__:<24} {count_parameters(part) / 1e6:10.3f} M parameters")
        print(f"#   total {count_parameters(model) / 1e9:.4f} B parameters")


def _size_overrides(args: argparse.Namespace, slot: str) -> list[str]:
    """``--image-size N`` as the override of ``slot``'s image size (``model.generator`` / ``model.und_encoder``)."""
    return [f"{slot}.image_size={args.image_size}"] if args.image_size is not None else []


def cmd_understand(args: argparse.Namespace) -> None:
    from .answers import question_conversation
    from .encoders.transforms import load_image

    check_args(args)
    if _understand_mode(args) == "batch":
        return cmd_understand_batch(args)
    image = load_image(args.image)  # a missing or unreadable file fails before the model is loaded
    model, processor, _ = _load(args.model, args.overrides + _size_overrides(args, "model.und_encoder"), args)
    batch = processor(question_conversation(args.question), [image])
    tokens = model.generate_text(
        batch, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, eos_id=processor.eos_id, pad_id=processor.pad_id,
    )
    print(processor.decode(tokens[0]).strip())


# -- understand --batch ------------------------------------------------------------------------------------------
def _understand_mode(args: argparse.Namespace) -> str:
    """``"one"`` (--image and --question) or ``"batch"`` (--batch with --out); any other mix is one-line error."""
    from .registry import InputError

    single = [flag for flag, value in (("--image", args.image), ("--question", args.question)) if value is not None]
    if args.batch is not None:
        if single:
            raise InputError(f"{' and '.join(single)} and --batch: give either --image and --question (one question) "
                             "or --batch FILE (a file of them), not both")
        if args.answers_out is None:
            raise InputError("--batch needs --out ANSWERS.jsonl: where to write the answers")
        if not Path(args.batch).is_file():
            raise InputError(f"--batch {args.batch}: no such file; give a JSON-lines file of "
                             "{\"image\": PATH, \"question\": TEXT}")
        if Path(args.answers_out).is_dir():
            raise InputError(f"--out {args.answers_out}: is a folder; give a file name, e.g. "
                             f"{Path(args.answers_out) / 'answers.jsonl'}")
        return "batch"
    if len(single) < 2:
        raise InputError("give --image FILE and --question TEXT, or --batch QUESTIONS.jsonl --out ANSWERS.jsonl")
    if args.answers_out is not None or args.batch_size is not None:
        raise InputError("--out and --batch-size go with --batch; one question's answer is printed")
    return "one"


def cmd_understand_batch(args: argparse.Namespace) -> None:
    from .answers import answer_file

    model, processor, _ = _load(args.model, args.overrides + _size_overrides(args, "model.und_encoder"), args)
    answered, skipped = answer_file(
        model, processor, args.batch, args.answers_out, batch_size=args.batch_size or 8,
        progress=args.progress or sys.stderr.isatty(), max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
    )
    print(f"{args.answers_out}: {answered} answer(s)" + (f", {skipped} bad line(s) skipped" if skipped else ""),
          file=sys.stderr)


# -- chat ------------------------------------------------------------------------------------------------------
def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import Chat

    check_args(args)
    model, processor, _ = _load(args.model, args.overrides, args)
    chat = Chat(model, processor, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    interactive = sys.stdin.isatty()
    if interactive:
        print("unimm chat: type a message; /image PATH attaches an image, /reset clears, /quit ends",
              file=sys.stderr)
    chat.run(sys.stdin, prompt="> " if interactive else "")


# -- serve -----------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> None:
    from .serving.api import check_serve_args, run_server

    check_serve_args(args)  # the flags and the port, before the model is loaded
    model, processor, cfg = _load(args.model, args.overrides, args)
    run_server(model, processor, cfg, args)


# -- eval ------------------------------------------------------------------------------------------------------
def cmd_eval_geneval(args: argparse.Namespace) -> None:
    from . import __version__
    from .eval.geneval import N_SAMPLES, read_prompts, sample_geneval, sampling_options
    from .pretrained import DEFAULT_MODEL

    check_args(args)
    prompts = read_prompts(args.prompts)  # every line checked before the model is loaded
    model, processor, cfg = _load(args.model, args.overrides + _size_overrides(args, "model.generator"), args)
    merged = _sample_options(model, cfg, args)  # the config's sample: defaults and the flags, checked
    given = {SAMPLE_FLAGS[flag] for flag in SAMPLE_FLAGS if getattr(args, SAMPLE_FLAGS[flag]) is not None}
    options = sampling_options(model, {k: v for k, v in merged.items() if k in given},
                               {k: v for k, v in merged.items() if k not in given})
    n_samples = args.n_samples or N_SAMPLES
    settings = {
        "benchmark": "geneval", "prompts": str(Path(args.prompts).resolve()), "num_prompts": len(prompts),
        "model": str(Path(args.model or DEFAULT_MODEL).resolve()), "overrides": list(args.overrides),
        "generator": type(model.generator).__name__, "image_size": model.generator.image_size,
        "num_image_tokens": model.generator.num_image_tokens, "n_samples": n_samples,
        "batch_size": min(args.batch_size or n_samples, n_samples), "seed": args.seed, "sample_options": options,
        "device": str(next(model.parameters()).device), "dtype": str(next(model.backbone.parameters()).dtype),
        "unimm_version": __version__,
    }
    done, skipped = sample_geneval(model, processor, prompts, args.out, settings=settings, options=options,
                                   n_samples=n_samples, batch_size=args.batch_size, seed=args.seed,
                                   skip_existing=args.skip_existing, grid=not args.no_grid,
                                   progress=args.progress or sys.stderr.isatty())
    print(f"{args.out}: {done} prompt(s) sampled" + (f", {skipped} already done" if skipped else ""))


def cmd_generate(args: argparse.Namespace) -> None:
    from .images import save_grid, save_images

    check_args(args)
    model, processor, cfg = _load(args.model, args.overrides + _size_overrides(args, "model.generator"), args)
    options = _sample_options(model, cfg, args)
    captions = [prompt for prompt in args.prompt for _ in range(args.num_images)]
    prompt_ids, prompt_mask = processor.generation_prompts(captions)
    images = model.generate_images(prompt_ids, prompt_mask, pad_id=processor.pad_id, seed=args.seed,
                                   progress=args.progress, **options)
    for path in save_images(images, args.out, prefix=args.prefix):
        print(path)
    if args.grid:
        print(save_grid(images, args.grid, nrow=args.num_images, scale=args.grid_scale))


# -- demo ------------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> None:
    from .serving.demo import Loaded, check_address, launch

    check_args(args)
    check_address(args.host, args.port)  # a bad or busy address fails before the model is loaded
    model, processor, cfg = _load(args.model, args.overrides, args)
    print(f"unimm demo: http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    launch(Loaded(model, processor, cfg), host=args.host, port=args.port, seed=args.seed)


def cmd_convert(args: argparse.Namespace) -> None:
    from .pretrained import save_pretrained, without_run

    model, processor, cfg = _load(args.src, args.overrides, args)
    if args.to == "hf":  # transformers' JanusForConditionalGeneration layout (unimm.checkpoint.hf_janus)
        from .checkpoint.hf_janus import save_hf

        print(save_hf(model, processor, args.dst))
        return
    record_imports(cfg, args.imports)  # the converted folder imports them again when loaded
    print(save_pretrained(model, processor, without_run(cfg), args.dst))


def cmd_merge_lora(args: argparse.Namespace) -> None:
    """A LoRA folder (adapters + base path, from a ``train.lora`` run) -> a plain unimm model folder."""
    from .pretrained import save_pretrained, without_run
    from .registry import InputError
    from .train.lora import ADAPTER_CONFIG, merge_adapters

    if not (Path(args.src) / ADAPTER_CONFIG).is_file():
        raise InputError(f"{args.src} is not a LoRA folder (no {ADAPTER_CONFIG}); give the final/ folder of a run "
                         "with train.lora")
    model, processor, cfg = _load(args.src, [], args)
    print(save_pretrained(merge_adapters(model), processor, without_run(cfg), args.dst))


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import end_process_group, train_main

    overrides = list(args.overrides) + (["train.resume=latest"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    record_imports(cfg, args.imports)  # the trained model imports them again when loaded
    try:
        train_main(cfg)
    except KeyboardInterrupt as stop:  # Ctrl-C: one line that says how to go on, and exit 2
        if getattr(stop, "main_process", os.environ.get("RANK", "0") == "0"):  # one line from several processes
            print(_interrupted_training(stop, cfg, args), file=sys.stderr)
        return 2
    end_process_group()
    return 0


def _interrupted_training(stop: KeyboardInterrupt, cfg, args: argparse.Namespace) -> str:
    """The line for a Ctrl-C in ``unimm train``: the checkpoint of the step in flight (the trainer's
    :class:`~unimm.train.interrupt.TrainingInterrupted`) or, for one before the first step or a second Ctrl-C,
    the newest checkpoint there is; then the command that resumes."""
    from .train.checkpointing import latest_checkpoint
    from .train.interrupt import TrainingInterrupted
    from .train.trainer import TRAIN_DEFAULTS

    if isinstance(stop, TrainingInterrupted):
        what = f"interrupted after step {stop.global_step}; saved {stop.checkpoint}"
    else:
        output_dir = (cfg.get("train") or {}).get("output_dir") or TRAIN_DEFAULTS["output_dir"]
        latest = latest_checkpoint(Path(output_dir) / "checkpoints")
        saved = f"the newest checkpoint is {latest}" if latest else "no checkpoint was written"
        what = f"interrupted before the step in flight was saved; {saved}"
    return f"unimm: {what}; resume with: {_resume_command(args)}"


def _resume_command(args: argparse.Namespace) -> str:
    """The ``unimm train`` command line that continues the run ``args`` started (same config, overrides, imports)."""
    import shlex

    imports = [part for module in args.imports for part in ("--import", module)]
    return shlex.join(["unimm", "train", "--config", args.config, *args.overrides, *imports, "--resume"])


def cmd_bench_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .bench.evaluate import evaluate_model, format_summary, write_summary

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor, cfg = _load(args.model, args.overrides, args)
    tasks = [t for t in ("generation", "understanding") if getattr(args, t)] or ["generation", "understanding"]
    if model.generator is None and "generation" in tasks:
        tasks.remove("generation")
    result = evaluate_model(model, processor, args.data, tasks=tasks, max_prompts=args.max_prompts,
                            max_questions=args.max_questions, seed=args.seed, **_sample_options(model, cfg, args))
    print(format_summary(result))
    if args.json:
        write_summary(result, args.json)


#: Numeric options and the least value each accepts (``None`` on the command line means "not given").
_AT_LEAST = {"num_images": 1, "max_new_tokens": 1, "grid_scale": 1, "max_prompts": 1, "max_questions": 1,
             "threads": 1, "seed": 0, "batch_size": 1, "n_samples": 1}
#: Text sampling (``understand``); image sampling flags are checked against the generation path's declared options.
_TEXT_AT_LEAST = {"top_k": 1, "temperature": 0}
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed (negatives wrap around)


def check_args(args: argparse.Namespace) -> None:
    """Check a command's options before any model is loaded: ranges, and the files it will read or write.

    Raises:
        InputError: naming the option (``--num-images``) and what it accepts.
    """
    from .registry import InputError

    text_sampling = args.command in ("understand", "chat")
    for name, least in {**_AT_LEAST, **(_TEXT_AT_LEAST if text_sampling else {})}.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            raise InputError(f"--{name.replace('_', '-')} = {value}: must be at least {least}")
    if getattr(args, "seed", None) is not None and args.seed > _MAX_SEED:
        raise InputError(f"--seed = {args.seed}: must be at most 2**64 - 1 = {_MAX_SEED}")
    top_p = getattr(args, "top_p", None) if text_sampling else None
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"--top-p = {top_p}: must be in (0, 1] (the share of probability mass to sample from)")
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: is a file, not a folder; give a folder for the images (it is created)")
    grid = getattr(args, "grid", None)
    if grid is not None:
        _check_image_file_name(Path(grid), "--grid")
    if hasattr(args, "device"):
        _placement(args)


def _check_image_file_name(path: Path, option: str) -> None:
    """``path`` can be written as an image: not a folder, an image extension PIL knows (its folder is created)."""
    from PIL import Image

    from .registry import InputError

    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'grid.png'}")
    if path.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"{option} {path}: unknown image extension {path.suffix!r}; use .png or .jpg")
    if path.parent.exists() and not path.parent.is_dir():
        raise InputError(f"{option} {path}: {path.parent} is a file, not a folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def import_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                       help="import this module of yours first, so the parts it registers can be used "
                       "(repeatable; the current folder is importable)")

    listing = sub.add_parser("list", help="list every registered part")
    import_args(listing)
    listing.set_defaults(func=cmd_list)

    config = sub.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved config and what it builds")
    show.add_argument("config", help="a YAML path or a shipped config name (janus_pro_1b, janus_tiny, ...)")
    show.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.generator.type=rectified_flow")
    show.add_argument("--no-build", action="store_true", help="only print the config")
    import_args(show)
    show.set_defaults(func=cmd_config_show)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="model folder (released Janus layout or unimm's); default: the shipped "
                       "shapes model (unimm/assets/models/shapes-janus)")
        p.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="config override applied before building (repeatable)")
        p.add_argument("--seed", type=int, default=0)
        device_args(p)
        import_args(p)

    def sample_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--guidance", type=float, help="classifier-free guidance weight (default: the model's)")
        p.add_argument("--temperature", type=float, help="VQ models: sampling temperature (0 = argmax)")
        p.add_argument("--top-k", type=int, help="VQ models: sample among the k most likely codes")
        p.add_argument("--top-p", type=float, help="VQ models: sample within the top-p probability mass")
        p.add_argument("--steps", dest="num_steps", type=int, help="flow models: number of Euler steps")
        p.add_argument("--compile", action="store_const", const=True, help="VQ models: compile the one-token "
                       "decode step (torch.compile, CUDA graphs on CUDA; off by default: no gain measured on CPU)")

    und = sub.add_parser("understand", help="answer a question about an image")
    model_args(und)
    und.add_argument("--image", help="the image to ask about")
    und.add_argument("--question", help="the question")
    und.add_argument("--batch", metavar="QUESTIONS.jsonl", help='answer a file of {"image": PATH or [PATHS], '
                     '"question": TEXT} lines (paths relative to its folder) instead of --image/--question')
    und.add_argument("--out", dest="answers_out", metavar="ANSWERS.jsonl", help="with --batch: write the answers "
                     'here as {"image", "question", "answer"} lines, in input order')
    und.add_argument("--batch-size", type=int, help="with --batch: questions answered together (default 8)")
    und.add_argument("--progress", action="store_true", help="with --batch: show a progress bar even when stderr "
                     "is not a terminal")
    und.add_argument("--max-new-tokens", type=int, default=256)
    und.add_argument("--image-size", type=int, help="the understanding encoder's input size (default: the model's; "
                     "position embeddings are resampled)")
    und.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    und.add_argument("--top-k", type=int)
    und.add_argument("--top-p", type=float)
    und.set_defaults(func=cmd_understand)

    chat = sub.add_parser("chat", help="a conversation on standard input (/image PATH, /reset, /quit)")
    model_args(chat)
    chat.add_argument("--max-new-tokens", type=int, default=128, help="longest answer; that many positions of the "
                      "model's context are kept for it (default 128)")
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-k", type=int)
    chat.add_argument("--top-p", type=float)
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="a JSON API for the model: /v1/understand, /v1/generate (README 'Serve an "
                           "API')")
    model_args(serve)  # --seed: the seed of requests that give none
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-batch", type=int, default=8, help="most images in one sampling call: concurrent "
                       "/v1/generate requests are batched up to it (1 = no batching; default 8)")
    serve.add_argument("--max-images", type=int, default=4, help="most images per request (default 4)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, help="largest uploaded image file (default 10)")
    serve.set_defaults(func=cmd_serve)

    gen = sub.add_parser("generate", help="generate images from text")
    model_args(gen)
    gen.add_argument("--prompt", required=True, action="append",
                     help="what to draw; repeat for several prompts (one grid row each)")
    gen.add_argument("--num-images", type=int, default=4, help="images per prompt")
    gen.add_argument("--out", default="outputs")
    gen.add_argument("--prefix", default="image")
    gen.add_argument("--grid", help="also write all images as one PNG grid here (a row per prompt)")
    gen.add_argument("--grid-scale", type=int, default=4, help="grid upscaling factor (nearest; default 4)")
    gen.add_argument("--image-size", type=int, help="side of the generated images (default: the model's; a multiple "
                     "of the tokenizer's downsampling, within the backbone's positions)")
    gen.add_argument("--progress", action="store_true", help="show a progress bar on stderr while sampling")
    sample_args(gen)
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="a Gradio page to chat about images and generate pictures")
    model_args(demo)
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                      "only; 0.0.0.0: every interface)")
    demo.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    demo.set_defaults(func=cmd_demo)

    conv = sub.add_parser("convert", help="convert a model folder to unimm's format or transformers' Janus layout")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--to", choices=("unimm", "hf"), default="unimm",
                      help="unimm: unimm's own format (default); hf: transformers' Janus layout, loadable with "
                      "JanusForConditionalGeneration.from_pretrained (Janus / Janus-Pro parts only)")
    conv.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    import_args(conv)
    conv.set_defaults(func=cmd_convert)

    merge = sub.add_parser("merge-lora", help="fold a LoRA run's adapters into its base model: a plain model folder")
    merge.add_argument("src", help="the LoRA folder (a train.lora run's final/)")
    merge.add_argument("dst")
    merge.set_defaults(func=cmd_merge_lora)  # loads and writes on the CPU in float32, as convert does

    train = sub.add_parser("train", help="train a config (see docs/training.md)")
    train.add_argument("--config", required=True)
    train.add_argument("overrides", nargs="*")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    import_args(train)
    train.set_defaults(func=cmd_train)

    bench = sub.add_parser("bench", help="synthetic shapes benchmark").add_subparsers(dest="action", required=True)
    export = bench.add_parser("export", help="write a split to disk (see `unimm bench export --help`)")
    export.add_argument("rest", nargs=argparse.REMAINDER)
    export.set_defaults(func=None)  # handled in main(): the exporter parses its own options
    evaluate = bench.add_parser("evaluate", help="score a model on an exported split (checker + exact match)")
    model_args(evaluate)
    sample_args(evaluate)
    evaluate.add_argument("data", help="a folder written by `unimm bench export` (e.g. --split test)")
    evaluate.add_argument("--generation", action="store_true", help="only score generation")
    evaluate.add_argument("--understanding", action="store_true", help="only score understanding")
    evaluate.add_argument("--max-prompts", type=int, help="score only the first N captions")
    evaluate.add_argument("--max-questions", type=int, help="score only the first N questions")
    evaluate.add_argument("--threads", type=int, help="torch threads")
    evaluate.add_argument("--json", help="also write the accuracies to this JSON file")
    evaluate.set_defaults(func=cmd_bench_evaluate)

    evals = sub.add_parser("eval", help="sample for external benchmarks").add_subparsers(dest="benchmark",
                                                                                      required=True)
    geneval = evals.add_parser(
        "geneval", help="GenEval's folder of samples (score them with GenEval's own scripts)",
        description="Sample GenEval's prompts into its folder layout. Defaults are the papers' recipe: 4 images a "
        "prompt; for a VQ model guidance 5 and temperature 1 (over the model's own sample: defaults), for a flow "
        "model its own guidance and steps; the model's own image size. Every setting goes to DIR/settings.json.")
    model_args(geneval)
    sample_args(geneval)
    geneval.add_argument("--prompts", required=True, metavar="evaluation_metadata.jsonl",
                         help="GenEval's prompt file: one JSON object with a \"prompt\" per line")
    geneval.add_argument("--out", required=True, metavar="DIR", help="DIR/00000/{metadata.jsonl,samples/0000.png}")
    geneval.add_argument("--n-samples", type=int, help="images per prompt (default 4, as the papers report)")
    geneval.add_argument("--batch-size", type=int, help="images per model call (default: --n-samples)")
    geneval.add_argument("--image-size", type=int, help="side of the images (default: the model's own size)")
    geneval.add_argument("--skip-existing", action="store_true", help="resume: keep prompt folders that hold all "
                         "their samples (the settings must match settings.json)")
    geneval.add_argument("--no-grid", action="store_true", help="do not write each prompt's grid.png")
    geneval.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is not a "
                         "terminal")
    geneval.set_defaults(func=cmd_eval_geneval)

    repro = sub.add_parser("reproduce", help="Janus vs JanusFlow on the shapes benchmark (see docs/reproduce.md)")
    repro.add_argument("rest", nargs=argparse.REMAINDER)
    repro.set_defaults(func=None)  # handled in main(): the reproducer parses its own options
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:2] == ["bench", "export"]:  # these two parse their own options (and their own --help)
            from .bench.export import export_main

            return export_main(argv[2:])
        if argv[:1] == ["reproduce"]:
            from .experiments.reproduce import reproduce_main

            return reproduce_main(argv[1:])
        args = build_parser().parse_args(argv)
        import_modules(getattr(args, "imports", []), where="--import")
        return int(args.func(args) or 0)
    except UnimmError as err:
        print(f"unimm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unimm: interrupted", file=sys.stderr)
        return 130  # the shell's status for a command ended by Ctrl-C (128 + SIGINT)
    except _user_errors() as err:
        print(f"unimm: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that come from what the user gave (a file, an image, a config value), not from a bug in unimm.

    File errors name the user's path; PIL's unreadable-image error, omegaconf's errors (a bad interpolation, a
    value omegaconf cannot store) and YAML syntax errors come from the user's files and overrides. Anything else
    still shows its traceback: it is a bug to report.
    """
    import yaml
    from omegaconf.errors import OmegaConfBaseException
    from PIL import UnidentifiedImageError

    files = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
    return (*files, UnidentifiedImageError, OmegaConfBaseException, yaml.YAMLError)


def _one_line(err: BaseException) -> str:
    """The error as one line: a file error as 'reason: path', omegaconf's with the config key it is about."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.strerror or type(err).__name__}: {err.filename}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    key = getattr(err, "full_key", None)
    return f"{key}: {text}" if key else text


if __name__ == "__main__":
    sys.exit(main())
