"""`python -m aesr1.score compare A B` and `python -m aesr1.score rank FOLDER`: which of two images is
more aesthetic, as a probability (the FRank preference of the paper's Eq. 3), and a folder ranked
best first with contact sheets of the best and worst images.

Both take the scoring flags of `python -m aesr1.score` (`--model`, `--mode`, `--samples`, ...).
Exit status: 0 on success; 2 for bad arguments, found before the model loads (a missing image, an
empty folder, a model directory without config.json); 1 when the run fails after that (an image
that could not be scored, an output that could not be written).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from aesr1.jsonio import os_error_message
from aesr1.score.__main__ import add_scoring_arguments, scorer_from_args
from aesr1.score.compare import DEFAULT_GAMMA, compare
from aesr1.score.ranking import (
    best_and_worst,
    contact_sheet_html,
    contact_sheet_png,
    format_score,
    rank,
    score_text,
)

COMPARE_PROG = "python -m aesr1.score compare"
RANK_PROG = "python -m aesr1.score rank"


class UsageError(ValueError):
    """A bad argument, reported before any model loads."""


def _gamma(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _add_gamma(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gamma",
        type=_gamma,
        default=DEFAULT_GAMMA,
        help="γ of Eq. 3 on the 0-1 scale, keeps two scores without a std comparable (default: %(default)s)",
    )


def build_compare_parser(prog: str = COMPARE_PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="P(A more aesthetic than B) = Φ((μ_A − μ_B) / √(σ_A² + σ_B² + γ)) (Aes-R1 Eq. 3), "
        "from both images' scores and their stds (sample or expected mode; greedy gives no std).",
    )
    parser.add_argument("a", help="image A")
    parser.add_argument("b", help="image B")
    add_scoring_arguments(parser)
    _add_gamma(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def build_rank_parser(prog: str = RANK_PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Rank a folder's images best first, with P(each image more aesthetic than the next) "
        "(Aes-R1 Eq. 3); writes ranking.jsonl, contact_sheet.png and contact_sheet.html.",
    )
    parser.add_argument("folder", help="folder of images")
    add_scoring_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="folder for the ranking and the contact sheets")
    parser.add_argument(
        "--top", type=_count, default=8, help="best images on the sheets (default: %(default)s)"
    )
    parser.add_argument(
        "--bottom", type=_count, default=8, help="worst images on the sheets (default: %(default)s)"
    )
    parser.add_argument("--recursive", action="store_true", help="also take images in sub-folders")
    _add_gamma(parser)
    return parser


def check_model_dir(model: str) -> None:
    """Fails in milliseconds on a model directory that cannot load, before any image is read."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise UsageError(f"model directory {str(path)!r} not found")
    from aesr1.modeling.loading import is_model_dir

    if not is_model_dir(path):
        raise UsageError(
            f"model directory {str(path)!r} has no config.json or adapter_config.json (give a local checkpoint)"
        )


def _check_image(image: str) -> None:
    path = Path(image).expanduser()
    if path.is_dir():
        raise UsageError(f"{str(path)!r} is a folder: compare takes two images (rank takes a folder)")
    if not path.exists():
        raise UsageError(f"image {str(path)!r} not found")


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def _probability_text(p: float) -> str:
    # Four decimals would print a near-certain 0.99997 as 1.0000.
    if p < 1e-4:
        return f"{p:.2e}"
    if p > 1 - 1e-4:
        return "> 0.9999"
    return f"{p:.4f}"


def compare_main(argv: list[str] | None = None, prog: str = COMPARE_PROG) -> int:
    """`compare A B --model DIR [scoring flags] [--gamma G] [--json]`: prints P(A more aesthetic
    than B) and both scores."""
    args = build_compare_parser(prog).parse_args(argv)
    try:
        _check_image(args.a)
        _check_image(args.b)
        check_model_dir(args.model)
        scorer = scorer_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return _fail(str(error), 2)
    except OSError as error:
        return _fail(os_error_message(error), 1)
    results = scorer([args.a, args.b], progress=not args.no_progress)
    try:
        comparison = compare(results[0], results[1], gamma=args.gamma)
    except ValueError as error:
        return _fail(str(error), 1)
    if args.json:
        print(json.dumps(comparison.to_dict(), ensure_ascii=False))
        return 0
    scale = comparison.scale
    rows = [
        (comparison.a, comparison.score_a, comparison.std_a),
        (comparison.b, comparison.score_b, comparison.std_b),
    ]
    print(f"P(A more aesthetic than B) = {_probability_text(comparison.probability)}")
    for label, (image, score, std) in zip("AB", rows, strict=True):
        std_text = "" if std == 0 else f" ± {format_score(std, scale)}"
        print(f"  {label}  {format_score(score, scale)}{std_text}  {image}")
    print(f"  (scores on {scale.name}; γ = {comparison.gamma:g})")
    return 0


