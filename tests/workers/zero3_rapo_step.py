"""One RAPO round + optimiser step under DeepSpeed ZeRO-3, run by `tests/test_train_deepspeed.py` as
`python -m torch.distributed.run --nproc_per_node 2 tests/workers/zero3_rapo_step.py OUT DS_JSON FUSED [lora]`
on CPU (DS_ACCELERATOR=cpu, gloo). With `lora` the policy is a PeftModel (`lora_model`) whose
reference is its own base weights (the adapter disabled).

Saves the initial weights, each rank's round (rollouts, advantages, old/ref log-probs, its rows) and
the gathered weights after the step, so the test can recompute the step without DeepSpeed. The
optimiser is plain SGD (lr 1): AdamW's first step is lr * sign(g) and would hide any error in the
scale of the gradient (e.g. a second division by the accumulation count).
"""

from __future__ import annotations

import copy
import os
import sys

import torch


class PlainSGD(torch.optim.SGD):
    """SGD accepting RAPOTrainer's AdamW arguments."""

    def __init__(self, params, lr, weight_decay=0.0, **_unused):
        super().__init__(params, lr=lr, weight_decay=weight_decay)


def rapo_values(out_dir: str, fused: bool) -> dict:
    return {
        "output_dir": out_dir, "progress": False, "tensorboard": False,
        "rapo": {"num_generations": 2, "mini_batch_size": 8, "steps_per_generation": 1, "per_device_train_batch_size": 2,
                 "max_completion_length": 6, "learning_rate": 1.0, "max_grad_norm": 1.0e9, "beta": 0.05,
                 "max_steps": 1, "fused_linear": fused, "shuffle_mini_batches": False},
        "reward": {"format": 1.0},
        "eval": {"eval_steps": 0},
    }  # fmt: skip


def lora_model(model):
    """The tiny model with a seeded rank-4 adapter whose lora_B is not 0 (so that the policy differs
    from its reference, the base weights, and the KL term has a gradient)."""
    from aesr1.modeling.lora import apply_lora
    from aesr1.train.config import LoraConfig

    torch.manual_seed(0)
    model = apply_lora(model, LoraConfig(r=4, dropout=0.0))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def main(out_dir: str, ds_json: str, fused: bool, lora: bool = False) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(__file__))
    from gloo_allreduce import use_gloo_allreduce

    use_gloo_allreduce()
    torch.optim.AdamW = PlainSGD  # RAPOTrainer builds `torch.optim.AdamW`
    from accelerate.state import PartialState

    from aesr1.data.synthetic import make_synthetic_dataset
    from aesr1.modeling.tiny import build_tiny_model
    from aesr1.train.config import config_from_dict
    from aesr1.train.distributed import is_zero3, make_rapo_accelerator
    from aesr1.train.rapo import RAPOTrainer

    state = PartialState(cpu=True)
    with state.main_process_first():
        items = make_synthetic_dataset(os.path.join(out_dir, "syn"), n=8, seed=0, image_size=32)
    config = config_from_dict({**rapo_values(out_dir, fused), "deepspeed": ds_json})
    model, processor = build_tiny_model(seed=0)
    reference = None
    if lora:
        model = lora_model(model)
    else:
        reference = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a reference unlike the policy, so the KL term has a gradient
            for parameter in reference.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    if state.is_main_process:
        torch.save(model.state_dict(), os.path.join(out_dir, "initial.pt"))
    accelerator = make_rapo_accelerator(config, model)
    assert is_zero3(accelerator), accelerator.distributed_type
    trainer = RAPOTrainer(config, model, processor, items, ref_model=reference, output_dir=out_dir,
                          accelerator=accelerator)  # fmt: skip
    data = trainer.generate_round(0)
    # An untrained model rarely parses, so its advantages are all 0: give each row a seeded one.
    rank = accelerator.process_index
    generator = torch.Generator().manual_seed(100 + rank)
    data.advantages = torch.randn(data.advantages.shape, generator=generator)
    rows = trainer._mini_batches(data.batch["completion_ids"].shape[0], 0)[0]
    metrics = trainer.optimiser_step(data, rows)
    torch.save(
        {"batch": {k: v.cpu() if hasattr(v, "cpu") else v for k, v in data.batch.items()},
         "advantages": data.advantages.cpu(), "old_logp": data.old_logp,
         "ref_logp": data.ref_logp.cpu(), "rows": rows, "metrics": metrics},
        os.path.join(out_dir, f"round{rank}.pt"),
    )  # fmt: skip
    after = accelerator.get_state_dict(trainer.model)
    if accelerator.is_main_process:
        torch.save({k: v.detach().cpu().clone() for k, v in after.items()}, os.path.join(out_dir, "after.pt"))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4:] == ["lora"])
    # Results are on disk; skip interpreter teardown, where a library thread can abort the process
    # after the work is done (see tests/test_integrations_trl.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
