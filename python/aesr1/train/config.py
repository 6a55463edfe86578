"""Configuration of the two-stage Aes-R1 training (paper §3.3, Appendix C), trl-style dataclasses.

Defaults follow Appendix C (Qwen2.5-VL-7B-Instruct): SFT 1 epoch, lr 1e-5, global batch 64; RAPO with
K = 4, lr 1e-6 decaying linearly, mini-batch 32, 10 epochs, max completion 1024 tokens,
epsilon_high = 0.28, beta = 0.01, sigma = 0.1, reward = rank + abs. :func:`embedded_default` overrides
sizes and learning rates so that `python -m aesr1.train` runs on a 2-core CPU in minutes.

Settings that trl's `SFTConfig` / `GRPOConfig` (and transformers' `TrainingArguments`) also have
carry trl's names (`num_train_epochs`, `per_device_train_batch_size`, `lr_scheduler_type`,
`epsilon`, `save_steps`, ...); the others, and the few that share a name but not a meaning, are
listed in the docstrings of `SFTStageConfig` and `RAPOConfig`. Keys renamed since the previous
release still load, with a FutureWarning (`DEPRECATED_KEYS`). The defaults of the RAPO loss
settings are those of `aesr1.loss.RapoLossConfig`, and the rollout section is
`aesr1.rollout.RolloutConfig`.

A YAML file holds any subset of the sections below; an unknown key is an error naming it::

    seed: 0
    output_dir: runs/aesr1
    model: {name_or_path: /models/Qwen2.5-VL-7B-Instruct, dtype: bfloat16}
    data: {spec: "ava:/data/AVA,tad66k:/data/TAD66K"}
    sft: {num_train_epochs: 1, learning_rate: 1.0e-5}
    rapo: {num_generations: 4, learning_rate: 1.0e-6, rollout: {backend: engine}}
    reward: {rank: 1.0, abs: 1.0}
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aesr1.loss_config import AGGREGATIONS, BACKENDS, RapoLossConfig
from aesr1.rollout.config import RolloutConfig

#: Packaged YAML configs (Appendix C and the Table 2 / Table 3 variants).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


#: Qwen2.5-VL's language-model projections; `LoraConfig.target_modules` matches them outside the
#: vision tower (`visual.`), which a LoRA run keeps frozen.
QWEN2_5_VL_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraConfig:
    """Low-rank adapters (peft's LoRA) on the language model, for both stages.

    Attributes:
        r: adapter rank; None (default) trains every weight (full fine-tuning), an integer >= 1
            turns LoRA on: the cold start trains an adapter and RAPO continues it, with every base
            weight frozen. RAPO's reference (beta > 0) is then no second model: the same weights
            with the cold-start adapter (a frozen copy of it), or with no adapter when RAPO starts
            from the base weights (`aesr1.modeling.lora`).
        alpha: LoRA scaling numerator (peft's `lora_alpha`); None means 2 r.
        dropout: dropout on the adapter input (peft's `lora_dropout`).
        target_modules: module-name suffixes of linear layers to adapt, matched in the language
            model only (the vision tower and lm_head are never adapted); default: Qwen2.5-VL's
            attention and MLP projections. A suffix that matches nothing is an error.
        modules_to_save: module-name suffixes of modules outside the vision tower trained in full
            beside the adapters (peft's `modules_to_save`), e.g. `lm_head`; default none. The
            embedded tiny model needs `lm_head`: its random, frozen output layer can only give
            near-uniform token distributions, which low-rank updates of the blocks cannot sharpen.
            A trained lm_head needs `rapo.fused_linear: false` (the fused loss reads its weight).
        merge_before_rapo: merge the cold-start adapter into the weights and start a fresh adapter
            for RAPO (the reference is then the merged cold-start model, the fresh adapter's base
            weights), instead of continuing it.
        save_merged: the final model directories (`sft/final`, `rapo/final`) hold full weights with
            the adapter merged in (`--merge`), the adapter itself in their `adapter/` folder; by
            default they hold the adapter alone (with the processor and model card), which
            `aesr1 eval` / `aesr1 score` load on the base model its `adapter_config.json` names.
    """

    r: int | None = None
    alpha: float | None = None
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(QWEN2_5_VL_LORA_TARGETS))
    modules_to_save: list[str] = field(default_factory=list)
    merge_before_rapo: bool = False
    save_merged: bool = False


@dataclass
class ModelConfig:
    """The policy model.

    Attributes:
        name_or_path: local directory of a Qwen2.5-VL-style checkpoint (never downloaded). None builds
            the tiny random-initialised Qwen2.5-VL of `aesr1.modeling.tiny` (the embedded default).
        dtype: weight dtype for a real checkpoint ("bfloat16", "float16", "float32" or "auto").
        attn_implementation: "auto" (default): "flash_attention_2" on CUDA when the `flash-attn`
            extra is installed, else "sdpa"; or any transformers name ("sdpa", "eager",
            "flash_attention_2"); None lets transformers choose.
        gradient_checkpointing: trade compute for activation memory (large models).
        tiny_seed: weight seed of the tiny model.
        tiny_vocab_size: BPE vocabulary of the tiny model's tokenizer (trained on the cold-start text).
        tiny_hidden_size / tiny_layers / tiny_intermediate_size: tiny text decoder sizes.
        tiny_split_digits: pre-split numbers into single digits, as Qwen2's tokenizer does, so a
            score is "0" "." digit digit: a 10-way choice for the tenths digit instead of one 100-way
            token, which a tiny model learns several times faster.
        lora: low-rank adapters instead of full fine-tuning (`LoraConfig`; off by default).
    """

    name_or_path: str | None = None
    dtype: str = "bfloat16"
    attn_implementation: str | None = "auto"
    gradient_checkpointing: bool = False
    tiny_seed: int = 0
    tiny_vocab_size: int = 1024
    tiny_hidden_size: int = 64
    tiny_layers: int = 2
    tiny_intermediate_size: int = 128
    tiny_split_digits: bool = True
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    """Training and held-out data.

    Attributes:
        spec: dataset spec as for `--data` (`aesr1.data.parse_data_spec`): comma-separated `name:root`
            entries, or `synthetic` / `synthetic:<dir>` for the built-in dataset.
        synthetic_n: images of the built-in synthetic dataset.
        synthetic_image_size: side of the synthetic images in pixels.
        test_fraction: held-out share where a dataset has no official split (Appendix C: 9:1).
        split_seed: seed of that split (Appendix C: a fixed seed).
        max_train_images: cap on RAPO training images (None = all).
        max_eval_images: cap on held-out images evaluated (None = all).
        cold_start: AesCoT JSONL for stage 1 (interface 2). None builds it with the template expert
            (synthetic data only) into `<output_dir>/aescot.jsonl`.
        cold_start_per_bin: items per score bin when building the cold-start data (AesCoT-3K: 1000).
    """

    spec: str = "synthetic"
    synthetic_n: int = 3000
    synthetic_image_size: int = 56
    test_fraction: float = 0.1
    split_seed: int = 0
    max_train_images: int | None = None
    max_eval_images: int | None = None
    cold_start: str | None = None
    cold_start_per_bin: int = 1000


@dataclass
class SFTStageConfig:
    """Stage 1, AesCoT cold start (Eq. 8: NLL of critique and score), run by trl's `SFTTrainer`.

    Names are those of trl's `SFTConfig` where it has the setting. Ours without a trl name, or with
    a different meaning:

    ===========================  ====================================================================
    ours                         trl `SFTConfig`
    ===========================  ====================================================================
    global_batch_size            per_device_train_batch_size x gradient_accumulation_steps x
                                 processes (we derive gradient_accumulation_steps from it)
    warmup_ratio                 passed as warmup_steps = round(warmup_ratio x total steps)
    max_completion_length        none: trl's max_length caps prompt + completion; ours the completion
    freeze_vision_tower / ...    none (the released cold-start config freezes both)
    ===========================  ====================================================================

    Attributes:
        num_train_epochs: passes over the cold-start data (Appendix C: 1; Table 3 also tries 0, 2, 10).
            0 skips the stage.
        max_steps: stop after this many optimiser steps (None = run all epochs).
        learning_rate: peak AdamW learning rate (Appendix C: 1e-5).
        global_batch_size: sequences per optimiser step over all processes (Appendix C: 64).
        per_device_train_batch_size: sequences per forward pass per process (gradient accumulation
            fills the rest of the global batch).
        lr_scheduler_type: transformers scheduler name; the paper does not state it.
        warmup_ratio: share of steps spent warming up the learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping norm.
        max_completion_length: truncate cold-start completions to this many tokens.
        freeze_vision_tower: keep the ViT frozen (the released cold-start config freezes it).
        freeze_projector: keep the patch merger (vision -> text projector) frozen (idem).
    """

    num_train_epochs: float = 1.0
    max_steps: int | None = None
    learning_rate: float = 1e-5
    global_batch_size: int = 64
    per_device_train_batch_size: int = 8
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_completion_length: int = 1024
    freeze_vision_tower: bool = False
    freeze_projector: bool = False

    def gradient_accumulation_steps(self, world_size: int = 1) -> int:
        """Micro-batches per optimiser step on each of `world_size` processes; an error naming the
        settings when the global batch does not split into whole micro-batches."""
        per_pass = self.per_device_train_batch_size * world_size
        if self.global_batch_size % per_pass:
            raise ValueError(
                f"sft.global_batch_size ({self.global_batch_size}) must be a multiple of "
                f"sft.per_device_train_batch_size x processes ({self.per_device_train_batch_size} x {world_size})"
            )
        return self.global_batch_size // per_pass


@dataclass
class RewardMixConfig:
    """RAPO reward (Eq. 3-7, 13): a weighted sum of components; Table 2's rows are weight settings.

    Attributes:
        rank: weight of the relative rank reward (Eq. 4).
        abs: weight of the absolute error reward (Eq. 6).
        binary: weight of the binary reward (Eq. 13).
        format: weight of the optional format reward.
        sigma: width of the absolute reward (Appendix C: 0.1).
        binary_threshold: |o - s| below which the binary reward is 1.
        rank_scope: "global" compares each image with every image of the whole generation batch,
            gathered across processes; "local" reproduces the released code's per-device comparison.
        ties: "strict" (Eq. 5: p_c = 1 when s_i >= s_j) or "half" (0.5 on equal ground truth).
    """

    rank: float = 1.0
    abs: float = 1.0
    binary: float = 0.0
    format: float = 0.0
    sigma: float = 0.1
    binary_threshold: float = 0.1
    rank_scope: Literal["global", "local"] = "global"
    ties: Literal["strict", "half"] = "strict"


@dataclass
class RAPOConfig:
    """Stage 2, Relative-Absolute Policy Optimization (Eq. 9-12, Appendix C).

    Batch sizes count completions (as in trl); each image contributes `num_generations` of them, so
    they must be multiples of it. Names are those of trl's `GRPOConfig` where it has the setting.
    Ours without a trl name, or with a different meaning:

    =========================  ======================================================================
    ours                       trl `GRPOConfig`
    =========================  ======================================================================
    mini_batch_size            per_device_train_batch_size x gradient_accumulation_steps x processes
    steps_per_generation       same name, other unit: ours counts optimiser steps, trl's counts
                               micro-batches (trl's = ours x gradient_accumulation_steps)
    epsilon / epsilon_high     same; the loss (`aesr1.loss.RapoLossConfig`) calls them eps_low /
                               eps_high, and trl's epsilon_high=None (= epsilon) has no equivalent
    aggregation                loss_type: "seq-mean-token-mean" = "grpo", "token-mean" = "dapo",
                               "seq-mean-token-sum-norm" = "dr_grpo"
    rollout.backend            use_vllm (a switch between three backends here)
    rollout.vllm_*             same names (vllm_mode, vllm_gpu_memory_utilization, ...)
    kl_clamp, loss_backend,    none
    fused_linear,
    shuffle_mini_batches,
    freeze_*
    =========================  ======================================================================

    Attributes:
        num_train_epochs: passes over the RAPO training images (Appendix C: 10). 0 skips the stage.
        max_steps: stop after this many optimiser steps (None = run all epochs).
        num_generations: K completions per image (Appendix C: 4).
        learning_rate: peak AdamW learning rate (Appendix C: 1e-6).
        lr_scheduler_type: transformers scheduler name (Appendix C: linear decay).
        warmup_steps: learning-rate warm-up steps.
        mini_batch_size: completions per optimiser step over all processes (Appendix C: 32).
        steps_per_generation: optimiser steps fed by one generation batch of
            `mini_batch_size * steps_per_generation` completions. Old log-probs come from the policy
            that generated them, so steps after the first are off-policy and the clip acts.
        per_device_train_batch_size: completions per forward pass per process.
        max_completion_length: cap on sampled completion tokens (Appendix C: 1024); also Dr. GRPO's
            normaliser for aggregation "seq-mean-token-sum-norm".
        temperature / top_p / top_k: rollout sampling; the loss uses the same temperature.
        epsilon / epsilon_high: ratio clip range 1 - epsilon .. 1 + epsilon_high (DAPO clip-higher:
            0.28).
        beta: k3 KL coefficient against the frozen SFT checkpoint (Appendix C: 0.01).
        aggregation: loss aggregation of `aesr1.loss.rapo_loss` (Eq. 10: "seq-mean-token-mean").
        kl_clamp: verl-style clamps on the KL term.
        loss_backend: "auto" (Triton on CUDA), "triton" or "torch".
        weight_decay / max_grad_norm: AdamW weight decay and gradient clipping norm.
        shuffle_mini_batches: shuffle completions of a generation batch before cutting mini-batches.
        fused_linear: compute the loss and the old/reference log-probs from the last hidden states
            and the lm_head weight in chunks (`aesr1.loss.rapo_loss_from_hidden`), so no
            (B, T, vocabulary) logits tensor exists in the step; under ZeRO-3 the partitioned lm_head
            weight is gathered for those GEMMs. None (default) = on for CUDA, off on CPU.
        freeze_vision_tower / freeze_projector: as in `SFTStageConfig`, for the RAPO stage.
        rollout: which backend samples the rollouts and its settings (`aesr1.rollout.RolloutConfig`):
            `backend` "engine" (the static-cache decode engine of `aesr1.rollout` on CUDA, `generate`
            on CPU), "generate" (transformers `generate`) or "vllm" (trl's vLLM generation, with
            `vllm_mode` "colocate" or "server" at `vllm_server_base_url`); `engine.cuda_graphs` lets
            the engine capture its decode steps as CUDA graphs.
    """

    num_train_epochs: float = 10.0
    max_steps: int | None = None
    num_generations: int = 4
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    mini_batch_size: int = 32
    steps_per_generation: int = 4
    per_device_train_batch_size: int = 8
    max_completion_length: int = 1024
    temperature: float = RapoLossConfig.temperature
    top_p: float = 1.0
    top_k: int = 0
    epsilon: float = RapoLossConfig.eps_low
    epsilon_high: float = RapoLossConfig.eps_high
    beta: float = RapoLossConfig.beta
    aggregation: str = RapoLossConfig.aggregation
    kl_clamp: bool = RapoLossConfig.kl_clamp
    loss_backend: str = RapoLossConfig.backend
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    shuffle_mini_batches: bool = True
    fused_linear: bool | None = None
    freeze_vision_tower: bool = False
    freeze_projector: bool = False
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    @property
    def generation_batch_size(self) -> int:
        """Completions sampled per generation round over all processes."""
        return self.mini_batch_size * self.steps_per_generation

    @property
    def images_per_generation(self) -> int:
        return self.generation_batch_size // self.num_generations

    def loss_config(self) -> RapoLossConfig:
        """The settings `aesr1.loss.rapo_loss` trains this stage with (every loss setting comes from
        here; trl's `epsilon` / `epsilon_high` are the loss's `eps_low` / `eps_high`)."""
        return RapoLossConfig(
            eps_low=self.epsilon,
            eps_high=self.epsilon_high,
            beta=self.beta,
            temperature=self.temperature,
            aggregation=self.aggregation,
            kl_clamp=self.kl_clamp,
            max_completion_length=self.max_completion_length,
            backend=self.loss_backend,
        )


@dataclass
class HeldOutEvalConfig:
    """Held-out evaluation during training (PLCC / SRCC, paper §4.1); the YAML section `eval`.
    (`aesr1.eval.EvalConfig` configures the standalone `python -m aesr1.eval` instead.)

    Attributes:
        eval_steps: evaluate every this many RAPO optimiser steps (0 = only before and after stages).
        num_samples: completions per image; the prediction is the mean of the parsed scores (trl's
            `num_generations_eval`).
        temperature: 0 = greedy decoding, else sampling temperature.
        batch_size: images per `generate` call (trl's `per_device_eval_batch_size` counts completions).
        max_completion_length: cap on evaluation completion tokens.
        evaluate_untrained: also evaluate the model before any training (the table's first row).
    """

    eval_steps: int = 50
    num_samples: int = 1
    temperature: float = 0.0
    batch_size: int = 32
    max_completion_length: int = 1024
    evaluate_untrained: bool = True


@dataclass
class TrainConfig:
    """The whole run: synthetic/real data -> AesCoT cold start -> SFT -> RAPO -> evaluation.

    Attributes:
        output_dir: where checkpoints, logs (JSONL, TensorBoard), the table and plots go.
        seed: seeds data order, sampling and initialisation.
        save_steps: RAPO checkpoint every this many optimiser steps (taken at the end of the
            generation round that crosses it); SFT checkpoints every this many SFT steps.
        save_total_limit: RAPO checkpoints kept (oldest deleted first).
        logging_steps: console/TensorBoard/JSONL logging every this many optimiser steps.
        progress: show progress bars (trl: `disable_tqdm`, inverted).
        report_to: experiment trackers, trl's name and values: a list of "tensorboard", "wandb",
            "mlflow", "trackio"; "none" or [] for none, "all" for every installed one
            (`aesr1.train.trackers`). The JSONL metrics files are always written.
        run_name: the run's name in the trackers (default: the output directory's name).
        deepspeed: DeepSpeed config for both stages when not launched by `accelerate launch` with
            one: a packaged name ("zero3", "zero3_offload", "zero2") or a JSON path. Batch sizes,
            gradient accumulation and clipping in it are filled from this config
            (`aesr1.train.distributed`).
    """

    output_dir: str = "runs/aesr1"
    seed: int = 0
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 1
    progress: bool = True
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    run_name: str | None = None
    deepspeed: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    reward: RewardMixConfig = field(default_factory=RewardMixConfig)
    rapo: RAPOConfig = field(default_factory=RAPOConfig)
    eval: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)

    def __post_init__(self) -> None:
        from aesr1.train.trackers import parse_report_to

        self.report_to = parse_report_to(self.report_to)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Class names of this module before they were made unique (`SFTConfig` is also trl's, `EvalConfig`
#: also `aesr1.eval`'s, `RewardConfig` also trl's); importable with a DeprecationWarning until the
#: next release.
RENAMED_CLASSES = {
    "SFTConfig": "SFTStageConfig",
    "RewardConfig": "RewardMixConfig",
    "EvalConfig": "HeldOutEvalConfig",
}


def __getattr__(name: str):
    if name in RENAMED_CLASSES:
        new = RENAMED_CLASSES[name]
        warnings.warn(f"aesr1.train.config.{name} is deprecated: use {new}", DeprecationWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Keys of the previous release ("section.key") and where they are now: trl's names, and the rollout
#: settings grouped under `rapo.rollout`. Read from YAML files, `--set` and saved run configurations
#: (`config.json`, so that runs started before the rename resume) with a FutureWarning, until the
#: next release.
DEPRECATED_KEYS: dict[str, str] = {
    "save_interval": "save_steps",
    "log_interval": "logging_steps",
    "sft.epochs": "sft.num_train_epochs",
    "sft.micro_batch_size": "sft.per_device_train_batch_size",
    "sft.lr_scheduler": "sft.lr_scheduler_type",
    "rapo.epochs": "rapo.num_train_epochs",
    "rapo.micro_batch_size": "rapo.per_device_train_batch_size",
    "rapo.lr_scheduler": "rapo.lr_scheduler_type",
    "rapo.eps_low": "rapo.epsilon",
    "rapo.eps_high": "rapo.epsilon_high",
    "rapo.rollout_backend": "rapo.rollout.backend",
    "rapo.rollout_cuda_graphs": "rapo.rollout.engine.cuda_graphs",
    "rapo.vllm_mode": "rapo.rollout.vllm_mode",
    "rapo.vllm_gpu_memory_utilization": "rapo.rollout.vllm_gpu_memory_utilization",
    "rapo.vllm_server_base_url": "rapo.rollout.vllm_server_base_url",
    "eval.interval": "eval.eval_steps",
}


def rename_deprecated_keys(values: dict[str, Any], *, source: str = "", warn: bool = True) -> dict[str, Any]:
    """A copy of the nested mapping `values` with each key of `DEPRECATED_KEYS` moved to its current
    place (a FutureWarning each, naming `source` when given). An old key given together with its
    new one is an error."""
    out = copy.deepcopy(values)
    where = f"{source}: " if source else ""
    if "tensorboard" in out:  # a switch before trackers came: true is report_to [tensorboard]
        if "report_to" in out:
            raise ValueError(
                f"{where}config keys 'tensorboard' and 'report_to' overlap: keep only 'report_to'"
            )
        enabled = out.pop("tensorboard")
        out["report_to"] = ["tensorboard"] if enabled is True else [] if enabled is False else enabled
        if warn:
            warnings.warn(
                f"{where}config key 'tensorboard' is deprecated and read as report_to: "
                f"{out['report_to']}; the old name will be removed in the next release",
                FutureWarning,
                stacklevel=2,
            )
    for old, new in DEPRECATED_KEYS.items():
        *old_path, old_name = old.split(".")
        parent = _node(out, old_path)
        if parent is None or old_name not in parent:
            continue
        *new_path, new_name = new.split(".")
        target = _node(out, new_path, create=True)
        if target is None:
            continue  # a section set to a non-mapping: `_build` names it
        if new_name in target:
            raise ValueError(
                f"{where}config keys {old!r} and {new!r} are the same setting: keep only {new!r}"
            )
        target[new_name] = parent.pop(old_name)
        if warn:
            warnings.warn(
                f"{where}config key {old!r} is deprecated and read as {new!r}; the old name will be "
                "removed in the next release",
                FutureWarning,
                stacklevel=2,
            )
    return out


def saved_config_values(values: dict[str, Any]) -> dict[str, Any]:
    """A run configuration saved by this or an earlier release (`config.json`) in today's keys:
    deprecated keys renamed without a warning (the user did not write them), and settings added
    since at their defaults (a setting is only added with a default that keeps what runs did)."""
    return _merge(TrainConfig().to_dict(), rename_deprecated_keys(values, warn=False))


def _node(values: dict[str, Any], path: list[str], *, create: bool = False) -> dict[str, Any] | None:
    """The mapping at `path` inside `values` (None where a step is missing or not a mapping)."""
    node: Any = values
    for part in path:
        if create and part not in node:
            node[part] = {}
        node = node.get(part)
        if not isinstance(node, dict):
            return None
    return node


# ---------------------------------------------------------------------------------------------------
# Strict construction from mappings / YAML.


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check/convert one YAML value against its dataclass annotation, naming `path` on error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(path, value, inner[0])
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config key {path!r}: expected one of {list(args)}, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config key {path!r}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config key {path!r}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"config key {path!r}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-5 (without a dot) as a string
        except ValueError:
            raise TypeError(f"config key {path!r}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"config key {path!r}: expected a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):  # trl's comma-separated form: "wandb,mlflow"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"config key {path!r}: expected a list of strings, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"config key {path!r}: expected a mapping, got {value!r}")
        return value
    return value


def _build(cls, values: dict[str, Any], prefix: str):
    if not isinstance(values, dict):
        raise TypeError(
            f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {values!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            from aesr1.train.config_help import nearest_keys

            near = nearest_keys(prefix + key, TrainConfig)
            hint = f"did you mean {' or '.join(near)}? " if near else ""
            raise ValueError(
                f"unknown config key {prefix + key!r}; {hint}valid keys here: {', '.join(sorted(names))} "
                "(all keys: --show-config)"
            )
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, hints[key])
    try:
        return cls(**kwargs)
    except ValueError as error:
        # A section that checks itself (`__post_init__`, e.g. `rapo.rollout`) is named here; a
        # number outside its range gets the message every other number gets.
        for key, value in kwargs.items():
            if prefix + key in NUMERIC_RANGES:
                _check_range(prefix + key, value)
        raise ValueError(f"{prefix.rstrip('.')}: {error}" if prefix else str(error)) from None


def config_from_dict(
    values: dict[str, Any], base: TrainConfig | None = None, *, validate: bool = True
) -> TrainConfig:
    """A `TrainConfig` from a nested mapping; keys absent from `values` keep `base`'s values.
    Deprecated keys (`DEPRECATED_KEYS`) are read under their new names. Keys and types are always
    checked; `validate=False` leaves `validate_config` to the caller (one that builds the config in
    steps and validates the result once)."""
    current = rename_deprecated_keys(values or {})
    merged = _merge(base.to_dict() if base is not None else {}, current)
    config = _build(TrainConfig, merged, "")
    if validate:
        validate_config(config)
    return config


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_values(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping of a YAML config with its `base:` chain merged in (the file's own keys win)."""
    import yaml

    path = resolve_config_path(path)
    if path.resolve() in _seen:
        raise ValueError(f"config {str(path)!r}: `base` chain loops back to itself")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping at the top level")
    # Renamed before merging, so that a file's old key overrides its base's new one.
    values = rename_deprecated_keys(values, source=str(path))
    parent = values.pop("base", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise TypeError(f"config {str(path)!r}: `base` must name a config, got {parent!r}")
        relative = path.parent / parent
        parent_path = relative if relative.is_file() else parent
        values = _merge(read_config_values(parent_path, (*_seen, path.resolve())), values)
    return values


def load_config(path: str | Path, base: TrainConfig | None = None, *, validate: bool = True) -> TrainConfig:
    """Read a YAML config (a packaged name like ``appendix_c_qwen2_5_vl_7b`` or a file path).

    A top-level ``base: <config>`` inherits another config (packaged name or path relative to the
    file); keys absent from every file keep `base`'s (default: Appendix C) values. `validate` as
    for `config_from_dict`.
    """
    values = read_config_values(path)
    try:
        return config_from_dict(values, base, validate=validate)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{resolve_config_path(path)}: {error}") from None


def resolve_config_path(path: str | Path) -> Path:
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = CONFIG_DIR / (candidate.name if candidate.suffix else f"{candidate.name}.yaml")
    if packaged.is_file():
        return packaged
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"config {str(path)!r} not found (packaged configs: {shipped})")


def _yaml_problem(error) -> str:
    """PyYAML's complaint and where it is, on one line (its own text spans several)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        problem += f" (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def set_override(values: dict[str, Any], assignment: str) -> None:
    """Apply a `section.key=value` command-line override (value parsed as YAML) to `values`."""
    import yaml

    if "=" not in assignment:
        raise ValueError(f"--set expects section.key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set {assignment!r}: the key must be section.key, got {dotted.strip()!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(
            f"--set {assignment!r}: the value is not valid YAML: {_yaml_problem(error)}"
        ) from None
    node = values
    for depth, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            section = ".".join(parts[: depth + 1])
            raise ValueError(
                f"--set {assignment!r}: {section!r} was set to a value ({node!r}) by an earlier --set, "
                "so it has no keys"
            )
    node[parts[-1]] = value


#: The allowed range of every numeric setting ("section.key"; top-level keys bare), checked first by
#: `validate_config`. NaN and infinities never pass: NaN compares false with every bound, so without
#: this table a NaN learning rate trains for minutes before the loss turns NaN.
NUMERIC_RANGES: dict[str, str] = {
    "seed": ">= 0",
    "save_steps": ">= 1",
    "save_total_limit": ">= 1",  # 0 would keep every checkpoint, a negative one delete the newest
    "logging_steps": ">= 1",
    "model.tiny_seed": ">= 0",
    "model.tiny_vocab_size": ">= 1",
    "model.tiny_hidden_size": ">= 16",
    "model.tiny_layers": ">= 1",
    "model.tiny_intermediate_size": ">= 1",
    "model.lora.r": ">= 1",
    "model.lora.alpha": "> 0",
    "model.lora.dropout": "[0, 1)",
    "data.synthetic_n": ">= 2",  # a train/held-out split needs two images
    "data.synthetic_image_size": ">= 16",
    "data.test_fraction": "(0, 1)",
    "data.split_seed": ">= 0",
    "data.max_train_images": ">= 1",
    "data.max_eval_images": ">= 2",  # correlations need two held-out images
    "data.cold_start_per_bin": ">= 1",
    "sft.num_train_epochs": ">= 0",
    "sft.max_steps": ">= 1",  # transformers reads max_steps 0 as "no cap": sft.num_train_epochs 0 skips
    "sft.learning_rate": ">= 0",
    "sft.global_batch_size": ">= 1",
    "sft.per_device_train_batch_size": ">= 1",
    "sft.warmup_ratio": "[0, 1]",
    "sft.weight_decay": ">= 0",
    "sft.max_grad_norm": "> 0",
    "sft.max_completion_length": ">= 1",  # 0 leaves no token to learn: the loss is 0
    "reward.rank": ">= 0",
    "reward.abs": ">= 0",
    "reward.binary": ">= 0",
    "reward.format": ">= 0",
    "reward.sigma": "> 0",
    "reward.binary_threshold": "> 0",
    "rapo.num_train_epochs": ">= 0",
    "rapo.max_steps": ">= 0",
    "rapo.num_generations": ">= 1",
    "rapo.learning_rate": ">= 0",
    "rapo.warmup_steps": ">= 0",
    "rapo.mini_batch_size": ">= 1",
    "rapo.steps_per_generation": ">= 1",
    "rapo.per_device_train_batch_size": ">= 1",
    "rapo.max_completion_length": ">= 1",
    "rapo.temperature": "> 0",
    "rapo.top_p": "(0, 1]",
    "rapo.top_k": ">= 0",
    "rapo.epsilon": "[0, 1)",
    "rapo.epsilon_high": ">= 0",
    "rapo.beta": ">= 0",
    "rapo.weight_decay": ">= 0",
    "rapo.max_grad_norm": "> 0",  # clipping to norm 0 zeroes every update
    "rapo.rollout.vllm_gpu_memory_utilization": "(0, 1]",
    "rapo.rollout.engine.warmup_steps": ">= 1",
    "rapo.rollout.engine.kv_block": ">= 1",
    "rapo.rollout.engine.check_every": ">= 1",
    "rapo.rollout.engine.min_bucket": ">= 1",
    "eval.eval_steps": ">= 0",
    "eval.num_samples": ">= 1",
    "eval.temperature": ">= 0",
    "eval.batch_size": ">= 1",
    "eval.max_completion_length": ">= 1",
}


def _in_range(value: float, allowed: str) -> bool:
    if allowed.startswith((">", "<")):
        operator, bound = allowed.split()
        bound = float(bound)
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[operator]
    low, high = (float(x) for x in allowed[1:-1].split(","))
    above = value >= low if allowed[0] == "[" else value > low
    below = value <= high if allowed[-1] == "]" else value < high
    return above and below


def numeric_settings(config: TrainConfig) -> dict[str, Any]:
    """Every int/float setting of `config` by "section.key" (None where an optional one is unset)."""
    found: dict[str, Any] = {}

    def visit(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for item in dataclasses.fields(obj):
            value = getattr(obj, item.name)
            if dataclasses.is_dataclass(value):
                visit(value, f"{prefix}{item.name}.")
                continue
            kinds = {hints[item.name], *typing.get_args(hints[item.name])} - {type(None)}
            if kinds & {int, float} and not kinds & {bool}:
                found[prefix + item.name] = value

    visit(config, "")
    return found


def _check_range(key: str, value: Any) -> None:
    if value is None:
        return
    allowed = NUMERIC_RANGES[key]
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{key} must be a finite number ({allowed}), got {value!r}")
    if not _in_range(number, allowed):
        what = f"lie in {allowed}" if allowed[0] in "[(" else f"be {allowed}"
        raise ValueError(f"{key} must {what}, got {value!r}")


def validate_config(config: TrainConfig, world_size: int = 1) -> None:
    """Cheap checks that must fail before any heavy work, each naming the setting to fix: the range
    of every number (`NUMERIC_RANGES`), then choices and the relations between settings, batch
    sizes for `world_size` processes included (`validate_world_size`)."""
    for key, value in numeric_settings(config).items():
        _check_range(key, value)
    rapo, sft, reward = config.rapo, config.sft, config.reward
    validate_world_size(config, world_size)
    if rapo.aggregation not in AGGREGATIONS:
        raise ValueError(f"rapo.aggregation must be one of {list(AGGREGATIONS)}, got {rapo.aggregation!r}")
    if rapo.loss_backend not in BACKENDS:
        raise ValueError(f"rapo.loss_backend must be one of {list(BACKENDS)}, got {rapo.loss_backend!r}")
    weights = {"rank": reward.rank, "abs": reward.abs, "binary": reward.binary, "format": reward.format}
    if not any(w > 0 for w in weights.values()):
        raise ValueError(f"reward weights must be >= 0 with at least one > 0, got {weights}")
    lora = config.model.lora
    if lora.r is None:
        for key, value in (("save_merged", lora.save_merged), ("merge_before_rapo", lora.merge_before_rapo)):
            if value:
                flag = " (--merge)" if key == "save_merged" else ""
                raise ValueError(
                    f"model.lora.{key}{flag} needs LoRA: set model.lora.r (full fine-tuning has no adapter "
                    "to merge and already saves full weights)"
                )
    if isinstance(lora.target_modules, str) or not lora.target_modules:
        raise ValueError(
            f"model.lora.target_modules must be a non-empty list of module-name suffixes, got {lora.target_modules!r}"
        )
    if config.model.tiny_hidden_size % 16:
        raise ValueError(
            f"model.tiny_hidden_size must be a multiple of 16 (the tiny model's head size), "
            f"got {config.model.tiny_hidden_size}"
        )
    from aesr1.modeling.loading import DTYPES

    if config.model.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {config.model.dtype!r}")
    from transformers.trainer_utils import SchedulerType

    schedulers = [kind.value for kind in SchedulerType]
    for key, name in (
        ("sft.lr_scheduler_type", sft.lr_scheduler_type),
        ("rapo.lr_scheduler_type", rapo.lr_scheduler_type),
    ):
        if name not in schedulers:
            raise ValueError(
                f"{key} must be a transformers scheduler ({', '.join(schedulers)}), got {name!r}"
            )


def validate_world_size(config: TrainConfig, world_size: int) -> None:
    """Batch divisibility over processes: a group of K completions never spans two processes, and
    the SFT global batch splits into whole micro-batches."""
    rapo, k = config.rapo, config.rapo.num_generations
    if rapo.mini_batch_size % (k * world_size):
        raise ValueError(
            f"rapo.mini_batch_size ({rapo.mini_batch_size}) must be a multiple of rapo.num_generations x "
            f"processes ({k} x {world_size}) so that every process holds whole groups of K completions"
        )
    config.sft.gradient_accumulation_steps(world_size)


def embedded_default() -> TrainConfig:
    """The CPU configuration `python -m aesr1.train` runs with no arguments (see each override)."""
    return TrainConfig(
        output_dir="runs/aesr1-embedded",
        save_steps=100,
        model=ModelConfig(
            # No download: the tiny Qwen2.5-VL of aesr1.modeling.tiny, float32 on CPU. Width 128
            # learns the image -> score mapping in about half the SFT steps of width 64 (measured).
            name_or_path=None,
            dtype="float32",
            tiny_hidden_size=128,
            tiny_intermediate_size=256,
        ),
        data=DataConfig(
            spec="synthetic",
            synthetic_n=3000,
            # 56x56 px = 4 visual tokens after the 2x2 patch merger: cheap on CPU.
            synthetic_image_size=56,
            # A fixed held-out subset keeps each evaluation to seconds.
            max_eval_images=300,
            # Balanced bins as in AesCoT (Appendix E.2), sized to the synthetic training split.
            cold_start_per_bin=700,
        ),
        sft=SFTStageConfig(
            # Random initial weights: the cold start must also teach the language and the format,
            # which one epoch at 1e-5 (tuned for a pretrained 7B model) cannot do. Three epochs is
            # "moderate" SFT in the sense of Table 3: format and critiques are learned, sampling
            # at temperature 1 still derails often, which RAPO then fixes.
            num_train_epochs=3.0,
            learning_rate=2e-3,
            lr_scheduler_type="linear",
            global_batch_size=32,
            per_device_train_batch_size=32,
            warmup_ratio=0.05,
            max_completion_length=64,
        ),
        rapo=RAPOConfig(
            # ~350 optimiser steps fit the time budget (a fraction of the 10 epochs); 1e-4 moves a
            # tiny model measurably while keeping the KL to the SFT checkpoint around 0.1.
            num_train_epochs=10.0,
            max_steps=350,
            learning_rate=1e-4,
            mini_batch_size=32,
            steps_per_generation=2,
            per_device_train_batch_size=64,
            # Template critiques are ~40 tokens; longer samples have derailed anyway.
            max_completion_length=64,
        ),
        # The policy RAPO trains is sampled at temperature 1; each prediction is the mean of 4
        # samples, the same estimate (mu_i) the rank reward of Eq. 3 uses.
        eval=HeldOutEvalConfig(
            eval_steps=100, num_samples=4, temperature=1.0, batch_size=150, max_completion_length=64
        ),
    )
