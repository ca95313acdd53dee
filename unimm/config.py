"""YAML configs: loading, command-line overrides, validation.

A config has fixed top-level sections::

    name: janus-1.3b                  # free text
    imports: [my_parts]               # optional: your modules that register parts (unimm.registry.plugins)
    model:                            # one slot per part of the released checkpoints
      und_encoder: {type: siglip, ...}
      und_aligner: {type: mlp_gelu, depth: 2}
      backbone:    {type: llama, hidden_size: 2048, ...}
      generator:   {type: vq, autoencoder: {...}, aligner: {...}, head: {...}}
      und_start_embed: false
    processor: {tokenizer: PATH, roles: [...], ...}
    train: {...}                      # read by unimm.train

Overrides use omegaconf's dotlist form (``model.backbone.num_hidden_layers=4``). Setting a slot's ``type`` to a
different part *replaces* the slot (its old arguments are dropped, never merged), so
``model.generator.type=rectified_flow`` cannot inherit VQ settings by accident. An override may also replace a
whole slot from a YAML file: ``model.generator=@configs/parts/flow_tiny.yaml``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .registry import ConfigError
from .registry.errors import closest, did_you_mean
from .registry.plugins import import_config_modules


def _shipped_configs() -> Path:
    """The shipped configs: ``unimm/configs`` in an installed wheel; the repository's top-level ``configs/`` in a
    source checkout or an editable install (setup.py maps that folder to ``unimm.configs`` when packaging)."""
    packaged = files("unimm") / "configs"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _shipped_configs()
#: Tokenizers shipped inside the package, named in ``processor.tokenizer`` by folder name (``tiny``).
BUNDLED_TOKENIZERS = Path(__file__).resolve().parent / "assets" / "tokenizers"
TOP_LEVEL_KEYS = ("name", "model", "processor", "train", "sample", "imports")
MODEL_KEYS = ("und_encoder", "und_aligner", "backbone", "generator", "und_start_embed")
PROCESSOR_KEYS = (
    "tokenizer", "roles", "system_prompt", "image_tag", "image_start_tag", "image_end_tag", "pad_tag",
    "generation_tag", "max_length",
)


def find_config(name_or_path: str | Path) -> Path:
    """Resolve a config path, or a shipped config name (``janus_pro_1b``) under ``configs/``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidates = [CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / str(name_or_path)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no config file '{name_or_path}'.{_closest_config(str(name_or_path))}")


def _closest_config(name: str) -> str:
    """' Did you mean ...?' among every shipped config, sub-folders included (``parts/backbone/llama_tiny``), then
    the shipped configs of the folder meant."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    shipped = sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))
    match = closest(stem, shipped)  # the folder of the match is needed too
    folder = Path(match[0] if match else stem).parent.as_posix()
    siblings = [Path(p).name for p in shipped if Path(p).parent.as_posix() == folder]
    hint = f" Did you mean '{match[0]}'?" if match else ""
    where = "Shipped configs" if folder == "." else f"Shipped in configs/{folder}"
    return f"{hint} {where}: {', '.join(siblings)}" if siblings else hint


def _read_yaml(path: Path) -> Any:
    """``OmegaConf.load(path)``, with YAML syntax errors as one ConfigError naming the file and line."""
    import yaml

    try:
        return OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line} is not valid YAML ({problem}); fix the file's syntax") from None


def load_config(name_or_path: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a YAML config (or a dict), apply dotlist ``overrides``, and check its section keys.

    Relative paths in ``processor.tokenizer`` and in ``...path`` keys are resolved against the config file's folder.
    """
    if isinstance(name_or_path, (dict, DictConfig)):
        cfg = OmegaConf.create(name_or_path)
        base = Path.cwd()
    else:
        path = find_config(name_or_path)
        cfg = _read_yaml(path)
        base = path.parent
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{name_or_path}: a config must be a mapping at the top level")
    cfg = apply_overrides(cfg, overrides)
    validate_sections(cfg)
    import_config_modules(cfg)  # the user modules its parts come from, before anything looks a part up
    _resolve_paths(cfg, base)
    check_tokenizer_folder(cfg)
    return cfg


def apply_overrides(cfg: DictConfig, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """Apply ``key=value`` overrides in order; a changed ``<slot>.type`` replaces the slot."""
    cfg = cfg.copy()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. model.backbone.num_hidden_layers=4)")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("+")
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}': '{key}' is not a dotted key "
                              "(e.g. model.backbone.num_hidden_layers=4)")
        if raw.startswith("@"):
            value = OmegaConf.to_container(_read_yaml(find_config(raw[1:])), resolve=True)
            OmegaConf.update(cfg, key, value, merge=False)
            continue
        try:
            value = OmegaConf.from_dotlist([f"x={raw}"]).x
        except Exception as err:  # YAML syntax errors in the value, e.g. an unclosed list
            first_line = str(err).splitlines()[0]
            raise ConfigError(f"override '{item}': cannot parse the value {raw!r} ({first_line})") from err
        if key.endswith(".type"):
            slot = key[: -len(".type")]
            current = OmegaConf.select(cfg, slot)
            if isinstance(current, DictConfig) and current.get("type") != value:
                OmegaConf.update(cfg, slot, {"type": value}, merge=False)
                continue
        current = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig) and isinstance(current, DictConfig) and value.get("type") not in (
            None, current.get("type")
        ):  # a whole slot of another type, written inline: replace, never merge with the old part's keys
            OmegaConf.update(cfg, key, value, merge=False)
            continue
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    return cfg


