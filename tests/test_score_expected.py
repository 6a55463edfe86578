"""The `expected` score mode: answer strings, answer prefixes and the exact expectation over the
model's digit probabilities, checked against a naive single-row reference, a model with known logits,
batch invariance and a tokenizer with merged number tokens."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from aesr1.score.expected import ExpectedScore, answer_prefix, answer_strings

pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from aesr1.score.expected import _build_tree, expected_scores  # noqa: E402

TOL = 1e-6
DIGITS = [str(d) for d in range(10)]


# --- answer strings and prefixes ---------------------------------------------------------------


def test_answer_strings_unit_scale():
    strings = answer_strings(0.0, 1.0, 2)
    assert strings == [f"{i / 100:.2f}" for i in range(101)]
    assert strings[0] == "0.00" and strings[-1] == "1.00" and len(strings) == 101


def test_answer_strings_other_scales():
    strings = answer_strings(1, 5, 2)
    assert len(strings) == 401 and strings[0] == "1.00" and strings[-1] == "5.00" and "3.07" in strings
    assert answer_strings(0, 1, 1) == [f"{i / 10:.1f}" for i in range(11)]
    # negative scales never write "-0.00"
    signed = answer_strings(-1, 1, 2)
    assert len(signed) == 201 and signed[0] == "-1.00" and "-0.01" in signed and "0.00" in signed
    assert "-0.00" not in signed
    # 0 decimals are fine while no answer is a prefix of another
    assert answer_strings(1, 5, 0) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize(
    "lo, hi, decimals, match",
    [
        (1.0, 0.0, 2, "lo < hi"),
        (0.5, 0.5, 2, "lo < hi"),
        (0.0, 1.005, 2, "more than 2 decimals"),
        (0.001, 1.0, 2, "more than 2 decimals"),
        (0.0, float("inf"), 2, "finite"),
        (float("nan"), 1.0, 2, "finite"),
        (0.0, 1.0, -1, "decimals"),
        (0.0, 1.0, 2.0, "decimals"),
        (0.0, 1.0, True, "decimals"),
        (0.0, 1.0, 13, "decimals"),
        (0.0, 1e9, 2, "answers, more than"),
        (1, 10, 0, "prefix"),
        ("0", 1, 2, "finite"),
    ],
)
def test_answer_strings_bad_args(lo, hi, decimals, match):
    with pytest.raises(ValueError, match=match):
        answer_strings(lo, hi, decimals)


@pytest.mark.parametrize(
    "completion, prefix",
    [
        ("<think>ok</think><answer>0.73</answer>", "<think>ok</think><answer>"),
        ("<think>ok</think>\n<answer> 0.7", "<think>ok</think>\n<answer>"),
        ("<answer>", "<answer>"),
        ("<think>a</think><answer>0.1</answer><answer>0.9</answer>", "<think>a</think><answer>"),
        # the first <answer> wins even inside the critique
        ("<think>write <answer> last</think><answer>0.5", "<think>write <answer>"),
        # no <answer>: read right after the first </think>
        ("<think>ok</think>", "<think>ok</think><answer>"),
        ("<think>ok</think>0.73", "<think>ok</think><answer>"),
        ("<think>a</think>b</think>", "<think>a</think><answer>"),
        ("", None),
        ("0.73", None),
        ("<think>never closed", None),
        ("</answer>0.5", None),
        ("<ANSWER>0.5", None),
    ],
)
def test_answer_prefix(completion, prefix):
    assert answer_prefix(completion) == prefix


def test_answer_prefix_needs_a_string():
    with pytest.raises(TypeError):
        answer_prefix(None)


# --- the tree on synthetic vocabularies -------------------------------------------------------


def _texts(node, out):
    out.append(node.text)
    for child in node.children:
        _texts(child, out)
    return out


def test_tree_one_digit_per_token():
    """Qwen-style tokens: leading digit, ".", tenths, hundredths."""
    tokens = [(i, d) for i, d in enumerate(DIGITS)] + [(10, "."), (11, "..")]
    root = _build_tree(tokens, answer_strings(0, 1, 2), max_nodes=4096)
    texts = _texts(root, [])
    # root, "0" "1", "0." "1.", "0.0".."0.9" "1.0", 100 + 1 leaves
    assert len(texts) == 1 + 2 + 2 + 11 + 101
    assert sorted(t for t in texts if len(t) == 4) == answer_strings(0, 1, 2)
    with pytest.raises(ValueError, match="max_nodes=100"):
        _build_tree(tokens, answer_strings(0, 1, 2), max_nodes=100)


def test_tree_merged_tokens_and_dead_ends():
    """Merged tokens give several paths per answer; a token that starts an answer no path can finish
    is pruned so it takes no probability."""
    tokens = [(0, "0"), (1, "1"), (2, "0."), (3, "73"), (4, "7"), (5, "3")]  # no "." alone
    root = _build_tree(tokens, answer_strings(0, 1, 2), max_nodes=4096)
    assert [child.text for child in root.children] == ["0."]  # "0" and "1" lead nowhere without "."
    leaves = [t for t in _texts(root, []) if len(t) == 4]
    spelled = [f"0.{x}{y}" for x in "0137" for y in "0137"]
    assert sorted(leaves) == sorted([*spelled, "0.73"])  # "0.73" twice: 0.|7|3 and 0.|73
    with pytest.raises(ValueError, match="no tokens"):
        _build_tree([(0, "5")], answer_strings(0, 1, 2), max_nodes=4096)


# --- a model with designed logits -------------------------------------------------------------


class LastTokenModel(torch.nn.Module):
    """Logits that are a fixed function of the last input token, whatever came before."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.table[input_ids])


