"""Every user mistake on the command line gives one line ``unimm: error: ...`` and exit status 2, no traceback.

The command lines run in one subprocess through ``tests/cli_runner.py``, which runs each as ``python -m unimm.cli``
would (an escaping exception prints its traceback and gives status 1); a second test runs a few through the real
``python -m unimm.cli`` to show the entry point behaves the same. Each case's message must name what was wrong
(the config path or the option) - the fragment below - and each fails before any model is loaded or built on
real memory (``config show`` builds on the meta device).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import unimm
from unimm.cli import main
from unimm.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHOW = ["config", "show", "janus_tiny"]
SHOW_ONLY = ["config", "show", "--no-build", "janus_tiny"]  # the mistake is in the config; nothing to build
TRAIN = ["train", "--config", "janus_tiny"]
STAGE = "train.stages=[{steps: 2, trainable: [und_aligner], mixture: {a: 1}, lr: %s}]"
TMP = "{tmp}"  # replaced by the test's temporary folder (see `files`)

CASES = [
    # -- model.backbone: its transformers config class, its own rules and the checks it lacks ------------------
    (SHOW + ["model.backbone.head_dim=null", "model.backbone.hidden_size=30"],
     "model.backbone.hidden_size = 30 is not a multiple of model.backbone.num_attention_heads = 4"),
    (SHOW + ["model.backbone.hidden_size=30"],  # head_dim given: transformers' own validator rejects it
     "model.backbone.hidden_size: transformers' llama config rejects it: ValueError: The hidden size (30) is not a "
     "multiple of the number of attention heads (4)."),
    (SHOW + ["model.backbone.num_attention_heads=0"], "model.backbone.num_attention_heads = 0: must be a positive"),
    (SHOW + ["model.backbone.num_key_value_heads=3"],
     "model.backbone.num_key_value_heads = 3 does not divide model.backbone.num_attention_heads = 4"),
    (SHOW + ["model.backbone.num_hidden_layers=two"],
     "model.backbone.num_hidden_layers = 'two': must be a positive integer"),
    (SHOW + ["model.backbone.intermediate_size=-128"], "model.backbone.intermediate_size = -128: must be a positive"),
    (SHOW + ["model.backbone.rms_norm_eps=tiny"],
     "model.backbone.rms_norm_eps: transformers' llama config rejects it: TypeError: Field 'rms_norm_eps' expected "
     "float"),
    (SHOW + ["model.backbone.pad_token_id=1000"],
     "model.backbone.pad_token_id = 1000 is not a row of the embedding table (model.backbone.vocab_size = 427)"),
    (SHOW + ["model.backbone=@parts/backbone/gpt2_tiny", "model.backbone.n_embd=30"],  # gpt2's own field names
     "model.backbone.n_embd = 30 is not a multiple of model.backbone.n_head = 4"),
    (SHOW + ["model.backbone=@parts/backbone/gpt2_tiny", "model.backbone.hidden_size=sixty"],  # an alias
     "model.backbone.hidden_size = 'sixty': must be a positive integer"),
    # -- processor.* values --------------------------------------------------------------------------------------
    (SHOW_ONLY + ["processor.roles=[User]"], "processor.roles = ['User']: give two different role names"),
    (SHOW_ONLY + ["processor.image_tag=5"], "processor.image_tag = 5: must be a non-empty string"),
    (SHOW_ONLY + ["processor.max_length=0"], "processor.max_length = 0: must be a positive integer"),
    (SHOW_ONLY + ["processor.pad_tag=<image_placeholder>"], "processor.pad_tag = '<image_placeholder>' is also "
                                                             "processor.image_tag"),
    (SHOW_ONLY + [f"processor.tokenizer={TMP}/no_tokenizer"], "processor.tokenizer = '{tmp}/no_tokenizer': no such "
                                                              "folder; give a folder with tokenizer.json"),
    (SHOW_ONLY + [f"processor.tokenizer={TMP}/empty"], "the folder has no tokenizer.json or tokenizer_config.json"),
    # -- config files and overrides --------------------------------------------------------------------------------
    (SHOW_ONLY + ["model.generator=@parts/generator/vq_tiyn"],
     "no config file 'parts/generator/vq_tiyn'. Did you mean 'parts/generator/vq_tiny'? Shipped in "
     "configs/parts/generator: flow_tiny, vq_tiny"),
    (SHOW_ONLY + ["model.backbone=@part/backbone/llama_tiny"], "Did you mean 'parts/backbone/llama_tiny'?"),
    (["config", "show", f"{TMP}/broken.yaml"], "{tmp}/broken.yaml: line 3 is not valid YAML"),
    (["config", "show", f"{TMP}/interpolation.yaml"], "model.backbone.hidden_size: Interpolation key 'width' not"),
    # -- train.*: the declared schema, checked before any model is built -------------------------------------------
    (TRAIN + ["train.batchsize=2"], "train.batchsize: unknown key. Did you mean 'batch_size'?"),
    (TRAIN + ["train.batch_size=0"], "train.batch_size = 0: expected an integer >= 1"),
    (TRAIN + ["train.seed=abc"], "train.seed = 'abc': expected an integer >= 0"),
    (TRAIN + ["train.mixed_precision=fp8"], "train.mixed_precision = 'fp8': expected one of auto, bf16, fp16, no"),
    (TRAIN + [STAGE % "-1"], "train.stages[stage1].lr = -1: expected a number > 0"),
    (TRAIN + [STAGE % "1e-3, warmup: 3"], "train.stages[stage1].warmup: unknown key. Did you mean 'warmup_steps'?"),
    (TRAIN + [STAGE % "1e-3, betas: [0.9]"], "train.stages[stage1].betas = [0.9]: expected two numbers in [0, 1)"),
    (TRAIN + ["train.data.sources.a={task: text, jsonl: {tmp}/none.jsonl}", STAGE % "1e-3"],
     "train.data.sources.a.jsonl: no file {tmp}/none.jsonl"),
    (TRAIN + ["train.data.sources.a={task: txt, jsonl: x.jsonl}", STAGE % "1e-3"],
     "train.data.sources.a.task = 'txt': expected one of understanding, generation, text"),
    # -- command-line options, checked before the model is loaded --------------------------------------------------
    (["generate", "--prompt", "x", "--num-images", "0"], "--num-images = 0: must be at least 1"),
    (["generate", "--prompt", "x", "--guidance", "-1"], "--guidance = -1.0: must be >= 0.0"),
    (["generate", "--prompt", "x", "--out", f"{TMP}/a_file"], "--out {tmp}/a_file: is a file, not a folder"),
    (["generate", "--prompt", "x", "--grid", TMP], "--grid {tmp}: is a folder; give a file name"),
    (["generate", "--prompt", "x", "--grid", f"{TMP}/grid.pgnx"], "unknown image extension '.pgnx'"),
    (["generate", "--prompt", "x", "--seed", "-1"], "--seed = -1: must be at least 0"),
    (["generate", "--prompt", "x", "--seed", str(2**64)], "--seed = 18446744073709551616: must be at most 2**64 - 1"),
    (["generate", "--prompt", "x", "--model", f"{TMP}/no_model"], "model folder not found: {tmp}/no_model"),
    (["understand", "--image", f"{TMP}/missing.png", "--question", "q"], "image file not found: {tmp}/missing.png"),
    (["understand", "--image", f"{TMP}/text.png", "--question", "q"], "cannot read image {tmp}/text.png"),
    (["understand", "--image", f"{TMP}/red.png", "--question", "q", "--max-new-tokens", "0"],
     "--max-new-tokens = 0: must be at least 1"),
    (["understand", "--image", f"{TMP}/red.png", "--question", "q", "--top-p", "1.5"], "--top-p = 1.5: must be in"),
]


def files(tmp: Path) -> None:
    """The files the cases name under ``{tmp}``."""
    (tmp / "empty").mkdir()
    (tmp / "a_file").write_text("not a folder")
    (tmp / "text.png").write_text("not an image")
    Image.new("RGB", (8, 8), "red").save(tmp / "red.png")
    (tmp / "broken.yaml").write_text("name: x\nmodel: [unclosed\n")
    tiny = (ROOT / "configs" / "janus_tiny.yaml").read_text()
    (tmp / "interpolation.yaml").write_text(tiny.replace("hidden_size: 64", "hidden_size: ${width}"))


def run_in_one_process(cases: list[list[str]], tmp: Path) -> list[dict]:
    """Run every argv in ``cases`` in one subprocess (``tests/cli_runner.py``), from a folder of its own."""
    spec = tmp / "cases.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_runner.py"), str(spec)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[int, tuple[dict, Path]]:
    tmp = tmp_path_factory.mktemp("cli_errors")
    files(tmp)
    argvs = [[arg.replace(TMP, str(tmp)) for arg in argv] for argv, _ in CASES]
    return {i: (result, tmp) for i, result in enumerate(run_in_one_process(argvs, tmp))}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(argv[-2:])[:60] for argv, _ in CASES])
def test_user_error_is_one_line_and_exit_2(index, results):
    result, tmp = results[index]
    fragment = CASES[index][1].replace(TMP, str(tmp))
    lines = result["stderr"].splitlines()
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert result["status"] == 2, result
    assert len(lines) == 1 and lines[0].startswith("unimm: error: "), result["stderr"]
    assert fragment in lines[0]


def test_argparse_errors_keep_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--num-images", "2"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --prompt" in capsys.readouterr().err


def test_the_real_entry_point_agrees(results):
    """``python -m unimm.cli`` gives the runner's status and stderr (one case: each subprocess costs seconds)."""
    index = next(i for i, (argv, _) in enumerate(CASES) if argv[-1:] == ["model.backbone.num_attention_heads=0"])
    expected, tmp = results[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "unimm.cli", *CASES[index][0]], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert (done.returncode, done.stderr) == (expected["status"], expected["stderr"])
    assert done.returncode == 2 and done.stderr.startswith("unimm: error: model.backbone.num_attention_heads")


