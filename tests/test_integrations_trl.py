"""The trl adapter: RAPO on the whole generation batch, inside a real GRPOTrainer, on 1 and 2 processes.

The reference everywhere is `aesr1.rewards.rapo` called on the batch laid out per image (a list of
completions per image, one ground truth per image), a different input path from the flat batch with
group ids the adapter uses; the adapter must agree with it exactly.

Run as a script under `torch.distributed.run`, this file is the worker of the 2-process test.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("trl")
import torch  # noqa: E402

from aesr1 import rewards  # noqa: E402
from aesr1.integrations import trl as rapo_trl  # noqa: E402
from aesr1.integrations._common import COMPONENTS, completion_text  # noqa: E402
from aesr1.integrations.trl import RapoReward  # noqa: E402

# ---------------------------------------------------------------------------------------------
# reference: rapo on the per-image layout
# ---------------------------------------------------------------------------------------------


def reference(texts, gt, groups, weights=None, **options):
    """Per-completion total and components from `rapo` on the batch regrouped per image."""
    order: dict = {}
    for g in groups:
        order.setdefault(g, len(order))
    per_image: list[list[int]] = [[] for _ in order]
    for i, g in enumerate(groups):
        per_image[order[g]].append(i)
    result = rewards.rapo(
        {
            "completions": [[texts[i] for i in idx] for idx in per_image],
            # one ground truth per completion: rapo rejects per-image gt for groups of unequal sizes
            "gt": np.array([gt[idx[0]] for idx in per_image for _ in idx], dtype=np.float64),
        },
        weights=weights or {"rank": 1.0, "abs": 1.0},
        **options,
    )
    flat_positions = [i for idx in per_image for i in idx]
    out = {}
    for name in ("total", *COMPONENTS):
        values = np.asarray(getattr(result, name), dtype=np.float64).reshape(-1)
        placed = np.empty(len(texts))
        placed[flat_positions] = values
        out[name] = placed
    return out


def answer(score: float | str) -> str:
    return f"<think>looks fine</think><answer>{score}</answer>"


# ---------------------------------------------------------------------------------------------
# completion text
# ---------------------------------------------------------------------------------------------


def test_completion_text_accepts_plain_and_conversational_forms():
    text = answer(0.42)
    assert completion_text(text) == text
    assert completion_text([{"role": "assistant", "content": text}]) == text
    parts = [{"type": "text", "text": text[:10]}, {"type": "image"}, {"type": "text", "text": text[10:]}]
    assert completion_text([{"role": "assistant", "content": parts}]) == text
    tool_turns = [
        {"role": "assistant", "content": "calling"},
        {"role": "tool", "content": "result"},
        {"role": "assistant", "content": text},
    ]
    assert completion_text(tool_turns) == text


@pytest.mark.parametrize(
    "bad", [3, [], [{"role": "user", "content": "x"}], [{"role": "assistant", "content": 5}]]
)
def test_completion_text_rejects_other_forms(bad):
    with pytest.raises(TypeError, match="completions"):
        completion_text(bad)


# ---------------------------------------------------------------------------------------------
# single process, hand-made batches
# ---------------------------------------------------------------------------------------------


def _batch(num_images=5, k=3, seed=0, unparseable=0.2):
    rng = np.random.default_rng(seed)
    gt_img = np.round(rng.uniform(0, 1, num_images), 2)
    texts, gt = [], []
    for i in range(num_images):
        for _ in range(k):
            roll = rng.uniform()
            texts.append("no answer here" if roll < unparseable else answer(f"{rng.uniform():.2f}"))
            gt.append(float(gt_img[i]))
    return texts, gt


@pytest.mark.parametrize("conversational", [False, True])
def test_total_and_components_equal_rapo_on_the_grouped_batch(conversational):
    k = 3
    texts, gt = _batch(num_images=5, k=k, seed=1)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else list(texts)
    groups = [i // k for i in range(len(texts))]
    ref = reference(texts, gt, groups)

    reward = rapo_trl.RapoReward(num_generations=k)
    total = reward(prompts=["p"] * len(texts), completions=completions, gt=gt)
    np.testing.assert_allclose(total, ref["total"], rtol=0, atol=1e-12)
    assert any(v != 0 for v in ref["rank"]), "the batch must exercise the rank reward"

    funcs, weights = reward.reward_funcs(), reward.reward_weights()
    assert [f.__name__ for f in funcs] == ["rapo_rank", "rapo_abs"] and weights == [1.0, 1.0]
    combined = sum(
        w * np.array(f(prompts=["p"] * len(texts), completions=completions, gt=gt))
        for f, w in zip(funcs, weights, strict=True)
    )
    np.testing.assert_allclose(combined, ref["total"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        funcs[0](prompts=None, completions=completions, gt=gt), ref["rank"], rtol=0, atol=1e-12
    )


def test_table2_weights_and_rapo_options_pass_through():
    k = 4
    texts, gt = _batch(num_images=4, k=k, seed=2)
    groups = [i // k for i in range(len(texts))]
    weights = {"rank": 0.5, "binary": 2.0, "format": 1.0}
    reward = rapo_trl.RapoReward(num_generations=k, weights=weights, rapo_options={"ties": "half"})
    ref = reference(texts, gt, groups, weights=weights, ties="half")
    np.testing.assert_allclose(reward(None, texts, gt=gt), ref["total"], rtol=0, atol=1e-12)
    assert [f.__name__ for f in reward.reward_funcs()] == ["rapo_rank", "rapo_binary", "rapo_format"]
    assert reward.reward_weights() == [0.5, 2.0, 1.0]


def test_group_column_groups_non_adjacent_completions():
    k = 3
    texts, gt = _batch(num_images=4, k=k, seed=3)
    ids = [f"img{i // k}" for i in range(len(texts))]
    perm = np.random.default_rng(0).permutation(len(texts))
    texts_s, gt_s, ids_s = [texts[i] for i in perm], [gt[i] for i in perm], [ids[i] for i in perm]
    reward = rapo_trl.RapoReward(group_column="image_id")
    got = reward(None, texts_s, gt=gt_s, image_id=ids_s)
    np.testing.assert_allclose(got, reference(texts_s, gt_s, ids_s)["total"], rtol=0, atol=1e-12)
    # the same batch unshuffled gives the same reward per completion
    unshuffled = reward(None, texts, gt=gt, image_id=ids)
    np.testing.assert_allclose(np.array(got), np.array(unshuffled)[perm], rtol=0, atol=1e-12)


def test_one_rapo_call_per_batch_shared_by_all_component_functions(monkeypatch):
    calls = []
    real = rapo_trl.score_batch

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rapo_trl, "score_batch", counting)
    texts, gt = _batch(num_images=3, k=2, seed=4)
    reward = rapo_trl.RapoReward(num_generations=2, weights={"rank": 1, "abs": 1, "format": 1})
    batch = list(texts)
    for f in reward.reward_funcs():
        f(None, batch, gt=gt)
    reward(None, batch, gt=gt)
    assert len(calls) == 1
    next_batch = list(texts)  # a new batch (new list) is scored again, even with equal content
    reward(None, next_batch, gt=gt)
    assert len(calls) == 2


def test_logging_hooks_receive_the_local_predictions():
    texts, gt = _batch(num_images=3, k=2, seed=5, unparseable=0.5)
    extra, metrics = {}, {}
    reward = rapo_trl.RapoReward(num_generations=2)
    reward(None, texts, gt=gt, log_extra=extra.__setitem__, log_metric=metrics.__setitem__)
    parsed = rewards.parse_scores(texts)
    np.testing.assert_array_equal(np.isnan(extra["rapo_pred"]), np.isnan(parsed))
    assert metrics["rapo/unparseable"] == pytest.approx(np.isnan(parsed).mean())


def test_group_size_follows_the_calling_trainer_mode():
    """Without num_generations, K comes from the trainer behind trl's `log_metric` argument."""

    class Model:
        training = True

    class Trainer:
        num_generations, num_generations_eval = 4, 2
        model = Model()

        def _log_metric(self, name, value):
            pass

    trainer = Trainer()
    texts, gt = _batch(num_images=2, k=4, seed=7)
    reward = rapo_trl.RapoReward(log_predictions=False)
    train = reward(None, list(texts), gt=gt, log_metric=trainer._log_metric)
    np.testing.assert_allclose(train, reference(texts, gt, [i // 4 for i in range(8)])["total"], atol=1e-12)

    trainer.model.training = False
    gt_eval = [0.1, 0.1, 0.4, 0.4, 0.7, 0.7, 0.9, 0.9]  # four images of two completions each
    evaluated = reward(None, list(texts), gt=gt_eval, log_metric=trainer._log_metric)
    ref = reference(texts, gt_eval, [i // 2 for i in range(8)])["total"]
    np.testing.assert_allclose(evaluated, ref, atol=1e-12)

    with pytest.raises(ValueError, match="num_generations=3 but the GRPOTrainer generates 2"):
        rapo_trl.RapoReward(num_generations=3)(
            None, texts[:6], gt=gt_eval[:6], log_metric=trainer._log_metric
        )


def test_reward_functions_pickle():
    reward = rapo_trl.RapoReward(num_generations=2)
    texts, gt = _batch(num_images=2, k=2, seed=8)
    copies = pickle.loads(pickle.dumps([reward, *reward.reward_funcs()]))
    assert [f.__name__ for f in copies] == ["rapo", "rapo_rank", "rapo_abs"]
    np.testing.assert_allclose(copies[0](None, texts, gt=gt), reward(None, list(texts), gt=gt), atol=0)


def test_bad_configuration_and_batches_raise_naming_the_argument():
    texts, gt = _batch(num_images=2, k=2, seed=6)
    with pytest.raises(ValueError, match="num_generations"):
        rapo_trl.RapoReward()(None, texts, gt=gt)
    with pytest.raises(ValueError, match="num_generations"):
        rapo_trl.RapoReward(num_generations=0)
    with pytest.raises(ValueError, match="gt_column 'score'"):
        rapo_trl.RapoReward(num_generations=2, gt_column="score")(None, texts, gt=gt)
    with pytest.raises(ValueError, match="whole number of groups"):
        rapo_trl.RapoReward(num_generations=3)(None, texts, gt=gt)
    with pytest.raises(ValueError, match="mixes ground truths"):
        rapo_trl.RapoReward(num_generations=2)(None, texts, gt=[0.1, 0.2, 0.3, 0.3])
    with pytest.raises(TypeError, match="gt"):
        rapo_trl.RapoReward(num_generations=2)(None, texts, gt=["a", 0.2, 0.3, 0.3])
    with pytest.raises(ValueError, match="weights"):
        rapo_trl.RapoReward(weights={"rnak": 1.0})
    with pytest.raises(ValueError, match="rapo_options: rapo has no option"):
        rapo_trl.RapoReward(rapo_options={"tie": "half"})
    with pytest.raises(ValueError, match="rapo_options must not set"):
        rapo_trl.RapoReward(rapo_options={"num_generations": 2})
    with pytest.raises(TypeError, match="unknown RapoRewardConfig"):
        rapo_trl.RapoReward(num_generation=2)


_completion = st.one_of(
    st.floats(0, 1).map(lambda v: answer(f"{v:.2f}")),
    st.sampled_from(["", "garbled", answer("1.5"), "<answer>0.3</answer>"]),
)


@settings(max_examples=80, deadline=None)
@given(
    k=st.integers(1, 4),
    images=st.lists(
        st.tuples(st.floats(0, 1).map(lambda v: round(v, 2)), st.lists(_completion, min_size=4, max_size=4)),
        min_size=1,
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 24), max_size=3),
    by_column=st.booleans(),
)
def test_property_every_process_gets_its_slice_of_rapo_on_the_whole_batch(k, images, cuts, by_column):
    """However trl splits the generation batch over processes, each gets its slice of the global RAPO."""
    texts = [t for _, completions in images for t in completions[:k]]
    gt = [g for g, _ in images for _ in range(k)]
    ids = [f"img{i}" for i in range(len(images)) for _ in range(k)]
    bounds = [0, *sorted(min(c, len(texts)) for c in cuts), len(texts)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    ref = reference(texts, gt, ids)["total"]
    for rank, part in enumerate(parts):
        gathered = [((texts[p], gt[p], ids[p] if by_column else None), None) for p in parts]
        config = {"group_column": "image_id"} if by_column else {"num_generations": k}
        reward = rapo_trl.RapoReward(log_predictions=False, **config)
        with pytest.MonkeyPatch.context() as patch:  # stands in for torch.distributed's all_gather
            patch.setattr(rapo_trl, "_all_gather", lambda obj, g=gathered, r=rank: (g, r))
            got = reward(None, texts[part], gt=gt[part], image_id=ids[part])
        np.testing.assert_allclose(got, ref[part], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# a real GRPOTrainer on a tiny random model
# ---------------------------------------------------------------------------------------------


def force_format(model, tokenizer):
    """Mask `model`'s sampling to `<think>w</think><answer>D.dd</answer>`; returns the completion length.

    A random model almost never writes a parseable answer, which would leave every reward at zero;
    masking the logits (the model still samples among the allowed tokens, and trl computes log-probs
    with the unmasked model) yields a mix of valid scores and unparseable answers ("h.37"). trl calls
    `model.generate`, patched here on the instance.
    """
    from transformers import LogitsProcessor, LogitsProcessorList

    def ids(*tokens):
        return [tokenizer.convert_tokens_to_ids(t) for t in tokens]

    two_digit = [t for t in (f"{i:02d}" for i in range(100)) if len(tokenizer.tokenize(t)) == 1]
    slots = [
        ids("<think>"),
        ids("o", "k", "h"),
        ids("</think>"),
        ids("<answer>"),
        ids("0", "0", "h"),
        ids("."),
        ids(*two_digit),
        ids("</answer>"),
        [tokenizer.eos_token_id],
    ]

    class Forcer(LogitsProcessor):
        def __init__(self, prompt_len):
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - self.prompt_len
            allowed = slots[step] if step < len(slots) else [tokenizer.eos_token_id]
            mask = torch.full_like(scores, float("-inf"))
            mask[:, allowed] = 0.0
            return scores + mask

    unforced = model.generate

    def generate(*args, **kwargs):
        kwargs["logits_processor"] = LogitsProcessorList([Forcer(kwargs["input_ids"].shape[1])])
        return unforced(*args, **kwargs)

    model.generate = generate
    return len(slots)


def tiny_text_model(tokenizer, seed=0):
    """A one-layer random Qwen2 causal LM over `tokenizer`'s vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


class Recorder:
    """Wraps a reward function and keeps what trl passed it and what it returned."""

    def __init__(self, func):
        self.func = func
        self.__name__ = func.__name__
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        out = self.func(prompts, completions, **kwargs)
        self.calls.append(
            {
                "texts": [completion_text(c) for c in completions],
                "gt": list(kwargs["gt"]),
                "rewards": list(out),
            }
        )
        return out


def _run_grpo(output_dir, *, conversational, components, num_images, per_device, k, steps):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from aesr1.modeling.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    model = tiny_text_model(tokenizer)
    max_len = force_format(model, tokenizer)
    prompts = [f"Rate image {i}." for i in range(num_images)]
    if conversational:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    dataset = Dataset.from_dict(
        {"prompt": prompts, "gt": [round((i * 0.37) % 1, 2) for i in range(num_images)]}
    )
    reward = rapo_trl.RapoReward()
    funcs = [Recorder(f) for f in reward.reward_funcs()] if components else [Recorder(reward)]
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=per_device,
        num_generations=k,
        max_completion_length=max_len,
        max_steps=steps,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        reward_weights=reward.reward_weights() if components else None,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()
    return trainer, funcs


def _check_calls_against_reference(calls_per_rank, k, component_names):
    """Each batch, gathered over ranks in rank order, must get exactly `rapo`'s rewards."""
    n_batches = {len(calls[name]) for calls in calls_per_rank.values() for name in component_names}
    assert len(n_batches) == 1, n_batches
    seen = {"parsed": 0, "unparseable": 0, "rank_nonzero": 0}
    ranks = sorted(calls_per_rank)
    for b in range(n_batches.pop()):
        texts, gt, got = [], [], {name: [] for name in component_names}
        for rank in ranks:
            for name in component_names:
                call = calls_per_rank[rank][name][b]
                got[name].extend(call["rewards"])
            texts.extend(call["texts"])
            gt.extend(call["gt"])
        ref = reference(texts, gt, [i // k for i in range(len(texts))])
        for name in component_names:
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-6)  # trl stores float32
        parsed = rewards.parse_scores(texts)
        seen["parsed"] += int(np.isfinite(parsed).sum())
        seen["unparseable"] += int(np.isnan(parsed).sum())
        seen["rank_nonzero"] += int((ref["rank"] != 0).sum())
    return seen


@pytest.mark.parametrize("conversational,components", [(False, False), (True, True)])
def test_grpo_trainer_rewards_equal_rapo_on_each_generation_batch(tmp_path, conversational, components):
    k = 2
    trainer, funcs = _run_grpo(
        tmp_path,
        conversational=conversational,
        components=components,
        num_images=8,
        per_device=4,
        k=k,
        steps=2,
    )
    names = [f.__name__ for f in funcs]
    # the total function is named "rapo", component functions "rapo_<component>"
    calls = {"total" if f.__name__ == "rapo" else f.__name__.removeprefix("rapo_"): f.calls for f in funcs}
    seen = _check_calls_against_reference({0: calls}, k, list(calls))
    assert len(funcs[0].calls) == 2  # one generation batch per step
    assert seen["parsed"] > 0 and seen["unparseable"] > 0 and seen["rank_nonzero"] > 0, seen
    logged = {key for entry in trainer.state.log_history for key in entry}
    for name in names:
        assert f"rewards/{name}/mean" in logged
    assert "rapo/unparseable" in logged


def test_grpo_trainer_with_the_tiny_qwen2_5_vl_and_an_image_column(tmp_path):
    """The README's trl example, shrunk: a vision-language model, an image column, the scoring prompt."""
    from datasets import Dataset, Image
    from PIL import Image as PILImage
    from trl import GRPOConfig, GRPOTrainer

    from aesr1.modeling.tiny import build_tiny_model
    from aesr1.prompts import SCORING_PROMPT

    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"{i}.png"))
        PILImage.new("RGB", (56, 56), (60 * i, 90, 200 - 40 * i)).save(paths[-1])
    prompt = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": SCORING_PROMPT.replace("<image>", "")}],
        }
    ]
    dataset = Dataset.from_dict({"image": paths, "prompt": [prompt] * 4, "gt": [0.1, 0.4, 0.65, 0.9]})
    dataset = dataset.cast_column("image", Image())
    model, processor = build_tiny_model(seed=0)
    max_len = force_format(model, processor.tokenizer)

    reward = RapoReward()
    funcs = [Recorder(f) for f in reward.reward_funcs()]
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=max_len,
        max_steps=2,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        reward_weights=reward.reward_weights(),
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=processor
    )
    trainer.train()
    calls = {f.__name__.removeprefix("rapo_"): f.calls for f in funcs}
    seen = _check_calls_against_reference({0: calls}, 2, list(calls))
    assert seen["parsed"] > 0 and seen["rank_nonzero"] > 0, seen


# ---------------------------------------------------------------------------------------------
# two processes (gloo): groups straddle processes
# ---------------------------------------------------------------------------------------------


def _distributed_worker(out_dir: Path):
    """Runs on each rank: a GRPOTrainer whose groups of 2 straddle ranks, then direct calls."""
    import torch.distributed as dist

    k = 2
    # per_device 3 with k 2: the global batch [a a b b c c] splits as [a a b | b c c].
    trainer, funcs = _run_grpo(
        out_dir / "trainer", conversational=False, components=True, num_images=12, per_device=3, k=k, steps=2
    )
    rank = dist.get_rank()
    record = {"trainer": {f.__name__.removeprefix("rapo_"): f.calls for f in funcs}}

    # Direct calls with unequal slices per rank and groups named by an id column, shuffled.
    rng = np.random.default_rng(100 + rank)
    n_local = 3 if rank == 0 else 5
    ids = [f"img{j}" for j in rng.integers(0, 3, n_local)]
    gt = [{"img0": 0.2, "img1": 0.55, "img2": 0.9}[i] for i in ids]
    texts = [answer(f"{v:.2f}") if v > 0.15 else "garbled" for v in rng.uniform(0, 1, n_local)]
    reward = rapo_trl.RapoReward(group_column="image_id", weights={"rank": 1, "abs": 1, "format": 0.5})
    record["direct"] = {
        "texts": texts,
        "gt": gt,
        "ids": ids,
        "rewards": reward(None, texts, gt=gt, image_id=ids),
    }

    # A bad value on rank 1 only must fail both ranks (no rank left waiting in the gather).
    bad_gt = gt if rank == 0 else ["n/a", *gt[1:]]
    try:
        reward(None, list(texts), gt=bad_gt, image_id=ids)
        record["error"] = None
    except TypeError as err:
        record["error"] = str(err)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    return trainer


def test_two_processes_groups_straddling_ranks_get_rapo_of_the_gathered_batch(tmp_path):
    env = {
        **os.environ,
        "AESR1_TEST_OUT": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    records = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}

    seen = _check_calls_against_reference({r: records[r]["trainer"] for r in records}, 2, ["rank", "abs"])
    assert seen["parsed"] > 0 and seen["rank_nonzero"] > 0, seen
    # the layout really straddles: the last completion of rank 0 and the first of rank 1 share a group
    first = [records[r]["trainer"]["rank"][0] for r in (0, 1)]
    assert len(first[0]["texts"]) == 3 and first[0]["gt"][-1] == first[1]["gt"][0]

    for r in (0, 1):
        assert (records[r]["error"] or "").startswith("process 1: gt[0]"), records[r]["error"]

    direct = [records[r]["direct"] for r in (0, 1)]
    texts = direct[0]["texts"] + direct[1]["texts"]
    gt = direct[0]["gt"] + direct[1]["gt"]
    ids = direct[0]["ids"] + direct[1]["ids"]
    ref = reference(texts, gt, ids, weights={"rank": 1, "abs": 1, "format": 0.5})
    np.testing.assert_allclose(direct[0]["rewards"] + direct[1]["rewards"], ref["total"], rtol=0, atol=1e-12)


if __name__ == "__main__":
    # The rank's results are on disk: leave without tearing anything down. Freeing the trainer frees
    # DDP's reducer, whose gloo process group joins its worker thread while holding the GIL, and that
    # thread may be waiting for the GIL to release a tensor: a deadlock (seen as a hung rank).
    # Interpreter shutdown can also abort a rank ("terminate called without an active exception").
    # So the trainer is kept alive until os._exit.
    trainer = _distributed_worker(Path(os.environ["AESR1_TEST_OUT"]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
