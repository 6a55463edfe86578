"""Model cards of saved model directories: Hugging Face front matter + a usable Markdown body."""

from __future__ import annotations

import pytest
import yaml
from huggingface_hub import ModelCard

from aesr1.prompts import SCORING_PROMPT
from aesr1.train.model_card import UNKNOWN_LICENSE, CardInputs, model_card_text, write_model_card

TABLE = "| model | PLCC | SRCC | parse failures |\n|---|---|---|---|\n| after RAPO | 0.8247 | 0.7638 | 5.1% |"


def inputs(**changes) -> CardInputs:
    values = dict(
        stage="rapo",
        base_model="Qwen/Qwen2.5-VL-7B-Instruct",
        data_spec="ava:/data/AVA,tad66k:/data/TAD66K",
        config={"seed": 3, "rapo": {"epsilon_high": 0.28, "num_generations": 4}},
        table=TABLE,
        held_out="AVA's official test split; TAD66K's",
    )
    values.update(changes)
    return CardInputs(**values)


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_front_matter_follows_the_hub_schema_and_the_body_carries_the_run(tmp_path):
    path = write_model_card(tmp_path, inputs())
    assert path == tmp_path / "README.md"
    meta, body = split_card(path.read_text(encoding="utf-8"))
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert meta["datasets"] == ["ava", "tad66k"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-text-to-text"
    assert "aesr1-rapo" in meta["tags"]
    assert meta["license"] == UNKNOWN_LICENSE  # a hub id gives no card to read the licence from
    assert TABLE in body
    assert SCORING_PROMPT in body
    assert "[0, 1]" in body and "<answer>0.xx</answer>" in body
    assert "Scorer(" in body and "aesr1 score" in body
    # the full config, as YAML that reads back to the same values
    config_block = body.split("## Training config\n\n```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(config_block) == {"seed": 3, "rapo": {"epsilon_high": 0.28, "num_generations": 4}}
    # huggingface_hub reads it back as a card
    card = ModelCard.load(path)
    assert card.data.base_model == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_local_base_model_lends_its_licence_and_hub_id(tmp_path):
    base = tmp_path / "Qwen2.5-VL-7B-Instruct"
    base.mkdir()
    (base / "README.md").write_text(
        "---\nlicense: apache-2.0\nbase_model: Qwen/Qwen2.5-VL-7B-Instruct\n---\n# Qwen\n", encoding="utf-8"
    )
    meta, body = split_card(model_card_text(inputs(base_model=str(base), stage="sft")))
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert str(base) in body and "aesr1-sft" in meta["tags"]


def test_local_base_model_without_a_card_has_no_hub_id_and_an_unknown_licence(tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    (base / "README.md").write_text("---\n: [unclosed\n---\n", encoding="utf-8")
    meta, _ = split_card(model_card_text(inputs(base_model=str(base), data_spec="synthetic")))
    assert "base_model" not in meta and "datasets" not in meta
    assert meta["license"] == UNKNOWN_LICENSE


def test_no_table_says_so_and_an_unknown_stage_is_named(tmp_path):
    _, body = split_card(model_card_text(inputs(table="")))
    assert "No held-out evaluation was run" in body
    with pytest.raises(ValueError, match="stage: expected one of"):
        model_card_text(inputs(stage="dpo"))
