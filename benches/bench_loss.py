"""Benchmark of the RAPO policy loss: forward + backward time and peak extra memory, beside the floor.

    python benches/bench_loss.py                     # B=8, T=1024, V=151,936, bf16, H=3584 (a GPU)
    python benches/bench_loss.py --sweep             # also the launch sweep of the in-place kernel
    python benches/bench_loss.py --rows rows.jsonl   # append each row the moment it is measured
    python benches/bench_loss.py --json out.json     # also write all rows at the end
    TRITON_INTERPRET=1 python benches/bench_loss.py --smoke   # tiny shapes on CPU, kernels interpreted

Methods on materialised logits: eager PyTorch (fp32 autograd through log_softmax), torch.compile of
it, Liger-Kernel's `triton_grpo_loss` (in place), and `aesr1.loss.rapo_loss` in and out of place on
its Triton backend, plus in place on its torch backend (the CPU path, for comparison). From the
last hidden states and the lm_head weight: the three GEMMs alone, GEMM + Liger, GEMM + ours,
`LigerFusedLinearGRPOLoss`, and `aesr1.loss.rapo_loss_from_hidden` (dW summed in bf16, and in fp32).
Liger rows need `liger_kernel` 0.8.5 (benches/gpu/pins.txt) and a GPU. Every method gets the same
inputs and Eq. 10 aggregation, so their losses agree; ours must agree with eager's (else "failed").

Our Triton rows ask for backend="triton" explicitly. When the kernels cannot run compiled here
(Triton missing, CPU tensors without TRITON_INTERPRET=1, or interpreted kernels on a GPU) those rows
are "fallback" rows without figures: a torch-backend time is never reported as the kernel's.

`--sweep`: the in-place kernel under `aesr1.triton_kernels.rapo_loss.LAUNCH` settings, persistent
programs per SM in {1, 2, 4} x software-pipelining stages in {Triton's default, 2, 3, 4}.

Time: median over iterations of CUDA events around forward + backward (wall clock on CPU). Peak
extra memory: the allocator's peak during forward + backward minus what was allocated before it
(inputs, logits included), so gradients produced count as extra. Fresh leaf tensors are made before
each iteration, outside the timed region, because in-place methods consume their logits.

Floor of each row (figures `floor_ms`, `floor_ratio` = ms / floor_ms): on logits, the fewest bytes
(read the logits once, write their gradient once: 2 x element size per logit) over the H200's
device-to-device copy bandwidth, 4.3 TB/s as measured on an H200 of this workplace (the datasheet's
HBM3e figure is 4.8 TB/s); from hidden states, the 3 GEMMs' FLOPs (6 N H V) over the bf16 matrix
rate measured there, 790 TFLOP/s. On a GPU the run also measures both ceilings itself (rows
"device copy bandwidth" and "device bf16 matmul"), printed beside.

Rows (benches/gpu/rowlog.py): bench "loss", name "<group>: <method>", figures ms, peak_extra_gb,
loss, loss_rel_diff (vs eager), floor_ms, floor_ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from rowlog import RowLog, peer_missing_status  # noqa: E402

from aesr1.loss import rapo_loss, rapo_loss_from_hidden, token_logprobs  # noqa: E402

EPS_LOW, EPS_HIGH, BETA, TEMPERATURE = 0.2, 0.28, 0.01, 1.0
#: bytes/s, device-to-device copy (bytes read + written) measured on an H200 of this workplace
H200_COPY_BANDWIDTH = 4.3e12
#: bytes/s, the H200 datasheet's HBM3e bandwidth
H200_DATASHEET_BANDWIDTH = 4.8e12
#: FLOP/s, 8192^3 bf16 matrix product on random data measured there (769-798)
H200_BF16_MATMUL = 790e12
#: |ours - eager| <= LOSS_ATOL + LOSS_RTOL |eager|, else our row is "failed"
LOSS_ATOL, LOSS_RTOL = 1e-4, 1e-3
SWEEP_PROGRAMS = (1, 2, 4)
SWEEP_STAGES = (None, 2, 3, 4)


@dataclass
class Method:
    group: str  # "logits" | "hidden"
    name: str
    setup: object
    run: object
    kind: str = "other"  # "ours" (our Triton kernels), "ours-torch", "liger", "reference", "other"

    @property
    def label(self) -> str:
        return f"{self.group}: {self.name}"


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
        logp = token_logprobs(logits_full[:, :seq_len].contiguous(), ids, TEMPERATURE, backend="torch")
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


def _backward(loss):
    loss.backward()
    return loss.detach()


def _liger_grpo(grpo, logits, x):
    return grpo(
        logits, x["old"], x["ref"], x["ids"], x["adv"], x["mask"].to(torch.int32), temperature=TEMPERATURE,
        beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, inplace=True, loss_type="grpo", reduce=True,
    )[0]  # fmt: skip


def methods(x, liger) -> list[Method]:
    """Every method, in the order they run: the headline rows first, torch.compile (slow to compile) last."""
    ids, old, ref, adv, mask = x["ids"], x["old"], x["ref"], x["adv"], x["mask"]
    seq_len = ids.shape[1]

    def leaf(name):
        return lambda: {"logits": x[name].clone().requires_grad_()}

    def leaves(full: bool):
        def setup():
            hidden = x["hidden"] if full else x["hidden"][:, :seq_len].contiguous()
            return {"hidden": hidden.clone().requires_grad_(), "weight": x["weight"].clone().requires_grad_()}

        return setup

    def ours_logits(inplace, backend):
        return lambda s: _backward(
            rapo_loss(s["logits"], ids, old, ref, adv, mask, beta=BETA, inplace=inplace, backend=backend)[0]
        )

    def three_gemms(s):
        h, w = s["hidden"].detach(), s["weight"].detach()
        rows = h.reshape(-1, h.shape[-1])
        logits = rows @ w.t()
        grad_hidden = logits @ w  # noqa: F841  (timed work)
        grad_weight = logits.t() @ rows  # noqa: F841
        return None

    def gemm_then(loss_fn):
        def run(s):
            return _backward(loss_fn(s["hidden"] @ s["weight"].t()))

        return run

    def ours_hidden(acc):
        def run(s):
            loss, _ = rapo_loss_from_hidden(s["hidden"], s["weight"], ids, old, ref, adv, mask, beta=BETA,
                                            weight_grad_dtype=acc, backend="triton")  # fmt: skip
            return _backward(loss)

        return run

    def liger_fused(s):
        out = liger["fused"](s["hidden"], s["weight"], ids, mask.to(torch.int64), adv, ref_per_token_logps=ref,
                             old_per_token_logps=old)  # fmt: skip
        return _backward(out[0] if isinstance(out, tuple) else out)

    grpo = liger["triton_grpo_loss"] if liger else None
    compiled = torch.compile(eager_rapo)
    return [
        Method("logits", "eager PyTorch (fp32 autograd)", leaf("logits"),
               lambda s: _backward(eager_rapo(s["logits"], ids, old, ref, adv, mask)), "reference"),
        Method("logits", "ours rapo_loss (in place) [triton]", leaf("logits"), ours_logits(True, "triton"), "ours"),
        Method("logits", "Liger triton_grpo_loss (in place)", leaf("logits_full"),
               lambda s: _backward(_liger_grpo(grpo, s["logits"], x)), "liger"),
        Method("logits", "ours rapo_loss (out of place) [triton]", leaf("logits"), ours_logits(False, "triton"), "ours"),
        Method("logits", "ours rapo_loss (in place) [torch backend]", leaf("logits"), ours_logits(True, "torch"),
               "ours-torch"),
        Method("hidden", "3 GEMMs alone", leaves(False), three_gemms),
        Method("hidden", "ours rapo_loss_from_hidden (weight-dtype dW) [triton]", leaves(False), ours_hidden(None),
               "ours"),
        Method("hidden", "Liger LigerFusedLinearGRPOLoss", leaves(False), liger_fused, "liger"),
        Method("hidden", "GEMM + ours rapo_loss (in place) [triton]", leaves(False),
               gemm_then(lambda logits: rapo_loss(logits, ids, old, ref, adv, mask, beta=BETA, inplace=True,
                                                  backend="triton")[0]), "ours"),
        Method("hidden", "GEMM + Liger triton_grpo_loss", leaves(True),
               gemm_then(lambda logits: _liger_grpo(grpo, logits, x)), "liger"),
        Method("hidden", "ours rapo_loss_from_hidden (fp32 dW) [triton]", leaves(False),
               ours_hidden(torch.float32), "ours"),
        Method("logits", "torch.compile(eager)", leaf("logits"),
               lambda s: _backward(compiled(s["logits"], ids, old, ref, adv, mask))),
    ]  # fmt: skip


def load_liger(device):
    """({...} or None, why not): Liger's two GRPO losses when installed and on a GPU."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except ImportError as error:
        return None, f"liger-kernel not installed ({error})"
    if device.type != "cuda":
        return None, "Liger's kernels need a CUDA device"
    fused = LigerFusedLinearGRPOLoss(beta=BETA, epsilon_low=EPS_LOW, epsilon_high=EPS_HIGH, loss_type="grpo",
                                     temperature=TEMPERATURE, use_ref_model=True)  # fmt: skip
    return {"triton_grpo_loss": triton_grpo_loss, "fused": fused}, ""


