"""Stage 1: AesCoT cold-start supervised fine-tuning (paper Eq. 8) with trl's `SFTTrainer`.

The loss is the NLL of the completion `<think>critique</think><answer>0.xx</answer>` given the
Appendix B prompt and the image. Batches are built by `aesr1.modeling.chat.build_inputs` (the same
layout RAPO uses), passed to `SFTTrainer` as its data collator, so trl and transformers handle
optimisation, gradient accumulation, distributed launch, TensorBoard, checkpoints and `--resume`
(model, optimiser, scheduler, RNG and data position). Every log line also goes to
`sft_metrics.jsonl`.

`ResumableSFTTrainer` makes that resume exact: checkpoints are written to a temporary sibling and
renamed into place with a `COMPLETE` marker (a kill mid-save leaves the previous checkpoint usable),
the model weights of a checkpoint are loaded with their key conversion (transformers' plain
`load_state_dict` silently loads nothing for Qwen2.5-VL, whose saved key names differ from the
module names), and trl's running token count travels with the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aesr1.jsonio import jsonl_objects
from aesr1.prompts import SCORING_PROMPT
from aesr1.train.config import TrainConfig
from aesr1.train.tracking import MetricsLogger


def read_cold_start(path: str | Path) -> list[dict[str, Any]]:
    """The records of an AesCoT JSONL file (interface 2), checked for the keys SFT needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cold-start data {str(path)!r} does not exist (data.cold_start)")
    rows = []
    for number, record in jsonl_objects(path):
        missing = {"image", "prompt", "completion"} - set(record)
        if missing:
            raise ValueError(f"{path}:{number}: cold-start record lacks {sorted(missing)}")
        rows.append(record)
    if not rows:
        raise ValueError(f"cold-start data {str(path)!r} is empty")
    return rows


class ChatCollator:
    """`SFTTrainer` data collator: rows {image, prompt, completion} -> model inputs with SFT labels."""

    def __init__(self, processor, max_completion_length: int | None = None) -> None:
        self.processor = processor
        self.max_completion_length = max_completion_length

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        from aesr1.modeling.chat import build_inputs, model_inputs

        prompts = {row.get("prompt", SCORING_PROMPT) for row in rows}
        if len(prompts) != 1:
            raise ValueError("a cold-start batch mixes prompts; aesr1 trains on one scoring prompt")
        batch = build_inputs(
            self.processor, [row["image"] for row in rows], prompts.pop(), [row["completion"] for row in rows],
            max_completion_length=self.max_completion_length,
        )  # fmt: skip
        out = model_inputs(batch)
        out["labels"] = batch["labels"]
        return out