@pytest.fixture(scope="module")
def tiny():
    from aesr1.modeling.tiny import build_tiny_model

    model, processor = build_tiny_model(seed=0)
    model.eval()
    return model, processor


def _number_tokens(tokenizer, charset):
    """Token id -> text of every non-special token spelled only with `charset` (for the reference)."""
    special = set(tokenizer.all_special_ids)
    found = {}
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        usable = token_id not in special and text and set(text) <= charset
        if usable and tokenizer.convert_ids_to_tokens(token_id) == text:
            found[token_id] = text
    return found


def _softmax(values):
    values = np.asarray(values, dtype=np.float64)
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def test_designed_logits_known_expectation(tiny):
    """The tiny BPE vocabulary has "." , digits and "00".."99": p("0.xy") = P(0) (q(x) r_x(y) + w(xy))
    and p("1.00") = P(1), with the renormalised softmaxes of the designed rows."""
    _, processor = tiny
    tokenizer = processor.tokenizer
    numbers = _number_tokens(tokenizer, frozenset("0123456789."))
    pairs = [a + b for a in DIGITS for b in DIGITS]
    assert sorted(numbers.values()) == sorted([".", "..", *DIGITS, *pairs])
    ids = {text: token_id for token_id, text in numbers.items()}
    answer_id = tokenizer.convert_tokens_to_ids("<answer>")

    generator = torch.Generator().manual_seed(7)
    vocab = len(tokenizer)
    table = torch.randn((vocab, vocab), generator=generator, dtype=torch.float64) * 3.0
    # large mass on tokens that are never allowed there: the renormalisation must ignore it
    table[answer_id, ids["7"]] = 30.0
    table[answer_id, tokenizer.convert_tokens_to_ids("</answer>")] = 25.0
    table[ids["."], ids[".."]] = 40.0
    table = table.to(torch.float32)
    model = LastTokenModel(table)
    model.train()  # put back after the call, evaluated in eval mode

    image = Image.new("RGB", (56, 56), (90, 140, 30))
    (result,) = expected_scores(model, processor, [image], ["<think>fine</think><answer>0.4</answer>"])
    assert model.training

    row = table.to(torch.float64).numpy()
    first = _softmax(row[answer_id, [ids["0"], ids["1"]]])
    after_dot = _softmax(row[ids["."], [ids[d] for d in DIGITS] + [ids[p] for p in pairs]])
    q, w = after_dot[:10], after_dot[10:].reshape(10, 10)
    expected = {}
    for x in range(10):
        r = _softmax(row[ids[str(x)], [ids[d] for d in DIGITS]])
        for y in range(10):
            expected[f"0.{x}{y}"] = first[0] * (q[x] * r[y] + w[x, y])
    expected["1.00"] = first[1]
    mean = sum(p * float(s) for s, p in expected.items())
    std = math.sqrt(sum(p * (float(s) - mean) ** 2 for s, p in expected.items()))

    assert list(result.distribution) == answer_strings(0, 1, 2)
    assert math.isclose(sum(result.distribution.values()), 1.0, abs_tol=1e-12)
    for answer, probability in expected.items():
        assert result.distribution[answer] == pytest.approx(probability, abs=TOL)
    assert result.score == pytest.approx(mean, abs=TOL)
    assert result.std == pytest.approx(std, abs=TOL)
    assert result.prefix == "<think>fine</think><answer>" and result.reason is None


