"""The two-stage pipeline: data -> AesCoT cold start -> SFT -> RAPO -> held-out table and plot.

Each stage leaves its model in `<output_dir>/<stage>/final` and a row in `<output_dir>/results.json`;
with `resume`, finished stages are skipped and an interrupted one continues from its last checkpoint.

An output directory belongs to one configuration (its `config.json`, written first): a run refuses a
non-empty directory unless it resumes that configuration or `overwrite` empties it first. Every file
and directory a resume relies on is published atomically (`aesr1.train.durable`), and a stage counts
as finished only when its `final/COMPLETE` marker exists.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aesr1.jsonio import dumps
from aesr1.train.config import ModelConfig, TrainConfig
from aesr1.train.distributed import is_deepspeed, make_rapo_accelerator
from aesr1.train.durable import (
    atomic_write_text,
    clear_leftovers,
    is_complete,
    publish_dir,
    publish_file,
    remove_tree,
    staging_path,
)
from aesr1.train.evaluation import HeldOutResult, evaluate_policy
from aesr1.train.trackers import Trackers, check_trackers_installed, flatten

ROW_TITLES = {"untrained": "untrained", "sft": "after SFT", "rapo": "after RAPO"}


@dataclass
class PipelineResult:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    table: str = ""
    plot: Path | None = None
    seconds: float = 0.0


def check_model_path(path: str) -> None:
    """A local vision-language checkpoint must exist (reads only config.json)."""
    from transformers import AutoConfig

    directory = Path(path)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"--model: {path!r} is not a local model directory (no config.json)")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if getattr(config, "vision_config", None) is None:
        raise ValueError(
            f"--model: {path!r} is a {config.model_type!r} model without a vision tower; Aes-R1 trains a "
            "vision-language model such as Qwen2.5-VL"
        )


#: The configurations (JSON, process count) that passed `preflight` in this process.
_PREFLIGHT_PASSED: set[tuple[str, int]] = set()


def preflight(config: TrainConfig, world_size: int = 1) -> None:
    """Every check that needs no heavy work: config values with batch divisibility over
    `world_size` processes (`validate_config`), paths, model kind. Once per process: a repeated call
    for a configuration that passed returns at once (`python -m aesr1.train` calls it before
    `run_pipeline`, which calls it for callers that did not)."""
    from aesr1.train.config import validate_config
    from aesr1.train.data import check_data_spec

    key = (json.dumps(config.to_dict(), sort_keys=True), world_size)
    if key in _PREFLIGHT_PASSED:
        return
    validate_config(config, world_size)
    if config.model.name_or_path is not None:
        check_model_path(config.model.name_or_path)
    check_data_spec(config)
    check_trackers_installed(config.report_to)
    if config.deepspeed is not None:
        import importlib.util

        from aesr1.train.distributed import read_deepspeed_config

        read_deepspeed_config(config.deepspeed)
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("--deepspeed needs DeepSpeed: pip install 'aesr1[deepspeed]'")
    _PREFLIGHT_PASSED.add(key)


#: Settings that may change between a run and its resume (they do not change what is computed).
RESUME_FREE_KEYS = frozenset({"output_dir", "progress", "report_to", "run_name"})


def config_differences(saved: dict[str, Any], current: TrainConfig) -> list[str]:
    """`key: saved -> current` for every setting (outside `RESUME_FREE_KEYS`) that differs. A run
    saved before a key was renamed or added compares under today's keys
    (`aesr1.train.config.saved_config_values`)."""
    from aesr1.train.config import saved_config_values

    absent = "<absent>"
    old = flatten(json.loads(json.dumps(saved_config_values(saved))))
    new = flatten(json.loads(json.dumps(current.to_dict())))  # the JSON forms of both
    return [
        f"{key}: {old.get(key, absent)!r} -> {new.get(key, absent)!r}"
        for key in sorted(set(old) | set(new))
        if key not in RESUME_FREE_KEYS and old.get(key, absent) != new.get(key, absent)
    ]


def saved_run_config(config: TrainConfig) -> TrainConfig | None:
    """The configuration `config.output_dir` was started with (None if it holds none), keeping this
    invocation's `RESUME_FREE_KEYS`."""
    from aesr1.train.config import config_from_dict, saved_config_values

    path = Path(config.output_dir) / "config.json"
    if not path.is_file():
        return None
    values = saved_config_values(json.loads(path.read_text()))
    values.update({key: getattr(config, key) for key in RESUME_FREE_KEYS})
    return config_from_dict(values)


