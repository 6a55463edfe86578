"""Fast rollouts: a static-KV-cache decode engine for Qwen2.5-VL sampling.

- `generate_rollouts`: completions with their sampling log-probs (`rollout.batch["sampling_logprobs"]`);
  the engine on CUDA, `generate` on CPU. `generate_rollouts_hf` always uses `generate` (it is also
  `aesr1.generation.generate_rollouts`).
- `DecodeEngine` / `EngineOptions`: prefill through the full model (vision tower, multimodal rotary
  positions), then fixed-shape decode steps over a preallocated KV cache, one CUDA graph per batch
  bucket, on-device sampling, EOS stop and compaction of finished rows.
- `RolloutConfig` / `make_rollout_fn`: the `rollout_backend` switch ("engine" | "generate" | "vllm").
"""

from aesr1.rollout.api import (
    ENGINE_CHOICES,
    engine_blockers,
    engine_for,
    generate_rollouts,
    generate_rollouts_hf,
    release_engines,
    sampling_params,
)
from aesr1.rollout.backends import ROLLOUT_BACKENDS, RolloutConfig, make_rollout_fn, require_vllm
from aesr1.rollout.engine import DecodeEngine, DecodeResult, EngineOptions, bucket_sizes, supports_model
from aesr1.rollout.sampling import SamplingParams, choose_tokens, process_logits

__all__ = [
    "ENGINE_CHOICES",
    "ROLLOUT_BACKENDS",
    "DecodeEngine",
    "DecodeResult",
    "EngineOptions",
    "RolloutConfig",
    "SamplingParams",
    "bucket_sizes",
    "choose_tokens",
    "engine_blockers",
    "engine_for",
    "generate_rollouts",
    "generate_rollouts_hf",
    "make_rollout_fn",
    "process_logits",
    "release_engines",
    "require_vllm",
    "sampling_params",
    "supports_model",
]