def test_too_many_nodes_raises_before_any_forward(tiny):
    _, processor = tiny

    class Unusable(torch.nn.Module):
        def forward(self, **kwargs):
            raise AssertionError("no forward pass expected")

    image = Image.new("RGB", (56, 56))
    with pytest.raises(ValueError, match="max_nodes=20"):
        expected_scores(Unusable(), processor, [image], ["<answer>"], max_nodes=20)


def test_argument_checks(tiny):
    model, processor = tiny
    image = Image.new("RGB", (56, 56))
    with pytest.raises(ValueError, match="rows"):
        expected_scores(model, processor, [image], [])
    with pytest.raises(TypeError, match="completions\\[0\\]"):
        expected_scores(model, processor, [image], [None])
    with pytest.raises(ValueError, match="lo < hi"):
        expected_scores(model, processor, [image], ["<answer>"], lo=1, hi=0)
    assert expected_scores(model, processor, [], []) == []


# --- the tiny Qwen2.5-VL against a naive reference ---------------------------------------------


def brute_force(model, processor, image, completion, lo=0.0, hi=1.0, decimals=2):
    """p(s) for every answer s by enumerating each token path spelling s and teacher-forcing it one
    row at a time (no batching, no padding), all in float64 after the logits."""
    from aesr1.modeling.chat import build_inputs, join_completions, model_inputs

    answers = answer_strings(lo, hi, decimals)
    prefixes = {a[:k] for a in answers for k in range(len(a) + 1)}
    tokens = _number_tokens(processor.tokenizer, frozenset("".join(answers)))
    # every character has a one-character token here, so no allowed token leads to a dead end
    assert set("".join(answers)) <= set(tokens.values())
    prompt_batch = build_inputs(processor, [image])
    with_prefix = build_inputs(processor, [image], completions=[answer_prefix(completion)])
    prefix_ids = with_prefix["completion_ids"][0, : int(with_prefix["completion_mask"][0].sum()) - 1].tolist()

    cache = {}

    def probabilities(path):
        if path not in cache:
            row = torch.tensor([prefix_ids + list(path)])
            batch = join_completions(prompt_batch, row, torch.ones_like(row))
            with torch.no_grad():
                logits = model(**model_inputs(batch)).logits[0, -1]
            cache[path] = torch.softmax(logits.to(torch.float64), dim=-1).numpy()
        return cache[path]

    def paths(rest):
        if not rest:
            yield ()
        for token_id, text in tokens.items():
            if rest.startswith(text):
                for tail in paths(rest[len(text) :]):
                    yield (token_id, *tail)

    distribution = {}
    for answer in answers:
        total = 0.0
        for path in paths(answer):
            probability, text = 1.0, ""
            for k, token_id in enumerate(path):
                probs = probabilities(path[:k])
                allowed = [t for t, s in tokens.items() if text + s in prefixes]
                probability *= probs[token_id] / probs[allowed].sum()
                text += tokens[token_id]
            total += probability
        distribution[answer] = total
    mean = sum(p * float(s) for s, p in distribution.items())
    std = math.sqrt(sum(p * (float(s) - mean) ** 2 for s, p in distribution.items()))
    return distribution, mean, std


