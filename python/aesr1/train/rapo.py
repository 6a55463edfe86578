"""Stage 2: RAPO (paper §3.3, Eq. 3-12) as a small training loop on `accelerate`.

One *generation round*:

1. each process takes its share of `images_per_generation` images (whole groups: a group of K
   completions never spans two processes) and samples K completions per image with `generate`;
2. rewards of the whole generation batch, gathered across processes (`rank_scope="global"`), and
   group advantages (Eq. 9), via `aesr1.rewards.rapo` (`aesr1.train.scoring`);
3. old log-probs from the policy that generated the rollouts (one no-grad forward, skipped when the
   round feeds a single optimiser step: then the ratio is exactly 1 and `old_logp=None`) and
   reference log-probs from the frozen SFT checkpoint; with `rapo.fused_linear` both come from the
   last hidden states in chunks (`aesr1.train.logprobs`), as does the loss, so no (B, T, vocabulary)
   logits tensor exists in the step;
4. `steps_per_generation` optimiser steps on mini-batches of the round, each a sum of micro-batches
   whose `aesr1.loss.rapo_loss` (Eq. 10-12) is normalised by the global mini-batch, so gradient
   accumulation and several processes give the gradient of one big batch. Entropy, KL and clip
   fractions come from that same loss pass.

Rollouts come from `rapo.rollout.backend` (`aesr1.rollout.make_rollout_fn`): the static-cache decode
engine on CUDA (plain `generate` on CPU), `generate`, or vLLM. Under DeepSpeed
(`aesr1.train.distributed`), ZeRO-3 parameters are gathered for generation and evaluation, and the
loop marks the last micro-batch of each optimiser step as DeepSpeed's accumulation boundary.

Why not trl's `GRPOTrainer`: see the README section "Why RAPO has its own loop" (measured); in short,
rank rewards over the gathered generation batch with whole groups per process, checkpoints that
carry the data position and resume bit-identically, and our fused loss with its metrics all need
overrides of its private methods.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aesr1.data.records import ScoredImage
from aesr1.generation import NEVER_SAMPLE, suppressed_tokens
from aesr1.train.batching import chunks, select_rows, to_device, with_host_sizes
from aesr1.train.config import TrainConfig, validate_world_size
from aesr1.train.distributed import is_deepspeed
from aesr1.train.logprobs import completion_logits, policy_loss, sequence_logprobs
from aesr1.train.scoring import score_rollouts
from aesr1.train.tracking import MetricsLogger

__all__ = [
    "NEVER_SAMPLE",
    "DataPosition",
    "RAPOTrainer",
    "Round",
    "completion_logits",
    "list_checkpoints",
    "suppressed_tokens",
]


class DataPosition:
    """Where the rollout sampler stands: epoch and index into that epoch's seeded permutation.

    Registered with `accelerator.register_for_checkpointing`, so `save_state`/`load_state` carry it.
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0
        self.index = 0
        self.round = 0
        self.step = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.num_items))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, count: int) -> list[int]:
        """The next `count` item indices, continuing into the next epoch's permutation when needed."""
        out: list[int] = []
        while len(out) < count:
            order = self._order(self.epoch)
            need = count - len(out)
            out.extend(order[self.index : self.index + need])
            self.index += need
            if self.index >= self.num_items:
                self.epoch += 1
                self.index = 0
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "round": self.round, "step": self.step,
                "num_items": self.num_items, "seed": self.seed}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["num_items"] != self.num_items or state["seed"] != self.seed:
            raise ValueError(
                f"checkpoint was written for {state['num_items']} training images with seed {state['seed']}, "
                f"this run has {self.num_items} with seed {self.seed}: resume with the same data and seed"
            )
        self.epoch, self.index = state["epoch"], state["index"]
        self.round, self.step = state["round"], state["step"]


@dataclass
class Round:
    """The rollouts of one generation round on this process."""

    batch: dict[str, Any]
    texts: list[str]
    advantages: torch.Tensor
    old_logp: torch.Tensor | None
    ref_logp: torch.Tensor | None
    stats: dict[str, float]


