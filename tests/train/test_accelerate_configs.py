"""The shipped accelerate configs (configs/accelerate/*.yaml) are valid: accelerate's launcher reads each one, turns
it into the environment it gives the processes, and the plugins built from that environment are the engines the
files promise; the FSDP one takes the wrapping the parts declare, exactly as the trainer applies it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from unimm.registry import ConfigError
from unimm.train.sharding import check_one_stage_per_launch, configure_accelerate_deepspeed, configure_accelerate_fsdp
from unimm.train.sharding import fsdp_units

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sharded_steps import make_model  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def launch_env(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file configs/accelerate/NAME.yaml`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "train.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # what accelerate's launch_command sets before its DeepSpeed launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        env = prepare_deepspeed_cmd_env(args)[1]
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_every_shipped_config_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == ["deepspeed_zero2", "deepspeed_zero3", "fsdp"]


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2", 2), ("deepspeed_zero3", 3)])
def test_deepspeed_configs_give_their_zero_stage(name, stage, monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    env = launch_env(name)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage and plugin.deepspeed_config["zero_optimization"]["stage"] == stage
    configure_accelerate_deepspeed(plugin, batch_size=4, grad_accum=2, num_processes=8)  # as the trainer does
    config = plugin.deepspeed_config
    assert (config["train_micro_batch_size_per_gpu"], config["train_batch_size"],
            config["gradient_accumulation_steps"]) == (4, 64, 2)
    # ZeRO-3: the final model can be gathered on the main process (accelerator.get_state_dict needs this).
    assert config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False) == (stage == 3)


def test_fsdp_config_is_fsdp2_and_takes_the_declared_wrapping(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    env = launch_env("fsdp")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")
    wrapped, _, _ = make_model()
    configure_accelerate_fsdp(plugin, wrapped)  # what the trainer does before accelerator.prepare
    plugin.set_auto_wrap_policy(wrapped)  # then accelerate's fsdp2_prepare_model
    policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapped)
    assert {n for n, m in wrapped.named_modules() if n and policy(m)} == {n for n, _ in fsdp_units(wrapped)}


def test_fsdp1_without_orig_params_refuses_a_stage_that_mixes_a_unit(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    for key, value in launch_env("fsdp").items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    # An FSDP1 plugin cannot be built without a GPU here; the trainer's check reads only these two fields.
    plugin.fsdp_version, plugin.use_orig_params = 1, False
    wrapped, _, _ = make_model()  # its stage freezes the LM head inside the trained backbone
    with pytest.raises(ConfigError, match="use FSDP2, fsdp_version: 2"):
        configure_accelerate_fsdp(plugin, wrapped)
    with pytest.raises(ConfigError, match="run one stage per launch"):
        check_one_stage_per_launch("deepspeed", ["stage1", "stage2"])