def _jsonl_callback(logger: MetricsLogger):
    from transformers import TrainerCallback

    class JsonlCallback(TrainerCallback):
        """Mirrors every trainer log line into `sft_metrics.jsonl`."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                logger.log(state.global_step, {k: v for k, v in logs.items() if isinstance(v, (int, float))})

    return JsonlCallback()


#: Trainer state transformers does not checkpoint, saved beside `trainer_state.json`.
EXTRA_STATE = "aesr1_sft_state.json"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The complete `checkpoint-<step>` directories under `directory`, oldest first."""
    from aesr1.train.durable import is_complete

    found = [p for p in Path(directory).glob("checkpoint-*") if p.is_dir() and is_complete(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


_TRAINER_CLASS = None


def resumable_trainer_class():
    """`trl.SFTTrainer` with atomic checkpoints and an exact resume (see the module docstring)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from trl import SFTTrainer

    from aesr1.train.durable import atomic_write_text, clear_leftovers, publish_dir, remove_tree, staging_path

    class ResumableSFTTrainer(SFTTrainer):
        def __init__(self, *args, keep_checkpoints: int, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.keep_checkpoints = keep_checkpoints
            self._staging = False

        @property
        def checkpoint_root(self) -> Path:
            return Path(self.args.output_dir)

        def _get_output_dir(self, trial) -> str:
            # Every process must agree on the staging path: it is derived, not random.
            if self._staging:
                return str(staging_path(self.checkpoint_root / "checkpoints"))
            return super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial) -> None:
            root = self.checkpoint_root
            staged_root = staging_path(root / "checkpoints")
            name = f"checkpoint-{self.state.global_step}"
            if self.args.should_save:
                remove_tree(staged_root)
            self.accelerator.wait_for_everyone()
            self._staging = True
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = False
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                extra = {"total_train_tokens": getattr(self, "_total_train_tokens", 0)}
                atomic_write_text(staged_root / name / EXTRA_STATE, json.dumps(extra))
                publish_dir(staged_root / name, root / name)
                remove_tree(staged_root)
                # transformers' own rotation is off (it would count incomplete checkpoints)
                for old in list_checkpoints(root)[: -self.keep_checkpoints]:
                    remove_tree(old)
            self.accelerator.wait_for_everyone()

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            target = self.model if model is None else model
            names = ("model.safetensors", "model.safetensors.index.json")
            safetensors = any((Path(resume_from_checkpoint) / name).is_file() for name in names)
            if self.is_deepspeed_enabled or self.is_fsdp_enabled or not safetensors:
                super()._load_from_checkpoint(resume_from_checkpoint, model)
            else:
                # from_pretrained applies the checkpoint-to-module key conversion that
                # load_state_dict lacks; strict, so a mismatch fails instead of training on.
                unwrapped = self.accelerator.unwrap_model(target)
                dtype = next(unwrapped.parameters()).dtype
                saved = type(unwrapped).from_pretrained(
                    resume_from_checkpoint, dtype=dtype, local_files_only=True
                )
                unwrapped.load_state_dict(saved.state_dict(), strict=True)
                del saved

        def restore_extra_state(self, checkpoint: Path) -> None:
            extra = checkpoint / EXTRA_STATE
            if extra.is_file() and hasattr(self, "_total_train_tokens"):
                self._total_train_tokens = json.loads(extra.read_text())["total_train_tokens"]

        def clear_leftovers(self) -> None:
            if self.args.should_save:
                clear_leftovers(self.checkpoint_root)
            self.accelerator.wait_for_everyone()

    _TRAINER_CLASS = ResumableSFTTrainer
    return ResumableSFTTrainer


def sft_steps(config: TrainConfig, num_rows: int) -> int:
    """Optimiser steps of the SFT stage (as transformers counts them)."""
    sft = config.sft
    epochs = sft.num_train_epochs
    steps = math.ceil(num_rows / sft.global_batch_size * epochs) if epochs > 0 else 0
    return steps if sft.max_steps is None else min(steps, sft.max_steps)


def save_final(trainer, processor, final: Path, *, save_merged: bool = False) -> None:
    """The fine-tuned model as a `from_pretrained` directory, published whole (see `durable`); a
    LoRA model saves its adapter (and with `save_merged` the merged weights, `aesr1.train.adapters`)."""
    from aesr1.modeling.lora import is_peft_model
    from aesr1.train.adapters import adapter_target, write_merged
    from aesr1.train.durable import publish_dir, remove_tree, staging_path

    staged = staging_path(final)
    lora = is_peft_model(trainer.accelerator.unwrap_model(trainer.model))
    target = adapter_target(staged, save_merged) if lora else staged
    if trainer.is_world_process_zero():
        remove_tree(staged)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(target))  # collective under DeepSpeed ZeRO-3; a PeftModel saves its adapter
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(target))
        if lora and save_merged:
            write_merged(target, staged)
        publish_dir(staged, final)
    trainer.accelerator.wait_for_everyone()


def run_sft(
    config: TrainConfig,
    model,
    processor,
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
    trackers=None,
    base_path: str | Path | None = None,
):
    """Fine-tune `model` on the cold-start `rows`; saves `<output_dir>/final` and returns the trainer.

    With `model.lora.r` set, `model` gets a fresh LoRA adapter (`aesr1.modeling.lora.apply_lora`)
    and only the adapter trains; `base_path`, the directory `model`'s weights load from, is
    recorded in the saved adapter.
    `callbacks`: extra `transformers.TrainerCallback`s (e.g. a step timer) after the JSONL logger.
    `trackers`: the run's experiment trackers (`aesr1.train.trackers.Trackers`), if any.
    """
    from datasets import Dataset
    from trl import SFTConfig

    from aesr1.modeling.freeze import freeze_vision
    from aesr1.modeling.lora import apply_lora, base_model, is_peft_model
    from aesr1.train.distributed import sft_deepspeed_config

    sft = config.sft
    output_dir = Path(output_dir)
    accumulation = sft.gradient_accumulation_steps(int(os.environ.get("WORLD_SIZE", "1")))
    total_steps = sft_steps(config, len(rows))
    on_gpu = torch.cuda.is_available()
    dtype = config.model.dtype
    args = SFTConfig(
        output_dir=str(output_dir),
        seed=config.seed,
        data_seed=config.seed,
        per_device_train_batch_size=sft.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=sft.num_train_epochs,
        max_steps=sft.max_steps if sft.max_steps is not None else -1,
        learning_rate=sft.learning_rate,
        lr_scheduler_type=sft.lr_scheduler_type,
        warmup_steps=int(round(sft.warmup_ratio * total_steps)),
        weight_decay=sft.weight_decay,
        max_grad_norm=sft.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=None,  # ResumableSFTTrainer rotates complete checkpoints only
        # MetricsLogger writes TensorBoard and feeds the trackers: trl's callbacks would name the
        # same metric differently per service.
        report_to=[],
        use_cpu=not on_gpu,
        bf16=on_gpu and dtype == "bfloat16",
        fp16=on_gpu and dtype == "float16",
        gradient_checkpointing=config.model.gradient_checkpointing,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        max_length=None,
        disable_tqdm=not config.progress,
        dataloader_num_workers=0,
        deepspeed=sft_deepspeed_config(config),
    )
    lora = config.model.lora
    if lora.r is not None and not is_peft_model(model):
        model = apply_lora(model, lora, base_path=base_path)
    freeze_vision(base_model(model), tower=sft.freeze_vision_tower, projector=sft.freeze_projector)
    dataset = Dataset.from_list(
        [
            {"image": r["image"], "prompt": r.get("prompt", SCORING_PROMPT), "completion": r["completion"]}
            for r in rows
        ]
    )
    logger = MetricsLogger(
        output_dir, "sft", enabled=True, tensorboard="tensorboard" in config.report_to, trackers=trackers
    )
    trainer = resumable_trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ChatCollator(processor, sft.max_completion_length),
        processing_class=processor,
        callbacks=[_jsonl_callback(logger), *callbacks],
        keep_checkpoints=config.save_total_limit,
    )
    trainer.clear_leftovers()
    checkpoint = None
    if resume:
        found = list_checkpoints(output_dir)
        checkpoint = found[-1] if found else None
    step = int(checkpoint.name.split("-")[-1]) if checkpoint is not None else 0
    if trainer.is_world_process_zero():
        # Rows past the restored step (all of them when nothing is restored) are logged again, and
        # so is the end-of-training summary (logged after the last checkpoint).
        logger.truncate_after(step, also=lambda record: "train_runtime" in record)
        if checkpoint is not None:
            print(f"[sft] resuming from {checkpoint}")
    if checkpoint is not None:
        trainer.restore_extra_state(checkpoint)
    trainer.train(resume_from_checkpoint=None if checkpoint is None else str(checkpoint))
    save_final(trainer, processor, output_dir / "final", save_merged=lora.save_merged)
    logger.close()
    return trainer
