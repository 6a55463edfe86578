"""Freezing the vision tower and the vision-language projector of a Qwen2.5-VL-style model.

Qwen2.5-VL's `model.visual` holds the ViT (`patch_embed`, `blocks`) and the projector (`merger`, the
2x2 patch merger MLP into the text width). The released Aes-R1 cold-start config trains only the
language model; freezing also saves the optimiser state of ~0.7B vision parameters.
"""

from __future__ import annotations

PROJECTOR_NAMES = ("merger",)


def vision_module(model):
    """`model.model.visual` (transformers 5) or `model.visual` (older layouts)."""
    for owner in (getattr(model, "model", None), model):
        visual = getattr(owner, "visual", None) if owner is not None else None
        if visual is not None:
            return visual
    raise TypeError(f"{type(model).__name__} has no `visual` module to freeze")


def freeze_vision(model, *, tower: bool, projector: bool) -> int:
    """Set `requires_grad=False` on the vision tower and/or projector; returns the parameters frozen."""
    if not (tower or projector):
        return 0
    visual = vision_module(model)
    frozen = 0
    for name, child in visual.named_children():
        is_projector = name in PROJECTOR_NAMES
        if (is_projector and projector) or (not is_projector and tower):
            for parameter in child.parameters():
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                    frozen += parameter.numel()
    if tower:  # parameters registered on `visual` itself, outside its children
        for parameter in visual.parameters(recurse=False):
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen += parameter.numel()
    return frozen
