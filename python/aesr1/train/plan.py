"""Per-GPU memory plan of a training configuration (`python -m aesr1.train --plan`), before any run.

No weights are loaded and nothing is trained: the plan reads the architecture (the checkpoint's
`config.json`, a built-in table of the published Qwen2.5-VL sizes, or the tiny model's settings),
the DeepSpeed config and the batch settings, and adds up, for each stage on each GPU:

- **weights** in `model.dtype`; under ZeRO-3 each GPU holds 1/N of them (none with parameter offload);
- **gradients** of the trainable parameters, in the weights' dtype (DeepSpeed's default for ZeRO >= 2),
  1/N each under ZeRO-2/3;
- **AdamW states**: under DeepSpeed an fp32 master copy plus the two moments (12 bytes per trainable
  parameter; ZeRO paper, Rajbhandari et al. 2020, §3: "K = 12"), 1/N each under ZeRO-1/2/3, none on
  the GPU with optimizer offload (then the gradients move to the host too, through two reduce
  buckets of h^2 elements, DeepSpeed's `reduce_bucket_size` as filled here); without
  DeepSpeed `torch.optim.AdamW` keeps both moments in the parameters' dtype (2 x dtype bytes);
  LoRA adapters are fp32 (peft upcasts them), 4 + 4 + 8 bytes per adapter parameter;
- the **reference model** of the KL term (RAPO with `rapo.beta > 0`): a second copy of the weights
  for full fine-tuning (partitioned like the policy under ZeRO-3, trl's `prepare_deepspeed`; whole on
  every GPU under ZeRO-0/1/2); with LoRA the same weights with the adapter switched
  (`aesr1.modeling.lora`): nothing, or a frozen fp32 copy of the cold-start adapter when RAPO
  continues it;
- **rollouts** (RAPO): the KV cache of one generation batch per GPU (`rapo.mini_batch_size x
  rapo.steps_per_generation / N` rows of prompt + `rapo.max_completion_length` tokens; 2 x layers x
  KV heads x head dim per token, in the weights' dtype; the decode engine rounds the length up to
  `kv_block`), the prefill's working set, and under ZeRO-3 the full weights gathered for generation
  (trl's `unwrap_model_for_generation`); a colocated vLLM takes `vllm_gpu_memory_utilization` of the GPU;
  the held-out evaluation during RAPO the same for `eval.batch_size x eval.num_samples` rows;
- **logits**: (B, T, vocabulary) in the weights' dtype plus fp32 log-probabilities and their
  gradient (dtype + 8 bytes per logit; the SFT loss scores every position, RAPO only the completion);
  `rapo.fused_linear` (on by default on CUDA) replaces them by chunks of ~384 MiB (plus the lm_head
  gradient when lm_head trains);
- **activations** of one micro-batch, Korthikanti et al. 2022 ("Reducing Activation Recomputation
  in Large Transformer Models", §4.1) redone for this decoder: per token and layer, with flash/SDPA
  attention (no s^2 term; `attn_implementation: eager` adds 2 b a s for scores and softmax) and no
  dropout, the saved tensors are two RMSNorm inputs in fp32 (8h bytes)
  and, in the weights' dtype, the two normalised outputs and two projection inputs (4h), q, the
  attention output and its contiguous copy (3 a d), k and v (2 k d) and the SwiGLU MLP's gate, up,
  activation and product (4f): `8h + b(4h + 3ad + 2kd + 4f)` bytes (b = dtype bytes; Korthikanti's
  GPT layer is `sbh(34 + 5as/h)` for 2-byte tensors, 4h MLP and dropout). LoRA adds, per adapted
  linear of input width n, its fp32 input (4n), the dropout mask (n) and the rank-r output (4r).
  Gradient checkpointing (per decoder layer, as transformers does) keeps only each layer's input
  (b h) plus one layer's activations during the recomputation. Both figures are printed; the
  configured one is counted;
- the **vision tower**: its weights' share, and its activations over the images of a micro-batch
  (4 patches per visual token, the same per-token formula with the ViT's sizes) when it trains;
- a fixed **CUDA context** allowance (1 GiB: context, cuBLAS/NCCL workspaces; not seen by torch's
  allocator) and **fragmentation** of torch's caching allocator (10% of the allocated peak).

The peak of a stage is what persists (weights, gradients, optimiser states, reference) plus the
largest of its phases (RAPO: rollout, no-grad log-probs, training step, evaluation; SFT: training
step).
Assumed throughout: CUDA (so `rapo.fused_linear: null` means on), every completion reaches
`max_completion_length` (RAPO pads a round to its longest), one image per prompt of
`PHOTO_SIZE` pixels for real datasets (`data.synthetic_image_size` for the synthetic one) resized as
Qwen2.5-VL's processor does, and `PROMPT_TEXT_TOKENS` text tokens around it.

It is an estimate: the allocator's real peak depends on kernels, the order in which tensors are
freed and DeepSpeed's buckets, and no GPU run has measured it yet. The one measured figure we were
given, 75.8 GB on an H100 for the ZeRO-3 Qwen2.5-VL-3B configuration at 4 x 1024 tokens, comes
without its settings or unit; for the closest configuration we can reconstruct (that of
`benches/bench_scale.py`: one GPU, vision tower frozen, beta 0.01, 32 rollouts per round,
micro-batches of 4 x 1024 tokens) the plan gives 63.1 GiB allocated and 70.4 GiB (75.6 GB) in all,
between 0.3% and 17% under it depending on what the figure counted (README, "Will it fit?").
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aesr1.train.config import QWEN2_5_VL_LORA_TARGETS, TrainConfig

GiB = 1024**3

#: Bytes per element of each `model.dtype` ("auto" reads the checkpoint's `torch_dtype`; bf16 when absent).
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}

#: Text tokens of the scoring prompt (Appendix B) with Qwen's chat template around the image, counted
#: with Qwen2.5's tokenizer (~130 for the prompt, ~15 for the template); the tiny tokenizer gives more
#: or fewer, which at its sizes changes nothing that matters.
PROMPT_TEXT_TOKENS = 145
#: (width, height) of a real dataset's photo: a typical AVA / TAD66K image (long side 800 px).
PHOTO_SIZE = (800, 600)
#: Qwen2.5-VL's image processor: 14-pixel patches merged 2 x 2 into one visual token; the released
#: processors accept 3136 .. 12845056 pixels; the tiny model's processor 56^2 .. 112^2.
PATCH, MERGE = 14, 2
REAL_PIXELS = (3136, 12845056)
TINY_PIXELS = (56 * 56, 112 * 112)

CUDA_CONTEXT_BYTES = 1 * GiB
FRAGMENTATION = 0.10
#: Logits per chunk of the fused-linear loss (`aesr1.triton_kernels.fused_linear_rapo._CHUNK_BYTES`),
#: counted twice: the chunk's logits and its fp32 working tensor.
FUSED_CHUNK_BYTES = 384 * 1024**2
#: fp32 log-probabilities and their gradient next to the logits themselves.
LOGIT_EXTRA_BYTES = 8

# Published sizes of the Qwen2.5-VL checkpoints, in the layout of their config.json files (read with
# transformers' `Qwen2_5_VLConfig`, whose defaults fill what a file leaves out: the 3B/7B files give
# no vision depth, intermediate or head counts). Sources: huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct
# and -7B-Instruct config.json (3B: as in benches/bench_rollout.py; 7B: also the module tree printed
# by transformers), Qwen/Qwen2.5-VL-72B-Instruct-AWQ config.json for the 72B vision tower (its text
# intermediate_size 29696 is AWQ padding; the unquantised model, like Qwen/Qwen2.5-72B, has 29568) and
# Qwen/Qwen2.5-32B config.json for the 32B language model (its vision tower: that of the 72B file,
# intermediate 3456, output width 5120).
_VISION = {"depth": 32, "hidden_size": 1280, "num_heads": 16, "patch_size": 14, "spatial_merge_size": 2,
           "temporal_patch_size": 2, "in_channels": 3}  # fmt: skip
KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "3B": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
           "vision_config": {**_VISION, "intermediate_size": 3420, "out_hidden_size": 2048}},
    "7B": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
           "vision_config": {**_VISION, "intermediate_size": 3420, "out_hidden_size": 3584}},
    "32B": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64, "num_attention_heads": 40,
            "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
            "vision_config": {**_VISION, "intermediate_size": 3456, "out_hidden_size": 5120}},
    "72B": {"hidden_size": 8192, "intermediate_size": 29568, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "vocab_size": 152064, "tie_word_embeddings": False,
            "vision_config": {**_VISION, "intermediate_size": 3456, "out_hidden_size": 8192}},
}  # fmt: skip


@dataclass(frozen=True)
class Architecture:
    """The sizes of a Qwen2.5-VL model that its memory depends on."""

    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_word_embeddings: bool
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_out_hidden_size: int
    patch_size: int = PATCH
    temporal_patch_size: int = 2
    spatial_merge_size: int = MERGE
    in_channels: int = 3
    dtype: str | None = None  # the checkpoint's torch_dtype, for model.dtype "auto"

    @classmethod
    def from_hf_config(cls, config, name: str) -> Architecture:
        """From a transformers `Qwen2_5_VLConfig` (or any config with its text/vision fields)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vision = config.vision_config
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        tie = getattr(config, "tie_word_embeddings", None)
        if tie is None:
            tie = getattr(text, "tie_word_embeddings", False)
        dtype = getattr(config, "dtype", None)
        return cls(
            name=name, vocab_size=text.vocab_size, hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size, num_layers=text.num_hidden_layers, num_heads=heads,
            num_kv_heads=text.num_key_value_heads, head_dim=head_dim, tie_word_embeddings=bool(tie),
            vision_depth=vision.depth, vision_hidden_size=vision.hidden_size,
            vision_intermediate_size=vision.intermediate_size, vision_out_hidden_size=vision.out_hidden_size,
            patch_size=vision.patch_size, temporal_patch_size=vision.temporal_patch_size,
            spatial_merge_size=vision.spatial_merge_size, in_channels=vision.in_channels,
            dtype=str(dtype).removeprefix("torch.") if dtype is not None else None,
        )  # fmt: skip

    # -- parameter counts (Qwen2.5-VL in transformers: q/k/v with bias, o and the MLP without) --

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of a decoder layer, by module name."""
        h, attn, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        f = self.intermediate_size
        return {"q_proj": (h, attn), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (attn, h),
                "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}  # fmt: skip

    def decoder_layer_params(self) -> int:
        shapes = self.linear_shapes()
        weights = sum(i * o for i, o in shapes.values())
        biases = sum(shapes[n][1] for n in ("q_proj", "k_proj", "v_proj"))
        return weights + biases + 2 * self.hidden_size  # + two RMSNorm weights

    def language_model_params(self) -> int:
        """Embedding, decoder layers and final norm (not lm_head)."""
        embed = self.vocab_size * self.hidden_size
        return embed + self.num_layers * self.decoder_layer_params() + self.hidden_size

    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def vision_tower_params(self) -> int:
        """Patch embedding and ViT blocks (not the patch merger)."""
        hv, fv = self.vision_hidden_size, self.vision_intermediate_size
        patch = self.in_channels * self.temporal_patch_size * self.patch_size**2 * hv  # Conv3d, no bias
        block = (hv * 3 * hv + 3 * hv) + (hv * hv + hv) + 2 * (hv * fv + fv) + (fv * hv + hv) + 2 * hv
        return patch + self.vision_depth * block

    def projector_params(self) -> int:
        """The patch merger: RMSNorm, then Linear(4 hv, 4 hv), GELU, Linear(4 hv, out)."""
        hv, merged = self.vision_hidden_size, self.vision_hidden_size * self.spatial_merge_size**2
        return (
            hv
            + (merged * merged + merged)
            + (merged * self.vision_out_hidden_size + self.vision_out_hidden_size)
        )

    def total_params(self) -> int:
        return (
            self.language_model_params()
            + self.lm_head_params()
            + self.vision_tower_params()
            + self.projector_params()
        )

    def lora_params(self, r: int, targets: list[str]) -> int:
        """Adapter parameters of rank `r` on the language model's projections named in `targets`:
        r x (in + out) per adapted linear (peft's lora_A and lora_B, no bias)."""
        shapes = self.linear_shapes()
        unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in shapes]
        if unknown:
            raise ValueError(
                f"model.lora.target_modules: the plan knows the language model's projections "
                f"{', '.join(QWEN2_5_VL_LORA_TARGETS)}; cannot size {', '.join(map(repr, unknown))}"
            )
        names = {t.rsplit(".", 1)[-1] for t in targets}
        return self.num_layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)

    # -- per-token activation bytes (see the module docstring for the derivation) --

    def layer_activation_bytes(self, b: int) -> int:
        """Saved activations of one decoder layer per token, `b` bytes per element."""
        h, ad, kd, f = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        return 8 * h + b * (4 * h + 3 * ad + 2 * kd + 4 * f)

    def lora_activation_bytes(self, r: int, targets: list[str], dropout: float) -> int:
        """What LoRA adds to one decoder layer's saved activations per token."""
        shapes = self.linear_shapes()
        per_input = 5 if dropout > 0 else 4
        names = {t.rsplit(".", 1)[-1] for t in targets}
        return sum(per_input * shapes[n][0] + 4 * r for n in names)

    def vision_block_activation_bytes(self, b: int) -> int:
        hv, fv = self.vision_hidden_size, self.vision_intermediate_size
        return 8 * hv + b * (4 * hv + 3 * hv + 2 * hv + 4 * fv)

    def forward_working_bytes(self, b: int) -> int:
        """Per token, the largest transient tensors of one layer in a no-grad forward."""
        return b * (3 * self.hidden_size + 2 * self.num_kv_heads * self.head_dim + 3 * self.intermediate_size)

    def kv_bytes_per_token(self, b: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * b


# ---------------------------------------------------------------------------------------------------
# Where the architecture comes from


def architecture_for(config: TrainConfig) -> Architecture:
    """The model `config` trains: the tiny model's settings (`model.name_or_path` None), the
    checkpoint's config.json (a local directory), or the built-in table entry its name matches."""
    from transformers import Qwen2_5_VLConfig

    model = config.model
    if model.name_or_path is None:
        return tiny_architecture(config)
    path = Path(model.name_or_path).expanduser()
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(
                f"model.name_or_path {model.name_or_path!r}: the directory has no config.json"
            )
        try:
            values = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file}: not valid JSON: {error}") from None
        if values.get("model_type") not in (None, "qwen2_5_vl"):
            raise ValueError(
                f"{file}: model_type {values.get('model_type')!r}; the plan knows Qwen2.5-VL's architecture only"
            )
        return Architecture.from_hf_config(Qwen2_5_VLConfig(**values), f"{path.name} (its config.json)")
    size = known_size(model.name_or_path)
    if size is None:
        raise ValueError(
            f"model.name_or_path {model.name_or_path!r} is not a local directory (no config.json to read) "
            f"and names no Qwen2.5-VL size the plan knows ({', '.join(KNOWN_MODELS)}): "
            "give the checkpoint directory with --model"
        )
    return Architecture.from_hf_config(
        Qwen2_5_VLConfig(**KNOWN_MODELS[size]), f"Qwen2.5-VL-{size} (built-in sizes of its config.json)"
    )


