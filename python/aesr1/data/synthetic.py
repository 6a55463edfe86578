"""The built-in synthetic aesthetic dataset: procedurally drawn images with a documented score.

Every image is a small RGB picture: a two-colour gradient background with one subject shape in an
accent colour, then degraded by contrast, blur, exposure and noise. The drawing parameters are the
image's *visible properties* and are recorded in ``ScoredImage.attributes`` (interface 1):

============ ============== ==========================================================================
key          range          how it is drawn
============ ============== ==========================================================================
exposure     [-1, 1]        brightness pushed towards black (< 0) or white (> 0) by ``0.8 * |exposure|``
contrast     [0, 1]         deviations from the mean grey scaled by ``0.1 + 0.9 * contrast``
harmony      [0, 1]         harmony of the palette (below); saturation and hue spacing follow it
palette      str            complementary | analogous | triadic | clashing | muted
thirds       [0, 1]         ``1 - d / (sqrt(2) / 6)`` clipped at 0, d = distance (image widths) from the
                            subject centre to the nearest rule-of-thirds power point
sharpness    [0, 1]         Gaussian blur of ``(1 - sharpness) * 1.5 * size / 56`` pixels
noise        [0, 1]         additive Gaussian pixel noise of standard deviation ``0.1 * noise``
subject      str            circle | square | triangle | diamond | ring
============ ============== ==========================================================================

The ground-truth score is the documented weighted sum (weights in :data:`SCORE_WEIGHTS`, summing to 1,
so the score lies in [0, 1]):

    score = 0.30 (1 - |exposure|) + 0.20 contrast + 0.20 harmony + 0.10 thirds
            + 0.10 sharpness + 0.10 (1 - noise)

The heaviest terms are global and visible in every pixel (mean brightness, spread of values,
saturation and hue layout), so a tiny vision tower can read them from a 56 x 56 image. Attributes are
drawn around one latent quality per image, so the scores spread over all three bins of Appendix E.2
(bad / fair / good) while each attribute still varies on its own.

:func:`write_critique` turns the same attributes into a short critique along the five dimensions of
Table 5, so the cold-start data teaches "look -> words -> score"; the critique never states the score.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from aesr1.data.records import ScoredImage
from aesr1.prompts import score_bin

#: Weights of the documented score function (module docstring); they sum to 1.
SCORE_WEIGHTS: dict[str, float] = {
    "exposure": 0.30,  # applied to 1 - |exposure|
    "contrast": 0.20,
    "harmony": 0.20,
    "thirds": 0.10,
    "sharpness": 0.10,
    "noise": 0.10,  # applied to 1 - noise
}

#: Harmony of each palette kind (before a small per-image jitter) and how it is drawn:
#: (harmony, hue offsets in degrees of the background's second colour and of the subject, saturation).
PALETTES: dict[str, tuple[float, tuple[float, float], float]] = {
    "analogous": (0.95, (30.0, -30.0), 0.65),
    "complementary": (0.85, (0.0, 180.0), 0.70),
    "triadic": (0.70, (120.0, 240.0), 0.70),
    "muted": (0.40, (20.0, 160.0), 0.12),
    "clashing": (0.10, (95.0, 200.0), 1.00),
}

#: The keys of `ScoredImage.attributes` for synthetic records (interface 1).
ATTRIBUTE_KEYS: tuple[str, ...] = (
    "exposure",
    "contrast",
    "harmony",
    "palette",
    "thirds",
    "sharpness",
    "noise",
    "subject",
)

SUBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring")

#: Rule-of-thirds power points in image-width units.
POWER_POINTS: tuple[tuple[float, float], ...] = (
    (1 / 3, 1 / 3),
    (2 / 3, 1 / 3),
    (1 / 3, 2 / 3),
    (2 / 3, 2 / 3),
)
#: Distance at which `thirds` reaches 0: the image centre is this far from every power point.
THIRDS_RANGE = math.sqrt(2.0) / 6.0
#: Radius of the subject in image widths; its centre stays this far inside the frame.
SUBJECT_RADIUS = 0.13

DEFAULT_N = 3000
DEFAULT_IMAGE_SIZE = 56


def synthetic_score(attributes: dict) -> float:
    """The documented ground-truth score of a synthetic image (module docstring), in [0, 1]."""
    w = SCORE_WEIGHTS
    score = (
        w["exposure"] * (1.0 - abs(float(attributes["exposure"])))
        + w["contrast"] * float(attributes["contrast"])
        + w["harmony"] * float(attributes["harmony"])
        + w["thirds"] * float(attributes["thirds"])
        + w["sharpness"] * float(attributes["sharpness"])
        + w["noise"] * (1.0 - float(attributes["noise"]))
    )
    return min(1.0, max(0.0, score))


def thirds_of(x: float, y: float) -> float:
    """Rule-of-thirds placement of a subject centred at (x, y) in image-width units (1 = on a point)."""
    d = min(math.hypot(x - px, y - py) for px, py in POWER_POINTS)
    return max(0.0, 1.0 - d / THIRDS_RANGE)


def _clip01(v: float) -> float:
    return min(1.0, max(0.0, v))


def draw_attributes(rng: random.Random) -> tuple[dict, tuple[float, float], float]:
    """Draws one image's attributes around a latent quality; returns (attributes, subject centre, hue).

    Each attribute's "goodness" is the latent quality plus independent Gaussian jitter (sd 0.18),
    which spreads scores over all bins while letting every attribute vary on its own.
    """
    quality = rng.random()

    def goodness() -> float:
        return _clip01(quality + rng.gauss(0.0, 0.18))

    sign = -1.0 if rng.random() < 0.5 else 1.0
    exposure = sign * (1.0 - goodness())
    contrast = goodness()
    g_harmony = goodness()
    palette = min(PALETTES, key=lambda name: abs(PALETTES[name][0] - g_harmony))
    harmony = _clip01(PALETTES[palette][0] + rng.uniform(-0.05, 0.05))
    # Place the subject at the distance from a power point that its goodness asks for, then measure
    # `thirds` from the final (clipped) centre so the attribute is exact.
    px, py = rng.choice(POWER_POINTS)
    distance = (1.0 - goodness()) * THIRDS_RANGE * 1.4
    angle = rng.uniform(0.0, 2.0 * math.pi)
    lo, hi = SUBJECT_RADIUS, 1.0 - SUBJECT_RADIUS
    cx = min(hi, max(lo, px + distance * math.cos(angle)))
    cy = min(hi, max(lo, py + distance * math.sin(angle)))
    attributes = {
        "exposure": round(exposure, 4),
        "contrast": round(contrast, 4),
        "harmony": round(harmony, 4),
        "palette": palette,
        "thirds": round(thirds_of(cx, cy), 4),
        "sharpness": round(goodness(), 4),
        "noise": round(1.0 - goodness(), 4),
        "subject": rng.choice(SUBJECTS),
    }
    return attributes, (cx, cy), rng.random()


def _rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), dtype=np.float64)


def render_image(
    attributes: dict, centre: tuple[float, float], hue: float, size: int, seed: int
) -> Image.Image:
    """Draws the picture whose visible properties are `attributes` (module docstring table)."""
    _, (offset_bg, offset_subject), saturation = PALETTES[attributes["palette"]]
    # Background: vertical gradient between the base hue and the palette's second colour.
    top = _rgb(hue, saturation, 0.75)
    bottom = _rgb(hue + offset_bg / 360.0, saturation, 0.45)
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    canvas = (1.0 - t) * top + t * bottom
    canvas = np.broadcast_to(canvas, (size, size, 3)).copy()

    # Subject: one shape in the accent colour, bright so it stands out from the background.
    accent = _rgb(hue + offset_subject / 360.0, min(1.0, saturation + 0.1), 0.95)
    mask_img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_img)
    cx, cy, r = centre[0] * size, centre[1] * size, SUBJECT_RADIUS * size
    shape = attributes["subject"]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif shape == "square":
        draw.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=255)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=255)
    mask = np.asarray(mask_img, dtype=np.float64)[:, :, None] / 255.0
    canvas = canvas * (1.0 - mask) + accent * mask

    # Contrast: scale deviations from the mean grey.
    mean = canvas.mean()
    canvas = mean + (canvas - mean) * (0.1 + 0.9 * float(attributes["contrast"]))

    # Sharpness: Gaussian blur scaled with the image size.
    radius = (1.0 - float(attributes["sharpness"])) * 1.5 * size / 56.0
    if radius > 0.05:
        img = Image.fromarray(np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8))
        canvas = np.asarray(img.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64) / 255.0

    # Exposure: push every value towards black or white.
    exposure = float(attributes["exposure"])
    canvas = canvas * (1.0 + 0.8 * exposure) if exposure < 0 else canvas + (1.0 - canvas) * 0.8 * exposure

    # Noise: additive Gaussian, seeded per image.
    noise_rng = np.random.default_rng(seed)
    canvas = canvas + noise_rng.normal(0.0, 0.1 * float(attributes["noise"]), canvas.shape)
    return Image.fromarray(np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def make_synthetic_dataset(
    root: str | Path, n: int = DEFAULT_N, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE
) -> list[ScoredImage]:
    """Draws `n` synthetic images into `root` (PNG) and returns them with their documented scores.

    Deterministic in (`n`, `seed`, `image_size`): the same call gives the same files and records.
    Files already drawn by an identical call (recorded in ``root/manifest.json``) are reused.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    key = {"n": n, "seed": seed, "image_size": image_size, "version": 1}
    reuse = False
    if manifest_path.exists():
        try:
            reuse = json.loads(manifest_path.read_text()) == key
        except json.JSONDecodeError:
            reuse = False
    if not reuse and manifest_path.exists():
        manifest_path.unlink()

    rng = random.Random(seed)
    items: list[ScoredImage] = []
    for index in range(n):
        attributes, centre, hue = draw_attributes(rng)
        item_id = f"syn{seed}-{index:06d}"
        path = root / f"{item_id}.png"
        if not (reuse and path.exists()):
            image_seed = int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "little")
            render_image(attributes, centre, hue, image_size, image_seed).save(path)
        items.append(
            ScoredImage(
                image=str(path),
                score=round(synthetic_score(attributes), 4),
                source="synthetic",
                id=item_id,
                attributes=attributes,
            )
        )
    manifest_path.write_text(json.dumps(key))
    return items


