"""What a LoRA run (`model.lora.r` set) saves, and how RAPO starts from the cold start's adapter.

A stage's `final` directory holds by default the policy adapter (`adapter_config.json`,
`adapter_model.safetensors`, naming its base model directory) with the processor and the model
card: `aesr1.modeling.load_model` (so `aesr1 eval` and `aesr1 score`) loads the base and merges the
adapter in. With `model.lora.save_merged` (`--merge`) it holds full merged weights that any
transformers loader reads, and the adapter moves to `final/adapter/` (an adapter beside full
weights would make transformers apply it twice).

RAPO after a LoRA cold start (`rapo_policy`):

- continuing (default): the cold-start adapter is loaded trainable on the base weights, and a
  frozen copy of it is the reference (`aesr1.modeling.lora.REFERENCE_ADAPTER`);
- `merge_before_rapo`: the cold-start model merged, with a fresh adapter; the reference is the
  merged weights (the adapter disabled), and the saved adapter names the cold-start directory as
  its base, which loads merged in turn.
"""

from __future__ import annotations

from pathlib import Path

from aesr1.modeling.lora import (
    add_reference_adapter,
    apply_lora,
    is_adapter_dir,
    save_adapter,
)

#: Where a `--merge` final directory keeps the adapter.
ADAPTER_SUBDIR = "adapter"


def adapter_dir(final: str | Path) -> Path:
    """The adapter of a finished LoRA stage: `final` itself, or `final/adapter` after `--merge`."""
    final = Path(final)
    return final / ADAPTER_SUBDIR if is_adapter_dir(final / ADAPTER_SUBDIR) else final


def adapter_target(staged: Path, save_merged: bool) -> Path:
    """Where a stage writes its adapter inside the staged final directory."""
    return staged / ADAPTER_SUBDIR if save_merged else staged


def write_merged(adapter: Path, target: Path) -> None:
    """`target` gets the full weights of the adapter in `adapter` merged into its base (loaded from
    disk in the checkpoint's own dtype, so that sharded and unsharded runs write the same)."""
    from aesr1.modeling.loading import load_model

    model, processor = load_model(adapter, dtype="auto")
    model.save_pretrained(str(target))
    processor.save_pretrained(str(target))


def save_stage_adapter(model, processor, staged: Path, *, save_merged: bool, state_dict=None) -> None:
    """The final directory of a LoRA stage, in `staged` (main process; see the module docstring)."""
    target = adapter_target(staged, save_merged)
    save_adapter(model, target, state_dict=state_dict)
    processor.save_pretrained(str(target))
    if save_merged:
        write_merged(target, staged)


def rapo_policy(config, sft_final: Path, load):
    """The RAPO policy after a finished LoRA cold start in `sft_final`, with its processor.

    `load(path, merge_adapter)`: the run's model loader (its dtype and attention)."""
    lora = config.model.lora
    source = adapter_dir(sft_final)
    if lora.merge_before_rapo:
        merged, processor = load(sft_final, True)
        return apply_lora(merged, lora, base_path=sft_final), processor
    model, processor = load(source, False)
    if config.rapo.beta > 0:
        add_reference_adapter(model, source)
    return model, processor
