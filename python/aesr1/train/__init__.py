"""Two-stage Aes-R1 training (paper §3.3, Appendix C): AesCoT cold-start SFT, then RAPO.

    python -m aesr1.train                       # embedded CPU default, minutes
    accelerate launch -m aesr1.train --config appendix_c_qwen2_5_vl_7b --model DIR --data SPEC \\
        --cold-start aescot.jsonl

In Python: `run_pipeline(config)`, or the stages alone: `run_sft(...)` (trl `SFTTrainer`) and
`RAPOTrainer(...).train()` (own loop on accelerate). Imports are lazy: torch and transformers load
only when a stage runs.
"""

from aesr1.train.config import (
    DataConfig,
    HeldOutEvalConfig,
    ModelConfig,
    RAPOConfig,
    RewardMixConfig,
    SFTStageConfig,
    TrainConfig,
    config_from_dict,
    embedded_default,
    load_config,
)

__all__ = [
    "DataConfig",
    "HeldOutEvalConfig",
    "ModelConfig",
    "RAPOConfig",
    "RAPOTrainer",
    "RewardMixConfig",
    "SFTStageConfig",
    "TrainConfig",
    "config_from_dict",
    "embedded_default",
    "load_config",
    "run_pipeline",
    "run_sft",
]


def __getattr__(name: str):
    from aesr1.train import config

    if name in config.RENAMED_CLASSES:  # deprecated names, with config's warning
        return getattr(config, name)
    if name == "RAPOTrainer":
        from aesr1.train.rapo import RAPOTrainer

        return RAPOTrainer
    if name == "run_pipeline":
        from aesr1.train.pipeline import run_pipeline

        return run_pipeline
    if name == "run_sft":
        from aesr1.train.sft import run_sft

        return run_sft
    raise AttributeError(f"module 'aesr1.train' has no attribute {name!r}")
