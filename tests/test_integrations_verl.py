"""The verl adapter: RAPO grouped by `uid` on shuffled batches, per-sample compute_score, loading.

verl itself does not install on this machine without Ray and an older transformers, so unless
`verl` imports, batches are built in a stand-in with DataProto's fields and access pattern: `batch`
(tensors `prompts`, left-padded; `responses`, right-padded; `attention_mask` over both),
`non_tensor_batch` (object arrays `uid`, `reward_model` = {"ground_truth": ...}, `data_source`) and
`len()`. When verl imports, its own `DataProto` and registry are used instead.

The reference is `aesr1.rewards.rapo` on the batch laid out per image (a list of completions per
image), a different input path from the flat batch with group ids the adapter uses.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from aesr1 import rewards  # noqa: E402
from aesr1.integrations import verl as rapo_verl  # noqa: E402
from aesr1.integrations._common import COMPONENTS  # noqa: E402

try:
    from verl import DataProto as _VerlDataProto
except ImportError:  # verl needs Ray; see the module docstring
    _VerlDataProto = None


@dataclass
class DataProtoStandIn:
    """DataProto's fields as the reward managers read them (verl is not installable here)."""

    batch: dict
    non_tensor_batch: dict
    meta_info: dict = field(default_factory=dict)

    def __len__(self):
        return len(next(iter(self.batch.values())))

    def select(self, index):
        return DataProtoStandIn(
            {k: v[index] for k, v in self.batch.items()},
            {k: v[index] for k, v in self.non_tensor_batch.items()},
            dict(self.meta_info),
        )


def make_data(tensors: dict, non_tensors: dict):
    if _VerlDataProto is not None:
        return _VerlDataProto.from_dict(tensors=tensors, non_tensors=non_tensors)
    return DataProtoStandIn(tensors, non_tensors)


def take(data, index):
    """Rows `index` of `data`, as verl's `balance_batch` reorders them."""
    index = np.asarray(index)
    if _VerlDataProto is not None:
        return data.select_idxs(torch.as_tensor(index))
    return data.select(index)


@pytest.fixture(scope="module")
def tokenizer():
    from aesr1.modeling.tiny import build_tokenizer

    return build_tokenizer()


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
    positions = [i for idx in per_image for i in idx]
    out = {}
    for name in ("total", *COMPONENTS):
        placed = np.empty(len(texts))
        placed[positions] = np.asarray(getattr(result, name), dtype=np.float64).reshape(-1)
        out[name] = placed
    return out


def rollout_batch(tokenizer, *, num_images=6, k=4, seed=0, prompt_len=12, response_len=24):
    """A batch as verl has it after rollout: prompts repeated k times (interleaved), one uid each."""
    rng = np.random.default_rng(seed)
    texts, gts, uids, sources = [], [], [], []
    for i in range(num_images):
        gt = round(float(rng.uniform()), 2)
        uid = str(uuid.UUID(int=int(rng.integers(2**63))))
        for _ in range(k):
            roll = rng.uniform()
            if roll < 0.15:
                text = "<think>hmm</think>"
            elif roll < 0.25:
                text = ""
            else:
                text = f"<think>ok</think><answer>{rng.uniform():.2f}</answer>"
            texts.append(text)
            gts.append(str(gt) if i % 2 else gt)  # verl datasets often store ground truth as strings
            uids.append(uid)
            sources.append("synthetic" if i % 3 else "ava")
    pad = tokenizer.pad_token_id
    n = len(texts)
    prompts = torch.full((n, prompt_len), pad)
    responses = torch.full((n, response_len), pad)
    mask = torch.zeros((n, prompt_len + response_len), dtype=torch.long)
    for row, text in enumerate(texts):
        prompt_ids = tokenizer.encode(f"rate image {row // k}", add_special_tokens=False)[-prompt_len:]
        prompts[row, prompt_len - len(prompt_ids) :] = torch.tensor(prompt_ids)
        mask[row, prompt_len - len(prompt_ids) : prompt_len] = 1
        response_ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
        response_ids = response_ids[:response_len]
        responses[row, : len(response_ids)] = torch.tensor(response_ids)
        mask[row, prompt_len : prompt_len + len(response_ids)] = 1
    data = make_data(
        {"prompts": prompts, "responses": responses, "attention_mask": mask},
        {
            "uid": np.array(uids, dtype=object),
            "reward_model": np.array([{"ground_truth": g, "style": "rule"} for g in gts], dtype=object),
            "data_source": np.array(sources, dtype=object),
        },
    )
    return data, texts, [float(g) for g in gts], uids


