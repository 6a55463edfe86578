"""Row selection in the chat batch layout of `aesr1.modeling.chat` (left-padded prompts, right-padded
completions, one image per row), so rollouts can be cut into mini- and micro-batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

#: Per-row tensors of a joined prompt+completion batch (first dimension = rows).
ROW_KEYS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "labels",
    "completion_ids",
    "completion_mask",
    "image_grid_thw",
    "sampling_logprobs",
)


def patch_offsets(image_grid_thw: torch.Tensor) -> torch.Tensor:
    """Start row of each image's patches in `pixel_values` (Qwen2-VL flattens patches image by image)."""
    counts = image_grid_thw.prod(dim=-1)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def select_rows(
    batch: dict[str, Any], rows: Sequence[int] | torch.Tensor, *, trim: bool = True
) -> dict[str, Any]:
    """The sub-batch of `rows`; with `trim`, completion columns that are padding in every row go.

    The prompt block keeps its width (rows are left-padded to the same length P), so
    `completion_ids[:, t]` stays at column `P + t`.
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in ROW_KEYS and isinstance(value, torch.Tensor):
            out[key] = value[rows.to(value.device)]
        elif key == "pixel_values":
            offsets = patch_offsets(batch["image_grid_thw"]).tolist()
            pieces = [value[offsets[r] : offsets[r + 1]] for r in rows.tolist()]
            out[key] = torch.cat(pieces, dim=0)
        else:
            out[key] = value
    if trim and "completion_mask" in out:
        width = int(out["completion_mask"].sum(dim=1).max().item()) if len(rows) else 0
        width = max(width, 1)
        prompt_length = out["prompt_length"]
        out["completion_ids"] = out["completion_ids"][:, :width]
        out["completion_mask"] = out["completion_mask"][:, :width]
        if "sampling_logprobs" in out:
            out["sampling_logprobs"] = out["sampling_logprobs"][:, :width]
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels"):
            if key in out:
                out[key] = out[key][:, : prompt_length + width]
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def chunks(n: int, size: int) -> list[range]:
    """Consecutive ranges of at most `size` covering 0..n-1."""
    return [range(start, min(n, start + size)) for start in range(0, n, size)]