def triton_problem(device) -> str | None:
    """Why our Triton kernels would not run compiled on `device` in this process (None: they do)."""
    try:
        from aesr1.triton_kernels import rapo_loss as kernels
        from aesr1.triton_kernels._launch import kernels_interpreted, triton_available
    except ImportError as error:
        return f"aesr1's Triton kernels do not import ({error})"
    if not triton_available():
        return "Triton is not installed: the loss would run on its torch backend"
    if not kernels.triton_runs_on(device):
        return f"Triton kernels cannot take {device.type} tensors in this process (TRITON_INTERPRET unset)"
    kernel = getattr(kernels, "_RAPO_TOKEN_KERNEL", None)
    if device.type == "cuda" and kernel is not None and kernels_interpreted(kernel):
        return "the kernels run in Triton's CPU interpreter on CUDA tensors (TRITON_INTERPRET is set)"
    return None


def floor_ms(group: str, batch: int, seq_len: int, vocab: int, hidden: int, element: int) -> float:
    """The H200 floor of one forward + backward (module docstring)."""
    if group == "logits":
        return 2 * element * batch * seq_len * vocab / H200_COPY_BANDWIDTH * 1e3
    flops = 3 * 2 * batch * seq_len * hidden * vocab
    return flops / H200_BF16_MATMUL * 1e3