def assert_matches(result: ExpectedScore, reference):
    distribution, mean, std = reference
    assert math.isclose(sum(result.distribution.values()), 1.0, abs_tol=1e-12)
    assert set(result.distribution) == set(distribution)
    for answer, probability in distribution.items():
        assert result.distribution[answer] == pytest.approx(probability, abs=TOL), answer
    assert result.score == pytest.approx(mean, abs=TOL)
    assert result.std == pytest.approx(std, abs=TOL)


@pytest.mark.parametrize(
    "completion, lo, hi",
    [("<think>Soft light.</think><answer>0.61</answer>", 0.0, 1.0), ("<think>Flat.</think>", 1.0, 5.0)],
)
def test_matches_brute_force(tiny, completion, lo, hi):
    model, processor = tiny
    image = Image.new("RGB", (112, 56), (20, 180, 220))
    (result,) = expected_scores(model, processor, [image], [completion], lo=lo, hi=hi)
    assert lo <= result.score <= hi and result.std > 0
    assert_matches(result, brute_force(model, processor, image, completion, lo=lo, hi=hi))


def test_merged_number_tokens_match_brute_force():
    """Tokens "0.", "1." and ".5" on top of the tiny BPE's "73"-style pairs: answers are spelled along
    several paths, whose probabilities add up."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from aesr1.modeling.tiny import build_model_config, build_processor, build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["0.", "1.", ".5"])
    processor = build_processor(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Qwen2_5_VLForConditionalGeneration(build_model_config(tokenizer)).eval()
    assert {"0.", "1.", ".5", "55"} <= set(_number_tokens(tokenizer, frozenset("0123456789.")).values())
    image = Image.new("RGB", (56, 56), (250, 250, 250))
    completion = "<think>Bright.</think><answer>0.55</answer>"
    (result,) = expected_scores(model, processor, [image], [completion])
    assert_matches(result, brute_force(model, processor, image, completion))


def test_no_answer_prefix(tiny):
    model, processor = tiny
    images = [Image.new("RGB", (56, 56), (1, 2, 3)), Image.new("RGB", (56, 56), (3, 2, 1))]
    missing, present = expected_scores(model, processor, images, ["<think>unfinished", "</think>"])
    assert missing.score is None and missing.std is None and missing.distribution == {}
    assert "<answer>" in missing.reason and missing.prefix == ""
    assert present.score is not None and present.prefix == "</think><answer>" and present.reason is None


def test_independent_of_batch_and_order(tiny):
    model, processor = tiny
    images = [
        Image.new("RGB", (56, 56), (200, 30, 30)),
        Image.new("RGB", (112, 112), (10, 90, 200)),
        Image.new("RGB", (84, 56), (240, 240, 40)),
    ]
    completions = [
        "<think>Red.</think><answer>0.30</answer>",
        "<think>A long calm blue sky over the sea.</think><answer>0.81",
        "<think>Yellow.</think>",
    ]
    alone = [expected_scores(model, processor, [i], [c])[0] for i, c in zip(images, completions, strict=True)]
    together = expected_scores(model, processor, images, completions)
    order = [2, 0, 1]
    random.Random(0).shuffle(order)
    shuffled = expected_scores(model, processor, [images[i] for i in order], [completions[i] for i in order])
    shuffled = [shuffled[order.index(i)] for i in range(3)]
    for single, *others in zip(alone, together, shuffled, strict=True):
        for other in others:
            assert other.prefix == single.prefix
            assert other.score == pytest.approx(single.score, abs=TOL)
            assert other.std == pytest.approx(single.std, abs=TOL)
            assert set(other.distribution) == set(single.distribution)
            for answer, probability in single.distribution.items():
                assert other.distribution[answer] == pytest.approx(probability, abs=TOL)
    # the images differ, so their answers do
    assert len({round(r.score, 9) for r in alone}) == 3
