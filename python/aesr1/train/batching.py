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


#: Host-side copies of per-row sizes (`with_host_sizes`), so that selecting rows reads nothing back.
HOST_SIZES = "host_sizes"


def with_host_sizes(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` plus the completion length and patch count of each row as Python ints (one read
    from the device for the whole batch); `select_rows` then needs no host synchronisation."""
    lengths = batch["completion_mask"].sum(dim=1)
    parts = [lengths]
    if "image_grid_thw" in batch:
        parts.append(batch["image_grid_thw"].prod(dim=-1).to(lengths.device))
    values = torch.cat([p.to(torch.long) for p in parts]).tolist()
    rows = lengths.shape[0]
    sizes = {"completion_lengths": values[:rows]}
    if len(parts) > 1:
        sizes["patches"] = values[rows:]
    return {**batch, HOST_SIZES: sizes}


def select_rows(
    batch: dict[str, Any], rows: Sequence[int] | torch.Tensor, *, trim: bool = True
) -> dict[str, Any]:
    """The sub-batch of `rows`; with `trim`, completion columns that are padding in every row go.

    The prompt block keeps its width (rows are left-padded to the same length P), so
    `completion_ids[:, t]` stays at column `P + t`. A batch from `with_host_sizes` is cut without
    reading from the device.
    """
    row_list = rows.tolist() if isinstance(rows, torch.Tensor) else [int(r) for r in rows]
    sizes = batch.get(HOST_SIZES)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key in ROW_KEYS and isinstance(value, torch.Tensor):
            out[key] = value[torch.as_tensor(row_list, dtype=torch.long, device=value.device)]
        elif key == "pixel_values":
            if sizes is not None and "patches" in sizes:
                offsets = [0]
                for count in sizes["patches"]:
                    offsets.append(offsets[-1] + count)
            else:
                offsets = patch_offsets(batch["image_grid_thw"]).tolist()
            pieces = [value[offsets[r] : offsets[r + 1]] for r in row_list]
            out[key] = torch.cat(pieces, dim=0)
        elif key == HOST_SIZES:
            out[key] = {name: [values[r] for r in row_list] for name, values in value.items()}
        else:
            out[key] = value
    if trim and "completion_mask" in out:
        if sizes is not None:
            width = max((sizes["completion_lengths"][r] for r in row_list), default=0)
        else:
            width = int(out["completion_mask"].sum(dim=1).max().item()) if row_list else 0
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