def device_ceilings(log: RowLog, device) -> None:
    """This GPU's device-to-device copy bandwidth and bf16 matrix rate (two short measurements)."""
    if device.type != "cuda":
        log.emit("device copy bandwidth", "skipped", note="measured on a GPU only")
        return
    try:
        from triton.testing import do_bench

        def copy_ms(n=2**30):  # 4 GiB of fp32, far past the L2
            source = torch.randn(n, device=device, dtype=torch.float32)
            target = torch.empty_like(source)
            return do_bench(lambda: target.copy_(source), warmup=25, rep=100, return_mode="median"), 2 * n * 4

        def matmul_ms(n=8192):
            a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            return do_bench(lambda: a @ b, warmup=25, rep=100, return_mode="median"), 2 * n**3

        ms, moved = copy_ms()
        log.emit("device copy bandwidth", "ok", {"ms": ms, "tb_per_s": moved / (ms / 1e3) / 1e12},
                 note="4 GiB device-to-device copy, bytes read + written, median of do_bench")  # fmt: skip
        torch.cuda.empty_cache()
        ms, flops = matmul_ms()
        log.emit("device bf16 matmul", "ok", {"ms": ms, "tflop_per_s": flops / (ms / 1e3) / 1e12},
                 note="8192^3 on random data, median of do_bench")  # fmt: skip
        torch.cuda.empty_cache()
    except Exception as error:  # noqa: BLE001  (a failed measurement must not stop the benchmark)
        log.emit("device ceilings", "failed", note=f"{type(error).__name__}: {error}"[:300])


