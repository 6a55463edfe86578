"""Benchmark of training at scale: aesr1's SFT and RAPO steps vs trl's `GRPOTrainer`.

    python benches/bench_scale.py                       # the 3B workload below (CUDA), every method
    python benches/bench_scale.py --quick               # the same, 1 warm-up + 1 timed step, no trl-grpo-dynamic
    python benches/bench_scale.py --json scale.json     # also write the report (after each method)
    python benches/bench_scale.py --rows rows.jsonl     # append each step's and method's row as measured
    python benches/bench_scale.py --smoke               # tiny model, CPU, fp32, no DeepSpeed: CI runs it
    python benches/bench_scale.py --deepspeed zero3_offload --beta 0.01   # if ZeRO-3 runs out of memory
    python benches/bench_scale.py --layers 18           # a shallower text decoder (same widths)

Everything runs in ONE process, one method after the other, each on a fresh model (same seed, so the
same random weights) with the allocator's peak statistics reset before the model is built.

Workload (default, needs CUDA): Qwen2.5-VL of the 3B configuration (the sizes of
`bench_rollout.model_config("3b")`: 36 text layers of width 2048, 32-block ViT) with random weights
built from its config (no download), bf16, DeepSpeed ZeRO-3 on one GPU, gradient checkpointing,
vision tower and projector frozen (as the released cold-start config does; it also keeps ~0.7B
parameters' fp32 master weights and Adam moments, ~8 GB, off the GPU). One optimiser step = 8
synthetic 224 x 224 images (64 visual tokens each) x K = 4 completions = 32 sequences, in micro-
batches of 8; completions of at most 256 tokens; RAPO with beta = 0.01, so a frozen reference model
sits beside the policy on both sides. Estimated ZeRO-3 footprint: bf16 weights 7.5 GB, fp32 master +
Adam of the 3.1B trainable parameters 37 GB, bf16 gradients 6 GB, reference 7.5 GB, the full weights
gathered again for generation 7.5 GB: ~66 GB before activations, inside an 80 GB H100 (an H200
has 141 GB). If it does not fit, `--deepspeed zero3_offload` (optimizer states and weights in CPU
memory), `--beta 0` (no reference, on both sides) or `--layers N` shrink it; every setting applies
to both stacks alike.

The tokenizer is the tiny byte-level BPE of `aesr1.modeling.tiny` (no download), padded only in
the model: the 151,936-row embedding/lm_head of the 3B config is kept, and special-token ids are
the tokenizer's. The scoring prompt is Appendix B's, so a prompt is ~200 tokens with its image.
A random model almost never samples EOS, so every completion runs to the cap on both sides, and
its completions never parse, so every reward is 0; neither stack short-cuts zero advantages, so the
work per step is the full work. The chat/vision special tokens are never sampled on either side
(our rollouts suppress them; trl gets the same ids in `generation_kwargs["suppress_tokens"]`).

Methods:
  aesr1-rapo        `aesr1.train.rapo.RAPOTrainer`: `generate_round` (rollouts with the configured
                    backend, rewards, reference log-probs) then `optimiser_step`, steps_per_generation 1.
  trl-grpo-static   trl `GRPOTrainer` without vLLM, `cache_implementation="static"`, its default fused
                    (chunked) LM-head log-probs, loss_type "grpo" (= Eq. 10's seq-mean-token-mean),
                    reward `aesr1.integrations.trl.RapoReward`, Liger layer kernels when `liger_kernel`
                    is installed on CUDA (`--trl-liger`); trl 1.16 has no separate Liger GRPO loss (its
                    fused LM head computes the log-probs). Same ZeRO-3 dict via `GRPOConfig(deepspeed=)`.
  trl-grpo-dynamic  the same with the dynamic cache (trl's default); trl passes `disable_compile=True`,
                    so its static cache is not compiled and may well be the slower of the two. The
                    headline ratio is against the FASTER trl row (trl "at its best").
  aesr1-sft         `aesr1.train.sft.run_sft` (trl `SFTTrainer` with our collator), 32 sequences per
                    optimiser step (micro-batches of 8); completions are AesCoT-style critiques long
                    enough to be cut at the completion cap, so every row is prompt + 256 tokens.
Batch semantics: trl's `steps_per_generation` counts micro-batches, so trl gets
per_device_train_batch_size 8, gradient_accumulation_steps 4, steps_per_generation 4, num_iterations
1: one generate call of 32 completions per optimiser step, exactly like ours (steps_per_generation
1, mini_batch 32, micro_batch 8). Neither side then computes old log-probs (the ratio is 1).

Measurements (CUDA synchronised at every boundary):
  step s      median over the timed steps of the wall clock of one optimiser step, after
              `--warmup` untimed steps. Ours: generate_round + optimiser_step. trl and SFT: the
              interval between consecutive `on_step_end` callbacks (so data loading, generation,
              logging and the optimiser step all count, as they do in ours).
  rollout s   median per step of the rollout phase: ours `generate_round`; trl its
              `_generate_and_score_completions` (prompt processing, generation, rewards, reference
              log-probs: the same work).
  train s     median per step of the rest: ours `optimiser_step`; trl step - rollout; SFT = step.
  rollout tok/s   completion tokens generated / rollout seconds (sums over the timed steps).
  train tok/s     prompt + completion tokens (non-padding, image tokens included) through the
                  optimiser step / train seconds.
  peak GB     `torch.cuda.max_memory_allocated` over the whole method (model build, DeepSpeed
              init, warm-up, timed steps), reset before it; SFT's is read at `on_train_end`, before
              `run_sft` saves the model. `leftover GB` is what was still allocated when the method
              started (0 unless an earlier method leaked).
A method that fails (e.g. out of memory) is recorded with its error and the others still run; the
process then exits with status 1. Ratios: RAPO step speed-up = trl step s / ours (goal >= 1.3) and
peak-memory ratio = ours / trl (goal <= 0.8), both against the faster trl row.

Backends of aesr1-rapo: every rollout is checked to have run on the decode engine (with CUDA graphs
on a GPU, as configured) and the loss on the Triton kernels on a GPU. When `engine="auto"` fell back
to transformers `generate` (the engine's blockers), graphs were off, or the loss resolved to its
torch backend on a GPU, the row's status is "fallback" and it carries no figures: those would be
`generate`'s, not ours. On CPU `engine="auto"` would pick `generate` because of the device alone, so
the smoke run asks for the engine explicitly (it runs eagerly there): the same code path as a GPU's.
A missing trl/datasets/deepspeed is "skipped" on CPU and a failure on a GPU.

Rows (benches/gpu/rowlog.py, --rows): bench "scale"; "<method> step <i>" for every optimiser step as
it ends (figures step_s, rollout_s, train_s; note warm-up or timed), "<method>" for each method
(figures step_s, rollout_s, train_s, rollout_tokens_per_s, train_tokens_per_s, peak_gb, ...), and
"ratio: RAPO step speed-up" / "ratio: peak memory" against the faster trl row.

On CPU DeepSpeed works too (`DS_ACCELERATOR=cpu`, with `.venv/bin` on PATH for its ninja build), e.g.
`--smoke --deepspeed zero3`; slow to start, so the smoke test leaves it out.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import math
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/ is not a package
sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
import bench_rollout  # noqa: E402  (the 3B sizes)
from rowlog import RowLog  # noqa: E402

AESR1_METHODS = ("aesr1-rapo", "aesr1-sft")
TRL_METHODS = ("trl-grpo-static", "trl-grpo-dynamic")
#: run order: the headline pair first, so a run cut short still has it
METHODS = ("aesr1-rapo", "trl-grpo-static", "aesr1-sft", "trl-grpo-dynamic")
SMOKE_METHODS = ("aesr1-sft", "aesr1-rapo", "trl-grpo-static")
#: --quick (the one-shot GPU run): the headline pair, then SFT; 1 warm-up + 1 timed step
QUICK_METHODS = ("aesr1-rapo", "trl-grpo-static", "aesr1-sft")
#: packages a method needs beside aesr1: missing ones are "skipped" on CPU, failures on a GPU
PEERS = ("trl", "datasets", "deepspeed", "liger_kernel")
GOAL_SPEEDUP, GOAL_MEMORY = 1.3, 0.8


@dataclass
class Workload:
    """One benchmark setting, applied identically to every method.

    Attributes:
        size: "3b" (Qwen2.5-VL-3B sizes) or "tiny" (`aesr1.modeling.tiny` defaults).
        layers: text decoder depth override (None: the size's own).
        images_per_step: images per optimiser step; x num_generations = sequences per step.
        num_generations: K completions per image.
        max_completion_length: cap on sampled (and SFT) completion tokens.
        micro_batch_size: sequences per forward pass.
        image_side: synthetic image side in pixels (224: 64 visual tokens after the 2x2 merger).
        dtype: weight dtype.
        deepspeed: DeepSpeed config (packaged name or JSON path), None for none.
        beta: KL coefficient; > 0 puts a reference model on both sides.
        freeze_vision: freeze the vision tower and the projector on both sides.
        gradient_checkpointing: on both sides.
        warmup_steps: untimed steps first (CUDA/cuBLAS init, graph capture, allocator growth).
        timed_steps: steps measured.
    """

    size: str = "3b"
    layers: int | None = None
    images_per_step: int = 8
    num_generations: int = 4
    max_completion_length: int = 256
    micro_batch_size: int = 8
    image_side: int = 224
    dtype: str = "bfloat16"
    deepspeed: str | None = "zero3"
    beta: float = 0.01
    freeze_vision: bool = True
    gradient_checkpointing: bool = True
    warmup_steps: int = 1
    timed_steps: int = 3

    @property
    def sequences_per_step(self) -> int:
        return self.images_per_step * self.num_generations

    @property
    def total_steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    @property
    def accumulation_steps(self) -> int:
        return self.sequences_per_step // self.micro_batch_size

    def validate(self) -> None:
        if self.size not in ("3b", "tiny"):
            raise ValueError(f"size must be '3b' or 'tiny', got {self.size!r}")
        for name in ("images_per_step", "num_generations", "max_completion_length", "micro_batch_size",
                     "warmup_steps", "timed_steps"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.layers is not None and (isinstance(self.layers, bool) or self.layers < 1):
            raise ValueError(f"layers must be >= 1, got {self.layers!r}")
        if self.sequences_per_step % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide images_per_step x num_generations "
                f"({self.sequences_per_step}): both stacks accumulate whole micro-batches"
            )
        if self.image_side < 28:
            raise ValueError(
                f"image_side must be >= 28 (one 2x2 group of 14 px patches), got {self.image_side}"
            )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")


FULL = Workload()
SMOKE = Workload(size="tiny", images_per_step=2, num_generations=4, max_completion_length=12, micro_batch_size=4,
                 image_side=56, dtype="float32", deepspeed=None, beta=0.01, freeze_vision=False,
                 gradient_checkpointing=False, warmup_steps=1, timed_steps=1)  # fmt: skip


@dataclass
class StepRecord:
    seconds: float
    rollout_s: float | None = None
    train_s: float | None = None
    completion_tokens: int | None = None
    train_tokens: int | None = None


@dataclass
class Row:
    method: str
    status: str  # "ok", "error", "fallback" (see the module docstring) or "skipped"
    steps: int = 0
    step_s: float | None = None
    rollout_s: float | None = None
    train_s: float | None = None
    rollout_tokens_per_s: float | None = None
    train_tokens_per_s: float | None = None
    completion_tokens_per_step: float | None = None
    train_tokens_per_step: float | None = None
    peak_gb: float | None = None
    leftover_gb: float | None = None
    step_s_all: list[float] = field(default_factory=list)
    note: str = ""
    error: str | None = None


def summarise(method: str, records: list[StepRecord], *, peak_gb, leftover_gb, note: str = "") -> Row:
    """A row from the timed steps' records (medians of times, token rates over sums)."""
    if not records:
        raise RuntimeError(f"{method}: no timed steps were recorded")

    def median(values):
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    def rate(tokens, seconds):
        pairs = [(t, s) for t, s in zip(tokens, seconds, strict=True) if t is not None and s is not None]
        total = sum(s for _, s in pairs)
        return sum(t for t, _ in pairs) / total if pairs and total > 0 else None

    rollout = [r.rollout_s for r in records]
    train = [r.train_s for r in records]
    completions = [r.completion_tokens for r in records if r.completion_tokens is not None]
    trained = [r.train_tokens for r in records if r.train_tokens is not None]
    return Row(
        method=method, status="ok", steps=len(records), step_s=median(r.seconds for r in records),
        rollout_s=median(rollout), train_s=median(train),
        rollout_tokens_per_s=rate([r.completion_tokens for r in records], rollout),
        train_tokens_per_s=rate([r.train_tokens for r in records], train),
        completion_tokens_per_step=statistics.fmean(completions) if completions else None,
        train_tokens_per_step=statistics.fmean(trained) if trained else None,
        peak_gb=peak_gb, leftover_gb=leftover_gb, step_s_all=[r.seconds for r in records], note=note,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Device helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU ({model}, {torch.get_num_threads()} threads)"


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def release(device: torch.device) -> None:
    """Free what the previous method left: DeepSpeed/transformers/accelerate global state and memory."""
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def single_process_distributed_env() -> None:
    """DeepSpeed without a launcher needs the rendezvous variables of a 1-process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(
            "bench_scale.py runs as one process; launch it with python, not a multi-process launcher"
        )
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    for key, value in {"MASTER_ADDR": "127.0.0.1", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)


# ---------------------------------------------------------------------------------------------------
# Model, data and configs shared by every method


class Setup:
    """Tokenizer, processor, model config, images and SFT rows of one workload (built once)."""

    def __init__(self, workload: Workload, device: torch.device, root: Path, seed: int = 0) -> None:
        from aesr1.data.synthetic import make_synthetic_dataset
        from aesr1.modeling.tiny import TinyModelConfig, build_processor, build_tokenizer

        self.workload = workload
        self.device = device
        self.root = root
        self.seed = seed
        self.dtype = getattr(torch, workload.dtype)
        self.tokenizer = build_tokenizer()
        pixels = workload.image_side * workload.image_side
        self.processor = build_processor(
            self.tokenizer, TinyModelConfig(image_min_pixels=pixels, image_max_pixels=pixels)
        )
        self.model_config = self._model_config()
        self.items = make_synthetic_dataset(
            root / "images", n=workload.images_per_step * workload.total_steps, seed=seed,
            image_size=workload.image_side,
        )  # fmt: skip
        self.sft_rows = self._sft_rows()
        from aesr1.train.rapo import NEVER_SAMPLE

        self.suppressed_ids = sorted({self.tokenizer.convert_tokens_to_ids(t) for t in NEVER_SAMPLE})
        #: called with (method, step index, StepRecord, fallback reason or None) as each step ends
        self.step_hook = None

    def report_step(self, method: str, index: int, record: StepRecord, problem: str | None = None) -> None:
        if self.step_hook is not None:
            self.step_hook(method, index, record, problem)

    def _model_config(self):
        from transformers import Qwen2_5_VLConfig

        from aesr1.modeling.tiny import SPECIAL_TOKENS, TinyModelConfig, build_model_config

        wl = self.workload
        if wl.size == "tiny":
            tiny = TinyModelConfig()
            if wl.layers is not None:
                tiny.num_hidden_layers = wl.layers
            return build_model_config(self.tokenizer, tiny)
        ids = {token: self.tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
        token_ids = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"])  # fmt: skip
        base = bench_rollout.model_config("3b")
        text = base.text_config.to_dict()
        text.pop("layer_types", None)  # rebuilt from num_hidden_layers
        if wl.layers is not None:
            text["num_hidden_layers"] = wl.layers
        text.update(token_ids)
        return Qwen2_5_VLConfig(
            text_config=text, vision_config=base.vision_config.to_dict(),
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            **token_ids,
        )  # fmt: skip

    def new_model(self):
        """A fresh random-initialised model on the device (same seed: same weights every time)."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        from aesr1.modeling.loading import resolve_attn_implementation

        # A copy: trainers set attributes such as `use_cache=False` on their model's config.
        config = copy.deepcopy(self.model_config)
        config._attn_implementation = resolve_attn_implementation("auto")
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)  # built in the target dtype: no fp32 copy of 3B weights
        try:
            with torch.random.fork_rng(devices=[]), torch.device(self.device):
                torch.manual_seed(self.seed)
                model = Qwen2_5_VLForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
        generation = model.generation_config
        text_config = config.get_text_config()  # transformers 5.17's top-level config has no token ids
        generation.eos_token_id = text_config.eos_token_id
        generation.pad_token_id = text_config.pad_token_id
        generation.bos_token_id = text_config.bos_token_id
        return model

    def _sft_rows(self) -> list[dict[str, Any]]:
        """Cold-start rows whose completions reach the cap (critiques joined until they do)."""
        from aesr1.data.synthetic import write_critique
        from aesr1.prompts import SCORING_PROMPT, format_completion

        cap = self.workload.max_completion_length
        rng = random.Random(self.seed)
        rows = []
        for index in range(self.workload.sequences_per_step * self.workload.total_steps):
            item = self.items[index % len(self.items)]
            critique = write_critique(item, rng, vary=True)
            completion = format_completion(critique, item.score)
            while len(self.tokenizer(completion, add_special_tokens=False)["input_ids"]) < cap:
                critique += " " + write_critique(item, rng, vary=True)
                completion = format_completion(critique, item.score)
            rows.append({"image": item.image, "prompt": SCORING_PROMPT, "completion": completion})
        return rows

    def sft_tokens_per_step(self) -> float:
        """Mean non-padding tokens (prompt with image tokens + capped completion) of a step's rows."""
        from aesr1.modeling.chat import build_inputs

        rows = self.sft_rows
        batch = build_inputs(self.processor, [r["image"] for r in rows], rows[0]["prompt"],
                             [r["completion"] for r in rows],
                             max_completion_length=self.workload.max_completion_length)  # fmt: skip
        return float(batch["attention_mask"].sum()) / len(rows) * self.workload.sequences_per_step

    def train_config(self, output_dir: Path):
        from aesr1.train.config import HeldOutEvalConfig, ModelConfig, RAPOConfig, SFTStageConfig, TrainConfig

        wl = self.workload
        return TrainConfig(
            output_dir=str(output_dir), seed=self.seed, save_steps=10**9, logging_steps=1, progress=False,
            report_to=[], deepspeed=wl.deepspeed,
            model=ModelConfig(dtype=wl.dtype, gradient_checkpointing=wl.gradient_checkpointing),
            sft=SFTStageConfig(num_train_epochs=1.0, max_steps=wl.total_steps, learning_rate=1e-5,
                               global_batch_size=wl.sequences_per_step,
                               per_device_train_batch_size=wl.micro_batch_size,
                               max_completion_length=wl.max_completion_length, warmup_ratio=0.0,
                               freeze_vision_tower=wl.freeze_vision, freeze_projector=wl.freeze_vision),
            rapo=RAPOConfig(num_train_epochs=1.0, max_steps=wl.total_steps, num_generations=wl.num_generations,
                            learning_rate=1e-6, mini_batch_size=wl.sequences_per_step, steps_per_generation=1,
                            per_device_train_batch_size=wl.micro_batch_size,
                            max_completion_length=wl.max_completion_length, beta=wl.beta,
                            freeze_vision_tower=wl.freeze_vision, freeze_projector=wl.freeze_vision),
            eval=HeldOutEvalConfig(eval_steps=0, evaluate_untrained=False),
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Step timing inside transformers' Trainer (trl GRPO and our SFT)


def step_timer(device: torch.device, on_step=None):
    """A `TrainerCallback` keeping the wall clock at each `on_step_end` and the peak at `on_train_end`;
    `on_step(index, seconds)` is called as each step ends."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []
            self.peak_gb: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.ends = [time.perf_counter()]  # the first step's interval starts here (it is warm-up)

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.ends.append(time.perf_counter())
            if on_step is not None:
                on_step(len(self.ends) - 2, self.ends[-1] - self.ends[-2])

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_gb = peak_gb(device)

        def intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.ends[:-1], self.ends[1:], strict=True)]

    return StepTimer()


@contextmanager
def patched(owner, name: str, value):
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def sft_trainer_callbacks(callback):
    """`run_sft` with one more callback: through its `callbacks` argument when it has one, else by
    handing it an `SFTTrainer` subclass that appends the callback (it imports `trl.SFTTrainer` at
    call time)."""
    import trl

    from aesr1.train.sft import run_sft

    if "callbacks" in inspect.signature(run_sft).parameters:
        yield {"callbacks": [callback]}
        return
    base = trl.SFTTrainer

    class TimedSFTTrainer(base):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), callback], **kwargs)

    with patched(trl, "SFTTrainer", TimedSFTTrainer):
        yield {}


# ---------------------------------------------------------------------------------------------------
# Which backends our trainer really ran on


@contextmanager
def rollout_recorder(device: torch.device):
    """Records, for every rollout of our trainer, the implementation `aesr1.rollout` resolved
    ("engine" or "generate", with the engine's blockers) and whether the engine replayed CUDA graphs.
    On CPU, "auto" is asked as "engine": auto picks `generate` there because of the device alone,
    and the engine runs eagerly on CPU (the code path a GPU takes, minus the graphs)."""
    from aesr1.rollout import api
    from aesr1.rollout import engine as engine_module

    calls: list[dict[str, Any]] = []
    resolve_engine = api.resolve_engine
    decode = engine_module.DecodeEngine.decode

    def resolve(engine, model):
        if engine == "auto" and device.type != "cuda":
            engine = "engine"
        choice = resolve_engine(engine, model)
        calls.append(
            {"backend": choice, "blockers": [] if choice == "engine" else api.engine_blockers(model)}
        )
        return choice

    def recorded_decode(self, *args, **kwargs):
        result = decode(self, *args, **kwargs)
        if calls:
            calls[-1]["cuda_graphs"] = bool(result.stats.get("cuda_graphs"))
        return result

    with (
        patched(api, "resolve_engine", resolve),
        patched(engine_module.DecodeEngine, "decode", recorded_decode),
    ):
        yield calls


def rollout_verdict(calls: list[dict[str, Any]], device_type: str, graphs_configured: bool) -> str | None:
    """None when every recorded rollout ran on the engine (with CUDA graphs on a GPU when configured),
    else why the rollouts are a fallback."""
    if not calls:
        return "no rollout went through aesr1.rollout (the trainer's rollout function changed?)"
    fell_back = [c for c in calls if c["backend"] != "engine"]
    if fell_back:
        blockers = (
            "; ".join(sorted({b for c in fell_back for b in c.get("blockers", [])})) or "no blockers named"
        )
        return f"{len(fell_back)}/{len(calls)} rollouts ran on transformers generate ({blockers})"
    if device_type == "cuda" and graphs_configured and not all(c.get("cuda_graphs") for c in calls):
        return "the engine decoded without CUDA graphs on a GPU (configured with them)"
    return None


def loss_backend_problem(backend: str, device: torch.device) -> str | None:
    """Why our trainer's loss would not run on compiled Triton kernels on a GPU (None: it does, or CPU)."""
    if device.type != "cuda":
        return None
    from aesr1.loss import _resolve_backend
    from aesr1.triton_kernels import rapo_loss as kernels
    from aesr1.triton_kernels._launch import kernels_interpreted

    resolved = _resolve_backend(backend, device)
    if resolved != "triton":
        return f"rapo.loss_backend={backend!r} resolved to {resolved!r} on a GPU"
    kernel = getattr(kernels, "_RAPO_TOKEN_KERNEL", None)
    if kernel is not None and kernels_interpreted(kernel):
        return "the loss kernels run in Triton's interpreter (TRITON_INTERPRET is set)"
    return None


# ---------------------------------------------------------------------------------------------------
# Methods


def run_aesr1_rapo(setup: Setup, out: Path, progress: bool) -> tuple[list[StepRecord], str, str | None]:
    """Timed records, a note, and why the run is a fallback (None: engine rollouts, Triton loss)."""
    from aesr1.train.distributed import make_rapo_accelerator
    from aesr1.train.rapo import RAPOTrainer

    wl, device = setup.workload, setup.device
    config = setup.train_config(out)
    model = setup.new_model()
    reference = setup.new_model() if wl.beta > 0 else None
    accelerator = make_rapo_accelerator(config, model)
    trainer = RAPOTrainer(config, model, setup.processor, setup.items, ref_model=reference, output_dir=out,
                          accelerator=accelerator)  # fmt: skip
    del model, reference
    graphs = config.rapo.rollout.engine.cuda_graphs
    note = (f"rollout.backend={config.rapo.rollout.backend}, fused_linear={trainer.fused_linear}, "
            f"distributed={accelerator.distributed_type.value}, "
            f"{trainable_note(accelerator.unwrap_model(trainer.model))}")  # fmt: skip
    loss_problem = loss_backend_problem(config.rapo.loss_backend, device)
    records = []
    with rollout_recorder(device) as calls:
        try:
            for index in tqdm(range(wl.total_steps), desc="aesr1-rapo", unit="step", disable=not progress):
                synchronize(device)
                started = time.perf_counter()
                before = len(calls)
                data = trainer.generate_round(index)
                synchronize(device)
                generated = time.perf_counter()
                rows = data.batch["completion_ids"].shape[0]
                for mini in trainer._mini_batches(rows, index):
                    trainer.optimiser_step(data, mini)
                synchronize(device)
                finished = time.perf_counter()
                batch = data.batch
                prompt_length = int(batch["prompt_length"])
                completion = int(batch["completion_mask"].sum())
                prompt = int(batch["attention_mask"][:, :prompt_length].sum())
                record = StepRecord(finished - started, generated - started, finished - generated, completion,
                                    prompt + completion)  # fmt: skip
                records.append(record)
                problem = rollout_verdict(calls[before:], device.type, graphs) or loss_problem
                setup.report_step("aesr1-rapo", index, record, problem)
                del data, batch
        finally:
            trainer.close()
    problem = rollout_verdict(calls, device.type, graphs) or loss_problem
    backends = sorted({c["backend"] for c in calls})
    note += f", rollouts: {'/'.join(backends) or 'none'}"
    if "engine" in backends:
        note += " with CUDA graphs" if all(c.get("cuda_graphs") for c in calls) else " (eager)"
    return records[wl.warmup_steps :], note, problem


def run_aesr1_sft(setup: Setup, out: Path, progress: bool) -> tuple[list[StepRecord], str, float | None]:
    from aesr1.train.sft import run_sft

    wl = setup.workload
    config = setup.train_config(out)
    config.progress = progress
    tokens_per_step = setup.sft_tokens_per_step()
    model = setup.new_model()
    timer = step_timer(setup.device, lambda index, seconds: setup.report_step(
        "aesr1-sft", index, StepRecord(seconds, None, seconds, None, round(tokens_per_step))))  # fmt: skip
    with sft_trainer_callbacks(timer) as extra:
        trainer = run_sft(config, model, setup.processor, setup.sft_rows, out, **extra)
    trainable = trainable_note(trainer.model)
    del model, trainer
    intervals = timer.intervals()
    if len(intervals) != wl.total_steps:
        raise RuntimeError(f"SFT ran {len(intervals)} optimiser steps, expected {wl.total_steps}")
    records = [StepRecord(s, None, s, None, round(tokens_per_step)) for s in intervals[wl.warmup_steps :]]
    note = f"{tokens_per_step / wl.sequences_per_step:.0f} tokens/sequence, {trainable}"
    return records, note, timer.peak_gb


def run_trl_grpo(
    setup: Setup, out: Path, progress: bool, cache: str | None, liger: str
) -> tuple[list[StepRecord], str]:
    from datasets import Dataset, Image
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer as grpo_module

    from aesr1.integrations.trl import RapoReward
    from aesr1.modeling.chat import user_message
    from aesr1.modeling.freeze import freeze_vision
    from aesr1.prompts import SCORING_PROMPT
    from aesr1.train.distributed import sft_deepspeed_config

    wl, device = setup.workload, setup.device
    use_liger = liger == "on" or (
        liger == "auto" and device.type == "cuda" and importlib_available("liger_kernel")
    )
    # Built before GRPOConfig: its DeepSpeed dict switches transformers' model construction to zero.Init.
    model = setup.new_model()
    freeze_vision(model, tower=wl.freeze_vision, projector=wl.freeze_vision)
    reference = setup.new_model() if wl.beta > 0 else None
    dataset = Dataset.from_dict({
        "image": [item.image for item in setup.items],
        "prompt": [user_message(SCORING_PROMPT)] * len(setup.items),
        "gt": [item.score for item in setup.items],
    }).cast_column("image", Image())  # fmt: skip
    args = GRPOConfig(
        output_dir=str(out), seed=setup.seed, data_seed=setup.seed,
        per_device_train_batch_size=wl.micro_batch_size, gradient_accumulation_steps=wl.accumulation_steps,
        steps_per_generation=wl.accumulation_steps, num_iterations=1, num_generations=wl.num_generations,
        max_completion_length=wl.max_completion_length, max_steps=wl.total_steps,
        learning_rate=1e-6, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
        beta=wl.beta, epsilon=0.2, epsilon_high=0.28, loss_type="grpo", scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, cache_implementation=cache,
        generation_kwargs={"suppress_tokens": setup.suppressed_ids},
        bf16=device.type == "cuda" and wl.dtype == "bfloat16",
        fp16=device.type == "cuda" and wl.dtype == "float16", use_cpu=device.type != "cuda",
        gradient_checkpointing=wl.gradient_checkpointing,
        deepspeed=sft_deepspeed_config(setup.train_config(out)),
        use_liger_kernel=use_liger,
        report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=not progress,
        dataloader_num_workers=0, log_completions=False,
    )  # fmt: skip
    generations: list[tuple[float, int, int]] = []

    def on_step(index: int, seconds: float) -> None:
        gen, completion, tokens = generations[index] if index < len(generations) else (None, None, None)
        train = None if gen is None else seconds - gen
        setup.report_step(method, index, StepRecord(seconds, gen, train, completion, tokens))

    method = "trl-grpo-static" if cache == "static" else "trl-grpo-dynamic"
    timer = step_timer(device, on_step)
    # trl builds its reference by loading the policy's checkpoint path; a random model has none, so it
    # gets the identical in-memory model (what loading that checkpoint would give).
    with patched(grpo_module, "create_model_from_path", lambda *_a, _ref=reference, **_k: _ref):
        trainer = GRPOTrainer(model=model, reward_funcs=RapoReward(), args=args, train_dataset=dataset,
                              processing_class=setup.processor, callbacks=[timer])  # fmt: skip
    del model, reference
    original = trainer._generate_and_score_completions

    def timed_generation(batch):
        synchronize(device)
        started = time.perf_counter()
        output = original(batch)
        synchronize(device)
        completion = int(output["completion_mask"].sum())
        generations.append(
            (time.perf_counter() - started, completion, int(output["prompt_mask"].sum()) + completion)
        )
        return output

    trainer._generate_and_score_completions = timed_generation
    try:
        trainer.train()
    finally:
        del trainer._generate_and_score_completions  # break the cycle through `original`
    trainable = trainable_note(trainer.model)
    del trainer
    intervals = timer.intervals()
    if len(intervals) != wl.total_steps or len(generations) != wl.total_steps:
        raise RuntimeError(
            f"trl ran {len(intervals)} optimiser steps and {len(generations)} generations, "
            f"expected {wl.total_steps} of each (one generation per optimiser step)"
        )
    records = [StepRecord(step, gen, step - gen, completion, tokens)
               for step, (gen, completion, tokens) in zip(intervals, generations, strict=True)]  # fmt: skip
    note = f"cache={cache or 'dynamic'}, liger_kernel={use_liger}, loss=grpo (fused LM head), {trainable}"
    return records[wl.warmup_steps :], note


def trainable_note(model) -> str:
    """Trainable parameter count (ZeRO-3 partitions report their full size as `ds_numel`)."""
    count = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)
    return f"trainable {count / 1e9:.3g}B" if count >= 1e8 else f"trainable {count / 1e6:.3g}M"


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run_method(method: str, setup: Setup, progress: bool, trl_liger: str) -> Row:
    device = setup.device
    release(device)
    leftover = torch.cuda.memory_allocated(device) / 1e9 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = setup.root / method
    problem = None
    try:
        if method == "aesr1-rapo":
            records, note, problem = run_aesr1_rapo(setup, out, progress)
            peak = peak_gb(device)
        elif method == "aesr1-sft":
            records, note, peak = run_aesr1_sft(setup, out, progress)
        elif method in TRL_METHODS:
            cache = "static" if method == "trl-grpo-static" else None
            records, note = run_trl_grpo(setup, out, progress, cache, trl_liger)
            peak = peak_gb(device)
        else:
            raise ValueError(f"unknown method {method!r}")
        row = summarise(method, records, peak_gb=peak, leftover_gb=leftover, note=note)
        if problem:  # measured, but not what the row's name says: no figures
            row = Row(method=method, status="fallback", note=note, error=problem)
    except ModuleNotFoundError as error:
        peer = (error.name or "").split(".")[0]
        if peer not in PEERS:
            raise
        traceback.print_exc()
        status = "error" if device.type == "cuda" else "skipped"
        row = Row(method=method, status=status, error=f"{peer} not installed")
    except Exception as error:  # noqa: BLE001  (one failing method must not lose the others' figures)
        traceback.print_exc()
        kind = "out of memory" if isinstance(error, torch.cuda.OutOfMemoryError) else type(error).__name__
        row = Row(method=method, status="error", peak_gb=peak_gb(device), leftover_gb=leftover,
                  error=f"{kind}: {str(error)[-2000:]}")  # fmt: skip
    release(device)
    return row


# ---------------------------------------------------------------------------------------------------
# Report


def ratios(rows: list[Row]) -> dict[str, Any]:
    """RAPO step speed-up and peak-memory ratio of ours against the faster trl row."""
    ours = next((r for r in rows if r.method == "aesr1-rapo" and r.status == "ok"), None)
    trl_rows = [r for r in rows if r.method in TRL_METHODS and r.status == "ok"]
    if ours is None or not trl_rows:
        return {}
    baseline = min(trl_rows, key=lambda r: r.step_s)
    out: dict[str, Any] = {"trl_baseline": baseline.method, "speedup": baseline.step_s / ours.step_s,
                           "goal_speedup": GOAL_SPEEDUP}  # fmt: skip
    if ours.peak_gb is not None and baseline.peak_gb:
        out.update(memory_ratio=ours.peak_gb / baseline.peak_gb, goal_memory_ratio=GOAL_MEMORY)
    return out


def format_report(report: dict[str, Any]) -> str:
    def number(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) and math.isfinite(value) else "-"

    wl = report["workload"]
    lines = [
        f"\n{report['device']}; torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}, trl {report['versions']['trl']}, "
        f"deepspeed {report['versions']['deepspeed']}",
        f"workload: Qwen2.5-VL {wl['size']} (random init{', ' + str(wl['layers']) + ' text layers' if wl['layers'] else ''}), "
        f"{wl['dtype']}, deepspeed={wl['deepspeed']}, {wl['images_per_step']} images x K={wl['num_generations']} "
        f"= {wl['images_per_step'] * wl['num_generations']} sequences/step (micro {wl['micro_batch_size']}), "
        f"max completion {wl['max_completion_length']}, beta={wl['beta']}, freeze_vision={wl['freeze_vision']}, "
        f"gradient_checkpointing={wl['gradient_checkpointing']}, {wl['warmup_steps']} warm-up + "
        f"{wl['timed_steps']} timed steps",
        f"{'method':<18}{'step s':>9}{'rollout s':>11}{'train s':>9}{'rollout tok/s':>15}{'train tok/s':>13}"
        f"{'peak GB':>9}  note",
    ]  # fmt: skip
    for row in report["rows"]:
        if row["status"] != "ok":
            shown = "FAILED" if row["status"] == "error" else row["status"].upper()
            lines.append(f"{row['method']:<18}{shown:>9}  {(row['error'] or '')[:300]}")
            continue
        lines.append(
            f"{row['method']:<18}{number(row['step_s'], '.3f'):>9}{number(row['rollout_s'], '.3f'):>11}"
            f"{number(row['train_s'], '.3f'):>9}{number(row['rollout_tokens_per_s'], '.0f'):>15}"
            f"{number(row['train_tokens_per_s'], '.0f'):>13}{number(row['peak_gb'], '.2f'):>9}  {row['note']}"
        )
    summary = report.get("ratios") or {}
    if summary:
        speed = summary["speedup"]
        lines.append(
            f"RAPO step speed-up vs {summary['trl_baseline']}: {speed:.2f}x "
            f"(goal >= {GOAL_SPEEDUP}x: {'met' if speed >= GOAL_SPEEDUP else 'NOT met'})"
        )
        if "memory_ratio" in summary:
            memory = summary["memory_ratio"]
            lines.append(
                f"peak memory, aesr1-rapo / {summary['trl_baseline']}: {memory:.2f}x "
                f"(goal <= {GOAL_MEMORY}x: {'met' if memory <= GOAL_MEMORY else 'NOT met'})"
            )
    else:
        lines.append("ratios: need an ok aesr1-rapo row and an ok trl-grpo row")
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("transformers", "trl", "accelerate", "deepspeed", "liger_kernel", "flash_attn"):
        try:
            out[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            out[name] = None
    return out


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Workload, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model on CPU, fp32, no DeepSpeed, 1 + 1 steps"
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"1 warm-up + 1 timed step, methods {','.join(QUICK_METHODS)} (the one-shot GPU run)")  # fmt: skip
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {METHODS} (default: all; --smoke: {SMOKE_METHODS})")  # fmt: skip
    parser.add_argument("--deepspeed", default=None,
                        help="zero3 | zero3_offload | zero2 | a JSON path | none (default: zero3; --smoke: none)")  # fmt: skip
    parser.add_argument(
        "--beta", type=float, default=None, help="KL coefficient (default 0.01; 0 drops the reference)"
    )
    parser.add_argument("--layers", type=int, default=None, help="text decoder depth (default: the config's)")
    parser.add_argument("--images", type=int, default=None, help="images per optimiser step (default 8)")
    parser.add_argument("--num-generations", type=int, default=None, help="K (default 4)")
    parser.add_argument("--max-completion", type=int, default=None, help="completion cap (default 256)")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default 8)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3)")
    parser.add_argument("--freeze-vision", action=argparse.BooleanOptionalAction, default=None,
                        help="freeze the vision tower and projector (default: on; --smoke: off)")  # fmt: skip
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on; --smoke: off")  # fmt: skip
    parser.add_argument("--trl-liger", choices=("auto", "on", "off"), default="auto",
                        help="trl's Liger layer kernels (auto: on when liger_kernel is installed, on CUDA)")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda (required) / cpu with --smoke")
    parser.add_argument("--json", type=Path, default=None, help="write the report here (after every method)")
    parser.add_argument("--rows", type=Path, default=None,
                        help="append each step's and method's row here as JSON lines (benches/gpu/rowlog.py)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="keep the ok rows of an existing --json report of the same workload; run the rest")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=None, help="images and outputs (default: a temp dir)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    workload = SMOKE if args.smoke else FULL
    if args.quick:
        workload = replace(workload, warmup_steps=1, timed_steps=1)
    overrides = {
        "beta": args.beta, "layers": args.layers, "images_per_step": args.images,
        "num_generations": args.num_generations, "max_completion_length": args.max_completion,
        "micro_batch_size": args.micro_batch, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "freeze_vision": args.freeze_vision, "gradient_checkpointing": args.gradient_checkpointing,
    }  # fmt: skip
    workload = replace(workload, **{k: v for k, v in overrides.items() if v is not None})
    if args.deepspeed is not None:
        workload = replace(workload, deepspeed=None if args.deepspeed.lower() == "none" else args.deepspeed)
    try:
        workload.validate()
        if workload.deepspeed is not None:
            from aesr1.train.distributed import resolve_deepspeed_config

            resolve_deepspeed_config(workload.deepspeed)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    default = QUICK_METHODS if args.quick else SMOKE_METHODS if args.smoke else METHODS
    methods = [m.strip() for m in (args.methods or ",".join(default)).split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"--methods: unknown {unknown}; choose from {METHODS}")
    return args, workload, methods


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, workload, methods = parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the full workload needs a CUDA GPU (none is visible); use --smoke on CPU")
    if device.type == "cpu" and workload.dtype != "float32":
        raise SystemExit(f"dtype {workload.dtype} is for CUDA; on CPU use --smoke (fp32)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if workload.deepspeed is not None:
        single_process_distributed_env()
    if device.type == "cuda":
        if device.index is None:  # an explicit index: peak statistics and set_device need one
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)

    report: dict[str, Any] = {"device": device_name(device), "versions": versions(), "workload": asdict(workload),
                              "rows": []}  # fmt: skip
    log = RowLog(args.rows, "scale", report["device"])
    if args.resume and args.json is not None and args.json.exists():
        previous = json.loads(args.json.read_text())
        if previous.get("workload") == report["workload"]:
            report["rows"] = [
                r for r in previous.get("rows", []) if r["status"] == "ok" and r["method"] in methods
            ]
    done = {r["method"] for r in report["rows"]}

    def save() -> None:
        report["ratios"] = ratios([Row(**r) for r in report["rows"]])
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            temporary = args.json.with_suffix(args.json.suffix + ".tmp")
            temporary.write_text(json.dumps(report, indent=2))
            temporary.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="bench_scale_") as scratch:
        root = args.workdir or Path(scratch)
        setup = Setup(workload, device, root)
        setup.step_hook = lambda method, index, record, problem: emit_step(log, workload, method, index, record,
                                                                           problem)  # fmt: skip
        peer_rows(log, device, methods, args.trl_liger)
        for method in [m for m in methods if m not in done]:
            print(f"[bench_scale] {method} ...", flush=True)
            row = run_method(method, setup, not args.no_progress, args.trl_liger)
            report["rows"].append(asdict(row))
            save()
            emit_method(log, row)
            shown = (
                f"{row.step_s:.3f} s/step"
                if row.status == "ok"
                else f"{row.status.upper()} ({row.error[:200]})"
            )
            print(f"[bench_scale] {method}: {shown}", flush=True)
    report["rows"].sort(key=lambda r: METHODS.index(r["method"]))
    save()
    emit_ratios(log, report["ratios"], methods)
    print(format_report(report))
    if any(r["status"] in ("error", "fallback") for r in report["rows"]):
        raise SystemExit(1)
    return report


