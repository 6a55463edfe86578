"""LoRA through `python -m aesr1.train` on the tiny model (CPU): the cold-start adapter handed to
RAPO (continued on an existing run, or merged first), adapters and merged weights saved, and the
saved directories scored."""

from __future__ import annotations

import pytest
import torch
from test_pipeline_outputs import argv

from aesr1.data.synthetic import make_synthetic_dataset
from aesr1.modeling.loading import load_model
from aesr1.modeling.lora import REFERENCE_ADAPTER, is_peft_model
from aesr1.train.__main__ import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), n=2, seed=0, image_size=32)[0].image


# the pipeline: SFT's adapter handed to RAPO, saved adapters and merged weights, loaded for scoring


def _spy_rapo_policies(monkeypatch):
    """The policies RAPOTrainer is built with, with a copy of their state at that moment."""
    from aesr1.train import rapo

    seen = []
    original = rapo.RAPOTrainer.__init__

    def spy(self, config, model, *args, **kwargs):
        assert kwargs.get("ref_model") is None  # no second model
        seen.append((model, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        original(self, config, model, *args, **kwargs)

    monkeypatch.setattr(rapo.RAPOTrainer, "__init__", spy)
    return seen


def _adapter_weights(path):
    from safetensors.torch import load_file

    return load_file(path / "adapter_model.safetensors")


def _score(model_dir, image):
    from aesr1 import Scorer

    result = Scorer(str(model_dir), device="cpu", max_new_tokens=8).score([image])[0]
    assert result.error is None
    return result


def test_pipeline_continues_the_cold_start_adapter_on_an_existing_run(tmp_path, monkeypatch, image):
    out = tmp_path / "run"
    lora = ["--set", "model.lora.r=4"]
    assert main(argv(out, *lora, "--stages", "sft")) == 0
    sft_final = out / "sft" / "final"
    assert (sft_final / "adapter_config.json").is_file() and not (sft_final / "model.safetensors").exists()
    card = (sft_final / "README.md").read_text()
    assert "library_name: peft" in card and str(out / "initial") in card
    seen = _spy_rapo_policies(monkeypatch)
    assert main(argv(out, *lora, "--stages", "rapo", "--resume")) == 0
    ((model, start),) = seen
    assert is_peft_model(model) and set(model.peft_config) == {"default", REFERENCE_ADAPTER}
    sft = _adapter_weights(sft_final)
    for adapter in ("default", REFERENCE_ADAPTER):  # the policy and its reference both start as SFT's adapter
        for key, value in sft.items():
            assert torch.equal(start[key.replace(".weight", f".{adapter}.weight")], value), key
    rapo_final = out / "rapo" / "final"
    rapo = _adapter_weights(rapo_final)
    assert rapo.keys() == sft.keys() and any(not torch.equal(rapo[k], sft[k]) for k in sft)
    import json

    assert json.loads((rapo_final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        (out / "initial").resolve()
    )
    _score(rapo_final, image)


def test_pipeline_merge_before_rapo_and_merged_saves(tmp_path, monkeypatch, image):
    import json

    from aesr1.modeling.chat import build_inputs, model_inputs

    out = tmp_path / "run"
    seen = _spy_rapo_policies(monkeypatch)
    assert (
        main(argv(out, "--set", "model.lora.r=4", "--set", "model.lora.merge_before_rapo=true", "--merge"))
        == 0
    )
    sft_final, rapo_final = out / "sft" / "final", out / "rapo" / "final"
    for final in (sft_final, rapo_final):  # full weights any loader reads, the adapter beside them
        assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
        assert (final / "adapter" / "adapter_config.json").is_file()
        assert "library_name: transformers" in (final / "README.md").read_text()
    adapter_config = json.loads((rapo_final / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(sft_final.resolve())
    # RAPO started from the merged cold-start model with a fresh adapter (lora_B = 0): no reference copy
    ((model, start),) = seen
    assert set(model.peft_config) == {"default"}
    assert all(value.abs().max() == 0 for key, value in start.items() if "lora_B" in key)
    merged_sft, processor = load_model(sft_final)
    for key, value in merged_sft.state_dict().items():
        name = f"base_model.model.{key}"
        if name not in start:  # an adapted linear keeps its weight in `base_layer`
            name = "{}.base_layer.{}".format(*name.rsplit(".", 1))
        assert torch.equal(start[name], value), key
    # the merged directory and the adapter on its (merged) base are the same model
    full, _ = load_model(rapo_final)
    chained, _ = load_model(rapo_final / "adapter")
    batch = model_inputs(build_inputs(processor, [image], "Rate <image>", ["<answer>0.5</answer>"]))
    with torch.no_grad():
        torch.testing.assert_close(full(**batch).logits, chained(**batch).logits, atol=1e-5, rtol=1e-5)
    _score(rapo_final, image)
