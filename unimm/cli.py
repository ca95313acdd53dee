"""The ``unimm`` command.

    unimm list                                   every registered part, by kind
    unimm config show CONFIG [key=value ...]     the resolved config and the model it builds
    unimm understand [--model M] --image F --question Q
    unimm generate [--model M] --prompt P [--num-images K] [--out DIR]
    unimm convert SRC DST                        a released folder -> unimm's format
    unimm train --config CONFIG [key=value ...]  (see docs/training.md; `accelerate launch -m unimm.cli train ...`)
    unimm bench export ...                       write the synthetic shapes benchmark to disk
    unimm bench evaluate [--model M] DATA        score a model on an exported split
    unimm reproduce [--out DIR] ...              Janus vs JanusFlow on the shapes benchmark (docs/reproduce.md)

``--import MODULE`` (repeatable) on the commands that build or load a model imports a module of yours first, so
the parts it registers can be named in a config (:mod:`unimm.registry.plugins`).

``--model`` is a model folder (released Janus / Janus-Pro / JanusFlow layout, or one saved by unimm); without it
the small shapes model shipped in the package is used (:data:`unimm.pretrained.DEFAULT_MODEL`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .registry import UnimmError
from .registry.plugins import import_modules, record_imports


def _load(model: str | None, overrides: list[str]):
    from .pretrained import DEFAULT_MODEL, load_pretrained

    return load_pretrained(model or DEFAULT_MODEL, overrides=overrides)


#: Sampling flags of ``generate`` / ``bench evaluate`` -> the generation path's option names.
SAMPLE_FLAGS = {"--guidance": "guidance", "--temperature": "temperature", "--top-k": "top_k", "--top-p": "top_p",
                "--steps": "num_steps"}
SAMPLE_FLAGS["--compile"] = "compile"  # VQ models: compile the one-token decode step (unimm.generation.decode)


def _sample_options(model, cfg, args: argparse.Namespace) -> dict:
    """The model config's ``sample`` defaults, then the flags given, each checked against the generation path's
    declared options (a flag the path does not take fails naming the flags it has)."""
    from omegaconf import OmegaConf

    from .registry import InputError

    path = model.generator
    given = {flag: getattr(args, name) for flag, name in SAMPLE_FLAGS.items() if getattr(args, name) is not None}
    if path is None:
        if given:
            raise InputError(f"{', '.join(given)}: this model has no generation path, so it takes no sampling options")
        return {}
    defaults = cfg.get("sample")
    options = path.check_sample_options(OmegaConf.to_container(defaults, resolve=True) if defaults else {},
                                        where="sample.")
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
    from .encoders.transforms import load_image

    check_args(args)
    image = load_image(args.image)  # a missing or unreadable file fails before the model is loaded
    model, processor, _ = _load(args.model, args.overrides + _size_overrides(args, "model.und_encoder"))
    conversation = [
        {"role": "user", "content": f"<image_placeholder>\n{args.question}"},
        {"role": "assistant", "content": ""},
    ]
    batch = processor(conversation, [image])
    tokens = model.generate_text(
        batch, max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed, eos_id=processor.eos_id, pad_id=processor.pad_id,
    )
    print(processor.decode(tokens[0]).strip())


def cmd_generate(args: argparse.Namespace) -> None:
    from .images import save_grid, save_images

    check_args(args)
    model, processor, cfg = _load(args.model, args.overrides + _size_overrides(args, "model.generator"))
    options = _sample_options(model, cfg, args)
    captions = [prompt for prompt in args.prompt for _ in range(args.num_images)]
    prompt_ids, prompt_mask = processor.generation_prompts(captions)
    images = model.generate_images(prompt_ids, prompt_mask, pad_id=processor.pad_id, seed=args.seed, progress=True,
                                   **options)
    for path in save_images(images, args.out, prefix=args.prefix):
        print(path)
    if args.grid:
        print(save_grid(images, args.grid, nrow=args.num_images, scale=args.grid_scale))


def cmd_convert(args: argparse.Namespace) -> None:
    from .pretrained import save_pretrained

    model, processor, cfg = _load(args.src, args.overrides)
    record_imports(cfg, args.imports)  # the converted folder imports them again when loaded
    print(save_pretrained(model, processor, cfg, args.dst))


def cmd_train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import train_main

    overrides = list(args.overrides) + (["train.resume=latest"] if args.resume else [])
    cfg = load_config(args.config, overrides)
    record_imports(cfg, args.imports)  # the trained model imports them again when loaded
    train_main(cfg)


def cmd_bench_evaluate(args: argparse.Namespace) -> None:
    import torch

    from .bench.evaluate import evaluate_model, format_summary, write_summary

    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor, cfg = _load(args.model, args.overrides)
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
             "threads": 1, "seed": 0}
#: Text sampling (``understand``); image sampling flags are checked against the generation path's declared options.
_TEXT_AT_LEAST = {"top_k": 1, "temperature": 0}
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed (negatives wrap around)


def check_args(args: argparse.Namespace) -> None:
    """Check a command's options before any model is loaded: ranges, and the files it will read or write.

    Raises:
        InputError: naming the option (``--num-images``) and what it accepts.
    """
    from .registry import InputError

    text_sampling = args.command == "understand"
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
    und.add_argument("--image", required=True)
    und.add_argument("--question", required=True)
    und.add_argument("--max-new-tokens", type=int, default=256)
    und.add_argument("--image-size", type=int, help="the understanding encoder's input size (default: the model's; "
                     "position embeddings are resampled)")
    und.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    und.add_argument("--top-k", type=int)
    und.add_argument("--top-p", type=float)
    und.set_defaults(func=cmd_understand)

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
    sample_args(gen)
    gen.set_defaults(func=cmd_generate)

    conv = sub.add_parser("convert", help="convert a released checkpoint folder to unimm's format")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    import_args(conv)
    conv.set_defaults(func=cmd_convert)

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
