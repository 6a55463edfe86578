"""A tiny, random-initialised Qwen2.5-VL with a tokenizer trained at start-up.

Used by the embedded default (`python -m aesr1.train` with no arguments) and by the tests: it has the
real Qwen2.5-VL architecture (vision tower with window attention, patch merger, multimodal rotary
positions) at a size that trains on a laptop CPU, and needs no download. The tokenizer is a byte-level
BPE trained with `tokenizers` on a small corpus (the prompts, Table 5 and any text the caller passes,
e.g. the cold-start critiques) so that critiques are few tokens long.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from aesr1.modeling.chat import END_OF_TURN
from aesr1.prompts import AESCOT_PROMPT, DIMENSIONS, SCORING_PROMPT

#: Qwen2.5-VL's chat special tokens (same strings as the released tokenizer).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    END_OF_TURN,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
#: The paper's format tags, added as whole tokens (not special: decoding keeps them).
FORMAT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]

#: Qwen2-VL's chat template, reduced to text and image parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}" + END_OF_TURN + "\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model. Defaults train on a 2-core CPU in minutes.

    Attributes:
        vocab_size: BPE vocabulary size target (special and format tokens included).
        hidden_size: text hidden size; head_dim = hidden_size / num_attention_heads.
        num_hidden_layers: text decoder layers.
        num_attention_heads: text attention heads.
        num_key_value_heads: grouped-query KV heads.
        intermediate_size: text MLP width.
        vision_hidden_size: vision tower width.
        vision_depth: vision tower blocks (the last one uses full attention).
        vision_heads: vision attention heads.
        image_min_pixels / image_max_pixels: the image processor resizes into this pixel range; with
            patch 14 and merge 2, a 56×56 image becomes 4 visual tokens, 112×112 becomes 16.
        mrope_section: split of the rotary half-dimension over (temporal, height, width); must sum to
            head_dim / 2.
        split_digits: pre-split numbers into single digits after training the BPE, as Qwen2's
            tokenizer does: a score becomes "0" "." digit digit, a 10-way choice per digit instead of
            one 100-way token such as "17", which a tiny model learns several times faster.
    """

    vocab_size: int = 1024
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    image_min_pixels: int = 56 * 56
    image_max_pixels: int = 112 * 112
    mrope_section: list[int] = field(default_factory=lambda: [2, 3, 3])
    max_position_embeddings: int = 4096
    split_digits: bool = False


def default_corpus() -> list[str]:
    """Text the tokenizer is always trained on: prompts, Table 5 and every score string 0.00–1.00."""
    scores = [f"<answer>{i / 100:.2f}</answer>" for i in range(101)]
    return [SCORING_PROMPT, AESCOT_PROMPT, *DIMENSIONS.keys(), *DIMENSIONS.values(), *scores]


def build_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 1024, *, split_digits: bool = False
):
    """Train a byte-level BPE on `corpus` (plus `default_corpus()`) and wrap it for transformers;
    `split_digits` then pre-splits numbers into single digits (its merges of digits go unused)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = default_corpus() + list(corpus or [])
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=END_OF_TURN,
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )
    tokenizer.add_tokens(FORMAT_TOKENS)
    if split_digits:
        backend = tokenizer.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
        )
    return tokenizer


def build_processor(tokenizer, config: TinyModelConfig | None = None):
    """A `Qwen2_5_VLProcessor` around `tokenizer` with a small-image `Qwen2VLImageProcessor`."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    config = config or TinyModelConfig()
    image_processor = Qwen2VLImageProcessor(
        min_pixels=config.image_min_pixels, max_pixels=config.image_max_pixels
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_model_config(tokenizer, config: TinyModelConfig | None = None):
    """A `Qwen2_5_VLConfig` of the tiny sizes whose special-token ids match `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    config = config or TinyModelConfig()
    head_dim = config.hidden_size // config.num_attention_heads
    if sum(config.mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {config.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    token_ids = dict(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids[END_OF_TURN],
        pad_token_id=ids["<|endoftext|>"],
    )
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": config.mrope_section,
        },
        **token_ids,
    )
    vision_config = dict(
        depth=config.vision_depth,
        hidden_size=config.vision_hidden_size,
        intermediate_size=config.vision_intermediate_size,
        num_heads=config.vision_heads,
        out_hidden_size=config.hidden_size,
        fullatt_block_indexes=[config.vision_depth - 1],
        window_size=112,
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **token_ids,
    )


def build_tiny_model(
    seed: int = 0,
    *,
    vocab_corpus: Iterable[str] | None = None,
    config: TinyModelConfig | None = None,
):
    """Build `(model, processor)`: a random-initialised tiny Qwen2.5-VL and its processor.

    The weights depend only on `seed` and the sizes; `model.save_pretrained(d)` plus
    `processor.save_pretrained(d)` give a directory that `aesr1.modeling.load_model(d)` reads back.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = config or TinyModelConfig()
    tokenizer = build_tokenizer(vocab_corpus, config.vocab_size, split_digits=config.split_digits)
    processor = build_processor(tokenizer, config)
    model_config = build_model_config(tokenizer, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(model_config)
    # the text config holds the special ids in every transformers 5 release (the top-level config
    # of Qwen2.5-VL dropped them in some)
    text_config = model_config.get_text_config()
    model.generation_config.eos_token_id = text_config.eos_token_id
    model.generation_config.pad_token_id = text_config.pad_token_id
    model.generation_config.bos_token_id = text_config.bos_token_id
    return model, processor
