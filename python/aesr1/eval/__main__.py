"""`aesr1 eval` (`python -m aesr1.eval`): evaluate a model on IAA benchmarks, or `--compare` results.

aesr1 eval --model <dir> --datasets ava,tad66k,flickr-aes,para,aadb --root <dir> --output-dir runs/eval
aesr1 eval --model <dir> --data ava:/data/AVA,csv:/data/mine.csv?range=1..10
aesr1 eval --compare runs/a/results.json runs/b/results.json --output-dir runs   # runs/comparison.md
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aesr1._cli_alias import add_deprecated_alias
from aesr1.data.registry import TABLE1_DATASETS, canonical_name, find_dataset_root
from aesr1.eval.config import EvalConfig
from aesr1.jsonio import os_error_message, write_text

PROG = "python -m aesr1.eval"
COMPARISON_FILE = "comparison.md"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    from aesr1.score.__main__ import add_mode_arguments

    defaults = EvalConfig()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="PLCC/SRCC of a vision-language model on image aesthetics benchmarks (paper Table 1).",
    )
    parser.add_argument("--model", help="local model directory (Qwen2.5-VL style)")
    parser.add_argument(
        "--datasets",
        help=f"comma-separated dataset names found under --root (default with --root: {','.join(TABLE1_DATASETS)})",
    )
    parser.add_argument("--root", help="folder holding one sub-folder per dataset (AVA/, TAD66K/, PARA/ ...)")
    parser.add_argument(
        "--data", help="dataset spec 'name:root[?opt=v&...],...' (instead of --datasets/--root)"
    )
    parser.add_argument("--split", default=defaults.split, help="split to evaluate (default: %(default)s)")
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="output directory (default: aesr1-eval/<model name>); "
        f"with --compare the table is also written to DIR/{COMPARISON_FILE}",
    )
    # `--output` names the directory, or with --compare the table's file: its own dest keeps that.
    add_deprecated_alias(
        parser,
        "--output",
        f"--output-dir DIR (--compare writes DIR/{COMPARISON_FILE})",
        dest="output",
        default=None,
    )
    add_mode_arguments(parser, preset=defaults.preset)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="sampling and 9:1 split seed")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset")
    parser.add_argument(
        "--logistic", action="store_true", help="report PLCC after the 4-parameter logistic fit"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--check-images", default=defaults.check_images, choices=["open", "decode", "exists", "none"]
    )
    parser.add_argument("--name", help="model name in the tables (default: the model directory's name)")
    parser.add_argument(
        "--device", default=defaults.device, help="auto, cpu, cuda, cuda:1 ... (default: auto)"
    )
    parser.add_argument("--dtype", help="model dtype (auto, float32, bfloat16, ...)")
    parser.add_argument(
        "--overwrite", action="store_true", help="discard the prediction cache instead of resuming"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_deprecated_alias(parser, "--quiet", "--no-progress", dest="no_progress", switch=True)
    parser.add_argument(
        "--compare", nargs="+", metavar="RESULT", help="result files or directories to compare"
    )
    return parser


def data_spec(args: argparse.Namespace) -> str:
    """The --data spec, built from --datasets/--root when --data is not given."""
    if args.data:
        if args.datasets or args.root:
            raise ValueError("give either --data or --datasets/--root, not both")
        return args.data
    if not args.root:
        raise ValueError("give the datasets: --datasets NAMES --root DIR, or --data SPEC")
    names = args.datasets.split(",") if args.datasets else list(TABLE1_DATASETS)
    entries = []
    for name in filter(None, (n.strip() for n in names)):
        canonical = canonical_name(name)
        entries.append(f"{canonical}:{find_dataset_root(canonical, args.root)}")
    return ",".join(entries)


def write_comparison(args: argparse.Namespace, table: str) -> None:
    """Save the `--compare` table in DIR/comparison.md of --output-dir, or the old --output file."""
    if args.output:
        write_text(args.output, table + "\n")
    elif args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        write_text(Path(args.output_dir) / COMPARISON_FILE, table + "\n")


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.output and args.output_dir:
            raise ValueError("give --output-dir only (--output is its deprecated spelling)")
        if args.compare:
            from aesr1.eval.compare import compare_results

            table = compare_results(args.compare)
            print(table)
            write_comparison(args, table)
            return 0
        if not args.model:
            raise ValueError("--model is required (or --compare)")
        config = EvalConfig(
            model=args.model,
            data=data_spec(args),
            output_dir=args.output_dir or args.output or str(Path("aesr1-eval") / Path(args.model).name),
            split=args.split,
            mode=args.mode,
            preset=args.preset,
            num_samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            limit=args.limit,
            logistic=args.logistic,
            plots=not args.no_plots,
            check_images=args.check_images,
            name=args.name,
            device=args.device,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
        from aesr1.eval.runner import run_evaluation
        from aesr1.eval.table import details, table1

        result = run_evaluation(config, progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # unwritable output, full disk: predictions saved so far are kept
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    print(table1([result]))
    print()
    print(details(result))
    print(f"\nsaved {Path(config.output_dir) / 'results.json'}, results.md and plots/ in {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
