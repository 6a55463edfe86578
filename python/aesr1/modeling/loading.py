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


def load_model(path: str | Path, *, dtype: str | None = None, attn_implementation: str | None = None):
    """Load `(model, processor)` from a local Qwen2.5-VL-style directory.

    Raises `FileNotFoundError` for a missing path and `ValueError` for an unknown dtype or a model
    that is not a vision-language model (no vision config), before loading any weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    check_dtype(dtype)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory {str(path)!r} has no config.json (give a local checkpoint)")
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
