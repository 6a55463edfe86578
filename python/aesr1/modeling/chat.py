"""Chat-formatted model inputs: one image + the scoring prompt per row, optionally with completions.

Layout with completions (the usual RL/SFT layout, as in trl): prompts are left-padded to a common
length P and completions right-padded, so `completion_ids[:, t]` sits at column `P + t` for every row
and is scored by the logits at column `P + t - 1`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from aesr1.prompts import IMAGE_PLACEHOLDER, SCORING_PROMPT

#: Qwen2-VL's end-of-turn token: closes every chat message, so it ends a completion (sampling's EOS).
END_OF_TURN = "<|im_end|>"


def user_message(prompt: str = SCORING_PROMPT) -> list[dict[str, Any]]:
    """The chat messages of one scoring request; `<image>` in `prompt` becomes the image part."""
    if prompt.count(IMAGE_PLACEHOLDER) > 1:
        raise ValueError(f"prompt may contain at most one {IMAGE_PLACEHOLDER!r} placeholder")
    before, _, after = prompt.partition(IMAGE_PLACEHOLDER)
    parts: list[dict[str, Any]] = []
    if before:
        parts.append({"type": "text", "text": before})
    parts.append({"type": "image"})
    if after:
        parts.append({"type": "text", "text": after})
    return [{"role": "user", "content": parts}]


def prompt_text(processor, prompt: str = SCORING_PROMPT) -> str:
    """The chat-template string of a scoring request, ending with the assistant header."""
    return processor.apply_chat_template(user_message(prompt), add_generation_prompt=True, tokenize=False)


def load_images(images: Sequence[Any]) -> list[Any]:
    """Open paths as 8-bit RGB PIL images (high-bit-depth greyscale rescaled, not clipped: see
    `aesr1.data.images.to_rgb`); PIL images are converted the same way."""
    from PIL import Image

    from aesr1.data.images import open_image, to_rgb

    opened = []
    for index, image in enumerate(images):
        if isinstance(image, Image.Image):
            opened.append(to_rgb(image))
        elif isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            opened.append(open_image(os.fsdecode(image) if isinstance(image, bytes) else image))
        else:
            raise TypeError(f"images[{index}] must be a path or a PIL image, got {type(image).__name__}")
    return opened


def build_inputs(
    processor,
    images: Sequence[Any],
    prompt: str | Sequence[str] = SCORING_PROMPT,
    completions: Sequence[str] | None = None,
    *,
    max_completion_length: int | None = None,
) -> dict[str, Any]:
    """Tensors for a batch of scoring requests, one image per row.

    `prompt` is one prompt for every row or a sequence of one prompt per row (AesCoT construction
    puts each image's hidden score into its prompt). Without `completions`: the left-padded prompt batch (`input_ids`, `attention_mask`, `pixel_values`,
    `image_grid_thw`, ...) ready for `generate`. With `completions` (one string per row, the assistant
    turn without its end token): prompt and completion concatenated, plus `completion_ids`,
    `completion_mask` (1 on completion tokens including the closing `END_OF_TURN`), `prompt_length` P
    and SFT `labels` (-100 outside completions).
    """
    import torch

    if len(images) == 0:
        raise ValueError("images must not be empty")
    if completions is not None and len(completions) != len(images):
        raise ValueError(f"completions has {len(completions)} rows but images has {len(images)}")
    if isinstance(prompt, str):
        texts = [prompt_text(processor, prompt)] * len(images)
    else:
        if len(prompt) != len(images):
            raise ValueError(f"prompt has {len(prompt)} rows but images has {len(images)}")
        texts = [prompt_text(processor, row) for row in prompt]
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"
    batch = processor(text=texts, images=load_images(images), return_tensors="pt", padding=True)
    batch = dict(batch)
    if completions is None:
        return batch

    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    pad_id = tokenizer.pad_token_id
    rows = []
    for index, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise TypeError(f"completions[{index}] must be a string, got {type(completion).__name__}")
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [eos_id]
        if max_completion_length is not None:
            ids = ids[:max_completion_length]
        rows.append(ids)
    width = max(len(ids) for ids in rows)
    completion_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        completion_ids[row, : len(ids)] = torch.tensor(ids)
        completion_mask[row, : len(ids)] = 1
    return join_completions(batch, completion_ids, completion_mask)


def join_completions(prompt_batch: dict[str, Any], completion_ids, completion_mask) -> dict[str, Any]:
    """Append right-padded completions to a left-padded prompt batch (see the module docstring)."""
    import torch

    prompt_length = prompt_batch["input_ids"].shape[1]
    batch = dict(prompt_batch)
    batch["input_ids"] = torch.cat([prompt_batch["input_ids"], completion_ids], dim=1)
    batch["attention_mask"] = torch.cat([prompt_batch["attention_mask"], completion_mask], dim=1)
    if "mm_token_type_ids" in prompt_batch:
        batch["mm_token_type_ids"] = torch.cat(
            [prompt_batch["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1
        )
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, prompt_length:] = completion_ids.masked_fill(completion_mask == 0, -100)
    batch["labels"] = labels
    batch["completion_ids"] = completion_ids
    batch["completion_mask"] = completion_mask
    batch["prompt_length"] = prompt_length
    return batch


#: Keys of `build_inputs` output that the model's forward accepts.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The subset of `batch` to pass to the model's forward / generate."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}
