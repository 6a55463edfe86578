"""The stages a study runs, shared wherever variants have them in common.

Each (grid, variant, seed) is one pipeline configuration. Its cold start (everything but the `rapo`
and `reward` sections) and its RAPO run are stages, keyed by the hash of the settings that decide
them (those that differ from the defaults, so that a study resumes after an upgrade that adds a
setting), so a stage that several variants (or grids) have in common runs once: one cold start per seed
serves every reward variant of Table 2, and Table 3's moderate cold start and its RAPO run are Table
2's when their settings agree.

Layout under the study's output directory::

    data/synthetic/        the synthetic images, drawn once for every run
    runs/cold-<hash>/      a pipeline output directory run with --stages sft
    runs/rapo-<hash>/      a pipeline output directory starting from its cold start's files
                           (hard links of initial/, sft/final/, the cold-start data and its
                           results.json rows), run with --stages rapo
    <stage>/STUDY_DONE.json  written last: the stage is finished and is not run again

Per seed s the study sets `seed: s` and, for the tiny model, `model.tiny_seed: s`: data order,
sampling, the template critiques and the initial weights all change with the seed. The held-out
split (`data.split_seed`) stays fixed, so seeds are compared on the same images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aesr1.train.config import RAPOConfig, RewardMixConfig, TrainConfig
from aesr1.train.pipeline import RESUME_FREE_KEYS
from aesr1.train.study.grid import Grid, Variant

#: Marker a finished stage carries (its content: the stage's wall time and what it was).
DONE = "STUDY_DONE.json"


@dataclass
class Stage:
    """One pipeline run of the study: a cold start (`kind` "cold") or a RAPO run from one ("rapo")."""

    kind: str
    key: str
    config: TrainConfig
    cold: Stage | None = None
    uses: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def done(self) -> bool:
        return (self.directory / DONE).is_file()

    def label(self) -> str:
        names = sorted({variant for _, variant, _ in self.uses})
        seeds = sorted({seed for _, _, seed in self.uses})
        what = "cold start" if self.kind == "cold" else "RAPO"
        shown = names[0] if len(names) == 1 else f"{len(names)} variants"
        return f"{what} {shown} (seed {', '.join(map(str, seeds))})"


@dataclass
class Plan:
    """Stages in run order (each cold start before the RAPO runs that need it), and for each
    grid, variant and seed the stage of its cold start and of its RAPO run."""

    stages: list[Stage]
    runs: dict[str, dict[str, dict[int, tuple[Stage, Stage]]]]

    def to_dict(self) -> dict:
        return {
            grid: {
                variant: {
                    str(seed): {"cold": cold.key, "rapo": rapo.key} for seed, (cold, rapo) in seeds.items()
                }
                for variant, seeds in variants.items()
            }
            for grid, variants in self.runs.items()
        }


def shared_synthetic_spec(study_dir: str | Path) -> str:
    """The data spec of the synthetic images every run of a study reads."""
    return f"synthetic:{Path(study_dir).resolve() / 'data' / 'synthetic'}"


def _digest(config: TrainConfig, study_dir: str | Path) -> str:
    """The hash of the settings that differ from `TrainConfig()`'s defaults (outside
    `RESUME_FREE_KEYS`): a setting added in a later release, at its default, keeps every key (as
    `--resume` reads a saved run's missing keys as their defaults). The study's own synthetic-data
    folder counts as plain `synthetic`, so the keys do not depend on where the study lies."""
    from aesr1.train.trackers import flatten

    defaults = flatten(json.loads(json.dumps(TrainConfig().to_dict())))
    values = flatten(json.loads(json.dumps(config.to_dict())))
    if values.get("data.spec") == shared_synthetic_spec(study_dir):
        values["data.spec"] = "synthetic"
    absent = object()
    kept = {
        key: value
        for key, value in values.items()
        if key not in RESUME_FREE_KEYS and defaults.get(key, absent) != value
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def variant_config(
    grid: Grid, variant: Variant, seed: int, *, sets: tuple[str, ...] = (), study_dir: str | Path = "."
) -> TrainConfig:
    """The pipeline configuration of `variant` at `seed`: the grid's base, the grid's overrides, the
    command line's `sets`, the variant's own, then the seed (module docstring). Synthetic data is
    read from the study's shared `data/synthetic` (the same images each run would draw)."""
    from aesr1.train.config import config_from_dict, embedded_default, load_config, set_override

    base = embedded_default() if grid.base is None else load_config(grid.base, TrainConfig(), validate=False)
    values: dict = {}
    for assignment in (*grid.set, *sets, *variant.set):
        set_override(values, assignment)
    try:
        config = config_from_dict(values, base, validate=False)
    except (ValueError, TypeError) as error:
        raise type(error)(f"grid {grid.name!r}, variant {variant.name!r}: {error}") from None
    seeded = {"seed": seed, "progress": False}
    if config.model.name_or_path is None:
        seeded["model"] = {"tiny_seed": seed}
    if config.data.spec.strip() == "synthetic":
        seeded["data"] = {"spec": shared_synthetic_spec(study_dir)}
    return config_from_dict(seeded, config, validate=False)


def cold_start_config(config: TrainConfig) -> TrainConfig:
    """`config` with the RAPO-only sections at their defaults: what its cold start is keyed by."""
    return dataclasses.replace(config, rapo=RAPOConfig(), reward=RewardMixConfig())


def make_plan(
    grids: list[Grid], seeds: list[int], study_dir: str | Path, *, sets: tuple[str, ...] = ()
) -> Plan:
    """Every stage the grids need at `seeds`, each shared stage once (module docstring)."""
    from aesr1.train.pipeline import preflight

    runs_dir = Path(study_dir) / "runs"
    stages: dict[str, Stage] = {}
    runs: dict[str, dict[str, dict[int, tuple[Stage, Stage]]]] = {}
    for grid in grids:
        runs[grid.name] = {}
        for variant in grid.variants:
            runs[grid.name][variant.name] = {}
            for seed in seeds:
                config = variant_config(grid, variant, seed, sets=sets, study_dir=study_dir)
                try:
                    preflight(config)
                except (ValueError, TypeError, FileNotFoundError) as error:
                    raise type(error)(f"grid {grid.name!r}, variant {variant.name!r}: {error}") from None
                cold_config = cold_start_config(config)
                cold_key = "cold-" + _digest(cold_config, study_dir)
                rapo_key = "rapo-" + _digest(config, study_dir)
                use = (grid.name, variant.name, seed)
                if cold_key not in stages:
                    cold_config.output_dir = str(runs_dir / cold_key)
                    stages[cold_key] = Stage("cold", cold_key, cold_config)
                if rapo_key not in stages:
                    config.output_dir = str(runs_dir / rapo_key)
                    stages[rapo_key] = Stage("rapo", rapo_key, config, cold=stages[cold_key])
                stages[cold_key].uses.append(use)
                stages[rapo_key].uses.append(use)
                runs[grid.name][variant.name][seed] = (stages[cold_key], stages[rapo_key])
    # Cold starts first within each seed, so a kill leaves as many RAPO runs ready to go as possible.
    ordered = sorted(stages.values(), key=lambda s: (s.config.seed, s.kind != "cold"))
    return Plan(ordered, runs)
