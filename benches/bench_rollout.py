"""Benchmark of rollout sampling: transformers `generate` vs the static-cache decode engine.

    python benches/bench_rollout.py                    # the GPU workload (below), every method in one run
    python benches/bench_rollout.py --smoke            # tiny config on CPU (or any device)
    python benches/bench_rollout.py --greedy-check 64  # also compare greedy tokens, engine vs generate
    python benches/bench_rollout.py --rows rows.jsonl  # append each row the moment it is measured
    python benches/bench_rollout.py --json out.json    # also write the report at the end

Workload: a random-initialised Qwen2.5-VL-3B built from its configuration (no download), bf16,
32 sequences x (256 prompt + 512 new tokens); each prompt holds one 224x224 image (64 visual
tokens after the patch merger) between random text tokens. EOS is an id outside the vocabulary, so
every method produces exactly 32 x 512 tokens. Sampling: temperature 1, no top-k/top-p (RAPO's
defaults).

Methods (run in the order given by --methods): `generate` with the dynamic cache (what trl uses by
default), `generate` with `cache_implementation="static"` timed after a warm-up call (transformers
compiles the forward), the engine with CUDA graphs timed after a warm-up call (captures), the
engine with its step also compiled by inductor (`engine-compile`, full workload only) and the
engine without graphs. The greedy check runs before the methods that compile (they take longest).
Time: wall clock around the whole call after `torch.cuda.synchronize` (prefill included), so
ms/step = total / new tokens per sequence; the engine also reports its decode-only ms/step.
Memory: the allocator's peak during the timed call (weights included) and its excess over what was
allocated before the call.

A GPU engine row whose decode ran without the CUDA graphs it asked for is a "fallback" row without
figures; on CPU the engine runs eagerly by design (its rows say so). The greedy check fails when a
row diverges at a position where `generate`'s two candidates are more than GREEDY_TIE_LOGITS apart
(a divergence at a near-tie is numerics, one beyond it a bug).

Rows (benches/gpu/rowlog.py): bench "rollout", name = the method, figures total_s, tokens_per_s,
ms_per_step, decode_ms_per_step, peak_gb, peak_extra_gb, new_tokens; "greedy check" (identical_rows,
rows, steps, max_top2_gap); "ratio: generate-dynamic / engine" (speedup).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from rowlog import RowLog  # noqa: E402

from aesr1.rollout import DecodeEngine, EngineOptions, SamplingParams  # noqa: E402

METHODS = ("generate-dynamic", "generate-static", "engine", "engine-eager")
#: also run by default on the full workload (compiling takes minutes on CPU for nothing to learn)
FULL_ONLY = ("engine-compile",)
#: methods whose warm-up compiles (minutes on a 3B model): after the greedy check
COMPILING = ("generate-static", "engine-compile")
#: logits; a greedy divergence where generate's top-2 gap exceeds this is a failure
GREEDY_TIE_LOGITS = 0.25


@dataclass
class Workload:
    rows: int
    prompt_length: int
    new_tokens: int
    image_side: int
    dtype: str
    size: str


FULL = Workload(rows=32, prompt_length=256, new_tokens=512, image_side=224, dtype="bfloat16", size="3b")
SMOKE = Workload(rows=4, prompt_length=40, new_tokens=12, image_side=56, dtype="float32", size="tiny")


@dataclass
class Row:
    method: str
    total_s: float
    tokens_per_s: float
    ms_per_step: float
    decode_ms_per_step: float | None
    peak_gb: float | None
    peak_extra_gb: float | None
    new_tokens: int
    note: str = ""


def model_config(size: str):
    """Qwen2.5-VL-3B-Instruct's published sizes and special ids ("3b"), or a tiny model ("tiny")."""
    from transformers import Qwen2_5_VLConfig

    ids = dict(bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    vision_ids = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)  # fmt: skip
    if size == "3b":
        text = dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=11008,
            num_hidden_layers=36,
            num_attention_heads=16,
            num_key_value_heads=2,
            max_position_embeddings=128000,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        )
        vision = dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=2048,
            fullatt_block_indexes=[7, 15, 23, 31],
            window_size=112,
            tokens_per_second=2,
        )
    elif size == "tiny":
        # a small vocabulary too: on CPU the lm_head and the sampling over 152k ids dominate a step
        ids = dict(bos_token_id=2000, eos_token_id=2001, pad_token_id=2000)
        vision_ids = dict(image_token_id=2002, video_token_id=2003, vision_start_token_id=2004,
                          vision_end_token_id=2005)  # fmt: skip
        text = dict(
            vocab_size=2048,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            fullatt_block_indexes=[1],
            window_size=112,
        )
    else:
        raise ValueError(f"size must be '3b' or 'tiny', got {size!r}")
    return Qwen2_5_VLConfig(
        text_config={**text, **ids}, vision_config=vision, **vision_ids, **ids
    )  # fmt: skip


