"""A folder's images ranked by score, best first, with the probability that each one is more
aesthetic than the next (the FRank preference of the paper's Eq. 3), and contact sheets of the best
and worst: a PNG grid (`contact_sheet_png`) and an HTML page of the whole ranking
(`contact_sheet_html`).

    results = Scorer("path/to/model", num_samples=4, temperature=1.0)("photos/")
    ranked = rank([r for r in results if r.score is not None])
    contact_sheet_png(ranked, "sheet.png")
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from aesr1.score.compare import DEFAULT_GAMMA, preference_probability, scored, unit_score
from aesr1.score.scales import Scale


@dataclass(frozen=True)
class RankedImage:
    """One image's place in a ranking.

    Attributes:
        rank: 1 for the best image.
        image: the image's name (its path as scored, or "<PIL image i>").
        score, std: on `scale`; std is None when the scoring mode gives none (greedy decoding),
            and then counts as 0 in `p_above_next`.
        p_above_next: P(this image more aesthetic than the next one in the ranking), Eq. 3 on the
            unit scale; None for the last image.
        result: the score result it was ranked from.
    """

    rank: int
    image: str
    score: float
    std: float | None
    scale: Scale
    p_above_next: float | None
    result: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of `ranking.jsonl`."""
        return {
            "rank": self.rank,
            "image": self.image,
            "score": self.score,
            "std": self.std,
            "scale": self.scale.name,
            "p_above_next": self.p_above_next,
        }


def rank(results: Sequence[Any], *, gamma: float = DEFAULT_GAMMA) -> list[RankedImage]:
    """Score results sorted best first, each with P(it is more aesthetic than the next), Eq. 3.

    Images are ordered by their score on the native [0, 1] scale, so results on different scales
    rank together; equal scores are ordered by image name, so the ranking does not depend on the
    input order. A missing std counts as 0.

    Raises ValueError when `results` is empty or an image has no score (naming it: leave such
    images out to rank the others).
    """
    results = list(results)
    if not results:
        raise ValueError("nothing to rank: no score results given")
    unscored = [r for r in results if getattr(r, "score", None) is None]
    if unscored:
        names = ", ".join(repr(r.image) for r in unscored[:3]) + (", …" if len(unscored) > 3 else "")
        raise ValueError(
            f"{len(unscored)} of {len(results)} images have no score ({names}): leave them out to rank the rest"
        )
    unit = [unit_score(r) for r in results]
    order = sorted(range(len(results)), key=lambda i: (-unit[i][0], results[i].image))
    mu = np.array([unit[i][0] for i in order])
    sigma = np.array([unit[i][1] for i in order])
    above_next = preference_probability(mu[:-1], sigma[:-1], mu[1:], sigma[1:], gamma)
    ranked = []
    for position, i in enumerate(order):
        score, _, scale = scored(results[i])
        ranked.append(
            RankedImage(
                rank=position + 1,
                image=results[i].image,
                score=score,
                std=getattr(results[i], "std", None),
                scale=scale,
                p_above_next=float(above_next[position]) if position < len(order) - 1 else None,
                result=results[i],
            )
        )
    return ranked


def format_score(value: float | None, scale: Scale) -> str:
    """Two decimals on a scale one unit wide, one fewer for each tenfold wider scale; "—" for None."""
    if value is None:
        return "—"
    decimals = max(0, 2 - math.floor(math.log10(scale.width)))
    return f"{value:.{decimals}f}"


def score_text(entry: RankedImage) -> str:
    """The score as "0.73 ± 0.04", or alone when there is no std."""
    text = format_score(entry.score, entry.scale)
    return text if entry.std is None else f"{text} ± {format_score(entry.std, entry.scale)}"


