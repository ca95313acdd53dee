"""FSDP2 on two CPU processes (gloo) under the wrapping the parts declare (unimm/train/sharding.py).

accelerate turns several CPU processes into DDP and never FSDP, so the two-process test shards with torch's own
``fully_shard``, driven by the same settings the trainer hands accelerate's FSDP plugin (``shard_model``):
losses equal a single-process run of the same global batch, a torch-distributed-checkpoint resume gives the same
next losses, and the gathered full state dict saved by ``save_pretrained`` loads with ``load_pretrained``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import unimm
from unimm.registry import ConfigError
from unimm.train import apply_stage
from unimm.train.sharding import (accelerate_fsdp_settings, check_fsdp_version, check_one_stage_per_launch,
                                  fsdp_units, mixed_units, wrap_class_names)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from sharded_steps import GOLDEN, check_gathered_model, make_model, single_process_losses  # noqa: E402

FLOW = GOLDEN.parent / "janusflow_tiny"


def test_parts_declare_their_units_and_frozen_parts_are_units_of_their_own():
    wrapped, _, _ = make_model()
    names = [n for n, _ in fsdp_units(wrapped)]
    assert names[:4] == ["model.backbone.lm.model.layers.0", "model.backbone.lm.model.layers.1",
                         "model.und_encoder.vit.blocks.0", "model.und_encoder.vit.blocks.1"]  # innermost first
    assert set(names[4:]) == {"model.generator.autoencoder", "model.generator.aligner", "model.generator.head",
                              "model.und_encoder", "model.und_aligner", "model.backbone", "model.generator"}
    assert wrap_class_names(wrapped) == ["Block", "CausalLMBackbone", "LlamaDecoderLayer", "MLPAligner",
                                         "SigLIPEncoder", "VQGenerationPath", "VQImageHead", "VQTokenizer"]
    # The stage freezes the LM head inside the trained backbone: only that unit mixes; the frozen encoder and VQ
    # tokenizer are whole units of frozen weights.
    assert mixed_units(wrapped) == ["model.backbone"]
    flow, _, _ = unimm.load_pretrained(FLOW)
    assert {"generator.autoencoder", "generator.encoder", "generator.decoder"} <= {n for n, _ in fsdp_units(flow)}


def test_accelerate_plugin_settings_are_fsdp2_by_the_declared_classes():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    wrapped, _, _ = make_model()
    plugin = FullyShardedDataParallelPlugin(**accelerate_fsdp_settings(wrapped))
    assert plugin.fsdp_version == 2 and str(plugin.state_dict_type).endswith("SHARDED_STATE_DICT")
    plugin.set_auto_wrap_policy(wrapped)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, wrapped)
    picked = {n for n, m in wrapped.named_modules() if n and policy(m)}
    assert picked == {n for n, _ in fsdp_units(wrapped)}  # accelerate's policy wraps exactly the declared units


def test_fsdp1_with_a_mixed_unit_and_several_stages_per_launch_fail_with_the_fix():
    wrapped, _, _ = make_model()
    with pytest.raises(ConfigError, match=r"FSDP1 cannot shard .*model\.backbone.*fsdp_version: 2"):
        check_fsdp_version(wrapped, 1)
    check_fsdp_version(wrapped, 2)  # FSDP2 takes the mix
    check_fsdp_version(wrapped, 1, use_orig_params=True)
    apply_stage(wrapped.model, {"trainable": ["backbone"]})  # nothing mixed: FSDP1 is fine too
    check_fsdp_version(wrapped, 1)
    with pytest.raises(ConfigError, match=r"2 stages \(one, two\) would run in one fsdp launch.*"
                                          r"train\.only_stages=\[one\].*train\.init_from="):
        check_one_stage_per_launch("fsdp", ["one", "two"])
    check_one_stage_per_launch("fsdp", ["two"])
    check_one_stage_per_launch(None, ["one", "two"])  # one process or DDP re-freezes between stages


@pytest.mark.slow
def test_two_process_fsdp2_matches_one_process_resumes_exactly_and_gathers_a_loadable_model(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(HERE / "fsdp_worker.py"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "gloo"
    assert ranks[0]["fsdp_modules"] == 12  # 11 declared units and the root
    sharded = ranks[0]["losses"]

    reference = single_process_losses()  # the same 4 steps on whole global batches, in this process
    assert reference[-1] < 0.8 * reference[0]  # it trains: the comparison is not between constants
    assert sharded == pytest.approx(reference, rel=1e-5, abs=1e-6)
    # Resumed from the sharded checkpoint written after step 2: the same next losses, to the bit.
    assert ranks[0]["resumed"] == sharded[2:] and ranks[1]["resumed"] == sharded[2:]
    assert (tmp_path / "ckpt" / "pytorch_model_fsdp_0" / ".metadata").is_file()

    check_gathered_model(tmp_path)


def test_the_trainer_refuses_two_stages_in_one_sharded_launch(tmp_path, monkeypatch):
    """Under FSDP / DeepSpeed (here pretended: accelerate never picks them for CPU processes) one launch runs one
    stage; the error names the fix. Stages before a resumed one do not count."""
    from test_train_run import run_config

    import unimm.train.trainer as trainer_module
    from unimm.train import Trainer

    monkeypatch.setattr(trainer_module, "sharding_engine", lambda accelerator: "fsdp")
    stages = [{"name": name, "steps": 1, "trainable": ["und_aligner"], "mixture": {"und": 1}, "lr": 1e-3}
              for name in ("align", "tune")]
    model, processor, cfg = run_config("janus_tiny", tmp_path, stages)
    trainer = Trainer(cfg, model=model, processor=processor)
    with pytest.raises(ConfigError, match=r"2 stages \(align, tune\) would run in one fsdp launch.*"
                                          r"train\.only_stages=\[align\]"):
        trainer.fit()
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any step


SWAPS = {
    "sam_siglip": ["model.und_encoder=@parts/und_encoder/sam_siglip_tiny",
                   "model.und_aligner=@parts/und_aligner/hybrid_split_mlp_gelu"],
    "shared_vq": ["model.und_encoder=@parts/und_encoder/shared_vq_tiny"],
    "timm_vit": ["model.und_encoder=@parts/und_encoder/timm_vit_tiny"],
    "timm_convnext": ["model.und_encoder=@parts/und_encoder/timm_convnext_tiny"],
    "gpt2": ["model.backbone=@parts/backbone/gpt2_tiny"],
    "qwen2": ["model.backbone=@parts/backbone/qwen2_tiny"],
    "flow": ["model.generator=@parts/generator/flow_tiny"],
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_every_shipped_part_declares_units_that_wrapping_by_class_can_express(swap):
    """Each shipped part swapped into janus_tiny: accelerate wraps by class, so every module of a unit's class must
    be a declared unit (wrap_class_names raises otherwise), and the backbone's layers are units."""
    model = unimm.build_model(unimm.load_config("janus_tiny", SWAPS[swap]))
    classes = wrap_class_names(model)
    layers = {n for n, _ in fsdp_units(model) if n.startswith("backbone.") and n != "backbone"}
    assert len(layers) == model.backbone.num_layers and "CausalLMBackbone" in classes