def _ranking_rows(ranked, unscored) -> list[dict]:
    rows = [dict(entry.to_dict(), error=None) for entry in ranked]
    for result in unscored:
        reason = result.error or getattr(result, "note", None) or "no answer could be parsed"
        scale = getattr(result, "scale", None)
        rows.append(
            {
                "rank": None,
                "image": result.image,
                "score": None,
                "std": None,
                "scale": None if scale is None else scale.name,
                "p_above_next": None,
                "error": reason,
            }
        )
    return rows


def print_ranking(ranked, top: int, bottom: int, file=None) -> None:
    """The best `top` and worst `bottom` rows (at least one of each end), "…" between them."""
    file = sys.stdout if file is None else file
    best, worst = best_and_worst(ranked, max(top, 1), max(bottom, 1))
    width = max(len(score_text(entry)) for entry in best + worst)
    print(f"{'rank':>5}  {'score':<{width}}  {'P(>next)':>8}  image", file=file)
    for entry in best:
        _print_row(entry, width, file)
    if worst and worst[0].rank > best[-1].rank + 1:
        print(f"{'…':>5}", file=file)
    for entry in worst:
        _print_row(entry, width, file)


def _print_row(entry, width: int, file) -> None:
    p = "" if entry.p_above_next is None else f"{entry.p_above_next:.3f}"
    print(f"{entry.rank:>5}  {score_text(entry):<{width}}  {p:>8}  {entry.image}", file=file)


def rank_main(argv: list[str] | None = None, prog: str = RANK_PROG) -> int:
    """`rank FOLDER --model DIR --output-dir DIR [--top N --bottom N] [scoring flags]`: writes
    ranking.jsonl (one row per image: rank, image, score, std, scale, p_above_next, error),
    contact_sheet.png and contact_sheet.html, and prints the best and worst rows."""
    args = build_rank_parser(prog).parse_args(argv)
    from aesr1.score import expand_images

    output = Path(args.output_dir).expanduser()
    try:
        folder = Path(args.folder).expanduser()
        if not folder.is_dir():
            raise UsageError(
                f"folder {str(folder)!r} not found"
                if not folder.exists()
                else f"{str(folder)!r} is not a folder"
            )
        images = expand_images(folder, args.recursive)
        if not images:
            deeper = "" if args.recursive else " (--recursive also takes sub-folders)"
            raise UsageError(f"no images in {str(folder)!r}{deeper}")
        if args.top == args.bottom == 0:
            raise UsageError("--top and --bottom are both 0: the contact sheets would be empty")
        check_model_dir(args.model)
        if output.exists() and not output.is_dir():
            raise UsageError(f"--output-dir {str(output)!r} is a file")
        output.mkdir(parents=True, exist_ok=True)
        scorer = scorer_from_args(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        return _fail(str(error), 2)
    except OSError as error:
        return _fail(os_error_message(error), 1)
    results = scorer(images, progress=not args.no_progress)
    scored = [r for r in results if r.score is not None]
    unscored = [r for r in results if r.score is None]
    for result in unscored:
        reason = result.error or getattr(result, "note", None) or "no answer could be parsed"
        print(f"skipped {result.image}: {reason}", file=sys.stderr)
    if not scored:
        return _fail(f"none of the {len(results)} images in {str(folder)!r} could be scored", 1)
    ranked = rank(scored, gamma=args.gamma)
    paths = [output / "ranking.jsonl", output / "contact_sheet.png", output / "contact_sheet.html"]
    try:
        with open(paths[0], "w", encoding="utf-8") as handle:
            for row in _ranking_rows(ranked, unscored):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        contact_sheet_png(ranked, paths[1], args.top, args.bottom)
        contact_sheet_html(ranked, paths[2], args.top, args.bottom)
    except OSError as error:
        return _fail(f"writing the results to {str(output)!r}: {os_error_message(error)}", 1)
    print_ranking(ranked, args.top, args.bottom)
    print(
        f"{len(ranked)} of {len(results)} images ranked; wrote " + ", ".join(str(p) for p in paths),
        file=sys.stderr,
    )
    return 0


__all__ = ["build_compare_parser", "build_rank_parser", "compare_main", "print_ranking", "rank_main"]
