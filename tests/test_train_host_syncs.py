"""The RAPO optimiser step reads device values on the host once per step, however many micro-batches
it has (each read is a synchronisation on CUDA). Counted on CPU by patching the Tensor methods that
read a value, for calls made from aesr1's own code."""

from __future__ import annotations

import sys

import pytest
import torch
from test_train_rapo import items, make_trainer, small_config, trained  # noqa: F401 (fixtures)

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")
OWN_CODE = ("/aesr1/", "/triton_kernels/")


@pytest.fixture
def count_host_reads(monkeypatch):
    """A list that receives 'file:line name' for each value read made by aesr1's code."""
    seen: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code
            if any(part in caller.co_filename for part in OWN_CODE):
                seen.append(f"{caller.co_filename.rsplit('/', 1)[-1]}:{sys._getframe(1).f_lineno} {_name}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return seen


@pytest.mark.parametrize("fused_linear", [False, True])
def test_one_host_read_per_optimiser_step(trained, items, tmp_path, fused_linear, count_host_reads):  # noqa: F811
    config = small_config(tmp_path, mini_batch_size=8, per_device_train_batch_size=2, fused_linear=fused_linear,
                          loss_backend="torch")  # fmt: skip
    trainer = make_trainer(config, trained, items, tmp_path)
    data = trainer.generate_round(0)
    rows = list(range(8))  # 4 micro-batches
    count_host_reads.clear()
    metrics = trainer.optimiser_step(data, rows)
    assert len(count_host_reads) == 1, count_host_reads
    assert all(isinstance(v, float) for v in metrics.values())
    for name in ("loss", "kl", "entropy", "ratio_min", "ratio_max", "clip_frac", "grad_norm"):
        assert metrics[name] == metrics[name], name  # not NaN


def test_bad_loss_input_still_raises_before_the_weights_move(trained, items, tmp_path):  # noqa: F811
    config = small_config(tmp_path, mini_batch_size=8, per_device_train_batch_size=2, loss_backend="torch")
    trainer = make_trainer(config, trained, items, tmp_path)
    data = trainer.generate_round(0)
    data.old_logp = data.old_logp.clone()
    data.old_logp[5, 0] = float("nan")  # a valid token of the third micro-batch
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(ValueError, match="old_logp: must be finite"):
        trainer.optimiser_step(data, list(range(8)))
    after = list(trainer.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
