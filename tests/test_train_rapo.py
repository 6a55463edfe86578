"""RAPO training loop on a tiny Qwen2.5-VL (CPU): rollouts and groups, rewards and advantages,
unparseable completions, clip fractions with several steps per generation, kill + resume."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

from aesr1 import rewards
from aesr1.data.synthetic import make_synthetic_dataset
from aesr1.modeling.chat import build_inputs, model_inputs
from aesr1.modeling.tiny import build_tiny_model
from aesr1.prompts import SCORING_PROMPT, format_completion
from aesr1.train.batching import patch_offsets, select_rows
from aesr1.train.config import RewardMixConfig, config_from_dict
from aesr1.train.rapo import RAPOTrainer
from aesr1.train.scoring import score_rollouts
from aesr1.train.tracking import read_metrics


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=16, seed=1, image_size=32)


@pytest.fixture(scope="module")
def trained(items):
    """A tiny model fitted for a few steps on short completions, so that samples parse and vary."""
    completions = [format_completion(i.attributes["palette"], i.score) for i in items]
    model, processor = build_tiny_model(0, vocab_corpus=completions)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    rng = random.Random(0)
    for _ in range(40):
        rows = rng.sample(range(len(items)), 8)
        batch = build_inputs(
            processor, [items[r].image for r in rows], SCORING_PROMPT, [completions[r] for r in rows]
        )
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, processor


def small_config(tmp_path, **rapo):
    values = {
        "output_dir": str(tmp_path),
        "progress": False,
        "report_to": [],
        "save_steps": 2,
        "rapo": {
            "num_generations": 4,
            "mini_batch_size": 8,
            "steps_per_generation": 2,
            "per_device_train_batch_size": 4,
            "max_completion_length": 40,
            "learning_rate": 1e-3,
            "num_train_epochs": 1.0,
            "max_steps": 4,
            **rapo,
        },  # fmt: skip
        "eval": {"eval_steps": 0},
    }
    return config_from_dict(values)


def make_trainer(config, trained, items, tmp_path):
    model, processor = trained
    return RAPOTrainer(
        config, copy.deepcopy(model), processor, items, ref_model=copy.deepcopy(model), output_dir=tmp_path
    )


def test_rollout_shapes_groups_and_advantages(trained, items, tmp_path):
    config = small_config(tmp_path)
    trainer = make_trainer(config, trained, items, tmp_path)
    data = trainer.generate_round(0)
    k, images = 4, config.rapo.images_per_generation
    rows = images * k
    batch = data.batch
    assert batch["completion_ids"].shape[0] == rows == len(data.texts)
    assert data.advantages.shape == (rows,)
    assert data.old_logp.shape == batch["completion_ids"].shape == data.ref_logp.shape
    # K consecutive rows share one image (identical pixels), different groups have different images.
    offsets = patch_offsets(batch["image_grid_thw"]).tolist()
    pixels = [batch["pixel_values"][offsets[r] : offsets[r + 1]] for r in range(rows)]
    for g in range(images):
        for r in range(g * k + 1, (g + 1) * k):
            assert torch.equal(pixels[r], pixels[g * k])
    assert not torch.equal(pixels[0], pixels[k])
    # Advantages are Eq. 9 of the totals, group by group, and match a direct rapo() call.
    reference = rewards.rapo({"completions": [data.texts[g * k : (g + 1) * k] for g in range(images)],
                              "gt": _round_gt(trainer, items, 0)})  # fmt: skip
    np.testing.assert_allclose(data.advantages.numpy(), reference.advantages, atol=1e-6)
    for g in range(images):
        assert abs(float(data.advantages[g * k : (g + 1) * k].sum())) < 1e-4
    # old log-probs come from the generating policy: the first step of the round is on-policy.
    metrics = trainer.optimiser_step(data, list(range(0, rows // 2)))
    assert metrics["ratio_min"] == pytest.approx(1.0, abs=1e-4) and metrics["ratio_max"] == pytest.approx(
        1.0, abs=1e-4
    )
    assert np.isfinite(metrics["entropy"]) and metrics["entropy"] > 0


def _round_gt(trainer, items, round_index):
    """Ground truths of the images the trainer drew for a round (replaying its seeded order)."""
    from aesr1.train.rapo import DataPosition

    position = DataPosition(len(trainer.train_items), trainer.config.seed)
    for _ in range(round_index):
        position.take(trainer.cfg.images_per_generation)
    return [trainer.train_items[i].score for i in position.take(trainer.cfg.images_per_generation)]


def test_select_rows_keeps_layout(trained, items):
    _, processor = trained
    batch = build_inputs(
        processor, [i.image for i in items[:3]], SCORING_PROMPT, ["<think>a</think>", "b", "cc"]
    )
    sub = select_rows(batch, [2, 0])
    assert torch.equal(
        sub["input_ids"][0, : batch["prompt_length"]], batch["input_ids"][2, : batch["prompt_length"]]
    )
    offsets = patch_offsets(batch["image_grid_thw"]).tolist()
    assert torch.equal(sub["pixel_values"][: offsets[1]], batch["pixel_values"][offsets[2] : offsets[3]])


def test_unparseable_completions_counted_with_zero_reward():
    texts = ["<think>ok</think><answer>0.80</answer>", "no answer here", "<answer>1.7</answer>",
             "<think>x</think><answer>0.75</answer>"] + ["<think>y</think><answer>0.20</answer>"] * 4  # fmt: skip
    scored = score_rollouts(texts, [0.8, 0.2], 4, RewardMixConfig())
    assert np.isnan(scored.scores[[1, 2]]).all()
    assert scored.total[1] == 0.0 and scored.total[2] == 0.0
    for name in ("rank", "abs", "binary", "format"):
        assert scored.components[name][1] == 0.0
    assert scored.stats["unparseable"] == pytest.approx(2 / 8)
    assert scored.advantages[1] < 0 and scored.advantages[0] > 0


def test_reward_weights_follow_config():
    texts = ["<think>a</think><answer>0.70</answer>", "<think>a</think><answer>0.10</answer>"] * 2 + [
        "<think>b</think><answer>0.30</answer>"
    ] * 4
    only_rank = score_rollouts(texts, [0.7, 0.3], 4, RewardMixConfig(rank=1.0, abs=0.0))
    np.testing.assert_allclose(only_rank.total, only_rank.components["rank"])
    binary = score_rollouts(texts, [0.7, 0.3], 4, RewardMixConfig(rank=0.0, abs=0.0, binary=1.0))
    assert binary.total.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_clip_fractions_nonzero_with_several_steps_per_generation(trained, items, tmp_path):
    config = small_config(tmp_path, steps_per_generation=2, learning_rate=2e-2, max_steps=4)
    trainer = make_trainer(config, trained, items, tmp_path)
    trainer.train()
    records = [r for r in read_metrics(tmp_path / "rapo_metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    first, later = records[0::2], records[1::2]
    for record in first:  # first step of a round: ratio exactly 1, nothing clipped
        assert record["clip_frac"] == 0.0
        assert record["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert any(r["clip_frac"] > 0 for r in later), later
    for key in ("reward/total", "reward/rank", "reward/abs", "advantage/std", "unparseable", "kl", "entropy",
                "completion_length/mean", "lr", "clip_frac_low", "clip_frac_high"):  # fmt: skip
        assert key in records[0]


def test_single_step_per_generation_is_on_policy(trained, items, tmp_path):
    config = small_config(tmp_path, steps_per_generation=1, mini_batch_size=8, max_steps=2)
    trainer = make_trainer(config, trained, items, tmp_path)
    data = trainer.generate_round(0)
    assert data.old_logp is None  # no extra forward: the ratio is exactly 1 by construction
    metrics = trainer.optimiser_step(data, list(range(8)))
    assert metrics["ratio_min"] == metrics["ratio_max"] == 1.0 and metrics["clip_frac"] == 0.0


def test_the_trainer_trains_with_the_loss_config_of_rapo(trained, items, tmp_path, monkeypatch):
    """Every loss setting reaches the loss through `rapo.loss_config()`; epsilon_high changes it."""
    import aesr1.train.rapo as rapo_module

    settings = dict(epsilon=0.1, epsilon_high=0.5, beta=0.02, aggregation="token-mean", kl_clamp=True,
                    loss_backend="torch", temperature=0.9, max_completion_length=36)  # fmt: skip
    wide = make_trainer(small_config(tmp_path / "wide", **settings), trained, items, tmp_path / "wide")
    narrow_settings = {**settings, "epsilon_high": 0.28}
    narrow = make_trainer(
        small_config(tmp_path / "narrow", **narrow_settings), trained, items, tmp_path / "narrow"
    )
    passed = []
    original = rapo_module.policy_loss

    def spy(*args, loss_config, **kwargs):
        passed.append(loss_config)
        return original(*args, loss_config=loss_config, **kwargs)

    monkeypatch.setattr(rapo_module, "policy_loss", spy)
    data = wide.generate_round(0)
    # Sampled by a policy 0.4 nats less likely on every token: ratio e^0.4 = 1.49 on the first step,
    # above 1 + 0.28 (clipped where A > 0) and below 1 + 0.5 (never clipped).
    data.old_logp = data.old_logp - 0.4
    rows = list(range(8))
    clipped = narrow.optimiser_step(data, rows)
    unclipped = wide.optimiser_step(data, rows)
    assert passed[0] == narrow.cfg.loss_config() and passed[-1] == wide.cfg.loss_config()
    assert passed[-1].eps_high == 0.5 and passed[-1].eps_low == 0.1 and passed[-1].kl_clamp
    assert unclipped["clip_frac_high"] == 0.0 < clipped["clip_frac_high"]
    assert unclipped["ratio_min"] == pytest.approx(math.exp(0.4), rel=1e-4)
    assert unclipped["loss"] != pytest.approx(clipped["loss"])


class _Killed(Exception):
    pass


def test_kill_and_resume_gives_identical_state(trained, items, tmp_path):
    steps = 6  # 3 rounds of 2 steps; a checkpoint after each round
    full = make_trainer(small_config(tmp_path / "full", max_steps=steps), trained, items, tmp_path / "full")
    full.train()

    killed_dir = tmp_path / "killed"
    killed = make_trainer(small_config(killed_dir, max_steps=steps), trained, items, killed_dir)
    original = killed.generate_round

    def dies_in_round_two(round_index):
        if round_index == 2:
            raise _Killed
        return original(round_index)

    killed.generate_round = dies_in_round_two
    with pytest.raises(_Killed):
        killed.train()
    assert killed.latest_checkpoint().name == "checkpoint-4"
    del killed

    resumed = make_trainer(small_config(killed_dir, max_steps=steps), trained, items, killed_dir)
    resumed.train(resume=True)
    assert resumed.position.state_dict() == full.position.state_dict()
    for (name, a), (_, b) in zip(
        full.model.named_parameters(), resumed.model.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name
    sa, sb = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for key in sa:
        for field in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(sa[key][field]), torch.as_tensor(sb[key][field])), (key, field)
    assert full.scheduler.state_dict() == resumed.scheduler.state_dict()
    steps_logged = [r["step"] for r in read_metrics(killed_dir / "rapo_metrics.jsonl") if "loss" in r]
    assert steps_logged == list(range(1, steps + 1))
    reference = [r["loss"] for r in read_metrics(tmp_path / "full" / "rapo_metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in read_metrics(killed_dir / "rapo_metrics.jsonl") if "loss" in r] == reference


def test_kill_before_the_first_checkpoint_logs_each_step_once(trained, items, tmp_path):
    config = config_from_dict({"save_steps": 100}, small_config(tmp_path, max_steps=4))
    killed = make_trainer(config, trained, items, tmp_path)
    original = killed.generate_round

    def dies_in_round_one(round_index):
        if round_index == 1:
            raise _Killed
        return original(round_index)

    killed.generate_round = dies_in_round_one
    with pytest.raises(_Killed):
        killed.train()
    assert killed.latest_checkpoint() is None
    del killed
    make_trainer(config, trained, items, tmp_path).train(resume=True)
    assert [r["step"] for r in read_metrics(tmp_path / "rapo_metrics.jsonl")] == [1, 2, 3, 4]


def test_bad_trainer_input(trained, items, tmp_path):
    config = small_config(tmp_path, mini_batch_size=8, steps_per_generation=4)
    with pytest.raises(ValueError, match="images_per_generation"):
        make_trainer(config, trained, items[:5], tmp_path)
    model, processor = trained
    with pytest.raises(ValueError, match="reference"):
        RAPOTrainer(
            small_config(tmp_path),
            copy.deepcopy(model),
            processor,
            items,
            ref_model=None,
            output_dir=tmp_path,
        )


@pytest.mark.parametrize(
    "name", ["table2_binary", "table2_abs", "table2_rank", "table2_binary_rank", "table2_abs_rank"]
)
def test_table2_reward_combinations_run_by_config(trained, items, tmp_path, name):
    from aesr1.train.config import load_config

    config = config_from_dict(
        {"output_dir": str(tmp_path), "progress": False, "report_to": [], "eval": {"eval_steps": 0},
         "rapo": {"mini_batch_size": 8, "steps_per_generation": 1, "per_device_train_batch_size": 8,
                  "max_completion_length": 40, "max_steps": 1, "learning_rate": 1e-3}},
        load_config(name),
    )  # fmt: skip
    trainer = make_trainer(config, trained, items, tmp_path)
    metrics = trainer.train()
    weights = {"rank": config.reward.rank, "abs": config.reward.abs, "binary": config.reward.binary}
    expected = sum(w * metrics[f"reward/{c}"] for c, w in weights.items())
    assert metrics["reward/total"] == pytest.approx(expected, abs=1e-9)
    for component, weight in weights.items():
        if weight == 0 and component == "rank":
            assert metrics["reward/rank"] == 0.0  # not computed when unweighted