def synthetic_prompts(config, workload: Workload, device, dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prompt batch of `workload.rows` rows: random text, one image (random pixels), random text."""
    generator = torch.Generator().manual_seed(seed)
    patch, merge, temporal = 14, 2, 2
    grid = workload.image_side // patch
    image_tokens = grid * grid // (merge * merge)
    text_tokens = workload.prompt_length - image_tokens - 2
    if text_tokens < 2:
        raise ValueError("prompt_length too short for the image")
    before = text_tokens // 2
    rows = []
    for _ in range(workload.rows):
        bos = config.get_text_config().bos_token_id  # not on 5.17's top-level config
        text = torch.randint(0, min(bos, 151000), (text_tokens,), generator=generator)
        rows.append(torch.cat([
            text[:before], torch.tensor([config.vision_start_token_id]),
            torch.full((image_tokens,), config.image_token_id), torch.tensor([config.vision_end_token_id]),
            text[before:],
        ]))  # fmt: skip
    input_ids = torch.stack(rows)
    pixel_values = torch.randn(workload.rows * grid * grid, 3 * temporal * patch * patch, generator=generator)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "mm_token_type_ids": (input_ids == config.image_token_id).long().to(device),
        "pixel_values": pixel_values.to(device, dtype),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * workload.rows).to(device),
    }


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measured(device, call):
    """(result, seconds, peak GB, peak excess GB) of `call()`."""
    synchronize(device)
    before = peak = extra = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    result = call()
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        extra = (peak - before) / 1e9
        peak = peak / 1e9
    return result, seconds, peak, extra


def run_generate(model, inputs, workload: Workload, never: int, pad: int, static: bool):
    kwargs = dict(max_new_tokens=workload.new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                  eos_token_id=never, pad_token_id=pad)  # fmt: skip
    if static:
        kwargs["cache_implementation"] = "static"
    with torch.no_grad():
        return model.generate(**inputs, **kwargs)


def run_engine(engine: DecodeEngine, inputs, workload: Workload, never: int, pad: int, seed: int):
    return engine.decode(inputs, SamplingParams(), max_new_tokens=workload.new_tokens, eos_token_id=never,
                         pad_token_id=pad, seed=seed)  # fmt: skip


def measure_method(model, inputs, workload: Workload, method: str, device) -> tuple[Row, str | None]:
    """One method's row (warm-up call, then the timed call) and, for an engine that ran without the
    CUDA graphs it asked for on a GPU, why it is a fallback."""
    never = model.config.get_text_config().vocab_size  # an id no method can produce: no early EOS
    pad = model.config.get_text_config().pad_token_id
    fallback = None
    if method.startswith("generate"):
        static = method == "generate-static"

        def call(static=static):
            return run_generate(model, inputs, workload, never, pad, static)

        call()  # warm-up: CUDA/cuBLAS initialisation, and the compilation of the static-cache forward
        output, seconds, peak, extra = measured(device, call)
        new = int(output.shape[1] - inputs["input_ids"].shape[1]) * output.shape[0]
        decode_ms, note = None, "timed after a warm-up call" if static else ""
    else:
        wants_graphs = method != "engine-eager"
        options = EngineOptions(cuda_graphs=wants_graphs, compile=method == "engine-compile")
        engine = DecodeEngine(model, options)
        run_engine(engine, inputs, workload, never, pad, seed=0)  # warm-up: buffers, graph capture
        result, seconds, peak, extra = measured(
            device, lambda e=engine: run_engine(e, inputs, workload, never, pad, 1)
        )
        new = int(result.completion_mask.sum())
        stats = result.stats
        decode_ms = 1e3 * stats["decode_s"] / max(stats["decode_steps"], 1)
        graphs = bool(stats.get("cuda_graphs"))
        note = f"prefill {stats['prefill_s'] * 1e3:.0f} ms, cuda_graphs={graphs}"
        if device.type != "cuda":
            note += " (CPU: the engine runs eagerly, CUDA graphs need a GPU)"
        elif wants_graphs and not graphs:
            fallback = "the engine decoded without CUDA graphs on a GPU (it asked for them)"
        del engine
    per_row = new / workload.rows
    row = Row(method, seconds, new / seconds, 1e3 * seconds / per_row, decode_ms, peak, extra, new, note)
    return row, fallback


def bench(model, inputs, workload: Workload, methods, device, log: RowLog, greedy_steps: int = 0) -> dict:
    """Every method (and the greedy check before the compiling ones), one row each as it is measured."""
    rows: list[Row] = []
    report: dict = {}
    plan = [m for m in methods if m not in COMPILING]
    if greedy_steps:
        plan.append("greedy-check")
    plan += [m for m in methods if m in COMPILING]
    for method in tqdm(plan, desc="methods", unit="method"):
        try:
            if method == "greedy-check":
                check = greedy_check(model, inputs, greedy_steps, device)
                report["greedy_check"] = check
                emit_greedy(log, check)
                continue
            row, fallback = measure_method(model, inputs, workload, method, device)
        except Exception as error:  # noqa: BLE001  (a failing method must not hide the other rows)
            log.emit(method, "failed", note=f"{type(error).__name__}: {error}"[:400])
            continue
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        figures = {k: v for k, v in asdict(row).items() if k not in ("method", "note")}
        if fallback:
            log.emit(method, "fallback", note=f"{fallback}; {row.note}")
        else:
            rows.append(row)
            log.emit(method, "ok", figures, row.note)
    by_method = {r.method: r for r in rows}
    if "generate-dynamic" in by_method and "engine" in by_method:
        speedup = by_method["generate-dynamic"].ms_per_step / by_method["engine"].ms_per_step
        log.emit("ratio: generate-dynamic / engine", "ok", {"speedup": speedup},
                 note=f"ms/step of generate (dynamic cache) over the engine's: {speedup:.2f}x")  # fmt: skip
    elif "generate-dynamic" in methods and "engine" in methods:
        log.emit("ratio: generate-dynamic / engine", "skipped", note="needs ok rows of both")
    report["rows"] = rows
    return report


def emit_greedy(log: RowLog, check: dict) -> None:
    worst = max([abs(d["logit_gap"]) for d in check["divergences"]], default=0.0)
    figures = {"identical_rows": check["identical_rows"], "rows": check["rows"], "steps": check["steps"],
               "max_abs_logit_gap": worst}  # fmt: skip
    note = "; ".join(f"row {d['row']} step {d['step']}: logit gap {d['logit_gap']:.3g} (top-2 gap {d['top2_gap']:.3g})"
                     for d in check["divergences"])[:400]  # fmt: skip
    if worst > GREEDY_TIE_LOGITS:
        log.emit(
            "greedy check",
            "failed",
            note=f"a divergence beyond a near-tie ({GREEDY_TIE_LOGITS} logits): {note}",
        )
    else:
        log.emit("greedy check", "ok", figures, note or "identical greedy tokens")


def greedy_check(model, inputs, steps: int, device) -> dict:
    """Greedy tokens of the engine vs `generate`; each divergence with the logit gap that explains it
    (the two candidates' logits at the first differing position, from `generate`'s prefix)."""
    never = model.config.get_text_config().vocab_size
    pad = model.config.get_text_config().pad_token_id
    with torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=steps, do_sample=False, temperature=None, top_p=None,
                                   top_k=None, eos_token_id=never, pad_token_id=pad)  # fmt: skip
    prompt_length = inputs["input_ids"].shape[1]
    reference = reference[:, prompt_length:]
    ours = DecodeEngine(model).decode(inputs, SamplingParams(do_sample=False), max_new_tokens=steps,
                                      eos_token_id=never, pad_token_id=pad).completion_ids  # fmt: skip
    divergences = []
    for row in range(reference.shape[0]):
        differ = (reference[row] != ours[row]).nonzero()
        if differ.numel() == 0:
            continue
        step = int(differ[0])
        single = {k: (v[row : row + 1] if k != "pixel_values" else v) for k, v in inputs.items()}
        patches = int(inputs["image_grid_thw"][row].prod())
        single["pixel_values"] = inputs["pixel_values"][row * patches : (row + 1) * patches]
        single["input_ids"] = torch.cat([single["input_ids"], reference[row : row + 1, :step]], dim=1)
        single["attention_mask"] = torch.ones_like(single["input_ids"])
        single["mm_token_type_ids"] = torch.cat(
            [single["mm_token_type_ids"], torch.zeros_like(reference[row : row + 1, :step])], dim=1
        )
        with torch.no_grad():
            logits = model(**single, logits_to_keep=1).logits[0, -1].float()
        top2 = torch.topk(logits, 2).values
        divergences.append(dict(
            row=row, step=step, generate_token=int(reference[row, step]), engine_token=int(ours[row, step]),
            logit_gap=float(logits[reference[row, step]] - logits[ours[row, step]]),
            top2_gap=float(top2[0] - top2[1]),
        ))  # fmt: skip
    return {"rows": reference.shape[0], "identical_rows": reference.shape[0] - len(divergences), "steps": steps,
            "divergences": divergences}  # fmt: skip


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny config, 4 x (40 + 12) tokens, fp32")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {METHODS + FULL_ONLY}, run in this order (default: all; {FULL_ONLY} not with --smoke)")  # fmt: skip
    parser.add_argument(
        "--sequences", type=int, default=None, help="sequences per call (default 32; --smoke 4)"
    )
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--greedy-check", type=int, default=0, metavar="STEPS",
                        help="also compare STEPS greedy tokens of the engine and generate")  # fmt: skip
    parser.add_argument("--rows", type=Path, default=None, help="append each row here as JSON lines (benches/gpu/rowlog.py)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the report here at the end")
    args = parser.parse_args(argv)
    default = METHODS if args.smoke else METHODS + FULL_ONLY
    methods = [m.strip() for m in (args.methods or ",".join(default)).split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS + FULL_ONLY))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS + FULL_ONLY}")
    workload = SMOKE if args.smoke else FULL
    if args.sequences or args.new_tokens:
        workload = Workload(**{**asdict(workload), "rows": args.sequences or workload.rows,
                               "new_tokens": args.new_tokens or workload.new_tokens})  # fmt: skip
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.smoke and device.type != "cuda":
        print("the full workload needs a GPU; use --smoke on CPU", file=sys.stderr)
        raise SystemExit(2)
    dtype = getattr(torch, workload.dtype)
    log = RowLog(args.rows, "rollout", device_name(device))

    from transformers import Qwen2_5_VLForConditionalGeneration

    config = model_config(workload.size)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    inputs = synthetic_prompts(config, workload, device, dtype)
    measured_report = bench(model, inputs, workload, methods, device, log, args.greedy_check)
    rows = sorted(measured_report["rows"], key=lambda r: methods.index(r.method))
    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "workload": asdict(workload),
        "rows": [asdict(r) for r in rows],
        "failed": [{"method": r["name"], "status": r["status"], "note": r["note"]} for r in log.failures()],
    }
    if "greedy_check" in measured_report:
        report["greedy_check"] = measured_report["greedy_check"]
    print(f"\n{report['device']}, torch {report['torch']}, transformers {report['transformers']}")
    print(f"workload: {workload.rows} x ({workload.prompt_length} prompt + {workload.new_tokens} new), "
          f"{workload.dtype}, Qwen2.5-VL {workload.size} (random init)")  # fmt: skip
    header = f"{'method':<18}{'total s':>9}{'tok/s':>10}{'ms/step':>9}{'decode ms/step':>16}{'peak GB':>9}{'+GB':>7}  note"
    print(header)
    for r in rows:
        decode = f"{r.decode_ms_per_step:.2f}" if r.decode_ms_per_step is not None else "-"
        peak = f"{r.peak_gb:.2f}" if r.peak_gb is not None else "-"
        extra = f"{r.peak_extra_gb:.2f}" if r.peak_extra_gb is not None else "-"
        print(
            f"{r.method:<18}{r.total_s:>9.2f}{r.tokens_per_s:>10.0f}{r.ms_per_step:>9.2f}{decode:>16}{peak:>9}{extra:>7}  {r.note}"
        )
    for failure in report["failed"]:
        print(f"{failure['method']:<18}{failure['status'].upper():>9}  {failure['note'][:200]}")
    if "greedy_check" in report:
        check = report["greedy_check"]
        print(
            f"greedy check: {check['identical_rows']}/{check['rows']} rows identical over {check['steps']} steps"
        )
        for d in check["divergences"]:
            print(f"  row {d['row']} step {d['step']}: generate {d['generate_token']} vs engine {d['engine_token']}, "
                  f"logit gap {d['logit_gap']:.4g} (top-2 gap {d['top2_gap']:.4g})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if log.failures():
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