def test_responses_decode_to_the_sampled_text(tokenizer):
    data, texts, _, _ = rollout_batch(tokenizer, num_images=3, k=3)
    manager = rapo_verl.RapoRewardManager(tokenizer)
    assert manager.decode_responses(data) == texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_batch_gets_rapo_of_the_grouped_batch(tokenizer, seed):
    data, texts, gt, uids = rollout_batch(tokenizer, seed=seed)
    ref = reference(texts, gt, uids)
    assert np.any(ref["rank"] != 0)
    perm = np.random.default_rng(seed + 10).permutation(len(texts))
    shuffled = take(data, perm)

    manager = rapo_verl.RapoRewardManager(tokenizer, num_examine=0)
    out = manager(shuffled, return_dict=True)
    reward_tensor, extra = out["reward_tensor"], out["reward_extra_info"]

    responses = shuffled.batch["responses"]
    prompt_len = shuffled.batch["prompts"].shape[-1]
    lengths = shuffled.batch["attention_mask"][:, prompt_len:].sum(-1)
    assert reward_tensor.shape == responses.shape and reward_tensor.dtype == torch.float32
    expected = torch.zeros_like(reward_tensor)
    expected[torch.arange(len(perm)), lengths - 1] = torch.tensor(ref["total"][perm], dtype=torch.float32)
    torch.testing.assert_close(reward_tensor, expected, rtol=0, atol=0)
    np.testing.assert_allclose(extra["score"], ref["total"][perm], rtol=0, atol=1e-12)
    for name in COMPONENTS:
        np.testing.assert_allclose(extra[name], ref[name][perm], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(
        np.isnan(extra["pred"]), np.isnan(rewards.parse_scores([texts[i] for i in perm]))
    )

    # the unshuffled batch gives every completion the same reward
    plain = manager(data)
    torch.testing.assert_close(plain[perm], reward_tensor, rtol=0, atol=0)


def test_groups_follow_uid_not_position(tokenizer):
    """Two different images whose completions end up adjacent after shuffling stay separate groups."""
    data, texts, gt, uids = rollout_batch(tokenizer, num_images=4, k=2, seed=5)
    # Same rows, but image 0 and 1 swap uids between their second completions: groups change, rewards must too.
    relabelled = list(uids)
    relabelled[1], relabelled[3] = uids[3], uids[1]
    gt_relabelled = list(gt)
    gt_relabelled[1], gt_relabelled[3] = gt[3], gt[1]
    ref = reference(texts, gt_relabelled, relabelled)
    data.non_tensor_batch["uid"] = np.array(relabelled, dtype=object)
    rm = data.non_tensor_batch["reward_model"]
    rm[1], rm[3] = {"ground_truth": gt[3]}, {"ground_truth": gt[1]}
    out = rapo_verl.RapoRewardManager(tokenizer)(data, return_dict=True)
    np.testing.assert_allclose(out["reward_extra_info"]["score"], ref["total"], rtol=0, atol=1e-12)


def test_weights_and_options_reach_rapo(tokenizer):
    data, texts, gt, uids = rollout_batch(tokenizer, seed=3)
    weights = {"rank": 1.0, "binary": 1.0, "format": 0.25}
    # constructed as verl's load_reward_manager does, with reward_model.reward_kwargs spread in
    manager = rapo_verl.RapoRewardManager(
        tokenizer=tokenizer,
        num_examine=1,
        compute_score=lambda **_: 0.0,
        reward_fn_key="data_source",
        weights=weights,
        ties="half",
    )
    out = manager(data, return_dict=True)
    ref = reference(texts, gt, uids, weights=weights, ties="half")
    np.testing.assert_allclose(out["reward_extra_info"]["score"], ref["total"], rtol=0, atol=1e-12)


def test_bad_batches_raise_naming_the_field(tokenizer):
    data, _, gt, _ = rollout_batch(tokenizer, num_images=2, k=2)
    manager = rapo_verl.RapoRewardManager(tokenizer)
    no_uid = make_data(
        dict(data.batch.items()), {k: v for k, v in data.non_tensor_batch.items() if k != "uid"}
    )
    with pytest.raises(ValueError, match="'uid'"):
        manager(no_uid)
    mixed = make_data(
        dict(data.batch.items()), {**data.non_tensor_batch, "uid": np.array(["a"] * 4, dtype=object)}
    )
    with pytest.raises(ValueError, match="mixes ground truths"):
        manager(mixed)
    bad_gt = make_data(
        dict(data.batch.items()),
        {**data.non_tensor_batch, "reward_model": np.array([{"ground_truth": "n/a"}] * 4, dtype=object)},
    )
    with pytest.raises(TypeError, match="ground_truth"):
        manager(bad_gt)
    with pytest.raises(ValueError, match="weights"):
        rapo_verl.RapoRewardManager(tokenizer, weights={"rank": 0.0})
    with pytest.raises(ValueError, match="reward_kwargs: rapo has no option"):
        rapo_verl.RapoRewardManager(tokenizer, sigmaa=0.2)
    with pytest.raises(ValueError, match="must not set"):
        rapo_verl.RapoRewardManager(tokenizer, group_ids=[0])
    with pytest.raises(TypeError, match="tokenizer"):
        rapo_verl.RapoRewardManager(None)


# ---------------------------------------------------------------------------------------------
# per-sample compute_score
# ---------------------------------------------------------------------------------------------


def test_compute_score_gives_the_per_sample_components(tokenizer):
    _, texts, gt, uids = rollout_batch(tokenizer, seed=4)
    ref = reference(texts, gt, uids, weights={"abs": 1.0, "binary": 2.0, "format": 0.5})
    parsed = rewards.parse_scores(texts)
    for i, text in enumerate(texts):
        out = rapo_verl.compute_score("synthetic", text, str(gt[i]), extra_info={"index": i})
        assert out["score"] == out["abs"] == pytest.approx(ref["abs"][i], abs=1e-12)
        both = rapo_verl.compute_score(
            "synthetic", text, gt[i], weights={"abs": 1.0, "binary": 2.0, "format": 0.5}
        )
        assert both["score"] == pytest.approx(ref["total"][i], abs=1e-12)
        for name in ("abs", "binary", "format"):
            assert both[name] == pytest.approx(ref[name][i], abs=1e-12)
        assert np.isnan(both["pred"]) == np.isnan(parsed[i])


def test_compute_score_refuses_the_rank_reward():
    with pytest.raises(ValueError, match="rank reward needs every completion"):
        rapo_verl.compute_score("x", "<answer>0.5</answer>", 0.5, weights={"rank": 1.0, "abs": 1.0})
    with pytest.raises(TypeError, match="solution_str"):
        rapo_verl.compute_score("x", None, 0.5)


# ---------------------------------------------------------------------------------------------
# loading: verl's file-path loader and registry
# ---------------------------------------------------------------------------------------------


def _load_by_path(path: Path, monkeypatch):
    """What verl 0.6's `get_custom_reward_fn` does with `custom_reward_function.path`."""
    spec = importlib.util.spec_from_file_location("custom_module", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "custom_module", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def verl_registry(monkeypatch):
    """verl's reward-manager registry; a copy of its semantics where verl is not installed."""
    if _VerlDataProto is not None:
        from verl.workers.reward_manager import get_reward_manager_cls, register

        return register, get_reward_manager_cls
    registry: dict = {}

    def register(name):
        def decorator(cls):
            if name in registry and registry[name] != cls:
                raise ValueError(
                    f"Reward manager {name} has already been registered: {registry[name]} vs {cls}"
                )
            registry[name] = cls
            return cls

        return decorator

    def get_reward_manager_cls(name):
        if name not in registry:
            raise ValueError(f"Unknown reward manager: {name}")
        return registry[name]

    module = types.ModuleType("verl.workers.reward_manager")
    module.register, module.get_reward_manager_cls = register, get_reward_manager_cls
    for name, mod in {
        "verl": types.ModuleType("verl"),
        "verl.workers": types.ModuleType("verl.workers"),
        "verl.workers.reward_manager": module,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return register, get_reward_manager_cls


def test_loading_by_file_path_registers_the_canonical_manager(tokenizer, verl_registry, monkeypatch):
    register, get_cls = verl_registry
    assert rapo_verl.register_with_verl()
    loaded = _load_by_path(Path(rapo_verl.__file__), monkeypatch)
    assert loaded.RapoRewardManager is not rapo_verl.RapoRewardManager
    assert get_cls("rapo") is rapo_verl.RapoRewardManager
    # registering the file-loaded copy directly is what verl's registry refuses
    with pytest.raises(ValueError, match="already been registered"):
        register("rapo")(loaded.RapoRewardManager)

    data, texts, gt, uids = rollout_batch(tokenizer, num_images=3, k=2, seed=7)
    manager = get_cls("rapo")(tokenizer=tokenizer, num_examine=0, compute_score=loaded.compute_score)
    np.testing.assert_allclose(
        manager(data, return_dict=True)["reward_extra_info"]["score"],
        reference(texts, gt, uids)["total"],
        atol=1e-12,
    )
    assert (
        loaded.compute_score("ava", texts[0], gt[0])["score"]
        == rapo_verl.compute_score("ava", texts[0], gt[0])["score"]
    )


def test_import_without_verl_registers_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "verl", None)  # makes `import verl` raise ImportError
    assert rapo_verl.register_with_verl() is False


# ---------------------------------------------------------------------------------------------
# property: any grouping, any order
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _shared_tokenizer():
    from aesr1.modeling.tiny import build_tokenizer

    return build_tokenizer()


_completion = st.one_of(
    st.floats(0, 1).map(lambda v: f"<think>w</think><answer>{v:.2f}</answer>"),
    st.floats(0, 1).map(lambda v: f"<answer>{v:.3f}</answer>"),
    st.sampled_from(["", "no score", "<answer>1.5</answer>", "<think>x</think><answer>0.5"]),
)


@settings(max_examples=60, deadline=None)
@given(
    groups=st.lists(
        st.tuples(st.floats(0, 1).map(lambda v: round(v, 2)), st.lists(_completion, min_size=1, max_size=5)),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 2**32 - 1),
    ties=st.sampled_from(["strict", "half"]),
)
def test_property_any_uid_grouping_and_order_gives_rapo_of_the_grouped_batch(groups, seed, ties):
    tokenizer = _shared_tokenizer()
    texts = [t for _, completions in groups for t in completions]
    gt = [g for g, completions in groups for _ in completions]
    uids = [f"u{i}" for i, (_, completions) in enumerate(groups) for _ in completions]
    perm = np.random.default_rng(seed).permutation(len(texts))
    texts, gt, uids = [texts[i] for i in perm], [gt[i] for i in perm], [uids[i] for i in perm]

    response_len = 40
    responses = torch.full((len(texts), response_len), tokenizer.pad_token_id)
    mask = torch.zeros((len(texts), 2 + response_len), dtype=torch.long)
    mask[:, :2] = 1
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=False)[:response_len]
        responses[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, 2 : 2 + len(ids)] = 1
    data = make_data(
        {
            "prompts": torch.zeros((len(texts), 2), dtype=torch.long),
            "responses": responses,
            "attention_mask": mask,
        },
        {
            "uid": np.array(uids, dtype=object),
            "reward_model": np.array([{"ground_truth": g} for g in gt], dtype=object),
        },
    )
    weights = {"rank": 1.0, "abs": 1.0, "binary": 0.5, "format": 0.25}
    out = rapo_verl.RapoRewardManager(tokenizer, weights=weights, ties=ties)(data, return_dict=True)
    ref = reference(texts, gt, uids, weights=weights, ties=ties)
    np.testing.assert_allclose(out["reward_extra_info"]["score"], ref["total"], rtol=0, atol=1e-12)
    for name in COMPONENTS:
        np.testing.assert_allclose(out["reward_extra_info"][name], ref[name], rtol=0, atol=1e-12)
    lengths = mask[:, 2:].sum(-1)
    placed = out["reward_tensor"][torch.arange(len(texts)), (lengths - 1).clamp(min=0)]
    np.testing.assert_allclose(placed.numpy(), ref["total"].astype(np.float32), rtol=0, atol=0)
    assert float(out["reward_tensor"].abs().sum()) == pytest.approx(
        float(np.abs(ref["total"].astype(np.float32)).sum()), rel=1e-6
    )
