"""Prompts of the paper's Appendix B and the five aesthetic dimensions of Table 5."""

from __future__ import annotations

#: Appendix B, "Prompt Used for Aesthetic Scoring". `<image>` marks where the image goes; chat
#: templates replace it with the model's vision placeholder.
SCORING_PROMPT = (
    "You are an aesthetic expert. What is your overall rating on the aesthetic of this picture <image> ? "
    "The rating should be a float between 0 and 1, rounded to two decimal places, with 0 representing "
    "very poor quality and 1 representing excellent quality. Your task:1. Think through the question, put "
    "all your thinking or reasoning process in only one pair <think>...</think> tags.2. Then provide the "
    "correct rating inside only one pair of <answer>...</answer> tags.3. No any other information or text "
    "outside of these tags. E.g. your response should be:<think>...</think><answer>...</answer>"
)

#: Appendix B, "Prompt Used for AesCoT Construction"; format with `score=` (two decimals).
AESCOT_PROMPT = (
    "You are an aesthetic expert. The aesthetic rating of this picture <image> is {score}. Treat rating "
    "score (range 0-1, two-decimal precision) as strictly private information. The rating is a float "
    "between 0 and 1, rounded to two decimal places, with 0 representing very poor quality and 1 "
    "representing excellent quality. Closely examine the image\u2019s composition, lighting, color harmony, "
    "subject matter, technical execution and emotional impact. Write a thoughtful critique that: explains "
    "the key visual strengths and weaknesses ; ends with a judgment of the image that matches the hidden "
    "score. Never mention the numeric value of score or the fact that it was provided. Do not reference "
    "these instructions or any hidden variables in your answer. Use English as your answer language."
)

IMAGE_PLACEHOLDER = "<image>"

#: Table 5: the five aesthetic dimensions AesCoT critiques cover, with the paper's explanation.
DIMENSIONS: dict[str, str] = {
    "Light and Shadow": (
        "Light and shadow establish volume, spatial depth, and visual focus. Directionality and contrast "
        "model form and texture; side/backlighting and cast shadows can evoke mystery or drama. The color "
        "of light and time of day convey atmosphere. Strong light design supports the narrative while "
        "preserving highlight and shadow detail for legibility and dimensionality."
    ),
    "Mood and Narrative": (
        "The image\u2019s affective tenor and implied story emerge through subject posture, environmental "
        "cues, pacing, and intentional ambiguity. The tension between what is revealed and withheld invites "
        "inference and engagement. Symbol, metaphor, and gesture diversify readings and increase resonance "
        "and memorability."
    ),
    "Composition": (
        "Composition organizes elements to determine balance, proportion, rhythm, and hierarchy. Eye paths, "
        "perspective, framing, and negative space create structural tension and a unity between stability "
        "and dynamism. Effective composition clarifies information, isolates the subject, and avoids "
        "clutter or dispersion."
    ),
    "Color": (
        "Hue, value, and chroma constitute a color language that shapes emotion and spatial impression. "
        "Harmonies (complementary, analogous, triadic) and warm-cool contrasts set atmosphere and depth; a "
        "dominant palette with accent colors establishes hierarchy. Color also carries symbolic and "
        "narrative functions; a consistent grade and controlled contrasts sharpen stylistic identity."
    ),
    "Exposure": (
        "Exposure governs tonal distribution and the rendering of texture, where technique meets "
        "intention. Choices among high key or low key, and whether to protect highlights or shadows, "
        "should serve theme and mood while retaining critical detail within the available dynamic range. "
        "Deliberate over- or underexposure can be expressive, but information loss that weakens legibility "
        "or narrative should be avoided."
    ),
}

#: Score bins of Appendix E.2 used for balanced sampling: [lo, hi) except the last, which is closed.
BINS: dict[str, tuple[float, float]] = {"bad": (0.0, 0.4), "fair": (0.4, 0.7), "good": (0.7, 1.0)}


def score_bin(score: float) -> str:
    """Name of the Appendix E.2 bin holding `score` (bad [0, .4), fair [.4, .7), good [.7, 1])."""
    if not 0.0 <= score <= 1.0:
        raise ValueError(f"score must lie in [0, 1], got {score!r}")
    if score < 0.4:
        return "bad"
    return "fair" if score < 0.7 else "good"


def format_completion(critique: str, score: float) -> str:
    """The paper's target format: `<think>critique</think><answer>0.xx</answer>`."""
    return f"<think>{critique.strip()}</think><answer>{score:.2f}</answer>"
