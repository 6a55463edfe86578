"""Settings of the rollout backends and of the decode engine.

Imports no torch, so that the training config (`aesr1.train.config.RAPOConfig.rollout`) can hold a
`RolloutConfig` and stay cheap to import; the classes are re-exported by `aesr1.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ROLLOUT_BACKENDS", "VLLM_MODES", "EngineOptions", "RolloutConfig"]

ROLLOUT_BACKENDS = ("engine", "generate", "vllm")
VLLM_MODES = ("colocate", "server")


@dataclass
class EngineOptions:
    """Settings of the decode engine.

    Attributes:
        cuda_graphs: capture each bucket's decode step as a CUDA graph (CUDA devices only).
        warmup_steps: eager runs of a bucket's step before it is captured (they do real work).
        kv_block: the KV capacity (prompt + completion - 1 columns) is rounded up to a multiple of
            this, so calls whose prompts differ a little in length reuse buffers and graphs.
        check_every: decode steps between host checks for finished rows (stop and compaction);
            None: 1 on CPU (checks are free there), 8 on CUDA (each check is a synchronisation).
        min_bucket: smallest bucket; compaction never goes below it.
        compile: run the decode-step forward through `torch.compile` (inductor fuses the small
            elementwise kernels of norms, rotary and MLP, which a CUDA graph alone still launches
            one by one; compiled once per bucket size during the warm-up steps, before capture).
            Off by default: compiling a 3B model for every bucket takes minutes.
    """

    cuda_graphs: bool = True
    warmup_steps: int = 2
    kv_block: int = 128
    check_every: int | None = None
    min_bucket: int = 1
    compile: bool = False

    def __post_init__(self) -> None:
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1, got {self.warmup_steps}")
        if self.kv_block < 1:
            raise ValueError(f"kv_block must be >= 1, got {self.kv_block}")
        if self.check_every is not None and self.check_every < 1:
            raise ValueError(f"check_every must be >= 1 or None, got {self.check_every}")
        if self.min_bucket < 1:
            raise ValueError(f"min_bucket must be >= 1, got {self.min_bucket}")


@dataclass
class RolloutConfig:
    """Which implementation samples the rollouts, and its settings (the `rapo.rollout` section of
    the training config). The `vllm_*` names are those of trl's `GRPOConfig`.

    Attributes:
        backend: "engine" (default; the engine on CUDA, `generate` on CPU), "generate" or "vllm"
            (see `aesr1.rollout.backends`). trl's counterpart is the switch `use_vllm`.
        engine: options of the decode engine (CUDA graphs, KV block, check interval, buckets).
        vllm_mode: "colocate" (vLLM shares this process and GPU) or "server" (a running
            `trl vllm-serve`, reached at `vllm_server_base_url`).
        vllm_gpu_memory_utilization: GPU memory fraction vLLM may take in colocate mode.
        vllm_server_base_url: server URL in server mode, e.g. "http://localhost:8000".
        vllm_kwargs: further keyword arguments of trl's `VLLMGeneration` (e.g. `max_model_length`,
            `enable_sleep_mode`, `tensor_parallel_size`).
    """

    backend: Literal["engine", "generate", "vllm"] = "engine"
    engine: EngineOptions = field(default_factory=EngineOptions)
    vllm_mode: Literal["colocate", "server"] = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_server_base_url: str | None = None
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in ROLLOUT_BACKENDS:
            raise ValueError(f"backend must be one of {ROLLOUT_BACKENDS}, got {self.backend!r}")
        if self.vllm_mode not in VLLM_MODES:
            raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError(
                f"vllm_gpu_memory_utilization must lie in (0, 1], got {self.vllm_gpu_memory_utilization}"
            )
        if self.backend == "vllm" and self.vllm_mode == "server" and not self.vllm_server_base_url:
            raise ValueError("backend 'vllm' with vllm_mode 'server' needs vllm_server_base_url")