@contextmanager
def engine_attention(model, backend: str):
    """The decode engine implements "sdpa"/"eager" attention only: a model trained with
    flash-attention 2 samples with SDPA (same weights, same distribution) instead of falling back
    to the much slower `generate`."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    switch = (
        backend == "engine"
        and current == "flash_attention_2"
        and next(model.parameters()).device.type == "cuda"
        and hasattr(model, "set_attn_implementation")
    )
    if not switch:
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def _rows(values: torch.Tensor | None, rows: list[int], width: int) -> torch.Tensor | None:
    return None if values is None else values[rows][:, :width]


def list_checkpoints(directory: Path) -> list[Path]:
    found = [p for p in directory.glob("checkpoint-*") if p.is_dir() and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


class RAPOTrainer:
    """RAPO on a policy initialised from the SFT checkpoint, against that checkpoint as reference.

    Args:
        config: the run configuration (`rapo`, `reward`, `eval` sections are used).
        model: the policy (a Qwen2.5-VL-style `...ForConditionalGeneration`), or a `peft.PeftModel`
            whose adapter trains (`aesr1.modeling.lora`).
        processor: its processor.
        ref_model: frozen reference (the SFT checkpoint); None when `rapo.beta == 0`, and None for
            a `PeftModel`, whose reference is the same model with its reference weights
            (`aesr1.modeling.lora.reference_weights`: no second model in memory).
        train_items: the training images.
        output_dir: checkpoints go to `<output_dir>/checkpoint-<step>`, logs beside them.
        accelerator: an `accelerate.Accelerator` (one is made when None).
        evaluate_fn: `f(model, step) -> dict` called every `eval.eval_steps` (held-out PLCC/SRCC).
        trackers: the run's experiment trackers (`aesr1.train.trackers.Trackers`), if any.
    """

    def __init__(
        self,
        config: TrainConfig,
        model,
        processor,
        train_items: list[ScoredImage],
        *,
        ref_model=None,
        output_dir: str | Path,
        accelerator=None,
        evaluate_fn=None,
        trackers=None,
    ) -> None:
        from accelerate import Accelerator
        from transformers import get_scheduler

        self.config = config
        self.cfg = config.rapo
        self.loss_config = config.rapo.loss_config()
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        validate_world_size(config, self.accelerator.num_processes)
        if len(train_items) < self.cfg.images_per_generation:
            raise ValueError(
                f"RAPO needs at least images_per_generation = {self.cfg.images_per_generation} training images, "
                f"got {len(train_items)} (lower rapo.mini_batch_size or rapo.steps_per_generation)"
            )
        from aesr1.modeling.lora import base_model, is_peft_model

        self.lora = is_peft_model(model)
        if self.lora and ref_model is not None:
            raise ValueError(
                "a LoRA policy computes its reference log-probs with its own reference weights: pass no ref_model"
            )
        if self.cfg.beta > 0 and ref_model is None and not self.lora:
            raise ValueError("rapo.beta > 0 needs a reference model (the SFT checkpoint)")
        self.processor = processor
        self.train_items = list(train_items)
        self.output_dir = Path(output_dir)
        self.evaluate_fn = evaluate_fn
        self.position = DataPosition(len(self.train_items), config.seed)

        images_per_round = self.cfg.images_per_generation
        rounds = math.ceil(self.cfg.num_train_epochs * len(self.train_items) / images_per_round)
        if self.cfg.max_steps is not None:
            rounds = min(rounds, math.ceil(self.cfg.max_steps / self.cfg.steps_per_generation))
        self.total_rounds = rounds
        self.total_steps = rounds * self.cfg.steps_per_generation

        from aesr1.modeling.freeze import freeze_vision

        freeze_vision(
            base_model(model), tower=self.cfg.freeze_vision_tower, projector=self.cfg.freeze_projector
        )
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if self.lora:
                # with every base weight frozen, checkpointed blocks need an input that requires grad
                model.enable_input_require_grads()
        self.fused_linear = (
            self.cfg.fused_linear
            if self.cfg.fused_linear is not None
            else self.accelerator.device.type == "cuda"
        )
        self.deepspeed = is_deepspeed(self.accelerator)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=self.cfg.learning_rate,
            weight_decay=self.cfg.weight_decay,
        )
        scheduler = get_scheduler(
            self.cfg.lr_scheduler_type, optimizer, num_warmup_steps=self.cfg.warmup_steps,
            num_training_steps=max(1, self.total_steps),
        )  # fmt: skip
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.ref_model = None
        if ref_model is not None and self.cfg.beta > 0:
            ref_model.requires_grad_(False)
            ref_model.eval()
            self.ref_model = self._prepare_reference(ref_model)
        self.rollout_fn = self._make_rollout_fn()
        self.accelerator.register_for_checkpointing(self.position)
        self.logger = MetricsLogger(
            self.output_dir,
            "rapo",
            enabled=self.accelerator.is_main_process,
            tensorboard="tensorboard" in config.report_to,
            trackers=trackers,
        )

    def _prepare_reference(self, ref_model):
        """The frozen reference on this process: sharded like the policy under DeepSpeed/FSDP (trl's
        helpers), else just moved to the device."""
        from accelerate.utils import DistributedType

        kind = self.accelerator.distributed_type
        if kind == DistributedType.DEEPSPEED:
            from trl.models.utils import prepare_deepspeed

            return prepare_deepspeed(ref_model, self.accelerator)
        if kind == DistributedType.FSDP:
            from trl.models.utils import prepare_fsdp

            return prepare_fsdp(ref_model, self.accelerator)
        return ref_model.to(self.accelerator.device)

    # ------------------------------------------------------------------------------------------------
    # Rollouts

    def _make_rollout_fn(self):
        from aesr1.rollout import make_rollout_fn

        rollout = self.cfg.rollout
        if rollout.backend != "vllm":
            return make_rollout_fn(rollout)
        return make_rollout_fn(
            rollout,
            model=self.model,
            processor=self.processor,
            accelerator=self.accelerator,
            sampling=self._sampling(),
        )

    def _sampling(self):
        """The rollout sampling settings of `rapo` (K completions per image)."""
        from aesr1.generation import SamplingConfig

        cfg = self.cfg
        return SamplingConfig(
            num_samples=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
            max_new_tokens=cfg.max_completion_length, do_sample=True,
        )  # fmt: skip

    def _unwrapped(self, model):
        return (
            self.accelerator.unwrap_model(model) if model is self.model else getattr(model, "module", model)
        )

    def _local_share(self, indices: list[int]) -> list[int]:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        per = len(indices) // world
        return indices[rank * per : (rank + 1) * per]

    @torch.no_grad()
    def _logprobs(self, model, batch: dict[str, Any]) -> torch.Tensor:
        rows = batch["completion_ids"].shape[0]
        width = batch["completion_ids"].shape[1]
        out = torch.zeros(rows, width, dtype=torch.float32, device=self.accelerator.device)
        unwrapped = self._unwrapped(model)
        for part in chunks(rows, self.cfg.per_device_train_batch_size):
            sub = select_rows(batch, list(part))
            # autocast as accelerate's wrapped forward does, so both paths see the same precision
            with self.accelerator.autocast():
                logp = sequence_logprobs(
                    model, unwrapped, sub, temperature=self.loss_config.temperature,
                    backend=self.loss_config.backend, fused_linear=self.fused_linear,
                )  # fmt: skip
            out[part.start : part.stop, : logp.shape[1]] = logp.float()
        return out

    def generate_round(self, round_index: int) -> Round:
        """Sample, score and precompute log-probs for one generation round (all processes together)."""
        from trl.models import unwrap_model_for_generation

        cfg = self.cfg
        indices = self._local_share(self.position.take(cfg.images_per_generation))
        items = [self.train_items[i] for i in indices]
        sampling = self._sampling()
        # Seeded per (run seed, round, process): a resumed run samples exactly what the killed one would have.
        seed = (self.config.seed * 1_000_003 + round_index) * 1009 + self.accelerator.process_index
        self.model.eval()
        if cfg.rollout.backend == "vllm":  # vLLM holds its own copy of the weights (synced per call)
            rollout = self.rollout_fn(
                self._unwrapped(self.model), self.processor, [i.image for i in items], sampling, seed=seed
            )
        else:
            with (
                unwrap_model_for_generation(self.model, self.accelerator) as unwrapped,
                suppressed_tokens(unwrapped, self.processor),
                engine_attention(unwrapped, cfg.rollout.backend),
            ):
                rollout = self.rollout_fn(
                    unwrapped, self.processor, [i.image for i in items], sampling, seed=seed
                )
        batch = with_host_sizes(to_device(rollout.batch, self.accelerator.device))
        scored = score_rollouts(
            rollout.texts, [i.score for i in items], cfg.num_generations, self.config.reward, self.accelerator
        )
        mask = batch["completion_mask"].float()
        lengths = self.accelerator.gather(mask.sum(dim=1)).float()
        stats = dict(scored.stats)
        stats.update(
            {"completion_length/mean": lengths.mean().item(), "completion_length/max": lengths.max().item()}
        )
        stats["completion_length/clipped"] = (lengths >= cfg.max_completion_length).float().mean().item()
        old_logp = self._logprobs(self.model, batch) if cfg.steps_per_generation > 1 else None
        ref_logp = self._reference_logprobs(batch) if cfg.beta > 0 else None
        if old_logp is not None and "sampling_logprobs" in batch:
            stats.update(self._drift(batch["sampling_logprobs"], old_logp, mask))
        advantages = torch.tensor(scored.advantages, dtype=torch.float32, device=self.accelerator.device)
        return Round(batch, rollout.texts, advantages, old_logp, ref_logp, stats)

    def _reference_logprobs(self, batch: dict[str, Any]) -> torch.Tensor:
        """Log-probs under the reference: the reference model, or for a LoRA policy the policy's
        own network with the reference weights switched in (ZeRO-3 hooks and DDP as for the policy)."""
        if not self.lora:
            return self._logprobs(self.ref_model, batch)
        from aesr1.modeling.lora import reference_weights

        with reference_weights(self._unwrapped(self.model)):
            return self._logprobs(self.model, batch)

    def _drift(self, sampled: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """|log-prob under the sampler - log-prob under the training forward| over valid tokens: how far
        the rollout backend's numerics (bf16 decode, CUDA graphs, vLLM) are from the policy's."""
        valid = mask.bool()
        gap = (sampled.float() - old_logp).abs().masked_fill(~valid, 0.0)
        acc = self.accelerator
        totals = acc.reduce(torch.stack([gap.sum(), valid.sum().float()]).double(), reduction="sum")
        worst = acc.gather(gap.max().reshape(1).double()).max()
        return {
            "rollout_logprob_drift/mean": (totals[0] / totals[1].clamp(min=1)).item(),
            "rollout_logprob_drift/max": worst.item(),
        }

    # ------------------------------------------------------------------------------------------------
    # Optimisation

    def _mini_batches(self, rows: int, round_index: int) -> list[list[int]]:
        order = list(range(rows))
        if self.cfg.shuffle_mini_batches:
            random.Random((self.config.seed + 17) * 7919 + round_index).shuffle(order)
        per = rows // self.cfg.steps_per_generation
        return [order[s * per : (s + 1) * per] for s in range(self.cfg.steps_per_generation)]

    def optimiser_step(self, data: Round, rows: list[int]) -> dict[str, float]:
        """One optimiser step on this process's `rows` of the round; returns globally averaged metrics.

        Metrics stay on the device through the micro-batches, and so do the loss's value checks
        (`deferred_checks`): the step synchronises with the host once, when it reads them all."""
        from aesr1.loss import raise_for_checks

        cfg, acc = self.cfg, self.accelerator
        self.model.train()
        mask_all = data.batch["completion_mask"]
        local_tokens = mask_all[rows].sum().float()
        global_tokens = acc.reduce(local_tokens.clone(), reduction="sum")
        # DDP averages gradients over processes: per-process normalisers are global / world.
        num_sequences = float(len(rows))
        num_tokens = global_tokens / acc.num_processes
        parts = chunks(len(rows), cfg.per_device_train_batch_size)
        device = acc.device
        # loss, the token-weighted metrics, tokens: summed over micro-batches on the device
        weighted_names = ("kl", "clip_frac_low", "clip_frac_high", "entropy", "ratio_mean")
        sums = torch.zeros(len(weighted_names) + 2, dtype=torch.float64, device=device)
        extremes = torch.tensor([-math.inf, -math.inf], dtype=torch.float64, device=device)  # -min, max
        checks: list = []
        unwrapped = self._unwrapped(self.model)
        for number, part in enumerate(parts):
            sub_rows = [rows[i] for i in part]
            sub = select_rows(data.batch, sub_rows)
            width = sub["completion_ids"].shape[1]

            sync = number == len(parts) - 1
            context = nullcontext() if sync or self.deepspeed else acc.no_sync(self.model)
            with context:
                with acc.autocast():  # the fused path bypasses the wrapped forward's autocast
                    loss, metrics = policy_loss(
                        self.model, unwrapped, sub, old_logp=_rows(data.old_logp, sub_rows, width),
                        ref_logp=_rows(data.ref_logp, sub_rows, width), advantages=data.advantages[sub_rows],
                        loss_config=self.loss_config, fused_linear=self.fused_linear,
                        num_sequences=num_sequences, num_tokens=num_tokens, deferred_checks=checks,
                    )  # fmt: skip
                self._backward(loss, last=sync)
            tokens = sub["completion_mask"].sum().double()
            # a metric is NaN over a micro-batch without valid tokens; it then weighs nothing
            values = torch.stack([metrics[n].double() for n in weighted_names])
            values = torch.where(tokens > 0, values * tokens, torch.zeros_like(values))
            sums += torch.cat([loss.detach().double().reshape(1), values, tokens.reshape(1)])
            micro = torch.stack([-metrics["ratio_min"].double(), metrics["ratio_max"].double()])
            extremes = torch.fmax(extremes, torch.where(tokens > 0, micro, torch.full_like(micro, -math.inf)))
        # Under DeepSpeed the engine clipped and stepped at the boundary (its "gradient_clipping");
        # this returns the norm it measured.
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        # Summed over processes, check flags included, so that every process raises together.
        flags = [flag.reshape(1).to(torch.float64) for _, flag in checks]
        summed = acc.reduce(torch.cat([sums, *flags]), reduction="sum")
        worst = acc.gather(extremes.reshape(1, 2)).amax(dim=0)
        norm = torch.as_tensor(float("nan") if grad_norm is None else grad_norm, dtype=torch.float64)
        host = torch.cat([summed, worst, norm.to(device).reshape(1)]).tolist()  # the step's one sync
        count = len(sums)
        raise_for_checks(checks, flags=host[count : count + len(checks)])  # before the weights move
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        summed, (neg_min, ratio_max), grad_value = host[:count], host[-3:-1], host[-1]
        out = {"loss": summed[0] / acc.num_processes}
        tokens_all = max(summed[-1], 1.0)
        for name, value in zip(weighted_names, summed[1:-1], strict=True):
            out[name] = value / tokens_all
        out["ratio_min"], out["ratio_max"] = -neg_min, ratio_max
        out["clip_frac"] = out["clip_frac_low"] + out["clip_frac_high"]
        out["grad_norm"] = grad_value
        return out

    def _backward(self, loss: torch.Tensor, *, last: bool) -> None:
        """Backward of one micro-batch. The loss is already normalised by the global mini-batch, so
        DeepSpeed must not divide by its accumulation count; `last` ends the optimiser step."""
        if not self.deepspeed:
            self.accelerator.backward(loss)
            return
        engine = self.model
        engine.set_gradient_accumulation_boundary(is_boundary=last)
        engine.backward(loss, scale_wrt_gas=False)
        if last:
            engine.step()

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def save_checkpoint(self) -> Path:
        """`checkpoint-<step>`, written under a temporary name and renamed when complete, so a kill
        mid-save leaves the previous checkpoint as the latest."""
        from aesr1.train.durable import publish_dir, remove_tree, staging_path

        acc = self.accelerator
        path = self.output_dir / f"checkpoint-{self.position.step}"
        staged = staging_path(path)
        acc.wait_for_everyone()
        if acc.is_main_process:
            remove_tree(staged)
        acc.wait_for_everyone()
        acc.save_state(str(staged))
        acc.wait_for_everyone()
        if acc.is_main_process:
            publish_dir(staged, path)
            for old in list_checkpoints(self.output_dir)[: -self.config.save_total_limit]:
                remove_tree(old)
        acc.wait_for_everyone()
        return path

    def latest_checkpoint(self) -> Path | None:
        found = list_checkpoints(self.output_dir)
        return found[-1] if found else None

    def load_checkpoint(self, path: str | Path) -> None:
        self.accelerator.load_state(str(path))
        self.logger.truncate_after(self.position.step)

    # ------------------------------------------------------------------------------------------------

    def train(self, resume: bool | str | Path = False) -> dict[str, Any]:
        """Run (or, with `resume`, continue) RAPO; returns the last logged metrics."""
        acc = self.accelerator
        if acc.is_main_process:
            from aesr1.train.durable import clear_leftovers

            clear_leftovers(self.output_dir)
        acc.wait_for_everyone()
        path = None
        if resume:
            path = self.latest_checkpoint() if resume is True else Path(resume)
        if path is not None:
            self.load_checkpoint(path)
            if acc.is_main_process:
                print(f"[rapo] resumed from {path} at step {self.position.step}")
        else:  # from step 0: the rows of a run killed before its first checkpoint are retrained
            self.logger.truncate_after(0)
            # LoRA dropout draws from the global generator: a restart from step 0 draws what an
            # uninterrupted run drew (a checkpoint restores the generator's state)
            torch.manual_seed(self.config.seed)
        bar = None
        if self.config.progress and acc.is_main_process:
            import sys

            from tqdm.auto import tqdm

            # Redirected output (a log file) gets a line every 30 s instead of every step.
            bar = tqdm(total=self.total_steps, initial=self.position.step, desc="RAPO", unit="step",
                       dynamic_ncols=True, mininterval=0.2 if sys.stderr.isatty() else 30)  # fmt: skip
        last: dict[str, Any] = {}
        next_eval = self._next_multiple(self.position.step, self.config.eval.eval_steps)
        next_save = self._next_multiple(self.position.step, self.config.save_steps)
        while self.position.round < self.total_rounds:
            round_index = self.position.round
            data = self.generate_round(round_index)
            rows = data.batch["completion_ids"].shape[0]
            for mini in self._mini_batches(rows, round_index):
                metrics = self.optimiser_step(data, mini)
                self.position.step += 1
                metrics.update(data.stats)
                metrics["lr"] = self.scheduler.get_last_lr()[0]
                metrics["round"] = round_index
                metrics["epoch"] = self.position.epoch + self.position.index / len(self.train_items)
                if self.position.step % self.config.logging_steps == 0:
                    self.logger.log(self.position.step, metrics)
                last = metrics
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", kl=f"{metrics['kl']:.4f}",
                                    clip=f"{metrics['clip_frac']:.3f}", unparse=f"{metrics['unparseable']:.2f}")  # fmt: skip
            self.position.round += 1
            if self.evaluate_fn is not None and next_eval is not None and self.position.step >= next_eval:
                result = self._evaluate()
                self.logger.log(self.position.step, {f"eval/{k}": v for k, v in result.items()})
                next_eval = self._next_multiple(self.position.step, self.config.eval.eval_steps)
            if self.position.step >= next_save and self.position.round < self.total_rounds:
                self.save_checkpoint()
                next_save = self._next_multiple(self.position.step, self.config.save_steps)
        if bar is not None:
            bar.close()
        self.logger.flush()
        return last

    def _evaluate(self) -> dict[str, Any]:
        """`evaluate_fn` on the full policy (ZeRO-3 parameters gathered for the duration)."""
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(self.model, self.accelerator) as unwrapped:
            return self.evaluate_fn(unwrapped, self.position.step)

    @staticmethod
    def _next_multiple(step: int, interval: int) -> int | None:
        if interval <= 0:
            return None
        return (step // interval + 1) * interval

    def save_model(self, path: str | Path) -> None:
        """The trained policy as a `from_pretrained` directory (with its processor), published whole
        with a `COMPLETE` marker (`aesr1.train.durable`); a LoRA policy saves its adapter
        (`aesr1.train.adapters`)."""
        from aesr1.train.durable import publish_dir, remove_tree, staging_path

        acc = self.accelerator
        staged = staging_path(path)
        acc.wait_for_everyone()
        unwrapped = acc.unwrap_model(self.model)
        state = acc.get_state_dict(self.model)
        if acc.is_main_process:
            remove_tree(staged)
            if self.lora:
                from aesr1.train.adapters import save_stage_adapter

                save_stage_adapter(unwrapped, self.processor, staged,
                                   save_merged=self.config.model.lora.save_merged, state_dict=state)  # fmt: skip
            else:
                unwrapped.save_pretrained(str(staged), state_dict=state)
                self.processor.save_pretrained(str(staged))
            publish_dir(staged, path)
        acc.wait_for_everyone()

    def close(self) -> None:
        self.logger.close()
