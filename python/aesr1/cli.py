"""The `aesr1` command: `aesr1 <command> [options]`, one entry point to the tools.

Each command is the module `python -m aesr1.<command>` runs, imported only once chosen: `aesr1 --help`
stays as quick as importing the numpy-only core.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "train": Command("aesr1.train.__main__", "AesCoT cold-start SFT + RAPO, then held-out PLCC/SRCC"),
    "eval": Command("aesr1.eval.__main__", "PLCC/SRCC on image aesthetics benchmarks, or --compare results"),
    "study": Command(
        "aesr1.train.study.__main__", "ablation grids over seeds with shared stages, and their report"
    ),
    "score": Command("aesr1.score.__main__", "critique and aesthetic score (0-1) of each image"),
    "aescot": Command(
        "aesr1.aescot.__main__", "build AesCoT cold-start data, or check text for score leakage"
    ),
    "serve": Command("aesr1.serve.__main__", "HTTP scoring service with a web page, batching requests"),
}


def build_parser() -> argparse.ArgumentParser:
    from aesr1 import __version__

    parser = argparse.ArgumentParser(
        prog="aesr1",
        description="Aes-R1: multimodal LLMs that reason about image aesthetics, trained with RAPO.",
        epilog="`aesr1 COMMAND --help` shows the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        # The command's own parser reads the rest; this one only lists it.
        commands.add_parser(name, help=command.summary, add_help=False)
    return parser


def run_command(name: str, argv: list[str]) -> int:
    try:
        module = importlib.import_module(COMMANDS[name].module)
    except ModuleNotFoundError as error:
        # The core wheel installs this command too; the tools need the train extra.
        if error.name is None or error.name.partition(".")[0] == "aesr1":
            raise
        print(
            f"error: aesr1 {name} needs the train extra (no module named {error.name!r}): "
            "pip install 'aesr1[train]'",
            file=sys.stderr,
        )
        return 1
    return module.main(argv, prog=f"aesr1 {name}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        # Straight to the command: argparse here would take its `--help` or `--version` for ours.
        return run_command(argv[0], argv[1:])
    args, rest = build_parser().parse_known_args(argv)  # --help, --version, or a usage error
    return run_command(args.command, rest)


if __name__ == "__main__":
    sys.exit(main())
