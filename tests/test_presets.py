"""Scoring presets against the released code they reproduce.

The literals below are copied verbatim from the released files named in each comment; the reference
parsers are the released parsing code with only the random-score fallback replaced by None.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aesr1.modeling.chat import user_message
from aesr1.prompts import SCORING_PROMPT
from aesr1.rewards import parse_scores
from aesr1.score.presets import PRESETS, Preset, chat_messages, get_preset, render_prompt
from aesr1.score.scales import UNIT, Scale

# --- Released strings, verbatim -------------------------------------------------------------------

# TianheWu/VisualQuality-R1 README.md @ a16dcdb64eea03a27afdb411d43cc1c9d723a1b2 (every script in it).
VQ_PROMPT = (
    "You are doing the image quality assessment task. Here is the question: "
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 and 5, "
    "rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality."
)
# Same file, "Thinking mode for inference" and the vLLM script; also
# src/open-r1-multimodal/src/open_r1/vlm_modules/qwen_module.py get_question_template("scoring").
VQ_THINKING_TEMPLATE = "{Question} First output the thinking process in <think> </think> tags and then output the final answer with only one score in <answer> </answer> tags."  # noqa: E501
# Same file, "Non-Thinking Inference".
VQ_NON_THINKING_TEMPLATE = (
    "{Question} Please only output the final answer with only one score in <answer> </answer> tags."
)

# ssssmark/AesR1 data/example.json @ 6e19b49be9905f574642bdbc0e9885f2161ca147 (unchanged since the
# initial commit d1da3faa397461d58e72760c83e95ad985cd742d): messages[0].content, as JSON-decoded.
AESR1_RELEASE_PROMPT = "\nYou are an aesthetic expert. What is your overall rating on the aesthetic of this picture <image> ? The rating should be a float between 1 and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing excellent quality. Your task:\n1. Think through the question, put all your thinking or reasoning process in only one pair <think>...</think> tags.\n2. Then provide the correct rating inside only one pair of <answer>...</answer> tags.\n3. No any other information or text outside of these tags. \n\nE.g. your response should be:\n<think>...</think><answer>...</answer>\n\n"  # noqa: E501

# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json (the same in Qwen2-VL-7B-Instruct): the template
# the released checkpoints' processors apply.
QWEN2_VL_CHAT_TEMPLATE = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"  # noqa: E501


def visualquality_reference(model_output: str) -> float | None:
    """VisualQuality-R1 README.md @ a16dcdb, score_batch_image, with random.randint(1, 5) -> None."""
    try:
        model_output_matches = re.findall(r"<answer>(.*?)</answer>", model_output, re.DOTALL)
        model_answer = model_output_matches[-1].strip() if model_output_matches else model_output.strip()
        score = float(re.search(r"\d+(\.\d+)?", model_answer).group())
    except:  # noqa: E722 - the released code's bare except
        score = None
    return score


def aesr1_release_reference(content: str) -> float | None:
    """ssssmark/AesR1 train/rapo/src/open-r1-multimodal/src/open_r1/rapo.py @ 6e19b49 (error_reward,
    rank_reward and extract_first_number), with the random fallbacks -> None."""

    def extract_first_number(model_answer):
        match = re.search(r"-?\d+(\.\d+)?", model_answer)
        if match:
            return float(match.group())
        else:
            return None

    try:
        content_matches = re.findall(r"<answer>(.*?)</answer>", content, re.DOTALL)
        student_answer = content_matches[-1].strip() if content_matches else content.strip()
        pred = extract_first_number(student_answer)
    except:  # noqa: E722 - the released code's bare except
        pred = None
    return pred


def render(messages, **kwargs) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=QWEN2_VL_CHAT_TEMPLATE, add_generation_prompt=True, **kwargs
    )
    return rendered[0]


# --- Prompts ----------------------------------------------------------------------------------------


def test_aesr1_is_this_projects_prompt_and_scale():
    preset = get_preset("aesr1")
    assert preset.prompt == SCORING_PROMPT
    assert preset.system_prompt is None
    assert preset.scale == UNIT and preset.decimals == 2
    assert preset.source == "aesr1"


def test_aesr1_generation_settings_are_the_rapo_rollout_defaults():
    from aesr1.train.config import RAPOConfig

    preset, defaults = get_preset("aesr1"), RAPOConfig()
    assert (preset.temperature, preset.top_p, preset.top_k, preset.max_new_tokens) == (
        defaults.temperature,
        defaults.top_p,
        defaults.top_k,
        defaults.max_completion_length,
    )
    assert preset.do_sample


def test_visualquality_prompts_are_the_released_strings_image_first():
    thinking = get_preset("visualquality-r1")
    non_thinking = get_preset("visualquality-r1-nothink")
    assert thinking.prompt == "Picture 1: <image>" + VQ_THINKING_TEMPLATE.format(Question=VQ_PROMPT)
    assert non_thinking.prompt == "Picture 1: <image>" + VQ_NON_THINKING_TEMPLATE.format(Question=VQ_PROMPT)
    for preset in (thinking, non_thinking):
        assert preset.scale == Scale(1.0, 5.0) and preset.decimals == 2
        assert preset.system_prompt is None
        assert preset.source.startswith("TianheWu/VisualQuality-R1 README.md@a16dcdb64eea")
        # README vLLM script: SamplingParams(max_tokens=512, temperature=0.1, top_k=50, top_p=1.0).
        assert (preset.temperature, preset.top_p, preset.top_k, preset.max_new_tokens) == (0.1, 1.0, 50, 512)
        assert preset.do_sample


@pytest.mark.parametrize(
    ("name", "template"),
    [("visualquality-r1", VQ_THINKING_TEMPLATE), ("visualquality-r1-nothink", VQ_NON_THINKING_TEMPLATE)],
)
def test_visualquality_renders_exactly_as_the_released_messages(name, template):
    """The released scripts send [image, text] with add_vision_id=True and no system turn; our
    builder, given the preset's prompt, must produce the same chat string."""
    pytest.importorskip("transformers")
    released = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": "img.jpg"},
                {"type": "text", "text": template.format(Question=VQ_PROMPT)},
            ],
        }
    ]
    ours = render(user_message(get_preset(name).prompt))
    assert ours == render(released, add_vision_id=True)
    assert ours.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert ours.count("<|image_pad|>") == 1


