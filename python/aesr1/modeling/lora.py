"""Low-rank adapters (peft's LoRA) on the language model of a Qwen2.5-VL-style model.

`apply_lora` wraps a model in a `peft.PeftModel` whose adapters sit on the language model's linear
layers named by `LoraConfig.target_modules` (suffixes); the vision tower and projector (`visual.`)
and `lm_head` are never adapted, and every weight of the base model is frozen. A saved adapter
directory (`adapter_config.json`, `adapter_model.safetensors`) names its base model directory in
`base_model_name_or_path`, which `aesr1.modeling.loading.load_model` follows.

Reference log-probs (paper Eq. 11, the KL term) need the frozen starting point of a RAPO run; with
LoRA that is the same network with other adapter weights, so `reference_weights` switches the
model to it for a no-grad forward instead of keeping a second model in memory (trl does the same):

- the adapter disabled, when the starting point is the base weights (RAPO without a cold start, or
  a cold-start adapter merged into the weights before RAPO);
- a frozen copy of the cold-start adapter (`REFERENCE_ADAPTER`), when RAPO continues that adapter.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aesr1.train.config import LoraConfig

#: The file peft writes beside an adapter's weights.
ADAPTER_CONFIG = "adapter_config.json"
#: peft's name of the adapter a `get_peft_model` / `PeftModel.from_pretrained` model trains.
POLICY_ADAPTER = "default"
#: The frozen copy of the cold-start adapter that RAPO's reference runs with.
REFERENCE_ADAPTER = "reference"


def is_peft_model(model) -> bool:
    """Whether `model` is a `peft.PeftModel` (without importing peft when it is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def base_model(model):
    """The transformers model inside a `PeftModel` (with its LoRA layers); `model` itself otherwise."""
    return model.get_base_model() if is_peft_model(model) else model


def is_adapter_dir(path) -> bool:
    return path is not None and (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base_path(path) -> Path:
    """The base model directory an adapter directory names (`base_model_name_or_path`); a relative
    name is taken relative to the adapter directory."""
    path = Path(path)
    values = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    name = values.get("base_model_name_or_path")
    if not name:
        raise ValueError(f"adapter {str(path)!r}: {ADAPTER_CONFIG} names no base_model_name_or_path")
    base = Path(name).expanduser()
    if not base.is_absolute():
        base = path / base
    if not base.is_dir():
        raise FileNotFoundError(
            f"adapter {str(path)!r} was trained on {name!r}, which is not a local directory here; "
            f"edit base_model_name_or_path in {path / ADAPTER_CONFIG} to where that model is"
        )
    return base


def language_model_prefix(model) -> str:
    """Module-name prefix of the language model (`model.language_model.` in transformers 5)."""
    decoder = model.get_decoder() if callable(getattr(model, "get_decoder", None)) else None
    for name, module in model.named_modules():
        if module is decoder and name:
            return name + "."
    raise TypeError(f"{type(model).__name__} has no language model (`get_decoder()`) to put LoRA adapters on")


def lora_target_names(model, targets) -> list[str]:
    """Names of the language model's `nn.Linear` modules that end in one of `targets`.

    Raises ValueError naming a target that matches nothing, with the suffixes that exist."""
    import torch

    if isinstance(targets, str) or not targets:
        raise ValueError(
            f"model.lora.target_modules must be a non-empty list of module-name suffixes, got {targets!r}"
        )
    prefix = language_model_prefix(model)
    linear = [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]
    found = []
    for target in targets:
        matched = [n for n in linear if n == target or n.endswith("." + target)]
        if not matched:
            existing = sorted({n.rsplit(".", 1)[-1] for n in linear})
            raise ValueError(
                f"model.lora.target_modules: {target!r} matches no linear module of the language model "
                f"({prefix.rstrip('.')}); its linear modules end in: {', '.join(existing[:12])}"
            )
        found.extend(m for m in matched if m not in found)
    return found


def modules_to_save_names(model, names) -> list[str]:
    """Names of the modules outside the vision tower that end in one of `names` (trained in full
    beside the adapters); raises ValueError naming a name that matches nothing."""
    from aesr1.modeling.freeze import vision_module

    visual = vision_module(model)
    vision_prefix = next(n for n, m in model.named_modules() if m is visual) + "."
    modules = [
        n
        for n, _ in model.named_modules()
        if n and not n.startswith(vision_prefix) and n + "." != vision_prefix
    ]
    found = []
    for wanted in names:
        matched = [n for n in modules if n == wanted or n.endswith("." + wanted)]
        if not matched:
            raise ValueError(
                f"model.lora.modules_to_save: {wanted!r} matches no module outside the vision tower "
                f"(e.g. lm_head, {language_model_prefix(model)}norm)"
            )
        found.extend(m for m in matched if m not in found)
    return found


def peft_lora_config(model, lora: LoraConfig):
    """peft's `LoraConfig` for `lora` on `model` (targets resolved to full module names)."""
    from peft import LoraConfig as PeftLoraConfig

    if lora.r is None or lora.r < 1:
        raise ValueError(f"model.lora.r must be an integer >= 1 to train adapters, got {lora.r!r}")
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=2 * lora.r if lora.alpha is None else lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_names(model, lora.target_modules),
        modules_to_save=modules_to_save_names(model, lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model, lora: LoraConfig, *, base_path: str | Path | None = None):
    """`model` wrapped in a `PeftModel` with a fresh trainable adapter (every base weight frozen).

    `base_path`: the directory the base weights can be loaded from, recorded in the saved
    adapter's config (`base_model_name_or_path`) so that the adapter can be loaded on its own.
    """
    from peft import get_peft_model

    config = peft_lora_config(model, lora)
    wrapped = get_peft_model(model, config)
    if base_path is not None:
        set_base_path(wrapped, base_path)
    return wrapped


def set_base_path(model, base_path: str | Path) -> None:
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(Path(base_path).resolve())


def load_adapter(model, path: str | Path, *, trainable: bool):
    """`model` with the adapter saved in `path` (a `PeftModel`; its own base path kept)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def add_reference_adapter(model, path: str | Path) -> None:
    """A frozen copy of the adapter in `path` as `REFERENCE_ADAPTER` (the policy adapter stays active)."""
    model.load_adapter(str(path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    model.set_adapter(POLICY_ADAPTER)
    for name, parameter in model.named_parameters():
        if f".{REFERENCE_ADAPTER}." in name:
            parameter.requires_grad_(False)


@contextmanager
def reference_weights(model):
    """`model` (a `PeftModel`) computing with the reference weights for the duration (no grad).

    The reference adapter when the model has one, else the adapter disabled (see the module
    docstring). peft's `set_adapter` marks the active adapter trainable: the flags are restored."""
    import torch

    if REFERENCE_ADAPTER not in model.peft_config:
        with torch.no_grad(), model.disable_adapter():
            yield model
        return
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        with torch.no_grad():
            yield model
    finally:
        model.set_adapter(POLICY_ADAPTER)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(flags[name])


def merged(model):
    """The adapter merged into the base weights (`merge_and_unload`): a plain transformers model."""
    return model.merge_and_unload() if is_peft_model(model) else model


def save_adapter(model, path: str | Path, *, state_dict=None) -> None:
    """The policy adapter of `model` as a peft adapter directory (the reference copy is not saved)."""
    model.save_pretrained(str(path), selected_adapters=[POLICY_ADAPTER], state_dict=state_dict)
