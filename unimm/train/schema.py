"""The declared schema of ``train:``: every key the trainer reads, with the values it accepts.

:func:`check_train_section` runs on the raw section before anything is built (no model, no data, no
accelerator), so a misspelled key, a string where a number belongs, a negative learning rate or a missing
manifest fails at once with the config path and the fix, not minutes later inside a run.

A schema is a dict ``key -> Rule`` (a test and the words for "expected ..."), or ``key -> dict`` for a nested
section; ``stages`` is a list of :data:`STAGE_SCHEMA` mappings and ``data.sources`` a mapping of names to
:data:`SOURCE_SCHEMA` mappings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.records import TASKS
from ..registry import ConfigError
from ..registry.errors import did_you_mean
from .optim import SCHEDULES

MIXED_PRECISION = ("auto", "bf16", "fp16", "no")


@dataclass(frozen=True)
class Rule:
    """What one key accepts: ``accepts(value)`` and the words for the error (``"an integer >= 1"``)."""

    accepts: Callable[[Any], bool]
    expected: str


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= low, f"an integer >= {low}")


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = True) -> Rule:
    def accepts(v: Any) -> bool:
        if not _is_number(v) or v < low or (low_open and v == low):
            return False
        return high is None or v < high or (not high_open and v == high)

    words = f"a number {'>' if low_open else '>='} {low}"
    if high is not None:
        words += f" and {'<' if high_open else '<='} {high}"
    return Rule(accepts, words)


def one_of(*choices: Any) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(str(c) for c in choices))


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.accepts(v), f"{rule.expected}, or null")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
TEXT_LIST = Rule(lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings")
PATHS = Rule(lambda v: (isinstance(v, str) and v != "") or (isinstance(v, (list, tuple)) and len(v) > 0 and all(
    isinstance(x, str) for x in v)), "a path or a non-empty list of paths")  # fmt: skip
PART_PATHS = Rule(lambda v: isinstance(v, str) or TEXT_LIST.accepts(v), "a part path or a list of part paths")
MAPPING = Rule(lambda v: isinstance(v, Mapping), "a mapping")
RATIOS = Rule(lambda v: isinstance(v, Mapping) and len(v) > 0 and all(_is_number(x) and x >= 0 for x in v.values())
              and any(x > 0 for x in v.values()), "a mapping of source name -> ratio >= 0, at least one > 0")
SCALES = Rule(lambda v: isinstance(v, Mapping) and all(_is_number(x) and x >= 0 for x in v.values()),
              "a mapping of part path -> learning-rate factor >= 0")
BETAS = Rule(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
             "two numbers in [0, 1), e.g. [0.9, 0.95]")

STAGE_SCHEMA: dict[str, Rule] = {
    "name": TEXT,
    "steps": integer(1),
    "trainable": PART_PATHS,
    "frozen": optional(PART_PATHS),
    "mixture": RATIOS,
    "lr": number(0, low_open=True),
    "lr_scale": optional(SCALES),
    "weight_decay": number(0),
    "betas": BETAS,
    "eps": number(0, low_open=True),
    "warmup_steps": integer(0),
    "schedule": one_of(*SCHEDULES),
    "min_lr_ratio": number(0, 1, high_open=False),
}
STAGE_REQUIRED = ("steps", "trainable", "mixture", "lr")

SOURCE_SCHEMA: dict[str, Rule] = {
    "task": one_of(*TASKS),
    "jsonl": PATHS,
    "shards": PATHS,
    "caption_dropout": number(0, 1),
    "shuffle": BOOL,
}

#: ``train.lora`` (unimm/train/lora.py): peft LoRA adapters on named parts; ``parts`` is required.
LORA_SCHEMA: dict[str, Rule] = {
    "parts": Rule(lambda v: TEXT_LIST.accepts(v) and len(v) > 0, "a non-empty list of part paths, e.g. [backbone]"),
    "r": integer(1),
    "alpha": number(0, low_open=True),
    "dropout": number(0, 1),
    "base_dtype": one_of("float32", "bfloat16"),
    "target_modules": Rule(lambda v: v is None or TEXT_LIST.accepts(v) or (isinstance(v, Mapping) and all(
        TEXT_LIST.accepts(x) for x in v.values())), "a list of module names, {part: [names]}, or null"),
}

TRAIN_SCHEMA: dict[str, Any] = {
    "output_dir": TEXT,
    "seed": integer(0),
    "resume": optional(TEXT),  # latest, or a checkpoint folder
    "init_from": optional(TEXT),
    # False too: YAML and the command line read an unquoted `no` as false (train_settings maps it back to "no")
    "mixed_precision": Rule(lambda v: v in MIXED_PRECISION or v is False, "one of " + ", ".join(MIXED_PRECISION)),
    "batch_size": integer(1),
    "grad_accum": integer(1),
    "max_grad_norm": optional(number(0)),
    "grad_checkpointing": BOOL,
    "lora": LORA_SCHEMA,
    "log_every": integer(1),
    "save_every": optional(integer(0)),
    "keep_last": integer(0),
    "stop_after": optional(integer(1)),
    "only_stages": optional(TEXT_LIST),
    "sample_every": optional(integer(0)),
    "samples": {"captions": TEXT_LIST, "questions": Rule(lambda v: isinstance(v, (list, tuple)), "a list"),
                "options": MAPPING, "max_new_tokens": integer(1)},
    "tensorboard": BOOL,
    "progress": BOOL,
    "data": {"sources": MAPPING, "max_length": optional(integer(1)), "num_threads": integer(0)},
    "stages": Rule(lambda v: isinstance(v, (list, tuple)) and len(v) > 0,
                   "a non-empty list of stages (each with steps, trainable, mixture and lr)"),
}


def check_section(section: Any, schema: Mapping[str, Any], where: str) -> None:
    """Check ``section`` against ``schema``: no unknown key (with the closest one), every value accepted."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} = {section!r}: expected a mapping of {', '.join(schema)}")
    for key, value in section.items():
        if key not in schema:
            hint = did_you_mean(key, list(schema))
            raise ConfigError(f"{where}.{key}: unknown key.{hint} Valid keys: {', '.join(schema)}")
        rule = schema[key]
        if isinstance(rule, Mapping):
            check_section(value if value is not None else {}, rule, f"{where}.{key}")
        elif not rule.accepts(value):
            raise ConfigError(f"{where}.{key} = {value!r}: expected {rule.expected}")


