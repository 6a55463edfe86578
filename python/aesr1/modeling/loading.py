"""Loading a local vision-language checkpoint (never from a hub: the path must exist)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: Weight dtypes `load_model` takes by name ("auto": the checkpoint's own).
DTYPES = ("auto", "float32", "float16", "bfloat16")


def check_dtype(dtype) -> None:
    """Raise ValueError for a dtype name `load_model` does not know (None and torch dtypes pass)."""
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def resolve_attn_implementation(name: str | None) -> str | None:
    """ "auto" -> "flash_attention_2" on CUDA when `flash_attn` is installed, else "sdpa"; any other
    value is returned unchanged (None lets transformers choose)."""
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def is_model_dir(path: str | Path) -> bool:
    """A directory `load_model` reads: full weights (`config.json`) or a peft adapter."""
    from aesr1.modeling.lora import is_adapter_dir

    return (Path(path) / "config.json").is_file() or is_adapter_dir(path)


def load_model(
    path: str | Path,
    *,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    merge_adapter: bool = True,
):
    """Load `(model, processor)` from a local Qwen2.5-VL-style directory.

    A peft adapter directory (`adapter_config.json`) loads its base model (the directory its
    `base_model_name_or_path` names, itself possibly an adapter) and the adapter on it, merged into
    the weights unless `merge_adapter` is False (then a `peft.PeftModel` whose adapter trains).

    Raises `FileNotFoundError` for a missing path and `ValueError` for an unknown dtype or a model
    that is not a vision-language model (no vision config), before loading any weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from aesr1.modeling.lora import adapter_base_path, is_adapter_dir, load_adapter

    check_dtype(dtype)
    path = Path(path)
    if is_adapter_dir(path) and not (path / "config.json").is_file():
        base, _ = load_model(adapter_base_path(path), dtype=dtype, attn_implementation=attn_implementation)
        model = load_adapter(base, path, trainable=not merge_adapter)
        if merge_adapter:
            model = model.merge_and_unload()
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        processor.tokenizer.padding_side = "left"
        return model, processor
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model directory {str(path)!r} has no config.json or adapter_config.json (give a local checkpoint)"
        )
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"model at {str(path)!r} is a {config.model_type!r} model without a vision tower: "
            "aesr1 needs a vision-language model such as Qwen2.5-VL"
        )
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    attn_implementation = resolve_attn_implementation(attn_implementation)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    processor.tokenizer.padding_side = "left"
    return model, processor
