"""Stage 1: AesCoT cold-start supervised fine-tuning (paper Eq. 8) with trl's `SFTTrainer`.

The loss is the NLL of the completion `<think>critique</think><answer>0.xx</answer>` given the
Appendix B prompt and the image. Batches are built by `aesr1.modeling.chat.build_inputs` (the same
layout RAPO uses), passed to `SFTTrainer` as its data collator, so trl and transformers handle
optimisation, gradient accumulation, distributed launch, TensorBoard, checkpoints and `--resume`
(model, optimiser, scheduler, RNG and data position). Every log line also goes to
`sft_metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aesr1.prompts import SCORING_PROMPT
from aesr1.train.config import TrainConfig
from aesr1.train.tracking import MetricsLogger


def read_cold_start(path: str | Path) -> list[dict[str, Any]]:
    """The records of an AesCoT JSONL file (interface 2), checked for the keys SFT needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cold-start data {str(path)!r} does not exist (data.cold_start)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
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


def sft_steps(config: TrainConfig, num_rows: int, world_size: int = 1) -> int:
    """Optimiser steps of the SFT stage (as transformers counts them)."""
    sft = config.sft
    steps = math.ceil(num_rows / sft.global_batch_size * sft.epochs) if sft.epochs > 0 else 0
    return steps if sft.max_steps is None else min(steps, sft.max_steps)


def run_sft(
    config: TrainConfig,
    model,
    processor,
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    *,
    resume: bool = False,
    callbacks: Sequence[Any] = (),
):
    """Fine-tune `model` on the cold-start `rows`; saves `<output_dir>/final` and returns the trainer.

    `callbacks`: extra `transformers.TrainerCallback`s (e.g. a step timer) after the JSONL logger.
    """
    from datasets import Dataset
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    from aesr1.modeling.freeze import freeze_vision
    from aesr1.train.distributed import sft_deepspeed_config

    sft = config.sft
    output_dir = Path(output_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = sft.global_batch_size // (sft.micro_batch_size * world)
    if accumulation < 1 or sft.global_batch_size % (sft.micro_batch_size * world):
        raise ValueError(
            f"sft.global_batch_size ({sft.global_batch_size}) must be a multiple of sft.micro_batch_size x "
            f"processes ({sft.micro_batch_size} x {world})"
        )
    total_steps = sft_steps(config, len(rows), world)
    on_gpu = torch.cuda.is_available()
    dtype = config.model.dtype
    args = TrlSFTConfig(
        output_dir=str(output_dir),
        seed=config.seed,
        data_seed=config.seed,
        per_device_train_batch_size=sft.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=sft.epochs,
        max_steps=sft.max_steps if sft.max_steps is not None else -1,
        learning_rate=sft.learning_rate,
        lr_scheduler_type=sft.lr_scheduler,
        warmup_steps=int(round(sft.warmup_ratio * total_steps)),
        weight_decay=sft.weight_decay,
        max_grad_norm=sft.max_grad_norm,
        logging_steps=config.log_interval,
        save_strategy="steps",
        save_steps=config.save_interval,
        save_total_limit=config.save_total_limit,
        report_to=["tensorboard"] if config.tensorboard else [],
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
    freeze_vision(model, tower=sft.freeze_vision_tower, projector=sft.freeze_projector)
    dataset = Dataset.from_list(
        [
            {"image": r["image"], "prompt": r.get("prompt", SCORING_PROMPT), "completion": r["completion"]}
            for r in rows
        ]
    )
    # transformers 5 reads the TensorBoard directory from the environment only.
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(output_dir / "tensorboard" / "sft"))
    logger = MetricsLogger(output_dir, "sft", enabled=True, tensorboard=False)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ChatCollator(processor, sft.max_completion_length),
        processing_class=processor,
        callbacks=[_jsonl_callback(logger), *callbacks],
    )
    checkpoint = None
    if resume:
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if checkpoint is not None:
            step = int(Path(checkpoint).name.split("-")[-1])
            if trainer.is_world_process_zero():
                logger.truncate_after(step)
                print(f"[sft] resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    final = output_dir / "final"
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(final))
    logger.close()
    return trainer
