"""The paper's training mix and the balanced bin sampling of the cold-start data.

§4.1: "a combined training set of 15K samples randomly collected from the official train set of AVA,
TAD66K and FLICKR-AES in a 2:2:1 ratio". Appendix E.2: balanced sampling over the bad [0, 0.4), fair
[0.4, 0.7) and good [0.7, 1] score bins for the AesCoT cold-start data.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from aesr1.data.records import ScoredImage
from aesr1.prompts import BINS, score_bin

logger = logging.getLogger(__name__)

#: §4.1: AVA : TAD66K : FLICKR-AES = 2 : 2 : 1, 15K images in all.
PAPER_MIX_RATIO: dict[str, int] = {"ava": 2, "tad66k": 2, "flickr-aes": 1}
PAPER_MIX_TOTAL = 15_000


def quotas(total: int, ratio: Mapping[str, float]) -> dict[str, int]:
    """Integer shares of `total` proportional to `ratio` that sum to `total` (largest remainder)."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    if not ratio or any(
        not (isinstance(w, (int, float)) and w > 0 and math.isfinite(w)) for w in ratio.values()
    ):
        raise ValueError(f"ratio must map names to positive weights, got {dict(ratio)!r}")
    weight = sum(ratio.values())
    exact = {name: total * w / weight for name, w in ratio.items()}
    shares = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(ratio, key=lambda name: (-(exact[name] - shares[name]), list(ratio).index(name)))
    for name in by_remainder[: total - sum(shares.values())]:
        shares[name] += 1
    return shares


def _rng(seed: int, name: str) -> random.Random:
    # One stream per dataset, so a dataset's draw does not change when another's size changes.
    return random.Random(f"{seed}:{name}")


def mix_datasets(
    datasets: Mapping[str, Sequence[ScoredImage]],
    total: int = PAPER_MIX_TOTAL,
    ratio: Mapping[str, float] | None = None,
    seed: int = 0,
    allow_fewer: bool = False,
) -> list[ScoredImage]:
    """Draws `total` records from `datasets` in proportion `ratio` (default 2:2:1 AVA/TAD66K/FLICKR-AES),
    without replacement, seeded; the result is shuffled with the same seed.

    A dataset with fewer records than its quota raises ValueError, unless `allow_fewer`, which then
    takes all of it (and warns): the mix is then smaller than `total`.
    """
    ratio = dict(PAPER_MIX_RATIO if ratio is None else ratio)
    missing = sorted(set(ratio) - set(datasets))
    if missing:
        raise ValueError(f"datasets lacks {missing} named in ratio {ratio}")
    shares = quotas(total, ratio)
    mix: list[ScoredImage] = []
    for name, share in shares.items():
        pool = sorted(datasets[name], key=lambda item: item.id)  # order-independent draw
        if len(pool) < share:
            if not allow_fewer:
                raise ValueError(
                    f"datasets[{name!r}] holds {len(pool)} records but the mix needs {share} "
                    f"({total} in ratio {ratio}); lower total or pass allow_fewer=True"
                )
            logger.warning("%s: only %d of the %d records the mix asks for", name, len(pool), share)
            share = len(pool)
        mix.extend(_rng(seed, name).sample(pool, share))
    random.Random(seed).shuffle(mix)
    return mix


def paper_training_mix(
    roots: Mapping[str, str | os.PathLike],
    total: int = PAPER_MIX_TOTAL,
    seed: int = 0,
    ratio: Mapping[str, float] | None = None,
    allow_fewer: bool = False,
    **load_options: Any,
) -> list[ScoredImage]:
    """The paper's training set: `total` images from the official train splits of AVA, TAD66K and
    FLICKR-AES (seeded 9:1 train part for FLICKR-AES) in a 2:2:1 ratio. `roots` maps each dataset name
    to its folder; `load_options` go to `load_dataset`."""
    from aesr1.data.registry import canonical_name, load_dataset

    roots = {canonical_name(name): root for name, root in roots.items()}
    ratio = dict(PAPER_MIX_RATIO if ratio is None else ratio)
    missing = sorted(set(ratio) - set(roots))
    if missing:
        raise ValueError(f"roots lacks the folder of {missing}")
    datasets = {name: load_dataset(name, roots[name], "train", **load_options) for name in ratio}
    return mix_datasets(datasets, total, ratio, seed, allow_fewer)


def bin_counts(items: Sequence[ScoredImage]) -> dict[str, int]:
    """Records per Appendix E.2 bin (bad / fair / good)."""
    counts = dict.fromkeys(BINS, 0)
    for item in items:
        counts[score_bin(item.score)] += 1
    return counts


def balance_bins(
    items: Sequence[ScoredImage], per_bin: int | None = None, seed: int = 0, strict: bool = False
) -> list[ScoredImage]:
    """Balanced sampling over the bad / fair / good bins (Appendix E.2): `per_bin` records from each
    bin, drawn without replacement with `seed` (default: the size of the smallest bin, so all bins are
    equal). A bin with fewer than `per_bin` records contributes all it has (with a warning), or raises
    ValueError when `strict`. The result is shuffled with the same seed."""
    if per_bin is not None and (isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 0):
        raise ValueError(f"per_bin must be a non-negative integer or None, got {per_bin!r}")
    groups: dict[str, list[ScoredImage]] = {name: [] for name in BINS}
    for item in sorted(items, key=lambda item: (item.source, item.id)):
        groups[score_bin(item.score)].append(item)
    if per_bin is None:
        per_bin = min(len(group) for group in groups.values())
    chosen: list[ScoredImage] = []
    for name, group in groups.items():
        take = per_bin
        if len(group) < per_bin:
            if strict:
                raise ValueError(f"bin {name!r} holds {len(group)} records, fewer than per_bin={per_bin}")
            logger.warning("bin %r holds only %d of the %d records asked for", name, len(group), per_bin)
            take = len(group)
        chosen.extend(_rng(seed, name).sample(group, take))
    random.Random(seed).shuffle(chosen)
    return chosen
