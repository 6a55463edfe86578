"""Evaluation settings (a dataclass with documented defaults, like trl's configs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from aesr1.data.files import IMAGE_CHECKS
from aesr1.data.splits import SPLITS
from aesr1.modeling.loading import check_dtype


@dataclass
class EvalConfig:
    """Settings of `run_evaluation` and `python -m aesr1.eval`.

    Attributes:
        model: local model directory (Qwen2.5-VL style), unless a predictor is injected.
        data: dataset spec, ``name:root`` entries separated by commas (see `aesr1.data.parse_data_spec`).
        output_dir: where the prediction cache, results (JSON + Markdown) and plots go.
        split: dataset split to evaluate ("test": the official or seeded 9:1 test split).
        mode: score mode, "greedy", "sample" or "expected" (`aesr1.score.modes`); None: "sample" when
            `temperature` > 0 or `num_samples` > 1, else "greedy". Resolved at construction.
        preset: prompt and answer format (`aesr1.score.presets`); scores are evaluated on [0, 1].
        num_samples: sample mode: completions per image (default 4, as RAPO); 1 otherwise.
        temperature: sample mode: temperature (default 1.0, as RAPO); 0 otherwise.
        top_p: nucleus sampling mass when sampling.
        max_new_tokens: completion length cap (Appendix C: 1024).
        batch_size: images per generation call; predictions are appended to the cache after each call.
        seed: seed of sampling (and of the 9:1 split of datasets without an official one).
        limit: evaluate only the first `limit` images of each dataset (quick checks); None = all.
        logistic: report PLCC after the 4-parameter logistic fit (flagged in the table) instead of raw.
        plots: save the distribution (Fig. 1a) and scatter plots.
        check_images: image check of the loaders ("open", "decode", "exists", "none").
        name: model name in the tables (default: the model directory's name).
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        dtype: model dtype ("auto", "float32", "bfloat16", ...); None keeps the checkpoint's.
        overwrite: discard an existing prediction cache instead of resuming from it.
    """

    model: str | None = None
    data: str | None = None
    output_dir: str = "aesr1-eval"
    split: str = "test"
    mode: str | None = None
    preset: str = "aesr1"
    num_samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    batch_size: int = 8
    seed: int = 0
    limit: int | None = None
    logistic: bool = False
    plots: bool = True
    check_images: str = "open"
    name: str | None = None
    device: str = "auto"
    dtype: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        from aesr1.score.modes import ModeSettings
        from aesr1.score.presets import get_preset

        preset = get_preset(self.preset)
        settings = ModeSettings.resolve(
            self.mode, num_samples=self.num_samples, temperature=self.temperature, top_p=self.top_p,
            max_new_tokens=preset.max_new_tokens if self.max_new_tokens is None else self.max_new_tokens,
            seed=self.seed, preset=preset,
        )  # fmt: skip
        self.mode, self.num_samples, self.temperature = (
            settings.mode,
            settings.num_samples,
            settings.temperature,
        )
        self.top_p, self.max_new_tokens = settings.top_p, settings.max_new_tokens
        check_dtype(self.dtype)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(
                f"device must be a device name (auto, cpu, cuda, cuda:1, ...), got {self.device!r}"
            )
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1
        ):
            raise ValueError(f"limit must be a positive integer or None, got {self.limit!r}")
        if self.check_images not in IMAGE_CHECKS:
            raise ValueError(f"check_images must be one of {IMAGE_CHECKS}, got {self.check_images!r}")

    @property
    def model_name(self) -> str:
        if self.name:
            return self.name
        return Path(self.model).name if self.model else "model"

    @property
    def settings(self):
        """The score mode and its generation settings (`aesr1.score.modes.ModeSettings`)."""
        from aesr1.score.modes import ModeSettings

        return ModeSettings(
            self.mode, self.num_samples, self.temperature, self.top_p, self.max_new_tokens, self.seed
        )

    def generation_fingerprint(self) -> dict:
        """The settings that change predictions: a cache made with others is not reused."""
        from aesr1.score.presets import get_preset
        from aesr1.score.provenance import prompt_sha256

        preset = get_preset(self.preset)
        return {
            "model": str(Path(self.model).resolve()) if self.model else self.model_name,
            "split": self.split,
            "mode": self.mode,
            "preset": preset.name,
            "scale": "0-1",  # of `pred` and `std` in the cache, whatever the preset's answer scale
            "num_samples": self.num_samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
            "prompt_sha256": prompt_sha256(preset.prompt, preset.system_prompt),
        }

    def to_dict(self) -> dict:
        return asdict(self)