# ---------------------------------------------------------------------------------------------------
# Critiques. Every phrase is a deterministic function of the attributes, so the words carry the same
# information as the pixels. The first phrase of each tuple is the default; the others are synonyms
# used only with `vary=True`: random wording that does not depend on the image is pure noise for the
# RL stage (it makes the K completions of a group diverge early for no reason), so the embedded
# default trains on the deterministic wording.


def _level(value: float, low: float, high: float) -> int:
    return 0 if value < low else (2 if value >= high else 1)


_LIGHT = (
    ("flat light", "dull, shadowless light"),
    ("soft light", "gentle shadows"),
    ("strong light", "light that models the form"),
)
_MOOD = (
    ("dull", "muddled"),
    ("quiet", "calm"),
    ("vivid", "lively"),
)
_COMPOSITION = (
    "{subject} far from the thirds",
    "{subject} near a third",
    "{subject} on a third",
)
_COLOR = {
    "analogous": "analogous palette",
    "complementary": "complementary palette",
    "triadic": "triadic palette",
    "muted": "muted palette",
    "clashing": "clashing colours",
}
_EXPOSURE_DIRECTION = {
    -2: "very dark",
    -1: "a little dark",
    0: "well exposed",
    1: "a little bright",
    2: "washed out",
}
_TECHNIQUE = (
    ("soft and noisy", "blurred and grainy"),
    ("fairly clean", "reasonably crisp"),
    ("crisp and clean", "sharp and clean"),
)
_OVERALL = {
    "bad": ("a weak image", "a poor picture"),
    "fair": ("an average image", "a fair picture"),
    "good": ("a strong image", "a fine picture"),
}


