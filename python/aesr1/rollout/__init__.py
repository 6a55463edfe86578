"""Fast rollouts: a static-KV-cache decode engine for Qwen2.5-VL sampling.

- `generate_rollouts`: completions with their sampling log-probs (`rollout.batch["sampling_logprobs"]`);
  the engine on CUDA, `generate` on CPU. `generate_rollouts_hf` always uses `generate` (it is also
  `aesr1.generation.generate_rollouts`).
- `DecodeEngine` / `EngineOptions`: prefill through the full model (vision tower, multimodal rotary
  positions), then fixed-shape decode steps over a preallocated KV cache, one CUDA graph per batch
  bucket, on-device sampling, EOS stop and compaction of finished rows.
- `RolloutConfig` / `make_rollout_fn`: the backend switch ("engine" | "generate" | "vllm").

The settings classes (`aesr1.rollout.config`) import without torch, so the training config can hold
them; everything else is imported from its submodule on first use.
"""

from aesr1.rollout.config import ROLLOUT_BACKENDS, EngineOptions, RolloutConfig

#: Where each of the other public names lives (those modules import torch).
_SUBMODULE_OF = {
    **dict.fromkeys(
        ("ENGINE_CHOICES", "engine_blockers", "engine_for", "generate_rollouts", "generate_rollouts_hf",
         "release_engines", "sampling_params"),
        "api",
    ),
    **dict.fromkeys(("make_rollout_fn", "require_vllm"), "backends"),
    **dict.fromkeys(("DecodeEngine", "DecodeResult", "bucket_sizes", "supports_model"), "engine"),
    **dict.fromkeys(("SamplingParams", "choose_tokens", "process_logits"), "sampling"),
}  # fmt: skip

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


def __getattr__(name: str):
    submodule = _SUBMODULE_OF.get(name)
    if submodule is None:
        raise AttributeError(f"module 'aesr1.rollout' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"aesr1.rollout.{submodule}"), name)
    globals()[name] = value
    return value