def known_size(name: str) -> str | None:
    """The Qwen2.5-VL size a name gives ("7B" for "Qwen/Qwen2.5-VL-7B-Instruct" or "/models/qwen2.5-vl-7b"),
    None when it gives none the plan knows."""
    if not re.search(r"qwen2\.?5[-_]?vl", name, re.IGNORECASE):
        return None
    found = re.findall(r"(?<![0-9.])(\d+)b(?![a-z0-9])", name, re.IGNORECASE)
    sizes = [f"{n}B" for n in found if f"{n}B" in KNOWN_MODELS]
    return sizes[-1] if sizes else None


def tiny_architecture(config: TrainConfig) -> Architecture:
    """The tiny model `python -m aesr1.train` builds from `model.tiny_*`, without building it. Its
    vocabulary is the BPE's target size plus the four format tokens (the trained BPE reaches its
    target on the cold-start text)."""
    from aesr1.modeling.tiny import FORMAT_TOKENS
    from aesr1.train.pipeline import tiny_model_config

    tiny = tiny_model_config(config.model)
    return Architecture(
        name="tiny Qwen2.5-VL (model.tiny_*)", vocab_size=tiny.vocab_size + len(FORMAT_TOKENS),
        hidden_size=tiny.hidden_size, intermediate_size=tiny.intermediate_size,
        num_layers=tiny.num_hidden_layers, num_heads=tiny.num_attention_heads,
        num_kv_heads=tiny.num_key_value_heads, head_dim=tiny.hidden_size // tiny.num_attention_heads,
        tie_word_embeddings=False, vision_depth=tiny.vision_depth, vision_hidden_size=tiny.vision_hidden_size,
        vision_intermediate_size=tiny.vision_intermediate_size, vision_out_hidden_size=tiny.hidden_size,
    )  # fmt: skip