def sweep_launch(x, device, warmup, iters, log: RowLog, problem: str | None, floor: float) -> None:
    """Time `rapo_loss(inplace=True)` under KernelLaunch settings, one row each as it is measured."""
    from aesr1.triton_kernels import rapo_loss as kernels

    default = kernels.LAUNCH
    ids, old, ref, adv, mask = x["ids"], x["old"], x["ref"], x["adv"], x["mask"]

    def run(s):
        return _backward(rapo_loss(s["logits"], ids, old, ref, adv, mask, beta=BETA, inplace=True,
                                   backend="triton")[0])  # fmt: skip

    results = []
    try:
        for programs in SWEEP_PROGRAMS:
            for stages in SWEEP_STAGES:
                config = kernels.KernelLaunch(max_block_v=default.max_block_v, num_warps=default.num_warps,
                                              programs_per_sm=programs, num_stages=stages)  # fmt: skip
                name = f"sweep: programs_per_sm={programs}, num_stages={stages or 'default'}"
                if problem:
                    log.emit(name, "fallback", note=problem)
                    continue
                kernels.LAUNCH = config
                try:
                    ms, peak, loss = measure(
                        lambda: {"logits": x["logits"].clone().requires_grad_()}, run, device, warmup, iters
                    )
                except Exception as error:  # noqa: BLE001
                    log.emit(name, "failed", note=f"{type(error).__name__}: {error}"[:300])
                    continue
                note = f"{config!r}" + (
                    "; the interpreter ignores launch settings" if device.type != "cuda" else ""
                )
                log.emit(name, "ok", {"ms": ms, "loss": loss, "floor_ms": floor, "floor_ratio": ms / floor,
                                      "peak_extra_gb": None if peak is None else peak / 1e9}, note)  # fmt: skip
                results.append((ms, name))
    finally:
        kernels.LAUNCH = default
    if results:
        print("\nlaunch sweep, fastest first:")
        for ms, name in sorted(results):
            print(f"  {ms:8.3f} ms  ({ms / floor:5.2f} x floor)  {name}")


