"""The trainer: Janus / Janus-Pro / JanusFlow stage recipes on Hugging Face ``accelerate``.

Janus (Wu et al. 2024), Janus-Pro (Chen et al. 2025) and JanusFlow (Ma et al. 2024) train in three stages that
differ in which parts learn and on what data mix; no training code was released. Here a stage is config
(``train.stages``), the engine is ``accelerate`` - one process, DDP on several, FSDP or DeepSpeed through
``accelerate config`` - and this file only adds what accelerate does not know: tasks, stages, data positions.

One optimiser step = ``grad_accum`` micro-batches, each of one task drawn at the stage's ratios; the task's loss
comes from the model (``understanding_loss``, ``text_loss``, ``generation_loss``). Each stage freezes the model
(:func:`~unimm.train.freeze.apply_stage`), builds AdamW with per-part rates and its schedule, and wraps the model
with ``accelerator.prepare``. Checkpoints every ``save_every`` steps (:mod:`~unimm.train.checkpointing`); with
``resume: latest`` a relaunch continues exactly. Metrics go to ``metrics.jsonl`` (and TensorBoard when installed),
sample images and answers from fixed prompts to ``samples/``, the final model to ``final/`` in unimm's format.

Entry point: :func:`train_main` (``unimm train --config CFG [key=value ...]``; on several processes
``accelerate launch -m unimm.cli train --config CFG``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..data import MixtureLoader, TaskBatch, TaskSampler, build_streams, caption_dropout_of
from ..data.prefetch import BatchPrefetcher
from ..images import save_images
from ..registry import ConfigError, to_plain
from ..registry.errors import did_you_mean
from .checkpointing import latest_checkpoint, load_checkpoint, read_trainer_state, resolve_resume, save_checkpoint
from .freeze import apply_stage, frozen_parts_to_eval
from .interrupt import DeferredInterrupt, TrainingInterrupted
from .optim import build_optimizer, build_scheduler
from .schema import check_train_section
from .sharding import (check_one_stage_per_launch, configure_accelerate_deepspeed, configure_accelerate_fsdp,
                       register_forward_methods, sharding_engine)

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/unimm",
    "seed": 0,
    "resume": None,  # null | latest | path of a checkpoint folder
    "init_from": None,  # a model folder (released or unimm) to start from instead of random weights
    "mixed_precision": "auto",  # auto (bf16 where supported) | bf16 | fp16 | no
    "batch_size": 1,  # per process and micro-batch
    "grad_accum": 1,
    "max_grad_norm": 1.0,  # 0 or null: no clipping
    "grad_checkpointing": False,
    "lora": None,  # {parts, r, alpha, dropout, target_modules}: peft LoRA adapters (unimm/train/lora.py)
    "log_every": 10,
    "save_every": 1000,  # 0: only at the end of each stage
    "keep_last": 2,
    "stop_after": None,  # stop this launch after this many global steps (checkpointed), e.g. for preemptible jobs
    "only_stages": None,  # names of the stages to run (default: all, in order)
    "sample_every": 0,  # 0: only at the end of each stage (when prompts are given)
    "samples": {"captions": [], "questions": [], "options": {}, "max_new_tokens": 64},
    "tensorboard": True,
    "progress": True,
    "data": {"sources": {}, "max_length": None, "num_threads": 4},
    "stages": [],
}


def train_settings(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """``cfg.train`` checked against :data:`~unimm.train.schema.TRAIN_SCHEMA` (keys, types, ranges, files), then
    merged over :data:`TRAIN_DEFAULTS`; stage mixtures and ``only_stages`` must name defined sources and stages."""
    raw = to_plain(cfg.get("train") or {}) if not isinstance(cfg, DictConfig) else (
        OmegaConf.to_container(cfg.get("train") or OmegaConf.create({}), resolve=True))
    check_train_section(raw)
    if not raw.get("stages"):
        raise ConfigError("train.stages is empty: give at least one stage with steps, trainable, mixture and lr")
    settings = {**TRAIN_DEFAULTS, **raw}
    if settings["mixed_precision"] is False:  # `mixed_precision: no` unquoted
        settings["mixed_precision"] = "no"
    settings["samples"] = {**TRAIN_DEFAULTS["samples"], **(raw.get("samples") or {})}
    settings["data"] = {**TRAIN_DEFAULTS["data"], **(raw.get("data") or {})}
    stages = settings["stages"]
    sources = settings["data"]["sources"] or {}
    for i, stage in enumerate(stages):
        name = stage.setdefault("name", f"stage{i + 1}")
        where = f"train.stages[{name}]"
        for source in stage["mixture"]:
            if source not in sources:
                hint = did_you_mean(source, sources)
                raise ConfigError(
                    f"{where}.mixture.{source}: no such source in train.data.sources.{hint} "
                    f"Sources: {', '.join(sources) or 'none'}"
                )
    names = [s["name"] for s in stages]
    for name in settings["only_stages"] or []:
        if name not in names:
            raise ConfigError(f"train.only_stages: no stage '{name}'; stages: {', '.join(names)}")
    return settings


def finetune_config(recipe: DictConfig, folder_cfg: DictConfig, init_from: str | Path) -> DictConfig:
    """The config of a run that starts from a model folder: the folder's model, processor and sampling sections
    with the recipe's ``train`` section, and the modules both import.

    So a fine-tuning recipe can be only ``train:`` (plus data); ``folder_cfg`` is the folder's own ``config.yaml``
    or, for a released folder, :func:`unimm.pretrained.released_config`. A model section in the recipe does not
    change the loaded model (a warning says so when it differs from the folder's).
    """
    from ..registry.plugins import module_names, record_imports

    if recipe.get("model") is not None and to_plain(recipe.model) != to_plain(folder_cfg.model):
        logger.warning("train.init_from=%s: the model comes from that folder; the config's model section is not "
                       "used (drop it, or drop init_from to build the model from it)", init_from)
    cfg = folder_cfg.copy()
    cfg.train = recipe.get("train")  # replaced, not merged: the folder's own training run is not this one
    record_imports(cfg, module_names(recipe.get("imports")))
    return cfg


class TaskLossModule(nn.Module):
    """Routes a task batch to the model's loss through ``forward``, which DDP and FSDP need to see.

    ``forward(task, inputs)`` -> (loss scalar, dict of detached parts); tasks as in :class:`~unimm.data.TaskBatch`.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, task: str, inputs: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if task == "understanding":
            return self.model.understanding_loss(inputs), {}
        if task == "text":
            return self.model.text_loss(inputs["input_ids"], inputs["attention_mask"], inputs["labels"]), {}
        if task == "generation":
            out = self.model.generation_loss(inputs["prompt_ids"], inputs["prompt_mask"], inputs["images"],
                                             prompt_positions=inputs.get("prompt_positions"))
            return out.loss, dict(out.parts)
        raise ValueError(f"unknown task {task!r}")


def _mixed_precision(setting: str) -> str | None:
    """``auto`` -> bf16 on a CUDA device that supports it, else leave it to ``accelerate config`` (default no)."""
    if setting != "auto":
        return setting
    import os

    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return None  # accelerate launch's own setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


class Trainer:
    """Runs the stages of ``cfg.train`` on ``model``.

    Args:
        cfg: the whole config (``model``, ``processor``, ``train``).
        model: a built model; default ``unimm.build_model(cfg)`` or ``unimm.load_pretrained(train.init_from)``.
        processor: default ``unimm.build_processor(cfg, model)`` (or the loaded folder's).
    """

    def __init__(self, cfg: DictConfig | Mapping[str, Any], model: nn.Module | None = None, processor: Any = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        self.cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
        self.settings = train_settings(self.cfg)
        s = self.settings
        self.accelerator = Accelerator(
            mixed_precision=_mixed_precision(str(s["mixed_precision"])),
            gradient_accumulation_steps=int(s["grad_accum"]),
            # Each micro-batch trains one task, so some trainable parts get no gradient in a given step.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.output_dir = Path(s["output_dir"])
        set_seed(int(s["seed"]))  # identical initial weights on every process
        if model is None:
            model, processor = self._build(processor)
        elif processor is None:
            from ..build import build_processor

            processor = build_processor(self.cfg, model)
        self.model, self.processor = model, processor
        if s["lora"] is not None:
            from .lora import add_adapters

            if self._params_sharded():  # the adapters are saved from the unsharded model
                raise ConfigError("train.lora: not supported under FSDP or DeepSpeed ZeRO-3 yet; train LoRA on one "
                                  "process or with DDP / ZeRO-2 (docs/training.md: a 7B model's LoRA step fits 24 GB)")
            add_adapters(self.model, s["lora"])
        set_seed(int(s["seed"]), device_specific=True)  # different noise and dropout per process
        self.model.to(self.accelerator.device)
        self.streams = build_streams(
            s["data"]["sources"], int(s["seed"]), self.accelerator.process_index, self.accelerator.num_processes
        )
        self.global_step = 0
        self._metrics_file = None
        self._tb = None
        #: Ctrl-C while ``fit`` runs: checkpoint at the end of the step in flight, then stop (see train/interrupt.py)
        self._interrupt = DeferredInterrupt()

    def _build(self, processor: Any) -> tuple[nn.Module, Any]:
        init_from = self.settings["init_from"]
        if init_from:
            from ..pretrained import load_pretrained

            # accelerate places the model; a LoRA run may keep its frozen base in bfloat16 (train.lora.base_dtype)
            dtype = (self.settings["lora"] or {}).get("base_dtype", "float32")
            loaded = load_pretrained(init_from, device="cpu", dtype=dtype)
            self.cfg = finetune_config(self.cfg, loaded.config, init_from)
            return loaded.model.float() if dtype == "float32" else loaded.model, processor or loaded.processor
        from ..build import build_model, build_processor

        model = build_model(self.cfg)
        return model, processor or build_processor(self.cfg, model)

    # -- logging ----------------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self._metrics_file is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._metrics_file = open(self.output_dir / "metrics.jsonl", "a")
            if self.settings["tensorboard"]:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.output_dir / "tensorboard"))
                except ImportError:
                    self._tb = None
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])

    def _reduce_means(self, sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
        """Means across processes of per-key sums (every process has the same keys: tasks are drawn in step);
        the one host synchronisation of a logging window."""
        keys = sorted(sums)
        if not keys:
            return {}
        device = self.accelerator.device
        values = torch.stack([torch.stack([torch.as_tensor(sums[k], device=device).to(torch.float64),
                                           torch.tensor(float(counts[k]), dtype=torch.float64, device=device)])
                              for k in keys])
        values = self.accelerator.reduce(values, reduction="sum")
        return {k: float(values[i, 0] / values[i, 1]) for i, k in enumerate(keys)}

    # -- samples ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self, tag: str) -> None:
        """Images for the fixed captions and answers to the fixed questions, under ``samples/<tag>/`` (main only)."""
        spec = self.settings["samples"]
        if not self.is_main or not (spec["captions"] or spec["questions"]):
            return
        if self._params_sharded():  # the main process alone cannot gather sharded weights
            logger.warning("samples at %s skipped: parameters are sharded (FSDP / ZeRO-3)", tag)
            return
        from ..encoders.transforms import load_image

        folder = self.output_dir / "samples" / tag
        folder.mkdir(parents=True, exist_ok=True)
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            with self.accelerator.autocast():
                if spec["captions"] and model.generator is not None:
                    ids, mask = self.processor.generation_prompts(list(spec["captions"]))
                    images = model.generate_images(ids, mask, pad_id=self.processor.pad_id,
                                                   seed=int(self.settings["seed"]), **(spec["options"] or {}))
                    save_images(images, folder)
                answers = []
                for item in spec["questions"]:
                    conversation = [{"role": "user", "content": item["question"]},
                                    {"role": "assistant", "content": ""}]
                    images = [load_image(item["image"])] if item.get("image") else []
                    batch = self.processor(conversation, images)
                    batch.pop("sft_format", None)
                    ids = model.generate_text(batch, max_new_tokens=int(spec["max_new_tokens"]),
                                              eos_id=self.processor.eos_id, pad_id=self.processor.pad_id)
                    answers.append({**item, "answer": self.processor.decode(ids[0])})
                if answers:
                    (folder / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
        except Exception as err:  # a sampling failure must not end a long run
            logger.warning("writing samples failed at %s: %s", tag, err)
        finally:
            model.train(was_training)
            frozen_parts_to_eval(model)

    # -- one stage --------------------------------------------------------------------------------------------
    def _to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}

    def _generation_image_size(self) -> int | None:
        return self.model.generator.image_size if self.model.generator is not None else None

    def run_stage(self, index: int, stage: dict[str, Any], resume_from: Path | None = None) -> bool:
        """Train one stage (from a checkpoint of it if given). Returns False when ``stop_after`` ended the launch."""
        s, acc = self.settings, self.accelerator
        acc.free_memory()  # forget the previous stage's wrapped model and optimiser
        if s["lora"] is not None:
            from .lora import apply_lora_stage  # the adapters, plus what the stage names

            trainable = apply_lora_stage(self.model, stage)
        else:
            trainable = apply_stage(self.model, stage)
        self.model.backbone.set_grad_checkpointing(bool(s["grad_checkpointing"]))
        optimizer = build_optimizer(self.model, stage)
        scheduler = build_scheduler(optimizer, stage)
        engine = sharding_engine(acc)
        if engine == "fsdp":  # the wrapping the parts declare (unimm/train/sharding.py), FSDP2
            configure_accelerate_fsdp(acc.state.fsdp_plugin, self.model)
        elif engine == "deepspeed":
            configure_accelerate_deepspeed(acc.state.deepspeed_plugin, int(s["batch_size"]), int(s["grad_accum"]),
                                           acc.num_processes)
        wrapped, optimizer = acc.prepare(TaskLossModule(self.model), optimizer)
        if engine == "fsdp":
            register_forward_methods(self.model)
        self._wrapped = wrapped
        loader = MixtureLoader(
            self.streams, TaskSampler(stage["mixture"], seed=int(s["seed"]) + index), self.processor,
            batch_size=int(s["batch_size"]), generation_image_size=self._generation_image_size(),
            caption_dropout=caption_dropout_of(s["data"]["sources"]), max_length=s["data"]["max_length"],
            unconditional_prompt=(self.model.generator.unconditional_prompt if self.model.generator is not None
                                  else None),
            seed=int(s["seed"]), rank=acc.process_index, num_threads=int(s["data"]["num_threads"]),
        )
        start = 0
        if resume_from is not None:
            state = read_trainer_state(resume_from)
            loader.load_state_dict(load_checkpoint(acc, resume_from, scheduler))
            start, self.global_step = int(state["stage_step"]), int(state["global_step"])
            logger.info("resumed from %s at stage %s step %d", resume_from, stage["name"], start)
        self.model.train()
        frozen_parts_to_eval(self.model)
        steps = int(stage["steps"])
        if self.is_main:
            logger.info("stage %s: %d steps, %d trainable parameters in %d tensors", stage["name"], steps,
                        sum(p.numel() for p in self.model.parameters() if p.requires_grad), len(trainable))
        with BatchPrefetcher(loader, (steps - start) * int(s["grad_accum"])) as batches:
            stopped = self._train_steps(index, stage, wrapped, optimizer, scheduler, batches, start, steps)
        self._report_skips(stage["name"], loader)
        if not stopped:
            self.write_samples(f"{stage['name']}-end")
        return not stopped

    def _train_steps(self, index: int, stage: dict[str, Any], wrapped: nn.Module, optimizer: Any, scheduler: Any,
                     batches: BatchPrefetcher, start: int, steps: int) -> bool:
        """Steps ``start`` to ``steps`` of a stage; returns True when ``stop_after`` ended the launch first."""
        s, acc = self.settings, self.accelerator
        params = [p for p in self.model.parameters() if p.requires_grad]
        samples_per_step = int(s["batch_size"]) * int(s["grad_accum"]) * acc.num_processes
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=stage["name"], disable=not (self.is_main and s["progress"]),
                   dynamic_ncols=True)
        sums: dict[str, torch.Tensor] = {}  # on the device: read (one sync) only when a line is logged
        counts: dict[str, int] = defaultdict(int)
        window_start, window_steps = time.perf_counter(), 0
        save_every, log_every = int(s["save_every"] or 0), max(1, int(s["log_every"]))
        for stage_step in range(start, steps):
            grad_norm = None
            for _ in range(int(s["grad_accum"])):
                batch: TaskBatch = batches.next_batch()
                with acc.accumulate(wrapped):
                    loss, parts = wrapped(batch.task, self._to_device(batch.inputs))
                    acc.backward(loss)
                    if acc.sync_gradients:
                        if s["max_grad_norm"]:
                            grad_norm = acc.clip_grad_norm_(params, float(s["max_grad_norm"]))
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                values = {"loss": loss, f"loss/{batch.task}": loss,
                          **{f"{batch.task}/{key}": part for key, part in parts.items()}}
                for key, value in values.items():
                    sums[key] = sums[key] + value.detach() if key in sums else value.detach()
                    counts[key] += 1
            scheduler.step()
            self.global_step += 1
            window_steps += 1
            done = stage_step + 1
            if done % log_every == 0 or done == steps:
                means = self._reduce_means(sums, counts)
                elapsed = time.perf_counter() - window_start
                record = {"step": self.global_step, "stage": stage["name"], "stage_step": done, **means,
                          "lr": scheduler.get_last_lr()[0], "samples_per_s": samples_per_step * window_steps / elapsed,
                          "skipped": batches.skipped}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
                record.update({f"epoch/{name}": round(stream.epoch, 4)
                               for name, stream in self.streams.items() if hasattr(stream, "epoch")})
                self._log(record)
                bar.set_postfix(loss=f"{means.get('loss', math.nan):.4f}", sps=f"{record['samples_per_s']:.1f}")
                sums.clear()
                counts.clear()
                window_steps = 0
            bar.update(1)
            stop = s["stop_after"] is not None and self.global_step >= int(s["stop_after"])
            interrupted = self._interrupt.requested(acc)
            if (save_every and done % save_every == 0) or done == steps or stop or interrupted:
                saved = save_checkpoint(
                    acc, self.output_dir / "checkpoints", self.global_step,
                    {"stage_index": index, "stage": stage["name"], "stage_step": done,
                     "global_step": self.global_step},
                    scheduler, batches.state_dict(), keep_last=int(s["keep_last"]),
                )
            if interrupted:
                bar.close()
                raise TrainingInterrupted(saved, self.global_step, self.is_main)
            if s["sample_every"] and done % int(s["sample_every"]) == 0 and done != steps:
                self.write_samples(f"step-{self.global_step:08d}")
            if stop:
                bar.close()
                return True
            if window_steps == 0:  # do not count checkpoint and sample time in the next throughput window
                window_start = time.perf_counter()
        bar.close()
        return False

    def _report_skips(self, stage: str, loader: MixtureLoader) -> None:
        from accelerate.utils import gather_object

        counts: dict[str, int] = defaultdict(int)
        for part in gather_object([loader.skips.state_dict()]):
            for reason, n in part.items():
                counts[reason] += n
        if self.is_main:
            total = sum(counts.values())
            line = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"
            logger.warning("stage %s: skipped %d bad records (%s)", stage, total, line) if total else None
            self._log({"step": self.global_step, "stage": stage, "skipped_by_reason": dict(counts)})

    # -- the run ----------------------------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Run the stages; returns the folder of the final model, or None if ``stop_after`` ended this launch."""
        s = self.settings
        resume = resolve_resume(s["resume"], self.output_dir / "checkpoints")
        state = read_trainer_state(resume) if resume is not None else None
        check_one_stage_per_launch(sharding_engine(self.accelerator), [
            stage["name"] for index, stage in enumerate(s["stages"])
            if (not s["only_stages"] or stage["name"] in s["only_stages"])
            and (state is None or index >= int(state["stage_index"]))])
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg))
        with self._interrupt:  # Ctrl-C is honoured at the end of a step (run_stage) or after the last stage
            for index, stage in enumerate(s["stages"]):
                if s["only_stages"] and stage["name"] not in s["only_stages"]:
                    continue
                if state is not None and index < int(state["stage_index"]):
                    continue
                from_ckpt = resume if state is not None and index == int(state["stage_index"]) else None
                if not self.run_stage(index, stage, from_ckpt):
                    return None
            if self._interrupt.requested(self.accelerator):  # came after the last step: its checkpoint is there
                latest = latest_checkpoint(self.output_dir / "checkpoints")
                raise TrainingInterrupted(latest, self.global_step, self.is_main)
        self.accelerator.wait_for_everyone()
        final = self.output_dir / "final"
        gathered = self._gathered_state_dict()  # every process takes part when the weights are sharded
        if self.is_main:
            self.save_final(final, gathered)
        self.accelerator.wait_for_everyone()
        if self._metrics_file is not None:
            self._metrics_file.close()
        return final

    def save_final(self, folder: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The trained model in unimm's format (``config.yaml``, ``model.safetensors``, tokenizer); ``state_dict``:
        the gathered weights when they are sharded."""
        from ..pretrained import save_pretrained

        if self.settings["lora"] is not None:  # the adapters and the base folder, not the full weights
            from .lora import fully_trained, save_adapters

            only = self.settings["only_stages"]
            stages = [st for st in self.settings["stages"] if not only or st["name"] in only]
            save_adapters(self.model, folder, self.settings["init_from"], fully_trained(self.model, stages))
            return
        save_pretrained(self.model, self.processor, self.cfg, folder, state_dict=state_dict)

    # -- sharded engines (see unimm/train/sharding.py) ----------------------------------------------------------
    def _params_sharded(self) -> bool:
        engine = sharding_engine(self.accelerator)
        plugin = self.accelerator.state.deepspeed_plugin if engine == "deepspeed" else None
        return engine == "fsdp" or (plugin is not None and int(plugin.zero_stage) == 3)

    def _gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the main process when they are sharded (None when they are not)."""
        if not self._params_sharded() or getattr(self, "_wrapped", None) is None:
            return None
        if sharding_engine(self.accelerator) == "fsdp":
            from .sharding import full_state_dict

            state = full_state_dict(self._wrapped)
        else:
            state = self.accelerator.get_state_dict(self._wrapped)  # ZeRO-3: gathered on the main process
        return {k.removeprefix("model."): v for k, v in (state or {}).items()}  # keys of the TaskLossModule


def train_main(
    cfg: DictConfig | Mapping[str, Any], model: nn.Module | None = None, processor: Any = None
) -> Path | None:
    """Train as ``cfg.train`` says (see docs/training.md); returns the final model folder (None if stopped early)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return Trainer(cfg, model=model, processor=processor).fit()


def end_process_group() -> None:
    """End a launch whose training succeeded: every process waits for the others, then tears down the process
    group (accelerate leaves it up). Left to the interpreter's exit, gloo's threads can abort a finished process
    ("terminate called without an active exception"). Only after success: after a failure some processes may still
    be inside a collective, and a barrier would hang them. A no-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
