"""Tiny Qwen2.5-VL construction, chat inputs, generation and local loading (CPU)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from aesr1.generation import (
    SamplingConfig,
    completion_mask_until_eos,
    generate_completions,
    generate_rollouts,
)
from aesr1.modeling.chat import build_inputs, model_inputs, user_message
from aesr1.modeling.loading import load_model
from aesr1.modeling.tiny import FORMAT_TOKENS, TinyModelConfig, build_tiny_model


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0, vocab_corpus=["<think>The light is soft and warm.</think>"])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")) for _ in range(3)]


def test_format_tags_are_single_tokens(tiny):
    _, processor = tiny
    for tag in FORMAT_TOKENS:
        assert processor.tokenizer.tokenize(tag) == [tag]
    decoded = processor.tokenizer.decode(
        processor.tokenizer("<think>a</think><answer>0.50</answer>", add_special_tokens=False)["input_ids"]
    )
    assert decoded == "<think>a</think><answer>0.50</answer>"


def test_same_seed_same_weights():
    first, _ = build_tiny_model(seed=3)
    second, _ = build_tiny_model(seed=3)
    third, _ = build_tiny_model(seed=4)
    pairs = list(zip(first.parameters(), second.parameters(), third.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


def test_mrope_section_must_match_head_dim():
    with pytest.raises(ValueError, match="mrope_section"):
        build_tiny_model(config=TinyModelConfig(mrope_section=[2, 2, 2]))


def test_user_message_places_image_where_the_prompt_says():
    parts = user_message("before <image> after")[0]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "text"]
    with pytest.raises(ValueError, match="placeholder"):
        user_message("<image><image>")


def test_completion_layout_and_labels(tiny, images):
    model, processor = tiny
    completions = ["<think>ok</think><answer>0.50</answer>", "<think>a much longer critique</think>", "x"]
    batch = build_inputs(processor, images, completions=completions)
    prompt_length = batch["prompt_length"]
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row, text in enumerate(completions):
        expected = processor.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        n = int(batch["completion_mask"][row].sum())
        assert batch["input_ids"][row, prompt_length : prompt_length + n].tolist() == expected
        assert batch["labels"][row, prompt_length : prompt_length + n].tolist() == expected
        assert (batch["labels"][row, :prompt_length] == -100).all()
        assert (batch["labels"][row, prompt_length + n :] == -100).all()
    loss = model(**model_inputs(batch), labels=batch["labels"]).loss
    assert torch.isfinite(loss)


def test_bad_inputs_are_named(tiny, images):
    _, processor = tiny
    with pytest.raises(ValueError, match="images"):
        build_inputs(processor, [])
    with pytest.raises(ValueError, match="completions"):
        build_inputs(processor, images, completions=["a"])
    with pytest.raises(TypeError, match=r"completions\[1\]"):
        build_inputs(processor, images[:2], completions=["a", 3])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        build_inputs(processor, [42])


def test_completion_mask_until_eos():
    ids = torch.tensor([[5, 9, 2, 9], [9, 1, 1, 1], [1, 1, 1, 1]])
    assert completion_mask_until_eos(ids, 9).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_rollouts_group_rows_by_image(tiny, images):
    model, processor = tiny
    rollout = generate_rollouts(
        model, processor, images, SamplingConfig(num_samples=2, max_new_tokens=6), seed=0
    )
    assert rollout.completion_ids.shape[0] == 6 and rollout.completion_ids.shape[1] <= 6
    assert len(rollout.texts) == 6
    # Rows 2i and 2i+1 come from the same image: identical prompt tokens and vision inputs.
    p = rollout.batch["prompt_length"]
    assert torch.equal(rollout.batch["input_ids"][0, :p], rollout.batch["input_ids"][1, :p])
    again = generate_rollouts(
        model, processor, images, SamplingConfig(num_samples=2, max_new_tokens=6), seed=0
    )
    assert torch.equal(rollout.completion_ids, again.completion_ids)


def test_generation_rollouts_are_the_rollout_packages(tiny, images):
    from aesr1.rollout import generate_rollouts_hf

    model, processor = tiny
    sampling = SamplingConfig(num_samples=2, max_new_tokens=6, temperature=0.8, top_k=7)
    got = generate_rollouts(model, processor, images, sampling, seed=3)
    want = generate_rollouts_hf(model, processor, images, sampling, seed=3)
    assert got.texts == want.texts and set(got.batch) == set(want.batch)
    assert torch.equal(got.batch["sampling_logprobs"], want.batch["sampling_logprobs"])


@pytest.mark.parametrize("do_sample", [False, True])
def test_rollouts_give_generate_only_settings_it_uses(tiny, images, monkeypatch, do_sample):
    """`generate` warns about warper settings that greedy decoding ignores (strict: raises)."""
    model, processor = tiny
    seen = {}
    real_generate = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    generate_rollouts(model, processor, images[:1], SamplingConfig(max_new_tokens=2, do_sample=do_sample))
    config = copy.deepcopy(model.generation_config)
    config.update(**{key: value for key, value in seen.items() if hasattr(config, key)})
    config.validate(strict=True)


def test_save_load_round_trip_greedy(tiny, images, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_model(tmp_path)
    kwargs = dict(num_samples=1, max_new_tokens=6, do_sample=False, batch_size=2)
    assert generate_completions(model, processor, images, **kwargs) == generate_completions(
        loaded, loaded_processor, images, **kwargs
    )


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="vision"):
        load_model(tmp_path)


def test_sampling_config_validation():
    with pytest.raises(ValueError, match="num_samples"):
        SamplingConfig(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)


def test_per_image_prompts(tiny, images):
    model, processor = tiny
    prompts = ["short <image>", "a much longer prompt with more words <image> after", "<image>"]
    batch = build_inputs(processor, images, prompts)
    text = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert "longer prompt" in text[1] and "longer prompt" not in text[0]
    out = generate_completions(
        model, processor, images, prompt=prompts, max_new_tokens=4, batch_size=2, seed=0
    )
    assert len(out) == 3 and all(len(row) == 1 for row in out)
    with pytest.raises(ValueError, match="prompt"):
        generate_completions(model, processor, images, prompt=prompts[:2], max_new_tokens=2)


def test_split_digits_tokenizes_scores_digit_by_digit(tmp_path):
    from transformers import AutoTokenizer

    from aesr1.modeling.tiny import build_tokenizer

    corpus = [f"<answer>0.{n:02d}</answer>" for n in range(100)] * 5
    merged = build_tokenizer(corpus, 512)
    split = build_tokenizer(corpus, 512, split_digits=True)
    text = "score 0.73 and 0.17"
    assert any(len(piece.strip("Ġ")) > 1 and piece.strip("Ġ").isdigit() for piece in merged.tokenize(text))
    digits = [piece.strip("Ġ") for piece in split.tokenize(text) if piece.strip("Ġ").isdigit()]
    assert digits == ["0", "7", "3", "0", "1", "7"]
    split.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).tokenize(text) == split.tokenize(text)
