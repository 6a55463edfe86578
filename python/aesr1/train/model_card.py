"""Model cards: a `README.md` in the Hugging Face convention for every saved model directory.

The card is what `huggingface-cli upload` publishes with the weights, so it carries everything a
user needs to run the model without this repository's history: the base model, the data and its
held-out split, the full training config, the held-out table of the run, the scoring prompt, the
answer format and the score scale, and how to score with `aesr1.Scorer`.

Front matter is written by `huggingface_hub.ModelCardData` (the Hub's own schema and YAML dump); the
licence is the base model's, read from the base model directory's own card when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aesr1.prompts import SCORING_PROMPT

TAGS = ["aesr1", "image-aesthetics-assessment", "rapo", "grpo", "reinforcement-learning", "qwen2.5-vl"]
STAGE_TITLES = {
    "sft": "AesCoT cold start (supervised fine-tuning, Eq. 8)",
    "rapo": "AesCoT cold start, then RAPO (Relative-Absolute Policy Optimization, Eq. 9-12)",
}
#: The licence when the base model's card names none: the Hub's value for "see the card".
UNKNOWN_LICENSE = "other"


@dataclass
class CardInputs:
    """What a card is written from.

    Attributes:
        stage: "sft" or "rapo", the stage whose final model the directory holds.
        base_model: `model.name_or_path` of the run (a hub id or a local directory).
        data_spec: the run's `data.spec` (e.g. "ava:/data/AVA,tad66k:/data/TAD66K").
        config: the full resolved training config as plain values (`dataclasses.asdict`).
        table: the run's held-out table (Markdown), rows for the stages evaluated so far.
        held_out: how the held-out images were chosen, in words.
        adapter_base: for a directory holding a LoRA adapter (peft) rather than full weights, the
            base model directory its `adapter_config.json` names; None for full weights.
    """

    stage: str
    base_model: str
    data_spec: str
    config: dict[str, Any]
    table: str = ""
    held_out: str = ""
    extra_tags: list[str] = field(default_factory=list)
    adapter_base: str | None = None


def _dataset_names(data_spec: str) -> list[str]:
    from aesr1.data.registry import parse_data_spec

    return [spec.name for spec in parse_data_spec(data_spec)]


def _base_card_metadata(base_model: str) -> dict[str, Any]:
    """The front matter of the base model's own card when `base_model` is a local directory."""
    readme = Path(base_model) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme).data.to_dict()
    except (ValueError, OSError, yaml.YAMLError):
        return {}  # a base card without valid front matter gives no licence, not a failed save


def _hub_id(base_model: str, base_metadata: dict[str, Any]) -> str | None:
    """A Hub id for `base_model`: itself when it is not a local path, else what its card names."""
    if not Path(base_model).exists() and base_model.count("/") == 1:
        return base_model
    named = base_metadata.get("base_model")
    return named if isinstance(named, str) else None


def model_card_text(inputs: CardInputs) -> str:
    """The card: YAML front matter (`huggingface_hub.ModelCardData`) and a Markdown body."""
    from huggingface_hub import ModelCardData

    if inputs.stage not in STAGE_TITLES:
        raise ValueError(f"stage: expected one of {sorted(STAGE_TITLES)}, got {inputs.stage!r}")
    base_metadata = _base_card_metadata(inputs.base_model)
    hub_id = _hub_id(inputs.base_model, base_metadata)
    datasets = _dataset_names(inputs.data_spec)
    data = ModelCardData(
        license=base_metadata.get("license") or UNKNOWN_LICENSE,
        base_model=hub_id,
        datasets=[d for d in datasets if d != "synthetic"] or None,
        tags=TAGS
        + [f"aesr1-{inputs.stage}"]
        + (["lora"] if inputs.adapter_base else [])
        + list(inputs.extra_tags),
        library_name="peft" if inputs.adapter_base else "transformers",
        pipeline_tag="image-text-to-text",
    )
    config_yaml = yaml.safe_dump(inputs.config, sort_keys=False, allow_unicode=True).rstrip()
    table = inputs.table.strip() or "_No held-out evaluation was run._"
    adapter = (
        f"""
This directory holds a LoRA adapter (peft), not full weights: its `adapter_config.json` names the
base model directory `{inputs.adapter_base}` (`base_model_name_or_path`; edit it where the base
model lives elsewhere). `aesr1 score` and `aesr1.Scorer` load that base and merge the adapter in.
"""
        if inputs.adapter_base
        else ""
    )
    body = f"""
# Aes-R1 aesthetic scorer ({inputs.stage})

A vision-language model that writes an aesthetic critique of an image and then a score, trained
with [aesr1](https://pypi.org/project/aesr1/): {STAGE_TITLES[inputs.stage]}.
{adapter}
- **Base model:** `{inputs.base_model}`
- **Training data:** {", ".join(f"`{d}`" for d in datasets)} (data spec `{inputs.data_spec}`)
- **Held-out images:** {inputs.held_out or "see `data` in the training config below"}

## Held-out results

PLCC and SRCC between predicted and ground-truth scores on the held-out images of this run; parse
failures are completions with no readable score.

{table}

## Score scale and answer format

Scores are on **[0, 1]** (0 very poor, 1 excellent), two decimals. The model answers
`<think>critique</think><answer>0.xx</answer>`; the score is the number in the last `<answer>` block.
An answer without a readable number in [0, 1] counts as a parse failure.

Scoring prompt (paper, Appendix B; `<image>` marks the image):

```text
{SCORING_PROMPT}
```

## Use

```bash
pip install aesr1
aesr1 score photo.jpg --model <this directory>
```

```python
from aesr1 import Scorer

scorer = Scorer("<this directory>")
result = scorer.score(["photo.jpg"])[0]
print(result.score, result.critique)
```

## Training config

```yaml
{config_yaml}
```
"""
    return f"---\n{data.to_yaml()}\n---\n{body}"


def write_model_card(directory: str | Path, inputs: CardInputs) -> Path:
    """Write (or refresh) `<directory>/README.md` atomically; returns its path."""
    from aesr1.train.durable import atomic_write_text

    path = Path(directory) / "README.md"
    atomic_write_text(path, model_card_text(inputs))
    return path