def _input_paths(config: TrainConfig) -> list[Path]:
    from aesr1.data import parse_data_spec

    paths = [config.data.cold_start, config.model.name_or_path, config.deepspeed]
    paths += [spec.root for spec in parse_data_spec(config.data.spec)]
    return [Path(p).expanduser().resolve() for p in paths if p and Path(p).expanduser().exists()]


def check_output_dir(
    config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
    stages: tuple[str, ...] = ("sft", "rapo"),
) -> None:  # fmt: skip
    """Refuse an output directory this run would mix its results with (reads only).

    Empty or absent: any run. Holding a run (its `config.json`): `resume` with the same settings
    (differing keys are named), or `overwrite`. Anything else is refused. RAPO without SFT in
    `stages` needs the finished SFT model of this directory when the config has an SFT stage.
    """
    out = Path(config.output_dir)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file")
    # Hidden entries are temporaries (an interrupted save, another process's write check).
    holds = out.is_dir() and any(not entry.name.startswith(".") for entry in out.iterdir())
    saved = out / "config.json"
    if holds and not saved.is_file():
        raise ValueError(
            f"--output-dir {str(out)!r} is not empty and holds no config.json, so it is not a training run "
            "this command wrote: choose another --output-dir"
        )
    if holds and overwrite:
        inside = [p for p in _input_paths(config) if p.is_relative_to(out.resolve())]
        if inside:
            raise ValueError(
                f"--overwrite would delete inputs of this run inside {str(out)!r}: {', '.join(map(str, inside))}"
            )
    elif holds and not resume:
        raise ValueError(
            f"--output-dir {str(out)!r} already holds a run: pass --resume to continue it (same settings), "
            "or --overwrite to delete it and start afresh"
        )
    elif holds:
        differences = config_differences(json.loads(saved.read_text()), config)
        if differences:
            shown = "; ".join(differences[:12]) + ("; ..." if len(differences) > 12 else "")
            raise ValueError(
                f"--resume: the settings differ from those {str(out)!r} was started with ({shown}); "
                "resume with the same settings, or pass --overwrite to start afresh"
            )
    sft_final = out / "sft" / "final"
    rapo_runs = "rapo" in stages and config.rapo.num_train_epochs > 0 and config.rapo.max_steps != 0
    if (
        rapo_runs
        and "sft" not in stages
        and config.sft.num_train_epochs > 0
        and (overwrite or not is_complete(sft_final))
    ):
        raise ValueError(
            f"--stages rapo: RAPO starts from the SFT model, and {str(sft_final)!r} holds no finished one; "
            "run the sft stage first (add it to --stages), or set sft.num_train_epochs=0 to start RAPO from the base model"
        )


def _empty_directory(out: Path) -> None:
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            remove_tree(entry)
        else:
            entry.unlink()


def _save_pretrained(model, processor, path: Path) -> None:
    staged = staging_path(path)
    remove_tree(staged)
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    publish_dir(staged, path)


