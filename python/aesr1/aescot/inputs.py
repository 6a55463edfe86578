"""Image-score pairs for the CLI's ``--data``, loaded through `aesr1.data` (interface 4).

Any dataset spec of `aesr1.data.parse_data_spec` works (``synthetic``, ``ava:/data/AVA``,
``csv:/data/mine.csv?range=1..10``, several comma-separated). As a shortcut, a bare path to a
``.csv``/``.jsonl`` score file is read as ``csv:``/``jsonl:`` with `score_range`.
"""

from __future__ import annotations

from pathlib import Path

from aesr1.data.records import ScoredImage

SCORE_FILE_SUFFIXES = (".csv", ".jsonl")


def is_score_file(spec: str) -> bool:
    """A bare path to a score file (no ``name:`` prefix)."""
    return spec.lower().endswith(SCORE_FILE_SUFFIXES) and Path(spec).is_file()


def _names_a_file(spec: str) -> bool:
    """Whether `spec` is meant as a bare score-file path rather than a dataset spec: a score-file
    suffix and no ``name:`` prefix (a drive letter such as ``C:``, or a colon after a folder, is
    part of a path)."""
    if not spec.lower().endswith(SCORE_FILE_SUFFIXES) or "," in spec:
        return False
    name, colon, _ = spec.partition(":")
    return not colon or (len(name) == 1 and name.isalpha()) or any(c in name for c in "/\\.")


def load_items(
    spec: str,
    *,
    split: str | None = None,
    score_range: tuple[float, float] = (0.0, 1.0),
    progress: bool = True,
) -> list[ScoredImage]:
    """The items of `spec`; `split` defaults to "train" for datasets (AesCoT is built from training
    data, Appendix E.2) and "all" for a bare score file, whose rows are all the user's own."""
    from aesr1.data import load_dataset, parse_data_spec

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"--data must be a dataset spec or a score file, got {spec!r}")
    if is_score_file(spec):
        name = "csv" if spec.lower().endswith(".csv") else "jsonl"
        return list(load_dataset(name, spec, split or "all", score_range=score_range, progress=progress))
    if _names_a_file(spec):
        path = Path(spec)
        cause = "is a directory" if path.is_dir() else "not found"
        raise FileNotFoundError(f"--data: score file {spec!r} {cause}")
    items: list[ScoredImage] = []
    for entry in parse_data_spec(spec):
        items.extend(entry.load(split or "train", progress=progress))
    return items
