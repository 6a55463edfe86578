"""Every training setting discoverable: the resolved config as commented YAML, and the nearest known
keys for a misspelt one.

The help of each key is the one-line description in its section's docstring (`Attributes:`), the
same text a reader of `config.py` sees, so there is one place to document a setting. Nested
dataclass CLIs (HfArgumentParser / TrlParser, tyro, draccus) were considered: HfArgumentParser
and TrlParser take flat dataclasses only, and tyro or draccus would turn ~100 settings into ~100
generated flags on top of the YAML files and `--set` the configs already use, so this module reads
the docstrings the sections already have instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any

import yaml

_ATTRIBUTE = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*/\s*[A-Za-z_]\w*)*):\s*(.*)$")


def first_sentence(text: str) -> str:
    """Up to the first full stop followed by a capital ("Dr. GRPO" and "e.g." do not end one)."""
    return re.split(r"(?<!Dr\.)(?<=\.)\s+(?=[A-Z(])", text.strip(), maxsplit=1)[0]


def attribute_help(cls: type) -> dict[str, str]:
    """{field: first sentence of its description} from the `Attributes:` section of `cls`'s
    docstring; "a / b: text" documents both fields."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    lines = doc.split("Attributes:", 1)[1].splitlines()
    helps: dict[str, str] = {}
    current: list[str] = []
    indent = None
    text: list[str] = []

    def close() -> None:
        if current:
            first = first_sentence(" ".join(text))
            for name in current:
                helps[name] = first
            current.clear()
            text.clear()

    for line in lines:
        match = _ATTRIBUTE.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            close()
            current.extend(n.strip() for n in match.group(2).split("/"))
            text.append(match.group(3))
        elif line.strip() and current:
            text.append(line.strip())
    close()
    return helps


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _yaml_value(value: Any) -> str:
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return dumped.removesuffix("\n...").removesuffix("...").strip()


def describe_config(config: Any, *, _indent: int = 0) -> str:
    """`config` (a dataclass instance) as YAML, each key followed by a comment with its help and,
    where the value differs from it, the default. The YAML loads back to the same values."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    helps = attribute_help(cls)
    pad = "  " * _indent
    lines = []
    for f in _fields(cls):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            summary = (hints[f.name].__doc__ or "").strip().split("\n\n", 1)[0]
            section_help = first_sentence(" ".join(summary.split()))
            lines.append(f"{pad}{f.name}:{f'  # {section_help}' if section_help else ''}")
            lines.append(describe_config(value, _indent=_indent + 1))
            continue
        comment = helps.get(f.name, "")
        default = _default(f)
        if default != value:
            comment = f"{comment} (default: {_yaml_value(default)})".strip()
        lines.append(f"{pad}{f.name}: {_yaml_value(value)}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)


def known_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the config class `cls` (`rapo.rollout.backend`, `seed`, ...)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in _fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(known_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            keys.append(prefix + f.name)
    return keys


def nearest_keys(key: str, cls: type, limit: int = 3) -> list[str]:
    """Known keys closest to a misspelt `key`: by the whole dotted name, and by its last part
    anywhere in the config (a key put in the wrong section)."""
    keys = known_keys(cls)
    close = difflib.get_close_matches(key, keys, n=limit, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    by_leaf: dict[str, list[str]] = {}
    for k in keys:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], []).append(k)
    for name in difflib.get_close_matches(leaf, list(by_leaf), n=limit, cutoff=0.75):
        close.extend(k for k in by_leaf[name] if k not in close)
    return close[:limit]