def tiny_model_config(model: ModelConfig):
    """The `TinyModelConfig` of `model.tiny_*` (heads of 16 dimensions, half as many KV heads)."""
    from aesr1.modeling.tiny import TinyModelConfig

    head_dim = 16
    return TinyModelConfig(
        vocab_size=model.tiny_vocab_size, hidden_size=model.tiny_hidden_size, num_hidden_layers=model.tiny_layers,
        num_attention_heads=model.tiny_hidden_size // head_dim, intermediate_size=model.tiny_intermediate_size,
        num_key_value_heads=max(1, model.tiny_hidden_size // head_dim // 2), split_digits=model.tiny_split_digits,
    )  # fmt: skip


def build_model(config: TrainConfig, corpus: list[str]):
    """The tiny model (tokenizer trained on `corpus`) or the local checkpoint of `model.name_or_path`."""
    if config.model.name_or_path is None:
        from aesr1.modeling.tiny import build_tiny_model

        tiny = tiny_model_config(config.model)
        return build_tiny_model(config.model.tiny_seed, vocab_corpus=corpus, config=tiny)
    return load(config, config.model.name_or_path)


def load(config: TrainConfig, path: str | Path, *, merge_adapter: bool = True):
    """The model in `path` in the run's dtype and attention (an adapter merged, unless `merge_adapter`
    is False: then a `PeftModel` whose adapter trains)."""
    from aesr1.modeling.loading import load_model

    dtype = config.model.dtype if torch.cuda.is_available() else "float32"
    return load_model(
        path, dtype=dtype, attn_implementation=config.model.attn_implementation, merge_adapter=merge_adapter
    )


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown table of PLCC / SRCC / parse-failure rate per stage."""

    def number(value) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = ["| model | PLCC | SRCC | parse failures |", "|---|---|---|---|"]
    for key in ("untrained", "sft", "rapo"):
        if key in rows:
            row = rows[key]
            lines.append(
                f"| {ROW_TITLES[key]} | {number(row['plcc'])} | {number(row['srcc'])} | "
                f"{100 * row['parse_failure_rate']:.1f}% |"
            )
    return "\n".join(lines)


def plot_distributions(results: dict[str, HeldOutResult], path: Path) -> Path:
    """Predicted vs ground-truth score distributions on the held-out split (paper Fig. 1a style)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.stats import gaussian_kde

    grid = np.linspace(0.0, 1.0, 201)
    figure, axis = plt.subplots(figsize=(6.0, 3.8))
    any_result = next(iter(results.values()))
    curves = [("ground truth", any_result.gt, "black", "-")]
    styles = {"untrained": ("#999999", ":"), "sft": ("#4c72b0", "--"), "rapo": ("#dd8452", "-")}
    for key, result in results.items():
        values = result.pred[np.isfinite(result.pred)]
        curves.append(
            (f"{ROW_TITLES[key]} (PLCC {result.plcc:.3f}, SRCC {result.srcc:.3f})", values, *styles[key])
        )
    for label, values, colour, style in curves:
        if values.size >= 2 and np.ptp(values) > 0:
            axis.plot(
                grid, gaussian_kde(values)(grid), color=colour, linestyle=style, linewidth=1.8, label=label
            )
        elif values.size:
            axis.axvline(float(values.mean()), color=colour, linestyle=style, label=f"{label} (constant)")
    axis.set_xlim(0, 1)
    axis.set_xlabel("aesthetic score")
    axis.set_ylabel("density")
    axis.set_title("Held-out score distributions: prediction vs ground truth")
    axis.legend(frameon=False, fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_path(path)
    figure.savefig(staged, dpi=120, format="png")
    plt.close(figure)
    publish_file(staged, path)
    return path


class _Results:
    """`results.json`: one row per evaluated stage, so a resumed run does not evaluate again."""

    def __init__(self, path: Path, *, write: bool) -> None:
        self.path = path
        self.write = write
        self.rows: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}

    def save(self, key: str, result: HeldOutResult) -> None:
        row = result.metrics()
        row.update(images=result.images, pred=[None if math.isnan(p) else p for p in result.pred.tolist()],
                   gt=result.gt.tolist())  # fmt: skip
        self.rows[key] = row
        self._write()

    def drop(self, *keys: str) -> None:
        """Forget the rows of stages about to be trained again."""
        dropped = [self.rows.pop(key, None) for key in keys]
        if any(row is not None for row in dropped):
            self._write()

    def _write(self) -> None:
        if self.write:
            atomic_write_text(self.path, dumps(self.rows, indent=1))  # NaN as null: strict JSON

    def held_out(self, key: str) -> HeldOutResult:
        import numpy as np

        row = self.rows[key]
        pred = np.array([math.nan if p is None else p for p in row["pred"]], dtype=np.float64)
        return HeldOutResult(
            plcc=math.nan if row["plcc"] is None else row["plcc"],
            srcc=math.nan if row["srcc"] is None else row["srcc"],
            parse_failure_rate=row["parse_failure_rate"], images=row["images"], scored=int(row["scored"]),
            pred=pred, gt=np.array(row["gt"], dtype=np.float64),
        )  # fmt: skip


def release_trainer(trainer) -> None:
    """Drop a finished stage's DeepSpeed engine, optimiser state and accelerator state, so the next
    stage starts with free GPU memory and builds its own DeepSpeed configuration."""
    import gc

    accelerator = getattr(trainer, "accelerator", None)
    deepspeed = accelerator is not None and is_deepspeed(accelerator)
    if accelerator is not None:
        accelerator.free_memory()
    for name in ("model_wrapped", "deepspeed", "optimizer", "lr_scheduler", "ref_model"):
        if hasattr(trainer, name):
            with contextlib.suppress(AttributeError):  # read-only properties
                setattr(trainer, name, None)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if deepspeed:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()  # a DeepSpeed plugin is fixed for the state's lifetime


def _held_out_description(config: TrainConfig) -> str:
    cap = f", at most {config.data.max_eval_images} images" if config.data.max_eval_images else ""
    return (
        f"each dataset's official test split, else {config.data.test_fraction:.0%} of its images "
        f"(split seed {config.data.split_seed}){cap}"
    )


def write_model_cards(config: TrainConfig, out: Path, rows: dict[str, dict[str, Any]]) -> None:
    """A model card (`README.md`) in each finished stage's `final` directory, with the run's table."""
    from aesr1.modeling.lora import adapter_base_path, is_adapter_dir
    from aesr1.train.model_card import CardInputs, write_model_card

    for stage in ("sft", "rapo"):
        final = out / stage / "final"
        if is_complete(final):
            adapter_base = str(adapter_base_path(final)) if is_adapter_dir(final) else None
            write_model_card(final, CardInputs(
                stage=stage,
                base_model=config.model.name_or_path or "tiny random-initialised Qwen2.5-VL (aesr1.modeling.tiny)",
                data_spec=config.data.spec, config=config.to_dict(), table=format_table(rows),
                held_out=_held_out_description(config), adapter_base=adapter_base,
            ))  # fmt: skip


def run_pipeline(
    config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
    stages: tuple[str, ...] = ("sft", "rapo"),
):  # fmt: skip
    """Run the whole pipeline; returns the table rows, the printed table and the plot path.

    `resume` continues the run in `config.output_dir` (same settings); `overwrite` deletes it first.
    """
    from accelerate.state import PartialState

    from aesr1.train.data import cold_start_records, load_items
    from aesr1.train.rapo import RAPOTrainer
    from aesr1.train.sft import run_sft

    started = time.time()
    state = PartialState(cpu=not torch.cuda.is_available())
    preflight(config, state.num_processes)
    check_output_dir(config, resume=resume, overwrite=overwrite, stages=stages)
    torch.manual_seed(config.seed)
    out = Path(config.output_dir)
    state.wait_for_everyone()  # every process has checked the directory before it changes
    if state.is_main_process:
        if overwrite and (out / "config.json").is_file():  # a run directory (`check_output_dir`)
            _empty_directory(out)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / "config.json").is_file():  # first, so that it names the run of everything after
            atomic_write_text(out / "config.json", dumps(config.to_dict(), indent=1))
        clear_leftovers(out)
    state.wait_for_everyone()
    with state.main_process_first():
        train, test = load_items(config, out)
        rows = (
            cold_start_records(config, train, out, is_main=state.is_main_process)
            if config.sft.num_train_epochs > 0 and "sft" in stages
            else []
        )
    if state.is_main_process:
        print(f"[data] {len(train)} training images, {len(test)} held-out, {len(rows)} cold-start records")
    results = _Results(out / "results.json", write=state.is_main_process)
    trackers = Trackers(
        config.report_to, run_name=config.run_name or out.resolve().name, output_dir=out,
        enabled=state.is_main_process,
    )  # fmt: skip
    # A crashed run is closed by each service's own exit handler, and marked as such there.
    trackers.start(config.to_dict())

    def evaluate(model, processor, key: str | None, accelerator=None) -> HeldOutResult:
        result = evaluate_policy(
            model, processor, test, config.eval, accelerator=accelerator, seed=config.seed,
            progress=config.progress and state.is_main_process,
        )  # fmt: skip
        if key is not None and state.is_main_process:
            results.save(key, result)
            print(f"[eval] {ROW_TITLES[key]}: PLCC {result.plcc:.4f} SRCC {result.srcc:.4f} "
                  f"parse failures {100 * result.parse_failure_rate:.1f}%")  # fmt: skip
        return result

    initial_dir = out / "initial"
    if config.model.name_or_path is None and is_complete(initial_dir):
        model, processor = load(config, initial_dir)
    else:
        corpus = [r["completion"] for r in rows]
        model, processor = build_model(config, corpus)
        if config.model.name_or_path is None and state.is_main_process:
            _save_pretrained(model, processor, initial_dir)
    state.wait_for_everyone()
    if config.eval.evaluate_untrained and "untrained" not in results.rows:
        evaluate(model.to(state.device), processor, "untrained", state)

    sft_final = out / "sft" / "final"
    policy_source = Path(config.model.name_or_path) if config.model.name_or_path else initial_dir
    if "sft" in stages and config.sft.num_train_epochs > 0 and not (resume and is_complete(sft_final)):
        results.drop("sft", "rapo")
        trainer = run_sft(config, model, processor, rows, out / "sft", resume=resume, trackers=trackers,
                          base_path=policy_source)  # fmt: skip
        release_trainer(trainer)
        del trainer
    state.wait_for_everyone()  # the main process writes sft/final
    # RAPO after SFT starts from (and is anchored to) the SFT model, also when SFT ran earlier
    # (`--stages rapo` on a directory holding it; `check_output_dir` refuses when it is missing).
    lora = config.model.lora.r is not None
    rapo_final = out / "rapo" / "final"
    rapo_runs = "rapo" in stages and (config.rapo.num_train_epochs > 0) and config.rapo.max_steps != 0
    rapo_trains = rapo_runs and not (resume and is_complete(rapo_final))
    if config.sft.num_train_epochs > 0 and is_complete(sft_final):
        del model
        if lora and rapo_trains:  # the cold-start adapter, continued or merged (`aesr1.train.adapters`)
            from aesr1.train.adapters import rapo_policy

            model, processor = rapo_policy(
                config, sft_final, lambda p, merge: load(config, p, merge_adapter=merge)
            )
        else:
            model, processor = load(config, sft_final)
        if "sft" not in results.rows:
            evaluate(model.to(state.device), processor, "sft", state)
        if state.is_main_process:
            write_model_cards(config, out, results.rows)
        policy_source = sft_final

    if rapo_runs:
        if rapo_trains:
            results.drop("rapo")
            ref_model = None
            if lora:
                from aesr1.modeling.lora import apply_lora, is_peft_model

                if not is_peft_model(model):  # RAPO from the base weights: a fresh adapter
                    model = apply_lora(model, config.model.lora, base_path=policy_source)
            elif config.rapo.beta > 0:
                ref_model, _ = load(config, policy_source)
            accelerator = make_rapo_accelerator(config, model)
            trainer = RAPOTrainer(
                config, model, processor, train, ref_model=ref_model, output_dir=out / "rapo",
                accelerator=accelerator, trackers=trackers,
                evaluate_fn=lambda m, step: evaluate(m, processor, None, accelerator).metrics(),
            )  # fmt: skip
            trainer.train(resume=resume)
            trainer.save_model(rapo_final)
            trainer.close()
            sharded = is_deepspeed(accelerator)
            model = None if sharded else accelerator.unwrap_model(trainer.model)
            release_trainer(trainer)
            del trainer
            if sharded:  # ZeRO-partitioned parameters: evaluate the saved full weights
                model, processor = load(config, rapo_final)
        else:
            model, processor = load(config, rapo_final)
        if "rapo" not in results.rows:
            evaluate(model.to(state.device), processor, "rapo", state)

    result = PipelineResult(rows={k: v for k, v in results.rows.items()}, seconds=time.time() - started)
    result.table = format_table(result.rows)
    if state.is_main_process:
        held_out = {k: results.held_out(k) for k in ("untrained", "sft", "rapo") if k in results.rows}
        result.plot = plot_distributions(held_out, out / "score_distributions.png")
        atomic_write_text(out / "table.md", result.table + "\n")
        write_model_cards(config, out, result.rows)
        trackers.log_results(result.rows, result.table)
    trackers.finish()
    return result
