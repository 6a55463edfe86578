"""The decode engine's CUDA-graph path (runs only where a CUDA device is present).

fp32 tiny Qwen2.5-VL on the GPU: greedy tokens equal `generate`'s with graphs captured for several
buckets (EOS mid-batch forces compaction), graph replays equal the eager steps for the same seed,
the sampling log-probs equal a teacher-forced recomputation, and an in-place optimiser step is
seen by the captured graphs without capturing again.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from aesr1.generation import SamplingConfig
from aesr1.modeling.chat import build_inputs, model_inputs
from aesr1.modeling.tiny import build_tiny_model
from aesr1.rollout import DecodeEngine, EngineOptions, SamplingParams, generate_rollouts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MAX_NEW = 24
PROMPTS = [
    "Rate <image> now.",
    "Describe this <image> in some detail, please.",
    "<image>",
    "Score: <image>",
    "Hi <image>",
]


@pytest.fixture(scope="module")
def setup():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, processor = build_tiny_model(seed=0)
    model = model.to("cuda").eval()
    rng = np.random.default_rng(0)
    images = [Image.fromarray((rng.random((s, s, 3)) * 255).astype("uint8")) for s in (56, 112, 80, 64, 96)]
    batch = {k: v.to("cuda") for k, v in build_inputs(processor, images, PROMPTS).items()}
    return model, processor, images, batch


def hf_greedy(model, batch, eos, pad, max_new_tokens=MAX_NEW):
    with torch.no_grad():
        output = model.generate(
            **model_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None, eos_token_id=eos, pad_token_id=pad,
        )  # fmt: skip
    completion = output[:, batch["input_ids"].shape[1] :]
    is_eos = (completion == eos).long()
    mask = ((torch.cumsum(is_eos, 1) - is_eos) == 0).long()
    return completion.masked_fill(mask == 0, pad)


def test_graph_greedy_matches_generate_across_buckets(setup):
    model, processor, _, batch = setup
    pad = processor.tokenizer.pad_token_id
    free_run = hf_greedy(model, batch, 10**6, pad)
    # EOS: a token that ends some rows early while others run to the end
    eos = next(
        t for t in free_run[:, 1:].flatten().tolist()
        if 1 <= sum(t in row for row in free_run.tolist()) <= 3
    )  # fmt: skip
    want = hf_greedy(model, batch, eos, pad)
    engine = DecodeEngine(model, EngineOptions(check_every=1, warmup_steps=1))
    got = engine.decode(batch, SamplingParams(do_sample=False), max_new_tokens=MAX_NEW, eos_token_id=eos,
                        pad_token_id=pad)  # fmt: skip
    assert got.stats["cuda_graphs"] and len(engine._graphs) >= 1
    assert got.stats["compactions"] >= 1
    assert torch.equal(got.completion_ids, want)
    again = engine.decode(batch, SamplingParams(do_sample=False), max_new_tokens=MAX_NEW, eos_token_id=eos,
                          pad_token_id=pad)  # fmt: skip
    assert torch.equal(again.completion_ids, want)  # pure replays


def test_graph_replays_equal_eager_steps_for_a_seed(setup):
    model, processor, _, batch = setup
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    params = SamplingParams(temperature=0.9, top_k=50, top_p=0.95)
    graphed = DecodeEngine(model)
    eager = DecodeEngine(model, EngineOptions(cuda_graphs=False))
    runs = [graphed.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad, seed=9)
            for _ in range(2)]  # fmt: skip
    reference = eager.decode(
        batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad, seed=9
    )
    assert runs[1].stats["cuda_graphs"] and not reference.stats["cuda_graphs"]
    for run in runs:  # the capturing call and the replaying call
        assert torch.equal(run.completion_ids, reference.completion_ids)
        torch.testing.assert_close(run.sampling_logprobs, reference.sampling_logprobs)


def test_graph_sampling_logprobs_equal_recomputed(setup):
    model, processor, images, _ = setup
    sampling = SamplingConfig(num_samples=2, temperature=0.7, max_new_tokens=MAX_NEW)
    rollout = generate_rollouts(
        model, processor, images[:3], sampling, prompt=PROMPTS[:3], seed=1, engine="auto"
    )
    batch = rollout.batch
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits.float()
    p, width = batch["prompt_length"], batch["completion_ids"].shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : p - 1 + width] / 0.7, -1)
    logp = logp.gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(batch["sampling_logprobs"][mask], logp[mask], atol=1e-4, rtol=1e-4)


def test_captured_graphs_see_in_place_optimiser_steps(setup):
    base, processor, _, batch = setup
    model = copy.deepcopy(base)
    eos, pad = processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.pad_token_id
    engine = DecodeEngine(model, EngineOptions(warmup_steps=1))
    params = SamplingParams(do_sample=False)
    before = engine.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    graphs = dict(engine._graphs)
    assert graphs
    optimiser = torch.optim.SGD(model.parameters(), lr=5.0)
    model.train()
    logits = model(**model_inputs(batch)).logits[:, -1]
    torch.nn.functional.cross_entropy(logits, (before.completion_ids[:, 0] + 1) % logits.shape[-1]).backward()
    optimiser.step()
    model.eval()
    after = engine.decode(batch, params, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=pad)
    assert all(engine._graphs.get(b) is g for b, g in graphs.items())  # replayed, not captured again
    assert torch.equal(after.completion_ids, hf_greedy(model, batch, eos, pad))
    assert not torch.equal(after.completion_ids, before.completion_ids)
