"""Rotary positions of the prompt and of the decode steps, as `generate` computes them for Qwen2.5-VL.

`generate` passes Qwen2.5-VL a [4, B, L] `position_ids`: row 0 the text positions (cumulative
attention mask - 1, 0 on padding), rows 1-3 the multimodal rotary (mrope) positions (temporal,
height, width) of `get_rope_index`: text tokens advance all three by one, an image's tokens take its
grid coordinates, and the text after an image resumes after the image's largest coordinate. Each
decode step appends `last + 1` on all four rows. Prompts are left-padded, so their last column is a
text token of every row (the assistant header) and the decode positions of row b at step t are
`prompt_positions[:, b, -1] + 1 + t`: the 1-D positions shifted by the row's rope delta.
"""

from __future__ import annotations

from typing import Any

import torch


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Row 0 of the position ids: positions of the unpadded tokens, 0 on left padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def rope_index_owner(model) -> Any | None:
    """The submodule that implements `get_rope_index` (the inner `Qwen2_5_VLModel`), or None."""
    for module in model.modules():
        if callable(getattr(type(module), "get_rope_index", None)):
            return module
    return None


def prompt_position_ids(model, batch: dict[str, Any]) -> torch.Tensor:
    """The [4, B, P] position ids `generate` gives the prompt batch (see the module docstring)."""
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    text = text_position_ids(attention_mask)
    owner = rope_index_owner(model)
    has_vision = batch.get("image_grid_thw") is not None or batch.get("video_grid_thw") is not None
    if owner is not None and has_vision and batch.get("mm_token_type_ids") is not None:
        vision, _ = owner.get_rope_index(
            input_ids,
            mm_token_type_ids=batch["mm_token_type_ids"],
            image_grid_thw=batch.get("image_grid_thw"),
            video_grid_thw=batch.get("video_grid_thw"),
            attention_mask=attention_mask,
        )
    else:
        vision = text.unsqueeze(0).expand(3, -1, -1)
    return torch.cat([text.unsqueeze(0), vision.to(text.device, text.dtype)], dim=0)
