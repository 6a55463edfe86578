"""Test-session isolation."""

from __future__ import annotations

import sys

import pytest

#: What `overfit_model_dir` answers.
OVERFIT_TARGET = "<think>Warm light and bold colour.</think><answer>0.72</answer>"


@pytest.fixture(autouse=True, scope="module")
def fresh_accelerate_state():
    """Accelerate's state is a process-wide singleton: a trl trainer in one module leaves
    mixed_precision="bf16" behind (GRPOConfig's default), which would silently autocast the models of
    every later module's trainers. Each module starts from a clean state.

    A process that never imported accelerate has no state to reset, and the numpy-only install
    (rewards, metrics) runs its tests without accelerate or torch."""
    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(reset_partial_state=True)
        state.GradientState._reset_state()
    yield


@pytest.fixture(scope="session")
def overfit_model_dir(tmp_path_factory):
    """The tiny random model after a few dozen SFT steps on one critique: it then answers OVERFIT_TARGET
    (greedy) for any image, with digit probabilities that still depend on the image."""
    import torch
    from PIL import Image

    from aesr1.generation import generate_completions
    from aesr1.modeling.chat import build_inputs, model_inputs
    from aesr1.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    image = Image.new("RGB", (56, 56), (230, 200, 40))
    batch = build_inputs(processor, [image], completions=[OVERFIT_TARGET])
    optimiser = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(45):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    assert generate_completions(model, processor, [image], max_new_tokens=24, do_sample=False) == [
        [OVERFIT_TARGET]
    ]
    path = tmp_path_factory.mktemp("overfit-model")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