def test_aesr1_release_prompt_is_the_released_string():
    preset = get_preset("aesr1-release")
    assert preset.prompt == AESR1_RELEASE_PROMPT
    assert preset.prompt != SCORING_PROMPT
    assert preset.system_prompt is None
    assert preset.scale == UNIT and preset.decimals == 2
    assert preset.source.startswith("ssssmark/AesR1 data/example.json@6e19b49be990")
    # README: `vllm_infer.py --template qwen2_vl --temperature 0.6`; LLaMA-Factory scripts/vllm_infer.py
    # defaults for the rest (top_p=0.7, top_k=50, max_new_tokens=1024).
    assert (preset.temperature, preset.top_p, preset.top_k, preset.max_new_tokens) == (0.6, 0.7, 50, 1024)


def test_aesr1_release_renders_as_llama_factory_does():
    """LLaMA-Factory's qwen2_vl template (src/llamafactory/data/template.py @ 6ffebe5f) wraps the
    user content in `<|im_start|>user\\n{{content}}<|im_end|>\\n<|im_start|>assistant\\n` after its
    default system turn and replaces `<image>` in place with `<|vision_start|><|image_pad|><|vision_end|>`
    (mm_plugin.Qwen2VLPlugin, unexpanded as vllm_infer.py leaves it)."""
    pytest.importorskip("transformers")
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
        + AESR1_RELEASE_PROMPT.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")
        + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render(user_message(get_preset("aesr1-release").prompt)) == expected


def test_every_preset_has_one_image_and_a_named_source():
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.prompt.count("<image>") == 1
        assert preset.source == "aesr1" or re.fullmatch(r"\S+/\S+ \S+@[0-9a-f]{40}", preset.source)


# --- Parsing ----------------------------------------------------------------------------------------

VISUALQUALITY_CASES = [
    ("<think>Sharp, well exposed.</think> <answer>3.87</answer>", 3.87),
    ("<answer>\n  4.2 \n</answer>", 4.2),
    ("<answer>4</answer>", 4.0),
    ("<answer>The score is 2.5 out of 5</answer>", 2.5),
    # Last block wins (findall(...)[-1]).
    ("<answer>1.00</answer> on reflection <answer>4.50</answer>", 4.5),
    # No block: the first number of the whole completion.
    ("I would rate it 3.3 overall", 3.3),
    ("<think>rate 2.1</think><answer>", 2.1),
    # A block that holds no number fails even if the text elsewhere has one.
    ("<think>about 3.1</think><answer>good</answer>", None),
    ("<think>3</think><answer></answer>", None),
    # No range check, no sign: the released regex reads what it finds.
    ("<answer>7.5</answer>", 7.5),
    ("<answer>-2.0</answer>", 2.0),
    ("<answer>0</answer>", 0.0),
    ("<answer>.5</answer>", 5.0),
    ("<answer>3.</answer>", 3.0),
    ("<answer>1e3</answer>", 1.0),
    ("<answer>3,75</answer>", 3.0),
    # Unicode decimal digits are `\d`, and float() reads them.
    ("<answer>\u0663.\u0665</answer>", 3.5),
    ("<answer>\uff14.\uff12</answer>", 4.2),
    # Lazy content: the first closing tag after an opening one ends the block.
    ("<answer>2</answer>3</answer>", 2.0),
    ("<answer><answer>4.4</answer>", 4.4),
    ("", None),
    ("no digits at all", None),
    ("<answer>" + "9" * 400 + "</answer>", math.inf),
]