# ---------------------------------------------------------------------------------------------------
# Rows (benches/gpu/rowlog.py)

ROW_STATUS = {"ok": "ok", "error": "failed", "fallback": "fallback", "skipped": "skipped"}
METHOD_FIGURES = ("steps", "step_s", "rollout_s", "train_s", "rollout_tokens_per_s", "train_tokens_per_s",
                  "completion_tokens_per_step", "train_tokens_per_step", "peak_gb", "leftover_gb")  # fmt: skip


def emit_step(log: RowLog, workload: Workload, method: str, index: int, record: StepRecord, problem) -> None:
    kind = "warm-up" if index < workload.warmup_steps else "timed"
    name = f"{method} step {index}"
    if problem:
        log.emit(name, "fallback", note=f"{kind}; {problem}")
        return
    log.emit(name, "ok", {"step_s": record.seconds, "rollout_s": record.rollout_s, "train_s": record.train_s,
                          "completion_tokens": record.completion_tokens, "train_tokens": record.train_tokens},
             note=kind)  # fmt: skip


def emit_method(log: RowLog, row: Row) -> None:
    status = ROW_STATUS.get(row.status, "failed")
    figures = {name: getattr(row, name) for name in METHOD_FIGURES}
    note = row.note if status == "ok" else f"{row.error or ''}; {row.note}".strip("; ")
    log.emit(row.method, status, figures, note[:600])


