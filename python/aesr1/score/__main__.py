"""`aesr1 score <images or folders> --model <dir>` (or `python -m aesr1.score ...`): a critique and a
score per image, as a readable table (default) or JSON lines (`--jsonl`), with a summary of failures
on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys

from aesr1._cli_alias import add_deprecated_alias
from aesr1.jsonio import os_error_message

PROG = "python -m aesr1.score"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Critique and aesthetic score (0-1) of each image."
    )
    parser.add_argument("images", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", required=True, help="local model directory (Qwen2.5-VL style)")
    parser.add_argument("--jsonl", action="store_true", help="print one JSON object per image")
    parser.add_argument("--samples", type=int, default=1, help="completions per image; score = parsed mean")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recursive", action="store_true", help="also take images in sub-folders")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_deprecated_alias(parser, "--quiet", "--no-progress", dest="no_progress", switch=True)
    return parser


def print_table(results) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Aesthetic scores", show_lines=True)
    table.add_column("Image", overflow="fold")
    table.add_column("Score", justify="right")
    table.add_column("Critique", overflow="fold")
    for result in results:
        if result.error:
            score, critique = "—", f"[red]skipped: {escape(result.error)}[/red]"
        elif result.score is None:
            score, critique = "[yellow]unparseable[/yellow]", result.critique
        else:
            score, critique = f"{result.score:.2f}", result.critique
        table.add_row(result.image, score, critique)
    Console(soft_wrap=False).print(table)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    from aesr1.score import Scorer, expand_images, summary

    try:
        images = expand_images(args.images, args.recursive)
        if not images:
            raise ValueError(f"no images found in {args.images}")
        scorer = Scorer(
            args.model,
            num_samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            dtype=args.dtype,
        )
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
    if args.jsonl:  # the table shows them; JSON lines often go to a file
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