# -- the safety net in cli.main ------------------------------------------------------------------------------------
def _raising(error: BaseException):
    def command(args):
        raise error

    return command


@pytest.mark.parametrize(
    "error, status, line",
    [
        (FileNotFoundError(2, "No such file or directory", "/data/x.jsonl"), 2,
         "unimm: error: No such file or directory: /data/x.jsonl"),
        (PermissionError(13, "Permission denied", "/root/out"), 2, "unimm: error: Permission denied: /root/out"),
        (KeyboardInterrupt(), 130, "unimm: interrupted"),
    ],
    ids=["file-not-found", "permission", "ctrl-c"],
)  # fmt: skip
def test_common_errors_become_one_line(monkeypatch, capsys, error, status, line):
    monkeypatch.setattr("unimm.cli.cmd_list", _raising(error))
    assert main(["list"]) == status
    assert capsys.readouterr().err.splitlines() == [line]


def test_unreadable_image_and_omegaconf_errors_become_one_line(monkeypatch, capsys, tmp_path):
    from omegaconf import OmegaConf
    from PIL import UnidentifiedImageError

    (tmp_path / "x.png").write_text("text")
    try:
        Image.open(tmp_path / "x.png")
    except UnidentifiedImageError as err:
        monkeypatch.setattr("unimm.cli.cmd_list", _raising(err))
    assert main(["list"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"unimm: error: cannot identify image file '{tmp_path / 'x.png'}'"]
    try:
        OmegaConf.to_container(OmegaConf.create({"a": "${b}"}), resolve=True)
    except Exception as err:  # noqa: BLE001 - whatever omegaconf raises for a missing interpolation key
        monkeypatch.setattr("unimm.cli.cmd_list", _raising(err))
    assert main(["list"]) == 2
    assert capsys.readouterr().err.splitlines() == ["unimm: error: a: Interpolation key 'b' not found"]


def test_a_bug_still_shows_its_traceback(monkeypatch):
    """Not every exception is the user's: an unexpected one must reach the developer whole."""
    monkeypatch.setattr("unimm.cli.cmd_list", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["list"])


# -- what needs a model or a tokenizer -----------------------------------------------------------------------------
def test_grid_in_a_missing_folder_is_created(tmp_path, capsys):
    model = Path(__file__).parent / "fixtures" / "golden" / "janus_tiny"
    grid = tmp_path / "new" / "deeper" / "grid.png"
    args = ["generate", "--model", str(model), "--override", "model.generator.image_size=16", "--prompt", "a cat",
            "--num-images", "2", "--out", str(tmp_path / "images"), "--grid", str(grid), "--grid-scale", "1"]
    assert main(args) == 0
    with Image.open(grid) as image:
        assert image.size == (2 + 2 * 18, 2 + 18)  # two 16 px tiles in a row, 2 px padding


def _byte_level_tokenizer(folder: Path, **special: str) -> Path:
    """A small byte-level BPE tokenizer with only the given special tokens (gpt2's way: no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=sorted(set(special.values())), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["a photo of a cat on a mat", "hello there"], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, **special).save_pretrained(folder)
    return folder


def test_a_tokenizer_without_a_pad_token_gets_one(tmp_path):
    """gpt2's tokenizer has no pad token: the processor adds its pad tag, and prompts are left-padded with it."""
    folder = _byte_level_tokenizer(tmp_path / "tok", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    cfg = unimm.load_config("janus_tiny", ["model.backbone=@parts/backbone/gpt2_tiny", "model.generator=null",
                                           f"processor.tokenizer={folder}"])  # fmt: skip
    model = unimm.build_model(cfg)
    processor = unimm.build_processor(cfg, model)
    assert processor.tokenizer.pad_token is None or processor.pad_id == processor.tokenizer.pad_token_id
    assert processor.pad_id not in (None, processor.eos_id) and processor.pad_id < model.backbone.vocab_size
    ids, mask = processor.generation_prompts(["a cat", "a photo of a cat on a mat"])
    assert mask[0, 0] == 0 and ids[0, 0] == processor.pad_id and bool(mask[1].all())


def test_a_tokenizer_without_an_end_token_fails_with_the_fix(tmp_path):
    folder = _byte_level_tokenizer(tmp_path / "tok", unk_token="<unk>")
    cfg = unimm.load_config("janus_tiny", [f"processor.tokenizer={folder}"])
    model = unimm.build_model(cfg)
    with pytest.raises(ConfigError, match=r"processor\.tokenizer: the tokenizer has no end-of-sentence token.*"
                                          r"add_special_tokens\(\{'eos_token'"):  # fmt: skip
        unimm.build_processor(cfg, model)
