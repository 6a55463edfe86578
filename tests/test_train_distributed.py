"""Two CPU processes (gloo): the rank reward sees the whole gathered generation batch, each process
keeps whole groups, and a RAPO step keeps the replicas identical."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from aesr1 import rewards
from aesr1.train.config import RewardMixConfig

K = 4
# Two processes x two images x K completions; ground truths chosen so that cross-process pairs matter.
TEXTS = {
    0: ["<answer>0.90</answer>", "<answer>0.80</answer>", "<answer>0.85</answer>", "bad",
        "<answer>0.20</answer>", "<answer>0.30</answer>", "<answer>0.25</answer>", "<answer>0.40</answer>"],
    1: ["<answer>0.60</answer>", "<answer>0.70</answer>", "<answer>0.65</answer>", "<answer>0.50</answer>",
        "<answer>0.10</answer>", "<answer>0.05</answer>", "<answer>0.15</answer>", "<answer>0.10</answer>"],
}  # fmt: skip
GT = {0: [0.85, 0.30], 1: [0.55, 0.10]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from aesr1.train.scoring import score_rollouts

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == world
    result = {}
    for scope in ("global", "local"):
        scored = score_rollouts(TEXTS[rank], GT[rank], K, RewardMixConfig(rank_scope=scope), accelerator)
        result[f"{scope}_total"] = scored.total
        result[f"{scope}_rank"] = scored.components["rank"]
        result[f"{scope}_adv"] = scored.advantages
        result[f"{scope}_unparseable"] = np.array(scored.stats["unparseable"])
    result.update(_trainer_round(accelerator, out_dir))
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), **result)
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _trainer_round(accelerator, out_dir: str) -> dict:
    """One RAPO round of a tiny untrained model under DDP: local image shares and synced replicas."""
    from aesr1.data.synthetic import make_synthetic_dataset
    from aesr1.modeling.tiny import build_tiny_model
    from aesr1.train.config import config_from_dict
    from aesr1.train.rapo import RAPOTrainer

    with accelerator.main_process_first():
        items = make_synthetic_dataset(os.path.join(out_dir, "syn"), n=8, seed=0, image_size=32)
    config = config_from_dict({
        "output_dir": out_dir, "progress": False, "report_to": [],
        "rapo": {"mini_batch_size": 16, "steps_per_generation": 1, "per_device_train_batch_size": 4,
                 "max_completion_length": 6, "learning_rate": 1e-2, "max_steps": 1, "beta": 0.0},
        "reward": {"format": 1.0},
        "eval": {"eval_steps": 0},
    })  # fmt: skip
    model, processor = build_tiny_model(seed=0)
    trainer = RAPOTrainer(config, model, processor, items, output_dir=out_dir, accelerator=accelerator)
    shares = trainer._local_share(list(range(4)))
    trainer.train()
    flat = torch.cat(
        [p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()]
    )
    return {
        "share": np.array(shares),
        "params_head": flat[:4096].numpy(),
        "params_sum": np.array(flat.double().sum()),
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    return [dict(np.load(out / f"rank{r}.npz")) for r in (0, 1)]


def test_rank_reward_sees_the_whole_gathered_batch(runs):
    everything = rewards.rapo({"completions": [TEXTS[r][g * K : (g + 1) * K] for r in (0, 1) for g in (0, 1)],
                               "gt": GT[0] + GT[1]})  # fmt: skip
    np.testing.assert_allclose(np.concatenate([runs[0]["global_total"], runs[1]["global_total"]]),
                               everything.total, atol=1e-12)  # fmt: skip
    np.testing.assert_allclose(np.concatenate([runs[0]["global_adv"], runs[1]["global_adv"]]),
                               everything.advantages, atol=1e-12)  # fmt: skip
    # Unparseable share is batch-wide (1 of 16) on both processes.
    assert (
        float(runs[0]["global_unparseable"]) == float(runs[1]["global_unparseable"]) == pytest.approx(1 / 16)
    )


def test_local_scope_compares_within_each_process_only(runs):
    for r in (0, 1):
        alone = rewards.rapo({"completions": [TEXTS[r][:K], TEXTS[r][K:]], "gt": GT[r]})
        np.testing.assert_allclose(runs[r]["local_rank"], alone.rank, atol=1e-12)
    assert not np.allclose(runs[0]["local_rank"], runs[0]["global_rank"])


def test_processes_take_whole_groups_and_stay_in_sync(runs):
    assert runs[0]["share"].tolist() == [0, 1] and runs[1]["share"].tolist() == [2, 3]
    np.testing.assert_array_equal(runs[0]["params_head"], runs[1]["params_head"])
    assert float(runs[0]["params_sum"]) == float(runs[1]["params_sum"])