@pytest.mark.parametrize(("completion", "expected"), VISUALQUALITY_CASES)
def test_visualquality_parse_examples(completion, expected):
    for name in ("visualquality-r1", "visualquality-r1-nothink"):
        assert get_preset(name).parse(completion) == expected
    assert visualquality_reference(completion) == expected


AESR1_RELEASE_CASES = [
    ("<think>Balanced composition.</think><answer>0.62</answer>", 0.62),
    ("<answer> 0.80 </answer>", 0.8),
    ("0.25", 0.25),
    # extract_first_number keeps a minus sign and does not range-check.
    ("<answer>-0.3</answer>", -0.3),
    ("<answer>3.75</answer>", 3.75),
    ("<answer>0.1</answer><answer>0.9</answer>", 0.9),
    ("<think>0.5</think><answer>n/a</answer>", None),
    ("<answer>--1</answer>", -1.0),
    ("<answer>-.5</answer>", 5.0),
    ("nothing", None),
]


@pytest.mark.parametrize(("completion", "expected"), AESR1_RELEASE_CASES)
def test_aesr1_release_parse_examples(completion, expected):
    assert get_preset("aesr1-release").parse(completion) == expected
    assert aesr1_release_reference(completion) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>Strong light.</think><answer>0.62</answer>", 0.62),
        ("<answer> 0.8 </answer>", 0.8),
        ("<answer>1.7</answer>", None),  # out of range
        ("<answer>-0.3</answer>", None),
        ("0.25", None),  # no tags
        ("<answer>0.4</answer><answer>about 0.9</answer>", 0.4),
        ("<answer>0.5", None),
    ],
)
def test_aesr1_parse_is_parse_scores(completion, expected):
    value = get_preset("aesr1").parse(completion)
    native = float(parse_scores([completion])[0])
    if expected is None:
        assert value is None and math.isnan(native)
    else:
        assert value == pytest.approx(expected) == native


def test_parse_many_keeps_order_and_counts_failures():
    preset = get_preset("visualquality-r1")
    completions = ["<answer>4.1</answer>", "garbled", "<answer>2</answer>"]
    assert preset.parse_many(completions) == [4.1, None, 2.0]
    assert preset.parse_many(iter(completions)) == [4.1, None, 2.0]
    assert preset.parse_many([]) == []


def test_unparseable_answers_are_never_replaced_by_random_scores():
    """The released code substitutes random.randint(1, 5); the preset must report None every time,
    whatever the random state."""
    for seed in range(5):
        random.seed(seed)
        for name in PRESETS:
            assert get_preset(name).parse("<answer>excellent</answer>") is None


def test_parse_rejects_non_strings():
    preset = get_preset("visualquality-r1")
    with pytest.raises(TypeError):
        preset.parse(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        preset.parse_many("<answer>3</answer>")
    with pytest.raises(TypeError):
        preset.parse_many([b"<answer>3</answer>"])  # type: ignore[list-item]


# Text built from the pieces the parsers look at, so tags, partial tags and numbers collide often.
_PIECES = st.sampled_from(
    ["<answer>", "</answer>", "<answer", "answer>", "</", "<think>", "</think>", "-", ".", " ", "\n", "\t",
     "0", "1", "3", "9", "\u0663", "\uff14", "e", "x", "<", ">", "\ud800", "\x00"]
)  # fmt: skip
tag_text = st.lists(_PIECES, max_size=40).map("".join)
any_text = st.one_of(st.text(max_size=200), tag_text)


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_visualquality_parse_matches_released_code(text):
    assert get_preset("visualquality-r1").parse(text) == visualquality_reference(text)


@settings(max_examples=400, deadline=None)
@given(any_text)
def test_aesr1_release_parse_matches_released_code(text):
    assert get_preset("aesr1-release").parse(text) == aesr1_release_reference(text)


@settings(max_examples=300, deadline=None)
@given(any_text)
def test_parse_never_raises_and_returns_a_float_or_none(text):
    for preset in PRESETS.values():
        value = preset.parse(text)
        assert value is None or isinstance(value, float)
        assert not (value is not None and math.isnan(value))


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.0), st.text(alphabet=" \n\t", max_size=3), st.text(max_size=40))
def test_aesr1_presets_read_their_own_format(score, pad, critique):
    critique = critique.replace("<", "")
    completion = f"<think>{critique}</think><answer>{pad}{score:.2f}{pad}</answer>"
    assert get_preset("aesr1").parse(completion) == pytest.approx(round(score, 2))
    assert get_preset("aesr1-release").parse(completion) == pytest.approx(round(score, 2))


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 5.0), st.text(max_size=40))
def test_visualquality_reads_its_own_format(score, critique):
    critique = critique.replace("<", "")
    completion = f"<think>{critique}</think> <answer>{score:.2f}</answer>"
    assert get_preset("visualquality-r1").parse(completion) == pytest.approx(round(score, 2))