def write_critique(item: ScoredImage, rng: random.Random | None = None, *, vary: bool = False) -> str:
    """A short critique of a synthetic image along the five dimensions of Table 5.

    One terse sentence per dimension (Light and Shadow <- contrast; Mood and Narrative <- the
    overall bin; Composition <- thirds and subject; Color <- palette; Exposure <- exposure, sharpness
    and noise), then an overall judgment that matches the score's bin. Terse on purpose: the score
    is one token of the completion, and the fewer tokens around it, the more of the SFT loss and of
    the RL signal it gets (and the faster a CPU samples it). The score is never stated: the
    text holds no digits. The wording is a deterministic function of the attributes; with
    `vary=True`, `rng` (or a fresh one) picks among synonyms of equal meaning.
    """

    def pick(options: Sequence[str]) -> str:
        if not vary:
            return options[0]
        return (rng or random.Random()).choice(list(options))

    a = item.attributes
    missing = set(ATTRIBUTE_KEYS) - set(a)
    if missing:
        raise ValueError(f"item.attributes lacks {sorted(missing)}; write_critique needs a synthetic item")
    exposure = float(a["exposure"])
    magnitude = 0 if abs(exposure) < 0.2 else (1 if abs(exposure) < 0.55 else 2)
    direction = int(math.copysign(magnitude, exposure)) if magnitude else 0
    technique = _level((float(a["sharpness"]) + 1.0 - float(a["noise"])) / 2.0, 0.4, 0.7)
    bin_name = score_bin(float(item.score))
    mood = {"bad": 0, "fair": 1, "good": 2}[bin_name]
    sentences = [
        f"Light and shadow: {pick(_LIGHT[_level(float(a['contrast']), 0.35, 0.7)])}.",
        f"Mood: {pick(_MOOD[mood])}.",
        f"Composition: {_COMPOSITION[_level(float(a['thirds']), 0.35, 0.7)].format(subject=a['subject'])}.",
        f"Color: {_COLOR[a['palette']]}.",
        f"Exposure: {_EXPOSURE_DIRECTION[direction]}, {pick(_TECHNIQUE[technique])}.",
        f"Overall: {pick(_OVERALL[bin_name])}.",
    ]
    return " ".join(sentences)