def _check_counts(ranked: Sequence[RankedImage], top: int, bottom: int) -> None:
    if not ranked:
        raise ValueError("nothing to show: the ranking is empty")
    for name, value in (("top", top), ("bottom", bottom)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if top == bottom == 0:
        raise ValueError("top and bottom are both 0: nothing to show")


def best_and_worst(
    ranked: Sequence[RankedImage], top: int, bottom: int
) -> tuple[list[RankedImage], list[RankedImage]]:
    """The first `top` and the last `bottom` entries, without showing an image twice when the two
    overlap (a ranking shorter than top + bottom)."""
    best = list(ranked[:top])
    worst = list(ranked[max(len(best), len(ranked) - bottom) :])
    return best, worst


def _short(name: str, limit: int) -> str:
    """`name` cut in the middle to at most `limit` characters, keeping the suffix readable."""
    if len(name) <= limit:
        return name
    keep = limit - 1
    return name[: keep - keep // 2] + "…" + name[-(keep // 2) :]


def _thumbnail(image: str, size: int):
    """The image as an RGB array at most `size` pixels on a side, or None when it cannot be read
    (an in-memory image has no file to read back)."""
    from PIL import Image, ImageOps

    if not os.path.isfile(image):
        return None
    try:
        with Image.open(image) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
            picture.thumbnail((size, size), Image.Resampling.LANCZOS)
            return np.asarray(picture)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


#: Contact sheet cell: inches per thumbnail column and row (image plus a two-line title), and dpi.
_CELL_WIDTH, _CELL_HEIGHT, _DPI = 3.0, 3.55, 100
_MAX_COLUMNS = 4


def contact_sheet_png(
    ranked: Sequence[RankedImage], path: str | os.PathLike, top: int = 8, bottom: int = 8
) -> Path:
    """A PNG grid of the `top` best and `bottom` worst images, each titled with its rank, score ±
    std and file name (an image that cannot be read back is a grey tile). Up to four columns of
    300 pixels; rows as needed. Raises ValueError for an empty ranking or bad counts."""
    _check_counts(ranked, top, bottom)
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only; no display needed
    import matplotlib.pyplot as plt

    best, worst = best_and_worst(ranked, top, bottom)
    sections = [
        (_section_title(word, entries, ranked), entries)
        for word, entries in (("Best", best), ("Worst", worst))
        if entries
    ]
    columns = min(_MAX_COLUMNS, max(len(entries) for _, entries in sections))
    rows = [math.ceil(len(entries) / columns) for _, entries in sections]
    header = 0.45  # inches for each section's heading
    figure = plt.figure(
        figsize=(columns * _CELL_WIDTH, sum(rows) * _CELL_HEIGHT + header * len(sections)),
        dpi=_DPI,
        layout="constrained",
    )
    figure.get_layout_engine().set(w_pad=0.08, h_pad=0.08)  # inches: keep tiles off the edges
    try:
        heights = [r * _CELL_HEIGHT + header for r in rows]
        panels = figure.subfigures(len(sections), 1, height_ratios=heights) if len(sections) > 1 else [figure]
        pixels = int(_CELL_WIDTH * _DPI * 2)  # twice the drawn size, so thumbnails stay sharp
        for panel, (title, entries), n_rows in zip(panels, sections, rows, strict=True):
            panel.suptitle(title, fontsize=12, fontweight="bold", x=0.02, ha="left")
            axes = panel.subplots(n_rows, columns, squeeze=False).ravel()
            for axis in axes:
                axis.set_axis_off()
            for axis, entry in zip(axes, entries, strict=False):
                _draw_tile(axis, _thumbnail(entry.image, pixels), pixels)
                name = _short(os.path.basename(entry.image) or entry.image, 34)
                # parse_math off: a "$" in a file name must not start TeX.
                axis.set_title(f"#{entry.rank}  {score_text(entry)}\n{name}", fontsize=9.5, parse_math=False)
        path = Path(path)
        figure.savefig(path, dpi=_DPI)
    finally:
        plt.close(figure)  # pyplot keeps every open figure alive otherwise
    return path


def _draw_tile(axis, picture, size: int) -> None:
    """The thumbnail scaled to fit a light square tile of `size` units and centred on it, so every
    cell has the same shape and the titles of a row line up whatever the images' aspect ratios."""
    from matplotlib.patches import Rectangle

    axis.add_patch(Rectangle((0, 0), size, size, facecolor="#f0f0f0", edgecolor="none", zorder=0))
    if picture is None:
        axis.text(size / 2, size / 2, "image not\navailable", ha="center", va="center", color="#666666")
    else:
        # Fit the longer side to the tile, enlarging small images too: drawn at their own size
        # they would be specks on the sheet.
        fit = size / max(picture.shape[:2])
        height, width = picture.shape[0] * fit, picture.shape[1] * fit
        left, top = (size - width) / 2, (size - height) / 2
        axis.imshow(picture, extent=(left, left + width, top + height, top), zorder=1)
    # After imshow, which would otherwise fit the limits to the picture.
    axis.set_xlim(0, size)
    axis.set_ylim(size, 0)
    axis.set_aspect("equal")


def _section_title(word: str, entries: Sequence[RankedImage], ranked: Sequence[RankedImage]) -> str:
    # Short enough for a one-column sheet (300 pixels); the tiles carry the ranks.
    scales = sorted({entry.scale.name for entry in entries})
    on = f"scale {scales[0]}" if len(scales) == 1 else "scales " + ", ".join(scales)
    return f"{word} {len(entries)} of {len(ranked)} · {on}"


def _image_src(image: str, folder: Path) -> str | None:
    """A URL of the image relative to the page's folder (absolute file URL across drives), or None
    when there is no file."""
    if not os.path.isfile(image):
        return None
    target = Path(image).resolve()
    try:
        relative = Path(os.path.relpath(target, folder.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return target.as_uri()
    return quote(relative, safe="/")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { padding: 0.35em 0.8em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: middle; }
th { background: #f4f4f4; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td:first-child { border-left: 4px solid #2e8b57; }
tr.worst td:first-child { border-left: 4px solid #c0392b; }
img { max-width: 160px; max-height: 160px; display: block; }
"""


def contact_sheet_html(
    ranked: Sequence[RankedImage], path: str | os.PathLike, top: int = 8, bottom: int = 8
) -> Path:
    """A self-contained HTML page (no scripts, no external styles) with a table of the whole ranking:
    rank, image, score, std, scale and P(above next); the `top` best and `bottom` worst rows show a
    thumbnail, linked by a path relative to the page so the folder can be moved with its images.
    Names are HTML-escaped. Raises ValueError for an empty ranking or bad counts."""
    _check_counts(ranked, top, bottom)
    path = Path(path)
    best, worst = best_and_worst(ranked, top, bottom)
    marked = {entry.rank: "best" for entry in best} | {entry.rank: "worst" for entry in worst}
    rows = []
    for entry in ranked:
        kind = marked.get(entry.rank)
        src = _image_src(entry.image, path.parent) if kind else None
        preview = (
            f'<img src="{html.escape(src)}" alt="{html.escape(entry.image)}" loading="lazy">' if src else ""
        )
        p_next = "—" if entry.p_above_next is None else f"{entry.p_above_next:.3f}"
        row_class = f' class="{kind}"' if kind else ""
        rows.append(
            f"<tr{row_class}>"
            f'<td class="number">{entry.rank}</td><td>{preview}</td><td>{html.escape(entry.image)}</td>'
            f'<td class="number">{format_score(entry.score, entry.scale)}</td>'
            f'<td class="number">{format_score(entry.std, entry.scale)}</td>'
            f"<td>{html.escape(entry.scale.name)}</td>"
            f'<td class="number">{p_next}</td></tr>'
        )
    title = f"Aesthetic ranking of {len(ranked)} images"
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p>Best first. <em>P(above next)</em> is the probability that the image is more aesthetic than the
next one, Φ((μ − μ<sub>next</sub>) / √(σ² + σ<sub>next</sub>² + γ)) (FRank, Aes-R1 Eq. 3, on the 0-1
scale). Thumbnails: the {len(best)} best (green) and the {len(worst)} worst (red).</p>
<table>
<thead><tr><th>Rank</th><th>Preview</th><th>Image</th><th>Score</th><th>Std</th><th>Scale</th><th>P(above next)</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
</body>
</html>
"""
    path.write_text(page, encoding="utf-8")
    return path


__all__ = [
    "RankedImage",
    "best_and_worst",
    "contact_sheet_html",
    "contact_sheet_png",
    "format_score",
    "rank",
    "score_text",
]
