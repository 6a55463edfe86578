"""DeepSpeed ZeRO (2/3, with or without CPU offload) for both training stages.

One switch, `TrainConfig.deepspeed` (`--deepspeed zero3`), works under every launcher: `python` (one
process), `accelerate launch`, `torchrun` and the `deepspeed` launcher. The packaged JSON files in
`aesr1/configs/deepspeed/` leave batch sizes, gradient accumulation, clipping and bf16 as "auto";
:func:`deepspeed_config` fills them from the stage's settings, because they must agree with what
the loop does (RAPO normalises its loss by the global mini-batch itself and tells DeepSpeed where an
optimiser step ends, so DeepSpeed's accumulation count only has to satisfy its batch-size check).

A DeepSpeed config handed to `accelerate launch --config_file` (no `--deepspeed`) is used as well;
its "auto" values are filled the same way.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from aesr1.train.config import CONFIG_DIR, TrainConfig

DEEPSPEED_DIR = CONFIG_DIR / "deepspeed"


def packaged_deepspeed_configs() -> list[str]:
    return sorted(p.stem for p in DEEPSPEED_DIR.glob("*.json"))


def resolve_deepspeed_config(name_or_path: str | Path) -> Path:
    """A packaged name ("zero3", "zero3_offload", "zero2") or a JSON file path."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    packaged = DEEPSPEED_DIR / f"{candidate.stem}.json"
    if candidate.parent == Path(".") and packaged.is_file():
        return packaged
    raise FileNotFoundError(
        f"deepspeed config {str(name_or_path)!r} not found (packaged: {', '.join(packaged_deepspeed_configs())})"
    )


def read_deepspeed_config(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve_deepspeed_config(name_or_path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"deepspeed config {str(path)!r} is not valid JSON: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"deepspeed config {str(path)!r} must hold a JSON object")
    return values


def ensure_process_group_env() -> None:
    """Rendezvous variables for a single process started without a launcher (`python -m aesr1.train
    --deepspeed zero3` on one GPU); DeepSpeed would otherwise look for MPI. Launchers set them."""
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )


def refuse_optimizer_sections(values: dict[str, Any]) -> None:
    if "optimizer" in values or "scheduler" in values:
        raise ValueError(
            "deepspeed config: drop the 'optimizer'/'scheduler' sections; the training config's "
            "AdamW and learning-rate schedule are used (the stages build them)"
        )


def zero_stage(values: dict[str, Any]) -> int:
    return int(values.get("zero_optimization", {}).get("stage", 0))


def _fill(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` when it is missing or "auto"; an explicit different value is an error (it would
    silently change the batch or the clipping the run's config states)."""
    current = values.get(key, "auto")
    if current == "auto":
        values[key] = value
    elif current != value:
        raise ValueError(
            f"deepspeed config sets {key} = {current!r} but the training config implies {value!r}: "
            f'set it to "auto" (or drop it) and change the training config instead'
        )


def deepspeed_config(
    values: dict[str, Any],
    *,
    micro_batch_size: int,
    accumulation_steps: int,
    world_size: int,
    max_grad_norm: float,
    bf16: bool,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """`values` with its "auto" entries filled for one stage (a copy; the input is not changed)."""
    refuse_optimizer_sections(values)
    out = copy.deepcopy(values)
    _fill(out, "train_micro_batch_size_per_gpu", micro_batch_size)
    _fill(out, "gradient_accumulation_steps", accumulation_steps)
    _fill(out, "train_batch_size", micro_batch_size * accumulation_steps * world_size)
    _fill(out, "gradient_clipping", max_grad_norm)
    out.setdefault("bf16", {})
    if out["bf16"].get("enabled", "auto") == "auto":
        out["bf16"]["enabled"] = bf16
    if isinstance(out.get("fp16"), dict) and out["fp16"].get("enabled") == "auto":
        out["fp16"]["enabled"] = False
    zero = out.setdefault("zero_optimization", {})
    # transformers' Trainer sizes these buckets from the hidden size; so do we (its formulas).
    if hidden_size is not None:
        for key, value in (
            ("reduce_bucket_size", hidden_size * hidden_size),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden_size * hidden_size)),
            ("stage3_param_persistence_threshold", 10 * hidden_size),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
    for key in [k for k, v in zero.items() if v == "auto"]:
        del zero[key]  # DeepSpeed's own defaults
    return out


def model_hidden_size(model) -> int | None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


def env_deepspeed_config() -> dict[str, Any] | None:
    """The DeepSpeed config `accelerate launch --config_file` passed through the environment."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and path != "none":
        return read_deepspeed_config(path)
    return None


def stage_deepspeed_config(config: TrainConfig) -> dict[str, Any] | None:
    """The run's DeepSpeed config before filling: `config.deepspeed`, else one from the launcher."""
    if config.deepspeed is not None:
        return read_deepspeed_config(config.deepspeed)
    return env_deepspeed_config()


def rapo_accumulation_steps(config: TrainConfig, world_size: int) -> int:
    """Micro-batches per RAPO optimiser step on each process."""
    rapo = config.rapo
    return max(1, math.ceil(rapo.mini_batch_size // world_size / rapo.per_device_train_batch_size))


def make_rapo_accelerator(config: TrainConfig, model=None):
    """The `Accelerator` of the RAPO stage (and of evaluation): DeepSpeed when configured."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin

    values = stage_deepspeed_config(config)
    if values is None:
        return Accelerator(cpu=not torch.cuda.is_available())
    world = PartialState(cpu=not torch.cuda.is_available()).num_processes
    accumulation = rapo_accumulation_steps(config, world)
    filled = deepspeed_config(
        values,
        micro_batch_size=config.rapo.per_device_train_batch_size,
        accumulation_steps=accumulation,
        world_size=world,
        max_grad_norm=config.rapo.max_grad_norm,
        bf16=config.model.dtype == "bfloat16" and torch.cuda.is_available(),
        hidden_size=model_hidden_size(model) if model is not None else None,
    )
    return Accelerator(
        deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=filled), gradient_accumulation_steps=accumulation
    )


def sft_deepspeed_config(config: TrainConfig) -> dict[str, Any] | None:
    """The DeepSpeed config of `config.deepspeed` for trl's `SFTTrainer` (`TrainingArguments(deepspeed=...)`),
    "auto" values left to transformers, which fills them from the same settings. None when unset (a
    config given to `accelerate launch` reaches the Trainer through the environment)."""
    if config.deepspeed is None:
        return None
    values = read_deepspeed_config(config.deepspeed)
    refuse_optimizer_sections(values)
    return values


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def is_zero3(accelerator) -> bool:
    if not is_deepspeed(accelerator):
        return False
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3