def main(argv=None) -> list[dict]:
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
    parser.add_argument("--sweep", action="store_true", help="also the launch sweep of the in-place kernel")
    parser.add_argument(
        "--rows", type=Path, help="append each row here as JSON lines (benches/gpu/rowlog.py)"
    )
    parser.add_argument("--json", type=Path, help="write every row and the environment here at the end")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.seq_len, args.vocab, args.hidden = 2, 8, 1031, 64
        args.iters, args.warmup = 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    device_label = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    shape = dict(
        batch=args.batch, seq_len=args.seq_len, vocab=args.vocab, hidden=args.hidden, dtype=args.dtype
    )
    print(f"device: {device_label}  torch {torch.__version__}  shape {shape}", flush=True)
    log = RowLog(args.rows, "loss", device_label)
    problem = triton_problem(device)
    if problem:
        print(f"our Triton rows are fallbacks: {problem}", flush=True)
    liger, why_not = load_liger(device)
    device_ceilings(log, device)
    x = make_inputs(args.batch, args.seq_len, args.vocab, args.hidden, dtype, device)
    element = torch.tensor([], dtype=dtype).element_size()
    floors = {group: floor_ms(group, args.batch, args.seq_len, args.vocab, args.hidden, element)
              for group in ("logits", "hidden")}  # fmt: skip
    reference_loss = None
    measured: dict[str, float] = {}
    for method in methods(x, liger):
        if any(s in method.name for s in args.skip):
            log.emit(method.label, "skipped", note="--skip")
            continue
        if method.kind == "liger" and liger is None:
            status = "skipped" if "CUDA" in why_not else peer_missing_status(device.type)
            log.emit(method.label, status, note=why_not)
            continue
        if method.kind == "ours" and problem:
            log.emit(method.label, "fallback", note=problem)
            continue
        try:
            ms, peak, loss = measure(method.setup, method.run, device, args.warmup, args.iters)
        except Exception as error:  # noqa: BLE001  (a failing method must not hide the other rows)
            log.emit(method.label, "failed", note=f"{type(error).__name__}: {error}"[:300])
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        floor = floors[method.group]
        figures = {"ms": ms, "peak_extra_gb": None if peak is None else peak / 1e9, "loss": loss,
                   "floor_ms": floor, "floor_ratio": ms / floor}  # fmt: skip
        note, status = "", "ok"
        if method.kind == "reference":
            reference_loss = loss
        if loss is not None and reference_loss is not None and method.kind != "reference":
            difference = abs(loss - reference_loss)
            figures["loss_rel_diff"] = difference / max(abs(reference_loss), 1e-12)
            if method.kind.startswith("ours") and difference > LOSS_ATOL + LOSS_RTOL * abs(reference_loss):
                status, note = "failed", f"loss {loss:.6g} differs from eager's {reference_loss:.6g}"
        if status == "ok":
            measured[method.label] = ms
        log.emit(method.label, status, figures, note)

    # Ratios against the goals (rows too, so that they survive in rows.jsonl)
    def ratio_row(name, numerator, denominator, goal):
        if numerator in measured and denominator in measured:
            value = measured[numerator] / measured[denominator]
            log.emit(name, "ok", {"ratio": value, "goal_max": goal},
                     note=f"{numerator} / {denominator}; goal <= {goal}: {'met' if value <= goal else 'NOT met'}")  # fmt: skip
        else:
            log.emit(name, "skipped", note=f"needs ok rows '{numerator}' and '{denominator}'")

    ratio_row("ratio: ours / Liger (logits, in place)", "logits: ours rapo_loss (in place) [triton]",
              "logits: Liger triton_grpo_loss (in place)", 0.75)  # fmt: skip
    ratio_row("ratio: fused-linear / 3 GEMMs", "hidden: ours rapo_loss_from_hidden (weight-dtype dW) [triton]",
              "hidden: 3 GEMMs alone", 1.10)  # fmt: skip
    if args.sweep:
        sweep_launch(x, device, args.warmup, args.iters, log, problem, floors["logits"])

    print(f"\n{'row':66s} {'fwd+bwd ms':>11s} {'x floor':>8s} {'peak +GB':>9s} {'loss':>11s}")

    def fmt(figures, key, spec):
        return "-" if figures.get(key) is None else format(figures[key], spec)

    for row in log.rows:
        f = row["figures"]
        status = "" if row["status"] == "ok" else f"{row['status'].upper()}: "
        status += row["note"][:90] if row["status"] != "ok" or row["name"].startswith("ratio") else ""
        print(f"{row['name'][:66]:66s} {fmt(f, 'ms', '.3f'):>11s} {fmt(f, 'floor_ratio', '.2f'):>8s} "
              f"{fmt(f, 'peak_extra_gb', '.2f'):>9s} {fmt(f, 'loss', '.6f'):>11s}  {status}")  # fmt: skip
    print(f"\nfloors on the H200 (not this device unless it is one): logits {floors['logits']:.3g} ms "
          f"= {2 * element} B/logit over {H200_COPY_BANDWIDTH / 1e12:.1f} TB/s (copy measured on an H200 here; "
          f"datasheet {H200_DATASHEET_BANDWIDTH / 1e12:.1f} TB/s); hidden {floors['hidden']:.3g} ms = 3 GEMMs "
          f"over {H200_BF16_MATMUL / 1e12:.0f} TFLOP/s bf16")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"device": device_label, "torch": torch.__version__, "shape": shape,
                                         "rows": log.rows}, indent=2))  # fmt: skip
    if log.failures():
        raise SystemExit(1)
    return log.rows


if __name__ == "__main__":
    main()
