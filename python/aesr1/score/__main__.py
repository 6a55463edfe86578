"""`aesr1 score <images or folders> --model <dir>` (or `python -m aesr1.score ...`): a critique and a
score per image, as a readable table (default), JSON lines (`--jsonl`) or CSV (`--csv`), with a
summary of failures on stderr. With `--output-dir DIR`, bulk mode (`aesr1.score.bulk`): resumable, split
across the processes of a `torchrun` / `accelerate launch`, with `--filter` / `--keep-top` lists.
`aesr1 score compare A B` and `aesr1 score rank FOLDER`: see `aesr1.score.commands`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from aesr1._cli_alias import add_deprecated_alias
from aesr1.jsonio import os_error_message
from aesr1.score.bulk import add_bulk_arguments, check_bulk_flags

PROG = "python -m aesr1.score"


def add_mode_arguments(parser: argparse.ArgumentParser, *, preset: str = "aesr1") -> None:
    """The flags that choose how one image's score is read off the model (`aesr1.score.modes`):
    `score`, `compare`, `rank`, `serve` and `eval` share them."""
    from aesr1.score.modes import SCORE_MODES

    parser.add_argument(
        "--mode", choices=SCORE_MODES, help="greedy (one greedy answer), sample (mean ± std of --samples "
        "answers) or expected (expected answer ± std from the digit probabilities); default: sample "
        "when --temperature > 0 or --samples > 1, else greedy",
    )  # fmt: skip
    parser.add_argument(
        "--preset", default=preset,
        help="prompt and answer format (aesr1, aesr1-release, visualquality-r1, ...; default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--samples", type=int, help="sample mode: completions per image (default: 4, as RAPO)"
    )
    parser.add_argument("--temperature", type=float, help="sample mode: temperature (default: 1.0, as RAPO)")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-new-tokens", type=int, help="completion cap (default: the preset's, 1024)")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that build a `Scorer`; `score`, `compare`, `rank` and `serve` share them."""
    parser.add_argument("--model", required=True, help="local model directory (Qwen2.5-VL style)")
    add_mode_arguments(parser)
    parser.add_argument(
        "--scale", help="report scores on lo-hi, e.g. 1-5 or 1-10 (default: the preset's, 0-1)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="with each image's pixels, its sampling seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_deprecated_alias(parser, "--quiet", "--no-progress", dest="no_progress", switch=True)


def scorer_from_args(args: argparse.Namespace):
    """The `Scorer` the scoring flags describe (raises ValueError/TypeError/FileNotFoundError)."""
    from aesr1.score import Scorer

    return Scorer(
        args.model,
        mode=args.mode,
        preset=args.preset,
        scale=args.scale,
        num_samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Critique and aesthetic score of each image. Also: "
        f"'{prog} compare A B' (P(A more aesthetic than B)) and '{prog} rank FOLDER' (ranking and contact sheet).",
    )
    parser.add_argument(
        "images",
        nargs="+",
        help="image files and/or folders of images (with --output-dir also file lists, CSVs, .tar shards)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--jsonl", action="store_true", help="print one JSON object per image")
    output.add_argument("--csv", action="store_true", help="print CSV, one row per image (no completions)")
    parser.add_argument("--recursive", action="store_true", help="also take images in sub-folders")
    add_scoring_arguments(parser)
    add_bulk_arguments(parser)
    return parser


#: CSV columns: the JSONL row's scalar fields.
CSV_COLUMNS = ("image", "score", "std", "median", "scale", "mode", "samples", "parse_failures", "error",
               "note", "model", "revision", "preset", "prompt_sha256", "critique")  # fmt: skip


def print_csv(results) -> None:
    import csv

    writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow(result.to_dict())


def _number(value: float, scale) -> str:
    """Two decimals on a 0-1 wide scale, one more for each tenfold narrower one."""
    import math

    decimals = max(0, 2 - math.floor(math.log10(scale.width)))
    return f"{value:.{decimals}f}"


def print_table(results) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    first = results[0] if results else None
    title = (
        "Aesthetic scores" if first is None else f"Aesthetic scores ({first.mode}, scale {first.scale.name})"
    )
    table = Table(title=title, show_lines=True)
    table.add_column("Image", overflow="fold")
    table.add_column("Score", justify="right")
    table.add_column("Critique", overflow="fold")
    for result in results:
        if result.error:
            score, critique = "—", f"[red]skipped: {escape(result.error)}[/red]"
        elif result.score is None:
            score, critique = "[yellow]unparseable[/yellow]", result.critique
        else:
            score, critique = _number(result.score, result.scale), result.critique
            if result.std is not None:
                score += f" ± {_number(result.std, result.scale)}"
        table.add_row(result.image, score, critique)
    Console(soft_wrap=False).print(table)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("compare", "rank"):
        from aesr1.score import commands

        command = commands.compare_main if argv[0] == "compare" else commands.rank_main
        return command(argv[1:], f"{prog} {argv[0]}")
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.output_dir is not None:
        from aesr1.score import bulk

        return bulk.run(args)
    if (problem := check_bulk_flags(args)) is not None:
        parser.error(problem)
    from aesr1.score import expand_images, summary

    try:
        images = expand_images(args.images, args.recursive)
        if not images:
            raise ValueError(f"no images found in {', '.join(args.images)}")
        scorer = scorer_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    results = scorer(images, progress=not args.no_progress)
    try:
        if args.jsonl:
            for result in results:
                print(json.dumps(result.to_dict(), ensure_ascii=False))
        elif args.csv:
            print_csv(results)
        else:
            print_table(results)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader (`| head`) has gone: stop quietly, and keep Python from failing again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:
        print(f"error: writing the results to standard output: {os_error_message(error)}", file=sys.stderr)
        return 1
    if args.jsonl or args.csv:  # the table shows them; JSON lines and CSV often go to a file
        for result in results:
            if result.error:
                print(f"skipped {result.image}: {result.error}", file=sys.stderr)
    counts = summary(results)
    print(
        f"{counts['images']} images: {counts['scored']} scored, {counts['unreadable']} skipped (bad image), "
        f"{counts['parse_failures']} of {counts['completions']} completions unparseable",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
