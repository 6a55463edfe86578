"""Build AesCoT cold-start data (generate, filter, balance), or check text for score leakage.

`aesr1 aescot` (or `python -m aesr1.aescot`) examples; each build writes DIR/aescot.jsonl and its
rejects, report and settings beside it::

    # the built-in synthetic dataset with the template expert and judge
    aesr1 aescot build --data synthetic --expert template --output-dir aescot-synthetic

    # GPT-4.1 (as in the paper) or any OpenAI-compatible server (vLLM, SGLang)
    export OPENAI_API_KEY=...
    aesr1 aescot build --data ava:/data/AVA --expert chat --expert-model gpt-4.1 \\
        --output-dir aescot3k --per-bin 1000 --concurrency 16 --rpm 500

    aesr1 aescot build --data scores.csv --expert chat --base-url http://localhost:8000/v1 \\
        --expert-model Qwen/Qwen2.5-VL-72B-Instruct --api-key-env '' --output-dir aescot

    # a local transformers checkpoint
    aesr1 aescot build --data synthetic --expert transformers --model ./ckpt --output-dir aescot-local

    aesr1 aescot check-leakage "A solid seven out of ten."
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aesr1._cli_alias import add_deprecated_alias
from aesr1.aescot.chat_client import ChatClient, ChatFatalError, EndpointConfig
from aesr1.aescot.experts import ChatExpert, LocalModel, TemplateExpert, TransformersExpert
from aesr1.aescot.judges import ChatJudge, TemplateJudge, TransformersJudge
from aesr1.aescot.leakage import find_leaks, leak_reason
from aesr1.aescot.pipeline import DEFAULT_PER_BIN, BuildConfig, build_dataset
from aesr1.aescot.store import OUTPUT_FILE_NAME, OutputPaths

PROG = "python -m aesr1.aescot"
DEFAULT_EXPERT_MODEL = "gpt-4.1"  # the paper's expert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _score_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 1,10), got {text!r}") from error
    if not hi > lo:
        raise argparse.ArgumentTypeError(f"need HI > LO, got {text!r}")
    return lo, hi


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("build", help="generate, filter and balance AesCoT data")
    data = build.add_argument_group("data and output")
    data.add_argument(
        "--data",
        required=True,
        help="dataset spec of aesr1.data (synthetic[:dir], ava:/data/AVA, csv:f.csv?range=1..10, ...) "
        "or a bare .csv/.jsonl file with image,score columns",
    )
    data.add_argument(
        "--split",
        default=None,
        choices=("train", "val", "test", "all"),
        help="dataset split (default: train for datasets, all for a bare score file)",
    )
    data.add_argument(
        "--score-range",
        type=_score_range,
        default=(0.0, 1.0),
        help="LO,HI of a bare score file's scores (default 0,1)",
    )
    data.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help=f"output folder: DIR/{OUTPUT_FILE_NAME} and its rejects, report and settings beside it "
        "(resumed when it exists)",
    )
    add_deprecated_alias(
        data,
        "--out",
        f"--output-dir DIR (writes DIR/{OUTPUT_FILE_NAME})",
        dest="out",
        type=Path,
        default=None,
    )
    data.add_argument(
        "--per-bin", type=_positive_int, default=DEFAULT_PER_BIN, help="kept items per bin (default 1000)"
    )
    for name in ("bad", "fair", "good"):
        data.add_argument(
            f"--{name}",
            type=_positive_int,
            default=None,
            help=f"target for the {name} bin (overrides --per-bin)",
        )
    data.add_argument("--seed", type=int, default=0, help="sampling-order seed (default 0)")
    data.add_argument("--concurrency", type=int, default=8, help="items in flight (default 8)")
    data.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="send at most this many items to the expert in this run",
    )
    data.add_argument("--overwrite", action="store_true", help="discard earlier output instead of resuming")
    data.add_argument(
        "--no-retry-failed", action="store_true", help="do not retry items that failed with errors before"
    )
    data.add_argument("--min-chars", type=int, default=80, help="drop shorter critiques (default 80)")
    data.add_argument("--max-chars", type=int, default=None, help="drop longer critiques")
    data.add_argument(
        "--max-consecutive-errors", type=int, default=50, help="stop after this many errors in a row"
    )
    data.add_argument("--no-progress", action="store_true", help="no progress bar")

    expert = build.add_argument_group("expert")
    expert.add_argument(
        "--expert",
        required=True,
        choices=("chat", "openai", "transformers", "template"),
        help="chat/openai: OpenAI-compatible endpoint; transformers: local VLM; template: synthetic data",
    )
    expert.add_argument(
        "--no-dimensions", action="store_true", help="Appendix B prompt without the Table 5 dimensions"
    )
    expert.add_argument("--temperature", type=float, default=None, help="expert sampling temperature")

    chat = build.add_argument_group("chat-completions endpoint (--expert chat / --judge chat)")
    chat.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
        help="API root, e.g. http://localhost:8000/v1 (default $OPENAI_BASE_URL or OpenAI)",
    )
    chat.add_argument(
        "--expert-model",
        default=None,
        help=f"the endpoint's model name (default {DEFAULT_EXPERT_MODEL}, the paper's expert)",
    )
    chat.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="env var holding the API key ('' for none)"
    )
    chat.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    chat.add_argument("--max-retries", type=int, default=6, help="retries on 429/5xx/timeouts (default 6)")
    chat.add_argument("--backoff", type=float, default=1.0, help="initial backoff seconds (default 1)")
    chat.add_argument("--backoff-max", type=float, default=60.0, help="backoff cap in seconds (default 60)")
    chat.add_argument(
        "--rpm", type=float, default=None, help="requests per minute (token bucket; default unlimited)"
    )
    chat.add_argument("--max-tokens", type=int, default=1024, help="expert completion cap (default 1024)")
    chat.add_argument(
        "--max-tokens-field", default="max_tokens", choices=("max_tokens", "max_completion_tokens")
    )
    chat.add_argument("--image-detail", default=None, choices=("low", "high", "auto"))
    chat.add_argument(
        "--max-image-side", type=int, default=None, help="downscale larger images before sending"
    )
    chat.add_argument(
        "--extra-body",
        type=_json_object,
        default={},
        help="JSON object merged into every request, e.g. '{\"top_k\": 20}' or "
        '\'{"chat_template_kwargs": {"enable_thinking": false}}\' for vLLM',
    )

    local = build.add_argument_group("local model (--expert transformers / --judge transformers)")
    local.add_argument("--model", default=None, help="local vision-language checkpoint directory")
    add_deprecated_alias(local, "--model-path", "--model", dest="model_path", default=None)
    local.add_argument("--dtype", default=None, help="torch dtype, e.g. bfloat16")
    local.add_argument("--device", default=None, help="torch device, e.g. cuda")
    local.add_argument(
        "--max-new-tokens", type=int, default=1024, help="expert generation cap (default 1024)"
    )

    judge = build.add_argument_group("judge (consistency and factual errors)")
    judge.add_argument(
        "--judge",
        default="auto",
        choices=("auto", "none", "template", "chat", "openai", "transformers"),
        help="auto: template for --expert template, otherwise the expert's backend",
    )
    judge.add_argument(
        "--judge-model", default=None, help="judge's model name at the endpoint (default: --expert-model)"
    )
    judge.add_argument("--judge-base-url", default=None, help="judge API root (default: --base-url)")
    judge.add_argument(
        "--judge-model-path", default=None, help="judge's local checkpoint directory (default: --model)"
    )
    judge.add_argument(
        "--no-judge-json-mode", action="store_true", help="do not send response_format=json_object"
    )

    leak = commands.add_parser(
        "check-leakage", help="report score leakage in sentences or an AesCoT JSONL file"
    )
    leak.add_argument("text", nargs="*", help="sentences to check")
    leak.add_argument("--file", type=Path, default=None, help="JSONL file; checks each record's 'critique'")
    return parser


def _endpoint(args, *, model: str | None = None, base_url: str | None = None) -> EndpointConfig:
    return EndpointConfig(
        base_url=base_url or args.base_url,
        model=model or args.expert_model or DEFAULT_EXPERT_MODEL,
        api_key_env=args.api_key_env or None,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_initial_s=args.backoff,
        backoff_max_s=args.backoff_max,
        requests_per_minute=args.rpm,
        max_concurrency=args.concurrency,
        image_detail=args.image_detail,
        max_image_side=args.max_image_side,
        extra_body=args.extra_body,
    )


def _settle_model_flags(args) -> None:
    """Catch a --model meant as an API name, merge the deprecated --model-path into --model, and
    check that --expert transformers has its checkpoint: before any data is read."""
    if args.expert in ("chat", "openai") and args.model is not None and args.expert_model is None:
        # Refused rather than guessed: --model once named the chat model, so an old command line
        # would otherwise run on the default API model or load the API name as a checkpoint.
        raise ValueError(
            f"--expert {args.expert}: the API model name is now --expert-model "
            f"(e.g. --expert-model {args.model}); --model names a local checkpoint directory for "
            "--expert/--judge transformers (with --expert chat, give --expert-model as well)"
        )
    if args.model_path is not None:
        if args.model is not None and args.model != args.model_path:
            raise ValueError("give --model only (--model-path is its deprecated spelling)")
        args.model = args.model_path
    if args.expert == "transformers" and not args.model:
        raise ValueError("--expert transformers needs --model (a local checkpoint directory)")


def _make_expert_and_judge(args):
    client = None
    local = None
    if args.expert in ("chat", "openai"):
        client = ChatClient(_endpoint(args))
        expert = ChatExpert(
            client,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            max_tokens_field=args.max_tokens_field,
            with_dimensions=not args.no_dimensions,
        )
    elif args.expert == "transformers":
        local = LocalModel.from_pretrained(args.model, dtype=args.dtype, device=args.device)
        expert = TransformersExpert(
            local,
            max_new_tokens=args.max_new_tokens,
            temperature=0.7 if args.temperature is None else args.temperature,
            seed=args.seed,
            with_dimensions=not args.no_dimensions,
        )
    else:
        expert = TemplateExpert(seed=args.seed)

    kind = args.judge
    if kind == "auto":
        kind = {"template": "template", "transformers": "transformers"}.get(args.expert, "chat")
    if kind == "none":
        return expert, None
    if kind == "template":
        return expert, TemplateJudge()
    if kind in ("chat", "openai"):
        same_endpoint = (
            client is not None
            and args.judge_model in (None, args.expert_model or DEFAULT_EXPERT_MODEL)
            and args.judge_base_url in (None, args.base_url)
        )
        judge_client = (
            client
            if same_endpoint
            else ChatClient(_endpoint(args, model=args.judge_model, base_url=args.judge_base_url))
        )
        return expert, ChatJudge(judge_client, json_mode=not args.no_judge_json_mode)
    path = args.judge_model_path or args.model
    if not path:
        raise ValueError("--judge transformers needs --judge-model-path or --model")
    if local is None or path != args.model:
        local = LocalModel.from_pretrained(path, dtype=args.dtype, device=args.device)
    return expert, TransformersJudge(local)


def _output_file(args) -> Path:
    """DIR/aescot.jsonl of --output-dir, or the file of the deprecated --out."""
    if args.out is not None:
        if args.output_dir is not None:
            raise ValueError("give --output-dir only (--out is its deprecated spelling)")
        if args.out.suffix.lower() != ".jsonl":
            raise ValueError(f"--out must be a .jsonl file, got {str(args.out)!r}")
        return args.out
    if args.output_dir is None:
        raise ValueError(f"give --output-dir DIR: the build writes DIR/{OUTPUT_FILE_NAME}")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise ValueError(f"--output-dir {str(args.output_dir)!r} is a file, not a folder")
    return args.output_dir / OUTPUT_FILE_NAME


def _build(args) -> int:
    from aesr1.aescot.inputs import load_items

    per_bin = {"bad": args.per_bin, "fair": args.per_bin, "good": args.per_bin}
    for name in per_bin:
        if getattr(args, name) is not None:
            per_bin[name] = getattr(args, name)
    config = BuildConfig(
        per_bin=per_bin,
        seed=args.seed,
        concurrency=args.concurrency,
        overwrite=args.overwrite,
        retry_failed=not args.no_retry_failed,
        max_attempts=args.limit,
        max_consecutive_errors=args.max_consecutive_errors,
        min_critique_chars=args.min_chars,
        max_critique_chars=args.max_chars,
        progress=not args.no_progress,
    )
    out = _output_file(args)
    _settle_model_flags(args)
    items = load_items(
        args.data, split=args.split, score_range=args.score_range, progress=not args.no_progress
    )
    expert, judge = _make_expert_and_judge(args)
    report = build_dataset(items, expert, out, judge=judge, config=config)
    print(report.format_table())
    print(f"report saved to {OutputPaths.for_output(out).report}")
    return 0


def _read_critiques(path: Path) -> list[tuple[str, str]]:
    """(id, critique) of each record of a JSONL file; ValueError naming the file and the line for
    anything unreadable."""
    from aesr1.jsonio import jsonl_objects

    return [
        (str(record.get("id", number)), str(record.get("critique", "")))
        for number, record in jsonl_objects(path)
    ]


def _check_leakage(args) -> int:
    texts: list[tuple[str, str]] = [(f"arg{i}", t) for i, t in enumerate(args.text)]
    if args.file is not None:
        texts.extend(_read_critiques(args.file))
    if not texts:
        raise ValueError("give sentences or --file")
    leaking = 0
    for name, text in texts:
        hits = find_leaks(text)
        leaking += bool(hits)
        if hits or args.file is None:
            print(f"{name}: {'LEAK ' + leak_reason(hits) if hits else 'clean'}")
    print(f"{leaking} of {len(texts)} leak")
    return 1 if leaking else 0


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return _build(args) if args.command == "build" else _check_leakage(args)
    except OSError as error:
        from aesr1.jsonio import os_error_message

        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ChatFatalError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
