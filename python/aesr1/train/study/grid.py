"""Study grids: named pipeline variants (each a list of `--set` overrides) on one base configuration.

A grid is a YAML mapping (the packaged ones live in `aesr1/configs/study/`)::

    name: table2
    title: Reward designs (paper Table 2)
    description: Markdown said above the grid's table in the report
    base: null                    # null: the embedded CPU default; else a config name or path (--config)
    set: [rapo.max_steps=150]     # overrides shared by every variant
    variants:
      - {name: binary, set: [reward.binary=1, reward.abs=0, reward.rank=0]}
      - {name: error+rank, set: [reward.abs=1, reward.rank=1]}
    claims:                       # optional: verdicts the report derives from the numbers
      - id: "2a"
        text: error + rank beats binary
        checks:
          - {a: error+rank, b: binary, expect: higher, measures: [plcc, srcc]}

A check's `a` / `b` name a variant's RAPO result, or with `@sft` its cold start's result
(`error+rank@sft`), and `b` may be a number instead (a threshold); `measures` lists measures of `aesr1.train.study.measures.MEASURES`; `expect` says
whether a's value should be `higher` or `lower` than b's. Unknown keys, variant names and measures
are errors naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Packaged grids (`<name>.yaml`).
GRID_DIR = Path(__file__).resolve().parents[2] / "configs" / "study"

#: Where a check's operand reads from: the variant's RAPO result, or its cold start's.
STAGES = ("rapo", "sft")


@dataclass(frozen=True)
class Variant:
    """One pipeline configuration of a grid: `name` and its `--set` overrides (after the grid's)."""

    name: str
    set: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operand:
    """`variant` or `variant@sft`: the RAPO (or cold-start) result of a variant."""

    variant: str
    stage: str = "rapo"

    @classmethod
    def parse(cls, text: str, where: str) -> Operand:
        if not isinstance(text, str) or not text:
            raise ValueError(f"{where}: expected a variant name (optionally with @sft), got {text!r}")
        name, _, stage = text.partition("@")
        stage = stage or "rapo"
        if stage not in STAGES:
            raise ValueError(f"{where}: {text!r}: the part after @ must be one of {', '.join(STAGES)}")
        return cls(name, stage)

    def __str__(self) -> str:
        return self.variant if self.stage == "rapo" else f"{self.variant}@{self.stage}"


@dataclass(frozen=True)
class Check:
    """`a`'s value of each of `measures` should be `expect` ("higher"/"lower") than `b`'s (`b` an
    operand, or a number: a fixed threshold)."""

    a: Operand
    b: Operand | float
    expect: str
    measures: tuple[str, ...]


@dataclass(frozen=True)
class Claim:
    """A statement the report gives a verdict on: every check of it, seed by seed."""

    id: str
    text: str
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class Grid:
    """A named list of variants on a shared base (module docstring)."""

    name: str
    variants: tuple[Variant, ...]
    title: str = ""
    description: str = ""
    base: str | None = None
    set: tuple[str, ...] = ()
    claims: tuple[Claim, ...] = field(default=())

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise KeyError(name)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of strings (section.key=value), got {value!r}")
    for item in value:
        if "=" not in item:
            raise ValueError(f"{where}: {item!r} is not section.key=value")
    return tuple(value)


def _only(values: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in set(values) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def grid_from_dict(values: Any, source: str = "grid") -> Grid:
    """A `Grid` from its YAML mapping, every name checked (module docstring)."""
    from aesr1.train.study.measures import MEASURES

    if not isinstance(values, dict):
        raise ValueError(
            f"{source}: a grid is a mapping with 'name' and 'variants', got {type(values).__name__}"
        )
    _only(values, {"name", "title", "description", "base", "set", "variants", "claims"}, source)
    name = values.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{source}: 'name' must be a non-empty string")
    raw_variants = values.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise ValueError(f"{source}: 'variants' must be a non-empty list")
    variants = []
    for index, raw in enumerate(raw_variants):
        where = f"{source}: variants[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping with 'name' and 'set'")
        _only(raw, {"name", "set"}, where)
        variant_name = raw.get("name")
        if (
            not isinstance(variant_name, str)
            or not variant_name
            or "@" in variant_name
            or "/" in variant_name
        ):
            raise ValueError(
                f"{where}: 'name' must be a non-empty string without '@' or '/', got {variant_name!r}"
            )
        variants.append(Variant(variant_name, _strings(raw.get("set"), f"{where}.set")))
    names = [v.name for v in variants]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{source}: variant names must be unique; repeated: {', '.join(duplicated)}")
    claims = []
    for index, raw in enumerate(values.get("claims") or []):
        where = f"{source}: claims[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} must be a mapping with 'id', 'text' and 'checks'")
        _only(raw, {"id", "text", "checks"}, where)
        checks = []
        for number, check in enumerate(raw.get("checks") or []):
            at = f"{where}.checks[{number}]"
            if not isinstance(check, dict):
                raise ValueError(f"{at} must be a mapping with a, b, expect and measures")
            _only(check, {"a", "b", "expect", "measures"}, at)
            a = Operand.parse(check.get("a"), f"{at}.a")
            raw_b = check.get("b")
            numeric = isinstance(raw_b, (int, float)) and not isinstance(raw_b, bool)
            b = float(raw_b) if numeric else Operand.parse(raw_b, f"{at}.b")
            for operand in (a, b):
                if isinstance(operand, Operand) and operand.variant not in names:
                    raise ValueError(
                        f"{at}: no variant named {operand.variant!r} (variants: {', '.join(names)})"
                    )
            expect = check.get("expect")
            if expect not in ("higher", "lower"):
                raise ValueError(f"{at}.expect must be 'higher' or 'lower', got {expect!r}")
            measures = check.get("measures")
            measures = (measures,) if isinstance(measures, str) else tuple(measures or ())
            if not measures:
                raise ValueError(f"{at}.measures must name at least one measure")
            for measure in measures:
                if measure not in MEASURES:
                    raise ValueError(
                        f"{at}.measures: unknown measure {measure!r}; known: {', '.join(MEASURES)}"
                    )
            checks.append(Check(a, b, expect, measures))
        if not checks:
            raise ValueError(f"{where} has no checks")
        claims.append(Claim(str(raw.get("id", index + 1)), str(raw.get("text", "")), tuple(checks)))
    base = values.get("base")
    if base is not None and not isinstance(base, str):
        raise ValueError(
            f"{source}: 'base' must name a config (or be null for the embedded default), got {base!r}"
        )
    return Grid(
        name=name.strip(), variants=tuple(variants), title=str(values.get("title") or name),
        description=str(values.get("description") or "").strip(), base=base,
        set=_strings(values.get("set"), f"{source}: set"), claims=tuple(claims),
    )  # fmt: skip


def packaged_grids() -> list[str]:
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))


def load_grid(name_or_path: str | Path) -> Grid:
    """A packaged grid by name (`table2`, `table3`, `smoke`) or a YAML file."""
    import yaml

    from aesr1.train.config import _yaml_problem

    path = Path(name_or_path)
    if not path.is_file():
        packaged = GRID_DIR / f"{path.name}.yaml"
        if path.suffix or not packaged.is_file():
            raise FileNotFoundError(
                f"grid {str(name_or_path)!r}: no such file, and not a packaged grid ({', '.join(packaged_grids())})"
            )
        path = packaged
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"grid {str(path)!r} is not valid YAML: {_yaml_problem(error)}") from None
    return grid_from_dict(values, str(path))