def _unknown(where: str, key: str, allowed: tuple[str, ...]) -> ConfigError:
    return ConfigError(f"{where}{key}: unknown key.{did_you_mean(key, allowed)} Valid keys: {', '.join(allowed)}")


def validate_sections(cfg: DictConfig) -> None:
    """Check top-level, ``model`` and ``processor`` keys (each slot's own keys are checked by its registry)."""
    for key in cfg:
        if key not in TOP_LEVEL_KEYS:
            raise _unknown("", str(key), TOP_LEVEL_KEYS)
    if "model" not in cfg:
        if OmegaConf.select(cfg, "train.init_from"):
            return  # a fine-tuning recipe: the model folder's own config gives model and processor (unimm.train)
        raise ConfigError(
            "the config has no 'model' section; add one, or fine-tune a model folder with train.init_from=FOLDER"
        )
    for key in cfg.model:
        if key not in MODEL_KEYS:
            raise _unknown("model.", str(key), MODEL_KEYS)
    for slot in ("und_encoder", "und_aligner", "backbone"):
        if slot not in cfg.model:
            raise ConfigError(f"model.{slot}: required slot is missing")
    for key in cfg.get("processor") or {}:
        if key not in PROCESSOR_KEYS:
            raise _unknown("processor.", str(key), PROCESSOR_KEYS)
    check_processor_values(cfg.get("processor") or {})


_PROCESSOR_TAGS = ("image_tag", "image_start_tag", "image_end_tag", "pad_tag", "generation_tag")


def check_processor_values(section: Any) -> None:
    """Check the values of the ``processor`` section (its keys are checked by :func:`validate_sections`).

    ``roles`` is two different non-empty strings (user, assistant); each tag is a non-empty string, and the image
    placeholder, the image start and end tags and the pad tag are four different tokens; ``system_prompt`` and
    ``tokenizer`` are strings; ``max_length`` is a positive integer or null.
    """
    values = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    roles = values.get("roles")
    if roles is not None and not (
        isinstance(roles, (list, tuple)) and len(roles) == 2 and all(isinstance(r, str) and r for r in roles)
        and roles[0] != roles[1]
    ):
        raise ConfigError(
            f"processor.roles = {roles!r}: give two different role names, user then assistant, e.g. "
            f"['<|User|>', '<|Assistant|>']"
        )
    for key in _PROCESSOR_TAGS:
        if key in values and not (isinstance(values[key], str) and values[key]):
            raise ConfigError(f"processor.{key} = {values[key]!r}: must be a non-empty string (a special token)")
    for key in ("system_prompt", "tokenizer"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise ConfigError(f"processor.{key} = {values[key]!r}: must be a string")
    length = values.get("max_length")
    if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 1):
        raise ConfigError(f"processor.max_length = {length!r}: must be a positive integer (tokens) or null")
    defaults = {"image_tag": "<image_placeholder>", "image_start_tag": "<begin_of_image>",
                "image_end_tag": "<end_of_image>", "pad_tag": "<｜▁pad▁｜>"}  # Processor's defaults
    seen: dict[str, str] = {}  # tag -> the key that set it
    for key, default in defaults.items():
        tag = values.get(key) or default
        if tag in seen:
            raise ConfigError(
                f"processor.{key} = {tag!r} is also processor.{seen[tag]}: the image placeholder, image start and "
                f"end tags and the pad tag must be four different tokens"
            )
        seen[tag] = key


def check_tokenizer_folder(cfg: DictConfig) -> None:
    """``processor.tokenizer``, when given, is a folder of tokenizer files or the name of a bundled tokenizer."""
    value = (cfg.get("processor") or {}).get("tokenizer")
    if value is None:
        return
    folder = Path(value)
    if not folder.exists() and (BUNDLED_TOKENIZERS / value).is_dir():  # as load_tokenizer reads it
        return
    if not folder.is_dir():
        bundled = sorted(p.name for p in BUNDLED_TOKENIZERS.iterdir() if p.is_dir())
        raise ConfigError(
            f"processor.tokenizer = {value!r}: no such folder; give a folder with tokenizer.json or "
            f"tokenizer_config.json (relative paths are read from the config file's folder), or a bundled "
            f"tokenizer: {', '.join(bundled)}"
        )
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise ConfigError(
            f"processor.tokenizer = {value!r}: the folder has no tokenizer.json or tokenizer_config.json; point it "
            f"at the folder a tokenizer's save_pretrained() wrote"
        )


def _resolve_paths(cfg: DictConfig, base: Path) -> None:
    """Make relative file paths absolute against ``base`` (the config's folder) when they exist there."""

    def fix(node: Any) -> None:
        if isinstance(node, DictConfig):
            for key in list(node.keys()):
                value = node[key] if not OmegaConf.is_missing(node, key) else None
                is_path = key in ("tokenizer", "jsonl", "shards", "pretrained") or key.endswith("path")
                if isinstance(value, str) and is_path:
                    candidate = base / value
                    if not Path(value).is_absolute() and candidate.exists():
                        node[key] = str(candidate.resolve())
                else:
                    fix(value)

    fix(cfg)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text."""
    return OmegaConf.to_yaml(cfg, resolve=True)