def emit_ratios(log: RowLog, summary: dict[str, Any], methods: list[str]) -> None:
    if not (set(methods) & set(AESR1_METHODS) and set(methods) & set(TRL_METHODS)):
        return
    if not summary:
        log.emit(
            "ratio: RAPO step speed-up", "skipped", note="needs ok rows of aesr1-rapo and a trl-grpo method"
        )
        return
    speed = summary["speedup"]
    log.emit("ratio: RAPO step speed-up", "ok", {"speedup": speed, "goal_min": GOAL_SPEEDUP},
             note=f"{summary['trl_baseline']} step s / aesr1-rapo's; goal >= {GOAL_SPEEDUP}: "
                  f"{'met' if speed >= GOAL_SPEEDUP else 'NOT met'}")  # fmt: skip
    if "memory_ratio" in summary:
        memory = summary["memory_ratio"]
        log.emit("ratio: peak memory", "ok", {"ratio": memory, "goal_max": GOAL_MEMORY},
                 note=f"aesr1-rapo peak / {summary['trl_baseline']}'s; goal <= {GOAL_MEMORY}: "
                      f"{'met' if memory <= GOAL_MEMORY else 'NOT met'}")  # fmt: skip


def peer_rows(log: RowLog, device: torch.device, methods: list[str], trl_liger: str) -> None:
    """A row for Liger's layer kernels in trl's rows: missing on a GPU is a failure (trl at its best uses them)."""
    if not set(methods) & set(TRL_METHODS) or trl_liger == "off":
        return
    if importlib_available("liger_kernel"):
        return
    if device.type == "cuda":
        log.emit(
            "peer: liger-kernel", "failed", note="not installed: trl's rows ran without Liger's layer kernels"
        )
    else:
        log.emit("peer: liger-kernel", "skipped", note="not installed (and trl uses it on CUDA only)")


if __name__ == "__main__":
    main()