def check_train_section(train: Mapping[str, Any]) -> None:
    """Check the raw ``train`` section (before defaults are merged): keys, types, ranges, stages, sources, files.

    Raises:
        ConfigError: naming the first wrong key (``train.stages[warmup].lr``) and what it accepts.
    """
    check_section(train, TRAIN_SCHEMA, "train")
    sources = (train.get("data") or {}).get("sources") or {}
    for name, spec in sources.items():
        where = f"train.data.sources.{name}"
        check_section(spec, SOURCE_SCHEMA, where)
        if "task" not in spec:
            raise ConfigError(f"{where}: missing 'task'; choose one of {', '.join(TASKS)}")
        if ("jsonl" in spec) == ("shards" in spec):
            raise ConfigError(f"{where}: give exactly one of 'jsonl' (manifest paths) or 'shards' (tar shards)")
        manifests = spec.get("jsonl") or []
        for path in [manifests] if isinstance(manifests, str) else manifests:
            if not Path(path).is_file():
                raise ConfigError(f"{where}.jsonl: no file {path}; give the path of a .jsonl manifest")
    for i, stage in enumerate(train.get("stages") or []):
        name = stage.get("name", f"stage{i + 1}") if isinstance(stage, Mapping) else f"stage{i + 1}"
        where = f"train.stages[{name}]"
        check_section(stage, STAGE_SCHEMA, where)
        for key in STAGE_REQUIRED:
            if key not in stage:
                raise ConfigError(f"{where}: missing '{key}'")
    if train.get("lora") is not None:
        if "parts" not in train["lora"]:
            raise ConfigError("train.lora: missing 'parts'; name the parts to adapt, e.g. parts: [backbone]")
        if not train.get("init_from"):
            raise ConfigError("train.lora: needs train.init_from, the base model folder that the saved adapters "
                              "apply to")
        if train["lora"].get("base_dtype") == "bfloat16" and train.get("mixed_precision") != "bf16":
            raise ConfigError("train.lora.base_dtype = bfloat16 needs train.mixed_precision: bf16 (the bfloat16 base "
                              "and the float32 adapters meet under autocast)")
    samples = train.get("samples") or {}
    for i, item in enumerate(samples.get("questions") or []):
        where = f"train.samples.questions[{i}]"
        check_section(item, {"question": TEXT, "image": optional(TEXT)}, where)
        if "question" not in item:
            raise ConfigError(f"{where}: missing 'question'")
        if item.get("image") and not Path(item["image"]).is_file():
            raise ConfigError(f"{where}.image: no file {item['image']}")
