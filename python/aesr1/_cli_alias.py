"""Old flag spellings that keep working: hidden from `--help`, one warning on stderr when used."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings, dest, *, replacement: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"warning: {option_string} is deprecated; use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    replacement: str,
    *,
    dest: str,
    switch: bool = False,
    **kwargs: Any,
) -> None:
    """Accept `old` as it always was, storing into `dest` (an on/off switch when `switch`), and warn
    that `replacement` (the new flag, with a word on any change of meaning) takes its place.

    Unless a `default` is given, the alias sets nothing when absent, so it can share `dest` with
    the new flag without overriding that flag's default.
    """
    if switch:
        kwargs.update(nargs=0, const=True)
    kwargs.setdefault("default", argparse.SUPPRESS)
    parser.add_argument(
        old,
        action=_DeprecatedAlias,
        replacement=replacement,
        dest=dest,
        help=argparse.SUPPRESS,
        **kwargs,
    )