@pytest.mark.parametrize(
    "text",
    [
        "<answer>" * 100_000 + "3",
        "<answer>" + "</answe" * 100_000,
        "-" * 500_000 + "x",
        ("<answer>1</answer>" * 50_000),
    ],
)
def test_parse_is_linear_on_adversarial_text(text):
    """The released lazy regex rescans the rest of the text from every unclosed `<answer>`
    (about 4e10 steps for the first case); the presets must not."""
    start = time.perf_counter()
    for preset in PRESETS.values():
        preset.parse(text)
    assert time.perf_counter() - start < 5.0


# --- Lookup, validation, system prompt ---------------------------------------------------------------


def test_get_preset_by_name_and_by_value():
    for name, preset in PRESETS.items():
        assert get_preset(name) is preset
        assert get_preset(preset) is preset


def test_unknown_preset_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown preset 'visualquality'") as info:
        get_preset("visualquality")
    for name in PRESETS:
        assert name in str(info.value)
    with pytest.raises(TypeError):
        get_preset(3)  # type: ignore[arg-type]


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("aesr1").temperature = 0.5  # type: ignore[misc]


def _custom(**changes) -> Preset:
    base = dict(
        name="custom",
        prompt="<image> Rate it.",
        system_prompt=None,
        scale="0-1",
        decimals=2,
        source="aesr1",
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=16,
    )
    base.update(changes)
    return Preset(**base)


def test_custom_preset_defaults_to_this_projects_parser():
    preset = _custom()
    assert preset.scale == UNIT  # a "lo-hi" string is read
    assert preset.parse("<answer>0.30</answer>") == pytest.approx(0.3)
    assert preset.parse("<answer>3</answer>") is None
    assert (preset.top_k, preset.do_sample) == (0, True)


@pytest.mark.parametrize(
    "changes",
    [
        {"prompt": "Rate it."},
        {"prompt": "<image><image> Rate it."},
        {"name": ""},
        {"decimals": -1},
        {"decimals": True},
        {"max_new_tokens": 0},
        {"temperature": 0.0},
        {"temperature": math.nan},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"scale": "5-1"},
        {"system_prompt": 3},
        {"parser": "not callable"},
        {"scale": "1-5"},  # the default parser reads 0-1 answers only
    ],
)
def test_invalid_presets_are_rejected(changes):
    with pytest.raises(ValueError):
        _custom(**changes)


def test_greedy_preset_may_have_zero_temperature():
    assert _custom(temperature=0.0, do_sample=False).temperature == 0.0


def test_custom_scale_with_its_own_parser():
    preset = _custom(scale="1-10", parser=lambda text: float(text) if text.isdigit() else None)
    assert preset.parse("7") == 7.0 and preset.parse("seven") is None


def test_chat_messages_adds_the_system_turn_first():
    assert chat_messages("visualquality-r1") == user_message(get_preset("visualquality-r1").prompt)
    preset = _custom(system_prompt="You are a careful photo critic.")
    messages = chat_messages(preset)
    assert messages[0] == {"role": "system", "content": "You are a careful photo critic."}
    assert messages[1:] == user_message(preset.prompt)


def test_render_prompt_replaces_the_default_system_turn():
    pytest.importorskip("transformers")

    class Processor:
        def apply_chat_template(self, messages, add_generation_prompt, tokenize):
            assert add_generation_prompt and not tokenize
            return render(messages)

    with_system = render_prompt(Processor(), _custom(system_prompt="Be terse."))
    assert with_system == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|> Rate it.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert "You are a helpful assistant." in render_prompt(Processor(), _custom())
