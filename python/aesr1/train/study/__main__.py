"""`aesr1 study` (`python -m aesr1.train.study`): a grid of pipeline variants over seeds, stages
shared where variants agree, resumable, then a report (JSON, Markdown tables with verdicts, plots).

    python -m aesr1.train.study table2 table3 --seeds 3 --output-dir runs/study
    python -m aesr1.train.study table2 table3 --seeds 3 --output-dir runs/study --resume   # after a kill
    python -m aesr1.train.study table2 table3 --seeds 3 --jobs 2       # two runs at once, 1 thread each
    python -m aesr1.train.study --grid my_grid.yaml --set model.name_or_path=/models/Qwen2.5-VL-7B-Instruct
    python -m aesr1.train.study --smoke --output-dir /tmp/smoke                            # about a minute
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROG = "python -m aesr1.train.study"


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    from aesr1.train.study.grid import packaged_grids

    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    parser.add_argument(
        "grids", nargs="*", metavar="GRID",
        help=f"packaged grid ({', '.join(packaged_grids())}) or a grid YAML file; several run as one study",
    )  # fmt: skip
    parser.add_argument("--grid", action="append", default=[], metavar="FILE.yaml", help="a grid YAML file")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0 .. N-1 (default 3; 1 with --smoke)")
    parser.add_argument("--output-dir", default="runs/study", help="where the runs and the report go")
    parser.add_argument("--report-dir", help="where the report goes (default OUTPUT_DIR/report)")
    parser.add_argument(
        "--resume", action="store_true", help="continue (or extend) the study in --output-dir"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete the study in --output-dir first")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value in every variant (after the grid's own overrides)")  # fmt: skip
    parser.add_argument(
        "--expected", action="store_true",
        help="also score each cold start and RAPO model in expected mode (answer digit distribution after "
        "a greedy critique) and report its PLCC/SRCC/W1 beside the sampled protocol",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true", help="the tiny smoke grid, one seed: about a minute on CPU"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the finished runs only"
    )
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="runs at once, each in its own process with the CPUs split between them (default 1: one "
        "after another in this process); on a small CPU host 2 jobs of 1 thread do more per hour than 1 of 2",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def check_study_dir(out: Path, *, resume: bool, overwrite: bool, report_only: bool) -> None:
    """A study directory is new, continued with --resume, or replaced with --overwrite."""
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file")
    holds = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    if holds and not (out / "plan.json").is_file():
        raise ValueError(
            f"--output-dir {str(out)!r} is not empty and holds no study (plan.json): choose another"
        )
    if report_only and not holds:
        raise ValueError(f"--report-only: {str(out)!r} holds no study")
    if holds and not (resume or overwrite or report_only):
        raise ValueError(
            f"--output-dir {str(out)!r} already holds a study: pass --resume to continue or extend it, "
            "or --overwrite to delete it and start afresh"
        )


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parse_args(argv, prog)
    from aesr1.jsonio import dumps, os_error_message
    from aesr1.train.durable import atomic_write_text, remove_tree
    from aesr1.train.study.grid import load_grid

    names = [*args.grids, *args.grid]
    if args.smoke:
        if names:
            print("error: --smoke runs its own grid; give no other grid", file=sys.stderr)
            return 2
        names = ["smoke"]
    if not names:
        print("error: name a grid (table2, table3, a YAML file) or pass --smoke", file=sys.stderr)
        return 2
    seeds = args.seeds if args.seeds is not None else (1 if args.smoke else 3)
    if args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    if seeds < 1:
        print(f"error: --seeds must be >= 1, got {seeds}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    try:
        check_study_dir(out, resume=args.resume, overwrite=args.overwrite, report_only=args.report_only)
        grids = [load_grid(name) for name in names]
        duplicated = sorted({g.name for g in grids if [h.name for h in grids].count(g.name) > 1})
        if duplicated:
            raise ValueError(f"grid names must differ; repeated: {', '.join(duplicated)}")
        from aesr1.train.study.plan import make_plan

        plan = make_plan(grids, list(range(seeds)), out, sets=tuple(args.set))
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from aesr1.train.study.report import write_report
    from aesr1.train.study.runner import run_plan

    report_dir = Path(args.report_dir) if args.report_dir else out / "report"
    try:
        if args.overwrite and out.is_dir():
            remove_tree(out)
        out.mkdir(parents=True, exist_ok=True)
        if not args.report_only:
            plans = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
            plans.update(plan.to_dict())  # a resumed study may add grids; earlier ones stay listed
            atomic_write_text(out / "plan.json", dumps(plans, indent=1))
            done = sum(stage.done for stage in plan.stages)
            print(
                f"[study] {len(plan.stages)} runs ({done} finished) for {len(grids)} grid(s) x {seeds} seed(s)"
            )
            run_plan(plan, out, expected=args.expected, progress=not args.no_progress, jobs=args.jobs)
        report = write_report(plan, grids, list(range(seeds)), report_dir)
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        print(f"error: {error}; fix it and pass --resume to continue", file=sys.stderr)
        return 1
    for grid in grids:
        print()
        print(report["grids"][grid.name]["markdown"])
    print(f"report: {report_dir} (study.json, {', '.join(g.name + '.md' for g in grids)}, PNGs)")
    finished, planned = report["runs_finished"], report["runs_planned"]
    print(
        f"wall time of the runs: {report['wall_seconds']:.0f} s ({report['stage_seconds']:.0f} s of runs "
        f"side by side; {finished} of {planned} runs finished)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
