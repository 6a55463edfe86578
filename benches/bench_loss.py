"""Benchmark of the RAPO policy loss (issue 3): fwd+bwd time and peak extra memory.

    python benches/bench_loss.py                 # the H100 run: B=8, T=1024, V=151,936, bf16, H=3584
    python benches/bench_loss.py --smoke         # tiny shapes, any device (CPU included)
    python benches/bench_loss.py --json out.json # also write the rows

Methods on materialised logits: eager PyTorch (fp32 autograd through log_softmax), torch.compile of
it, Liger-Kernel's `triton_grpo_loss` (in place), and `aesr1.loss.rapo_loss` in and out of place.
From the last hidden states and the lm_head weight: the three GEMMs alone (the floor), GEMM +
Liger, GEMM + ours, `LigerFusedLinearGRPOLoss`, and `aesr1.loss.rapo_loss_from_hidden` (dW summed
in bf16, and in fp32). Liger rows need `liger_kernel` (0.8.5: `pip install --no-deps
.whl/liger_kernel-0.8.5-py3-none-any.whl`) and a GPU; they are skipped otherwise.

Time: median over iterations of CUDA events around forward + backward (wall clock on CPU). Peak
extra memory: the allocator's peak during forward + backward minus what was allocated before it
(inputs, including logits for the logits methods), so gradients produced count as extra. Fresh leaf
tensors are made before each iteration, outside the timed region, because in-place methods consume
their logits. Every method gets the same inputs and uses Eq. 10 aggregation, so the losses printed
beside the times must agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from aesr1.loss import rapo_loss, rapo_loss_from_hidden, token_logprobs

EPS_LOW, EPS_HIGH, BETA, TEMPERATURE = 0.2, 0.28, 0.01, 1.0
H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3


@dataclass
class Row:
    group: str
    method: str
    ms: float | None
    peak_extra_gb: float | None
    loss: float | None
    note: str = ""


def eager_rapo(logits, ids, old, ref, adv, mask):
    """The plain formulation (TRL-style): fp32 log_softmax, gather, Eq. 10-12, autograd."""
    logp = torch.log_softmax(logits.float() / TEMPERATURE, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logp - old)
    a = adv.unsqueeze(-1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * a)
    log_ratio = ref - logp
    per_token = -surrogate + BETA * (torch.exp(log_ratio) - log_ratio - 1)
    maskf = mask.float()
    return ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1)).mean()


def make_inputs(batch, seq_len, vocab, width, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    # Logits for T + 1 positions: Liger's triton_grpo_loss takes (B, T + 1, V) and drops the last.
    hidden = (torch.randn(batch, seq_len + 1, width, generator=g) * 0.5).to(dtype).to(device)
    weight = (torch.randn(vocab, width, generator=g) / width**0.5 * 4).to(dtype).to(device)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=g).to(device)
    lengths = torch.randint(seq_len // 2, seq_len + 1, (batch,), generator=g)
    mask = (torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)).to(device)
    with torch.no_grad():
        logits_full = hidden @ weight.t()
        logp = token_logprobs(logits_full[:, :seq_len].contiguous(), ids, TEMPERATURE)
    old = logp + 0.2 * torch.randn(batch, seq_len, generator=g).to(device)
    ref = logp + 0.2 * torch.randn(batch, seq_len, generator=g).to(device)
    adv = torch.randn(batch, generator=g).to(device)
    return dict(
        hidden=hidden,
        weight=weight,
        logits_full=logits_full,
        logits=logits_full[:, :seq_len].contiguous(),
        ids=ids,
        mask=mask,
        old=old,
        ref=ref,
        adv=adv,
    )


def measure(setup, run, device, warmup, iters):
    """(median ms, max peak extra bytes or None, last loss)."""
    cuda = device.type == "cuda"
    times, peaks, loss = [], [], None
    for i in range(warmup + iters):
        state = setup()
        if cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = run(state)
            end.record()
            torch.cuda.synchronize()
            elapsed = start.elapsed_time(end)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            t0 = time.perf_counter()
            loss = run(state)
            elapsed = (time.perf_counter() - t0) * 1e3
            peak = None
        if i >= warmup:
            times.append(elapsed)
            peaks.append(peak)
        del state
    peak = None if peaks[0] is None else max(peaks)
    return statistics.median(times), peak, None if loss is None else float(loss)


def logits_methods(x, liger):
    ids, old, ref, adv, mask = x["ids"], x["old"], x["ref"], x["adv"], x["mask"]
    seq_len = ids.shape[1]

    def leaf(name):
        return lambda: {"logits": x[name].clone().requires_grad_()}

    def backward(loss):
        loss.backward()
        return loss.detach()

    compiled = torch.compile(eager_rapo)
    methods = [
        (
            "eager PyTorch (fp32 autograd)",
            leaf("logits"),
            lambda s: backward(eager_rapo(s["logits"], ids, old, ref, adv, mask)),
        ),
        (
            "torch.compile(eager)",
            leaf("logits"),
            lambda s: backward(compiled(s["logits"], ids, old, ref, adv, mask)),
        ),
    ]
    if liger is not None:
        grpo = liger["triton_grpo_loss"]
        methods.append(
            (
                "Liger triton_grpo_loss (in place)",
                leaf("logits_full"),
                lambda s: backward(
                    grpo(
                        s["logits"],
                        old,
                        ref,
                        ids,
                        adv,
                        mask.to(torch.int32),
                        temperature=TEMPERATURE,
                        beta=BETA,
                        eps_low=EPS_LOW,
                        eps_high=EPS_HIGH,
                        inplace=True,
                        loss_type="grpo",
                        reduce=True,
                    )[0]
                ),
            )
        )
    for inplace in (True, False):
        methods.append(
            (
                f"ours rapo_loss ({'in place' if inplace else 'out of place'})",
                leaf("logits"),
                lambda s, inplace=inplace: backward(
                    rapo_loss(s["logits"], ids, old, ref, adv, mask, beta=BETA, inplace=inplace)[0]
                ),
            )
        )
    assert seq_len == x["logits"].shape[1]
    return methods


def hidden_methods(x, liger):
    ids, old, ref, adv, mask = x["ids"], x["old"], x["ref"], x["adv"], x["mask"]
    seq_len = ids.shape[1]

    def leaves(full: bool):
        def setup():
            hidden = x["hidden"] if full else x["hidden"][:, :seq_len].contiguous()
            return {"hidden": hidden.clone().requires_grad_(), "weight": x["weight"].clone().requires_grad_()}

        return setup

    def three_gemms(s):
        h, w = s["hidden"].detach(), s["weight"].detach()
        rows = h.reshape(-1, h.shape[-1])
        logits = rows @ w.t()
        grad_hidden = logits @ w  # noqa: F841  (timed work)
        grad_weight = logits.t() @ rows  # noqa: F841
        return None

    def gemm_then(loss_fn):
        def run(s):
            logits = s["hidden"] @ s["weight"].t()
            loss = loss_fn(logits)
            loss.backward()
            return loss.detach()

        return run

    methods = [("3 GEMMs alone (floor)", leaves(False), three_gemms)]
    if liger is not None:
        grpo = liger["triton_grpo_loss"]
        methods.append(
            (
                "GEMM + Liger triton_grpo_loss",
                leaves(True),
                gemm_then(
                    lambda logits: grpo(
                        logits,
                        old,
                        ref,
                        ids,
                        adv,
                        mask.to(torch.int32),
                        temperature=TEMPERATURE,
                        beta=BETA,
                        eps_low=EPS_LOW,
                        eps_high=EPS_HIGH,
                        inplace=True,
                        loss_type="grpo",
                        reduce=True,
                    )[0]
                ),
            )
        )
    methods.append(
        (
            "GEMM + ours rapo_loss (in place)",
            leaves(False),
            gemm_then(lambda logits: rapo_loss(logits, ids, old, ref, adv, mask, beta=BETA, inplace=True)[0]),
        )
    )
    if liger is not None:
        fused = liger["LigerFusedLinearGRPOLoss"](
            beta=BETA,
            epsilon_low=EPS_LOW,
            epsilon_high=EPS_HIGH,
            loss_type="grpo",
            temperature=TEMPERATURE,
            use_ref_model=True,
        )

        def liger_fused(s):
            out = fused(
                s["hidden"],
                s["weight"],
                ids,
                mask.to(torch.int64),
                adv,
                ref_per_token_logps=ref,
                old_per_token_logps=old,
            )
            loss = out[0] if isinstance(out, tuple) else out
            loss.backward()
            return loss.detach()

        methods.append(("Liger LigerFusedLinearGRPOLoss", leaves(False), liger_fused))
    for acc in (None, torch.float32):

        def ours(s, acc=acc):
            loss, _ = rapo_loss_from_hidden(
                s["hidden"], s["weight"], ids, old, ref, adv, mask, beta=BETA, weight_grad_dtype=acc
            )
            loss.backward()
            return loss.detach()

        label = "weight-dtype dW" if acc is None else "fp32 dW"
        methods.append((f"ours rapo_loss_from_hidden ({label})", leaves(False), ours))
    return methods


def load_liger(device):
    if device.type != "cuda":
        return None, "Liger needs a CUDA device"
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except ImportError as error:
        return None, f"liger_kernel not importable ({error})"
    return {"triton_grpo_loss": triton_grpo_loss, "LigerFusedLinearGRPOLoss": LigerFusedLinearGRPOLoss}, ""


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, runs anywhere (CPU included)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="substrings of method names to skip")
    parser.add_argument("--json", type=Path, help="write the rows and the environment here")
    parser.add_argument(
        "--sweep", action="store_true", help="also time the in-place kernel under other KernelLaunch settings"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.seq_len, args.vocab, args.hidden = 2, 8, 1031, 64
        args.iters, args.warmup = 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    env = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": dict(
            batch=args.batch, seq_len=args.seq_len, vocab=args.vocab, hidden=args.hidden, dtype=args.dtype
        ),
    }
    print(f"device: {env['device']}  torch {torch.__version__}  shape {env['shape']}")
    liger, why_not = load_liger(device)
    x = make_inputs(args.batch, args.seq_len, args.vocab, args.hidden, dtype, device)
    rows: list[Row] = []
    plan = [("logits", m) for m in logits_methods(x, liger)] + [
        ("hidden", m) for m in hidden_methods(x, liger)
    ]
    for group, (name, setup, run) in tqdm(plan, desc="methods", file=sys.stderr):
        if any(s in name for s in args.skip):
            rows.append(Row(group, name, None, None, None, "skipped"))
            continue
        try:
            ms, peak, loss = measure(setup, run, device, args.warmup, args.iters)
            rows.append(Row(group, name, ms, None if peak is None else peak / 1e9, loss))
        except Exception as error:  # a failing competitor must not hide the other rows
            rows.append(Row(group, name, None, None, None, f"failed: {type(error).__name__}: {error}"[:160]))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if liger is None:
        rows.append(Row("logits", "Liger rows", None, None, None, f"not run: {why_not}"))

    print(f"\n{'method':48s} {'fwd+bwd ms':>11s} {'peak extra GB':>14s} {'loss':>12s}")
    for row in rows:
        ms = "-" if row.ms is None else f"{row.ms:.2f}"
        gb = "-" if row.peak_extra_gb is None else f"{row.peak_extra_gb:.2f}"
        loss = "-" if row.loss is None else f"{row.loss:.6f}"
        print(f"{row.method:48s} {ms:>11s} {gb:>14s} {loss:>12s}  {row.note}")

    by_name = {row.method: row for row in rows if row.ms is not None}
    floor_ms = 4 * args.batch * args.seq_len * args.vocab / H100_BANDWIDTH * 1e3
    print(
        f"\nbandwidth floor of the logits path (4 B/logit at {H100_BANDWIDTH / 1e12:.2f} TB/s): {floor_ms:.2f} ms"
    )
    ours = by_name.get("ours rapo_loss (in place)")
    theirs = by_name.get("Liger triton_grpo_loss (in place)")
    if ours and theirs:
        print(f"ours / Liger time: {ours.ms / theirs.ms:.2f} (goal <= 0.75)")
    fused = by_name.get("ours rapo_loss_from_hidden (weight-dtype dW)")
    gemms = by_name.get("3 GEMMs alone (floor)")
    if fused and gemms:
        print(f"ours fused-linear / 3 GEMMs: {fused.ms / gemms.ms:.2f} (goal <= 1.10)")
    if args.sweep:
        rows += sweep_launch(x, device, args.warmup, args.iters)
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


def sweep_launch(x, device, warmup, iters) -> list[Row]:
    """Time `rapo_loss(inplace=True)` under a grid of launch settings (GPU tuning aid)."""
    from aesr1.triton_kernels import rapo_loss as kernels

    default = kernels.LAUNCH
    configs = [
        kernels.KernelLaunch(max_block_v=block, num_warps=warps, programs_per_sm=programs, num_stages=stages)
        for block in (2048, 4096, 8192)
        for warps in (4, 8, 16)
        for programs in (1, 2, 4, 64)
        for stages in (None, 2)
    ]
    ids, old, ref, adv, mask = x["ids"], x["old"], x["ref"], x["adv"], x["mask"]

    def run(s):
        loss = rapo_loss(s["logits"], ids, old, ref, adv, mask, beta=BETA, inplace=True)[0]
        loss.backward()
        return loss.detach()

    rows = []
    try:
        for config in tqdm(configs, desc="launch sweep", file=sys.stderr):
            kernels.LAUNCH = config
            try:
                ms, peak, loss = measure(
                    lambda: {"logits": x["logits"].clone().requires_grad_()}, run, device, warmup, iters
                )
                rows.append(Row("sweep", repr(config), ms, None if peak is None else peak / 1e9, loss))
            except Exception as error:
                rows.append(Row("sweep", repr(config), None, None, None, f"failed: {error}"[:120]))
    finally:
        kernels.LAUNCH = default
    print("\nlaunch sweep, fastest first:")
    for row in sorted((r for r in rows if r.ms is not None), key=lambda r: r.ms)[:12]:
        print(f"  {row.ms:8.3f} ms  {row.method}")
    return rows


if __name__ == "__main__":
    main()