def image_tokens(width: int, height: int, pixels: tuple[int, int], unit: int = PATCH * MERGE) -> int:
    """Visual tokens of one image after Qwen2-VL's `smart_resize` (sides rounded to `unit`, area
    clamped to `pixels`) and the 2 x 2 merge."""
    low, high = pixels
    h, w = max(unit, round(height / unit) * unit), max(unit, round(width / unit) * unit)
    if h * w > high:
        beta = math.sqrt(height * width / high)
        h, w = (
            max(unit, math.floor(height / beta / unit) * unit),
            max(unit, math.floor(width / beta / unit) * unit),
        )
    elif h * w < low:
        beta = math.sqrt(low / (height * width))
        h, w = math.ceil(height * beta / unit) * unit, math.ceil(width * beta / unit) * unit
    return (h // PATCH) * (w // PATCH) // MERGE**2


def prompt_tokens(config: TrainConfig) -> tuple[int, int, str]:
    """(visual tokens, prompt tokens, what was assumed) for one prompt of `config`'s data."""
    pixels = TINY_PIXELS if config.model.name_or_path is None else REAL_PIXELS
    if config.data.spec.split(":", 1)[0] == "synthetic":
        side = config.data.synthetic_image_size
        width, height, what = side, side, f"synthetic {side} x {side} images"
    else:
        (width, height), what = PHOTO_SIZE, f"assumed {PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} photos"
    visual = image_tokens(width, height, pixels)
    return visual, visual + PROMPT_TEXT_TOKENS, what


# ---------------------------------------------------------------------------------------------------
# DeepSpeed settings


@dataclass(frozen=True)
class Sharding:
    """What the DeepSpeed config (if any) does to memory."""

    deepspeed: bool = False
    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    name: str = "no DeepSpeed"

    @classmethod
    def of(cls, config: TrainConfig) -> Sharding:
        from aesr1.train.distributed import stage_deepspeed_config

        values = stage_deepspeed_config(config)
        if values is None:
            return cls()
        zero = values.get("zero_optimization", {}) or {}
        stage = int(zero.get("stage", 0))

        def offloaded(key: str) -> bool:
            section = zero.get(key) or {}
            return str(section.get("device", "none")).lower() in ("cpu", "nvme")

        opt, param = offloaded("offload_optimizer"), offloaded("offload_param") and stage == 3
        label = f"DeepSpeed {config.deepspeed or 'from the launcher'}: ZeRO-{stage}"
        if opt or param:
            label += ", offload " + " + ".join(
                n for n, on in (("optimizer", opt), ("parameters", param)) if on
            )
        return cls(True, stage, opt, param, label)


# ---------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Item:
    name: str
    nbytes: float
    note: str = ""
    counted: bool = True  # False for a share of another item, shown for information


@dataclass
class StagePlan:
    """One stage's per-GPU memory: `persistent` items plus the largest phase."""

    stage: str
    persistent: list[Item]
    phases: dict[str, list[Item]]
    activations: dict[str, float]  # "with checkpointing" / "without checkpointing" -> bytes
    host: list[Item] = field(default_factory=list)

    def phase_total(self, phase: str) -> float:
        return sum(i.nbytes for i in self.phases[phase] if i.counted)

    @property
    def peak_phase(self) -> str:
        totals = {p: self.phase_total(p) for p in self.phases}
        return max(totals, key=lambda p: math.inf if math.isnan(totals[p]) else totals[p])

    @property
    def allocated(self) -> float:
        return sum(i.nbytes for i in self.persistent if i.counted) + self.phase_total(self.peak_phase)

    @property
    def fragmentation(self) -> float:
        return FRAGMENTATION * self.allocated

    @property
    def total(self) -> float:
        return self.allocated + self.fragmentation + CUDA_CONTEXT_BYTES


@dataclass
class MemoryPlan:
    architecture: Architecture
    world_size: int
    sharding: Sharding
    dtype: str
    lora: str
    total_params: int
    vision_params: int
    stages: list[StagePlan]
    assumptions: list[str]

    @property
    def peak(self) -> float:
        totals = [s.total for s in self.stages]
        return math.nan if any(math.isnan(t) for t in totals) else max(totals, default=0.0)


def plan_memory(
    config: TrainConfig,
    world_size: int = 1,
    *,
    gpu_memory: int | None = None,
    architecture: Architecture | None = None,
) -> MemoryPlan:
    """The per-GPU memory of both stages of `config` on `world_size` GPUs of `gpu_memory` bytes
    (needed only to size a colocated vLLM) (see the module docstring)."""
    if world_size < 1:
        raise ValueError(f"the number of GPUs must be >= 1, got {world_size}")
    arch = architecture or architecture_for(config)
    sharding = Sharding.of(config)
    dtype = config.model.dtype
    if dtype == "auto":
        dtype = arch.dtype if arch.dtype in DTYPE_BYTES else "bfloat16"
    b = DTYPE_BYTES[dtype]
    n = world_size
    lora = config.model.lora
    zero3 = sharding.deepspeed and sharding.stage == 3
    total = arch.total_params()
    vision = arch.vision_tower_params() + arch.projector_params()
    visual, prompt, image_note = prompt_tokens(config)
    adapters = arch.lora_params(lora.r, lora.target_modules) if lora.r is not None else 0

    def trainable(freeze_tower: bool, freeze_projector: bool) -> int:
        if lora.r is not None:
            return adapters
        frozen = (arch.vision_tower_params() if freeze_tower else 0) + (
            arch.projector_params() if freeze_projector else 0
        )
        return total - frozen

    def states(params: int) -> tuple[list[Item], list[Item]]:
        """Weights, gradients and AdamW states on the GPU, and what sits in host memory."""
        z, ds = sharding.stage, sharding.deepspeed
        gpu, host = [], []
        # peft keeps adapters in fp32 beside 16-bit base weights; DeepSpeed casts the whole module to
        # its dtype and keeps the fp32 copy in the optimiser instead.
        adapter_b = b if ds else 4
        weight_bytes = total * b + adapters * adapter_b
        if zero3:
            note = "ZeRO-3 partition (1/N)"
            if sharding.offload_param:
                host.append(Item("weights (offloaded)", weight_bytes / n))
                gpu.append(Item(f"weights ({dtype})", 0, note + ", offloaded to the host"))
            else:
                gpu.append(Item(f"weights ({dtype})", weight_bytes / n, note))
        else:
            gpu.append(Item(f"weights ({dtype})", weight_bytes, "whole on every GPU"))
        share = vision * b / (n if zero3 else 1) * (0 if sharding.offload_param else 1)
        gpu.append(
            Item("  of which vision tower + projector", share, "(counted in the weights)", counted=False)
        )
        what = f"{params / 1e6:,.1f} M trainable parameters"
        if ds:
            grads = params * b / (n if z >= 2 else 1)
            if sharding.offload_optimizer:
                host.append(
                    Item("fp32 gradients, master weights, AdamW moments", params * 16 / (n if z >= 1 else 1))
                )
                # each reduced bucket is copied into the host's fp32 partition: two buckets on the GPU
                buckets = min(grads, 2 * arch.hidden_size**2 * b)
                gpu.append(Item(f"gradient buckets ({dtype})", buckets, what + "; gradients go to the host"))
                gpu.append(Item("AdamW states", 0, "offloaded to the host"))
            else:
                gpu.append(Item(f"gradients ({dtype})", grads, what + (", 1/N (ZeRO-2/3)" if z >= 2 else "")))
                opt = params * 12 / (n if z >= 1 else 1)
                gpu.append(
                    Item(
                        "AdamW states (fp32 master + m + v)", opt, "12 B/param" + (", 1/N" if z >= 1 else "")
                    )
                )
        else:
            grad_b = adapter_b if lora.r is not None else b
            gpu.append(Item("gradients", params * grad_b, what))
            gpu.append(
                Item("AdamW states (m + v)", params * 2 * grad_b, f"{2 * grad_b} B/param (torch AdamW)")
            )
            if n > 1:
                gpu.append(Item("DDP gradient buckets", params * grad_b, "a second copy of the gradients"))
        return gpu, host

    def activation_bytes(rows: int, tokens: int, trains_tower: bool, images: int) -> dict[str, float]:
        per_layer = arch.layer_activation_bytes(b)
        if config.model.attn_implementation == "eager":  # scores and softmax, per head and token pair
            per_layer += 2 * b * arch.num_heads * tokens
        if lora.r is not None:
            per_layer += arch.lora_activation_bytes(lora.r, lora.target_modules, lora.dropout)
        t = rows * tokens
        full = arch.num_layers * per_layer * t
        ckpt = arch.num_layers * b * arch.hidden_size * t + per_layer * t
        if trains_tower:
            patches = images * visual * MERGE**2
            vblock = arch.vision_block_activation_bytes(b) * patches
            full += arch.vision_depth * vblock
            ckpt += arch.vision_depth * b * arch.vision_hidden_size * patches + vblock
        return {"with checkpointing": ckpt, "without checkpointing": full}

    def generation(rows: int, max_new_tokens: int, block: int | None = None) -> list[Item]:
        """Sampling `rows` completions in one call: KV cache (the engine's rounded up to `block`),
        the prefill's working set, and under ZeRO-3 the whole model gathered."""
        capacity = prompt + max_new_tokens
        if block is not None:
            capacity = math.ceil((capacity - 1) / block) * block
        kv_per_token = arch.kv_bytes_per_token(b)
        items = [
            Item("KV cache", rows * capacity * kv_per_token,
                 f"{rows} rows x {capacity:,} tokens x {kv_per_token / 1024:,.0f} KiB"),
            Item("prefill working set", rows * prompt * (arch.forward_working_bytes(b) + kv_per_token)
                 + 2 * rows * arch.vocab_size * 4, "one layer + prompt KV + last logits"),
        ]  # fmt: skip
        if zero3:
            items.append(Item("weights gathered for generation", total * b, "ZeRO-3: the whole model"))
        return items

    checkpointing = config.model.gradient_checkpointing
    chosen = "with checkpointing" if checkpointing else "without checkpointing"
    gathered_working = (
        (arch.vocab_size * arch.hidden_size + int(0.9 * arch.hidden_size**2)) * b if zero3 else 0
    )
    stages: list[StagePlan] = []

    sft = config.sft
    if sft.num_train_epochs > 0:
        rows, tokens = sft.per_device_train_batch_size, prompt + sft.max_completion_length
        persistent, host = states(trainable(sft.freeze_vision_tower, sft.freeze_projector))
        acts = activation_bytes(rows, tokens, lora.r is None and not sft.freeze_vision_tower, rows)
        step = [
            Item(f"activations ({chosen})", acts[chosen], f"{rows} x {tokens:,} tokens"),
            Item("logits (full vocabulary)", rows * tokens * arch.vocab_size * (b + LOGIT_EXTRA_BYTES),
                 f"{rows} x {tokens:,} x {arch.vocab_size:,}, {b} + {LOGIT_EXTRA_BYTES} B each"),
        ]  # fmt: skip
        if zero3:
            step.append(
                Item("ZeRO-3 gathered parameters", gathered_working, "lm_head/embedding + prefetch bucket")
            )
        stages.append(StagePlan("cold start (SFT)", persistent, {"training step": step}, acts, host))

    rapo = config.rapo
    if rapo.num_train_epochs > 0 and (rapo.max_steps is None or rapo.max_steps > 0):
        persistent, host = states(trainable(rapo.freeze_vision_tower, rapo.freeze_projector))
        if rapo.beta > 0:
            if lora.r is not None:
                if sft.num_train_epochs > 0 and not lora.merge_before_rapo:
                    persistent.append(
                        Item(
                            "reference (frozen cold-start adapter)", adapters * 4, "fp32 copy of the adapter"
                        )
                    )
                else:
                    persistent.append(Item("reference model", 0, "the same weights, adapter disabled"))
            elif zero3:
                ref = 0.0 if sharding.offload_param else total * b / n
                persistent.append(Item("reference model", ref, "ZeRO-3 partition like the policy"))
            else:
                persistent.append(Item("reference model", total * b, "a second copy of the weights"))
        rollout: list[Item] = []
        if rapo.rollout.backend == "vllm":
            if rapo.rollout.vllm_mode == "colocate":
                share = rapo.rollout.vllm_gpu_memory_utilization
                reserved = math.nan if gpu_memory is None else share * gpu_memory
                rollout.append(Item("vLLM (colocated)", reserved, f"{share:.0%} of the GPU (--gpu-memory)"))
        else:
            block = rapo.rollout.engine.kv_block if rapo.rollout.backend == "engine" else None
            rollout = generation(rapo.generation_batch_size // n, rapo.max_completion_length, block)
        # held-out evaluation every eval.eval_steps: transformers' generate, eval.num_samples per image
        held_out = generation(
            config.eval.batch_size * config.eval.num_samples, config.eval.max_completion_length
        )
        rows, tokens = rapo.per_device_train_batch_size, prompt + rapo.max_completion_length
        fused = rapo.fused_linear is not False
        logits_rows = rows * rapo.max_completion_length * arch.vocab_size
        lm_head_trains = lora.r is None
        if fused:
            train_logits = Item("fused-linear loss chunks", 2 * FUSED_CHUNK_BYTES
                                + (arch.vocab_size * arch.hidden_size * b if lm_head_trains else 0)
                                + rows * rapo.max_completion_length * arch.hidden_size * b,
                                "no (B, T, vocabulary) logits" + ("; + lm_head gradient" if lm_head_trains else ""))  # fmt: skip
            nograd_logits = Item("fused-linear log-prob chunks", 2 * FUSED_CHUNK_BYTES, "")
        else:
            train_logits = Item("logits (full vocabulary)", logits_rows * (b + LOGIT_EXTRA_BYTES),
                                f"{rows} x {rapo.max_completion_length:,} x {arch.vocab_size:,}")  # fmt: skip
            nograd_logits = Item("logits (full vocabulary)", logits_rows * (b + 4), "no gradient")
        acts = activation_bytes(rows, tokens, lora.r is None and not rapo.freeze_vision_tower, rows)
        step = [Item(f"activations ({chosen})", acts[chosen], f"{rows} x {tokens:,} tokens"), train_logits]
        logprob = [Item("forward working set", rows * tokens * (arch.forward_working_bytes(b) + b * arch.hidden_size),
                        f"{rows} x {tokens:,} tokens, no gradient"), nograd_logits]  # fmt: skip
        if zero3:
            step.append(
                Item("ZeRO-3 gathered parameters", gathered_working, "lm_head/embedding + prefetch bucket")
            )
            logprob.append(Item("ZeRO-3 gathered parameters", gathered_working, ""))
        phases = {"rollout": rollout, "log-probs": logprob, "training step": step, "evaluation": held_out}
        stages.append(StagePlan("RAPO", persistent, phases, acts, host))

    lora_text = "full fine-tuning (model.lora.r: null)"
    if lora.r is not None:
        alpha = 2 * lora.r if lora.alpha is None else lora.alpha
        lora_text = f"LoRA r={lora.r}, alpha={alpha:g} on {', '.join(lora.target_modules)}: {adapters / 1e6:,.1f} M adapter parameters"
    assumptions = [
        f"CUDA; model.dtype {dtype} ({b} B/element); "
        + (
            "eager attention (its s^2 scores counted)"
            if config.model.attn_implementation == "eager"
            else "attention by flash-attention/SDPA (no s^2 scores)"
        ),
        f"prompt = {visual} visual tokens ({image_note}) + {PROMPT_TEXT_TOKENS} text tokens = {prompt}; "
        "every completion reaches max_completion_length",
        "activations: Korthikanti et al. 2022 per-layer count redone for Qwen2.5-VL "
        "(8h + b(4h + 3ad + 2kd + 4f) bytes per token per layer; LoRA adds fp32 adapter inputs)",
        f"CUDA context {CUDA_CONTEXT_BYTES / GiB:.0f} GiB (fixed) + allocator fragmentation "
        f"{FRAGMENTATION:.0%} of the allocated peak",
        "an estimate: compare with torch.cuda.max_memory_allocated on a short run before a long one",
    ]
    return MemoryPlan(arch, n, sharding, dtype, lora_text, total, vision, stages, assumptions)


# ---------------------------------------------------------------------------------------------------
# Units and text


_UNITS = {"": None, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_memory_size(text: str) -> tuple[int, str]:
    """Bytes of "24GB", "24GiB", "80G", "48 GB", "1.5TiB": GB/G/MB/... are decimal (10^9),
    GiB/Gi/MiB/... binary (2^30). Returns (bytes, how it was read)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)(i?)([bB]?)\s*", str(text))
    if not match or not match.group(2):
        raise ValueError(
            f"--gpu-memory {text!r}: expected a size with a unit, e.g. 24GB (10^9 bytes), 24GiB (2^30 bytes) or 80G"
        )
    number, prefix, binary = float(match.group(1)), match.group(2).lower(), bool(match.group(3))
    power = _UNITS[prefix]
    unit = f"{prefix.upper()}{'i' if binary else ''}B"
    base = 1024 if binary else 1000
    nbytes = int(number * base**power)
    if nbytes <= 0:
        raise ValueError(f"--gpu-memory {text!r}: must be more than 0 bytes")
    meaning = f"{number:g} {unit} = {number:g} x {'2^' + str(10 * power) if binary else '10^' + str(3 * power)} bytes"
    return nbytes, meaning


def _gib(value: float) -> str:
    return "   n/a" if math.isnan(value) else f"{value / GiB:6.2f}"


def format_plan(plan: MemoryPlan, gpu_memory: tuple[int, str] | None = None) -> str:
    """The plan as text: per stage its items, phases, activation figures and the fit verdict."""
    arch = plan.architecture
    lines = [
        f"Memory plan per GPU (GiB = 2^30 bytes) for {arch.name}",
        f"  {plan.total_params / 1e9:,.3f} B parameters ({plan.vision_params / 1e9:,.3f} B vision tower + projector), "
        f"{arch.num_layers} layers, hidden {arch.hidden_size}, {arch.num_kv_heads} KV heads x {arch.head_dim}, "
        f"vocabulary {arch.vocab_size:,}",
        f"  {plan.world_size} GPU(s), {plan.sharding.name}; {plan.lora}",
    ]
    budget = gpu_memory[0] if gpu_memory else None
    if gpu_memory:
        lines.append(f"  GPU memory: {gpu_memory[1]} = {gpu_memory[0] / GiB:.2f} GiB")
    for stage in plan.stages:
        lines.append("")
        lines.append(f"{stage.stage}")
        for item in stage.persistent:
            lines.append(f"  {item.name:<44} {_gib(item.nbytes)}  {item.note}")
        peak = stage.peak_phase
        for phase, items in stage.phases.items():
            mark = "  <- peak" if phase == peak else ""
            lines.append(f"  phase: {phase:<37} {_gib(stage.phase_total(phase))}{mark}")
            for item in items:
                lines.append(f"    {item.name:<42} {_gib(item.nbytes)}  {item.note}")
        for name, value in stage.activations.items():
            lines.append(f"  (activations {name}: {value / GiB:.2f} GiB)")
        lines.append(f"  {'CUDA context':<44} {_gib(CUDA_CONTEXT_BYTES)}  fixed")
        lines.append(f"  {'allocator fragmentation':<44} {_gib(stage.fragmentation)}  {FRAGMENTATION:.0%}")
        lines.append(f"  {'total':<44} {_gib(stage.total)}")
        for item in stage.host:
            lines.append(f"  host memory: {item.name}: {item.nbytes / GiB:.2f} GiB")
    lines.append("")
    peak = plan.peak
    if math.isnan(peak):
        lines.append("peak: unknown (a colocated vLLM takes a share of the GPU: give --gpu-memory)")
    elif budget is None:
        lines.append(f"peak: {peak / GiB:.2f} GiB per GPU (give --gpu-memory to check a GPU)")
    else:
        spare = budget - peak
        verdict = "FITS" if spare >= 0 else "DOES NOT FIT"
        lines.append(
            f"peak: {peak / GiB:.2f} GiB per GPU of {budget / GiB:.2f} GiB: {verdict} "
            f"({abs(spare) / GiB:.2f} GiB {'to spare' if spare >= 0 else 'short'})"
        )
    lines.append("assumptions:")
    lines.extend(f"  - {a}" for a in plan.assumptions)
    return "\n".join(lines)
