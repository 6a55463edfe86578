"""`aesr1 train` (`python -m aesr1.train`): AesCoT cold-start SFT + RAPO, then held-out PLCC/SRCC.

With no arguments it runs the embedded CPU default (synthetic data, tiny Qwen2.5-VL, minutes on a
laptop). For real models (any launcher: `accelerate launch`, `torchrun`, `deepspeed --module`)::

    accelerate launch --num_processes 8 -m aesr1.train --config appendix_c_qwen2_5_vl_7b \\
        --model /models/Qwen2.5-VL-7B-Instruct --data ava:/data/AVA,tad66k:/data/TAD66K \\
        --cold-start aescot/ --output-dir runs/aes-r1 --deepspeed zero3

`--cold-start` takes an AesCoT JSONL file or the folder `aesr1 aescot build --output-dir` wrote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from aesr1.aescot.store import OUTPUT_FILE_NAME as AESCOT_FILE_NAME
from aesr1.jsonio import check_writable, os_error_message

PROG = "python -m aesr1.train"


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", help="YAML config (a file, or a packaged name such as appendix_c_qwen2_5_vl_7b)"
    )
    parser.add_argument("--model", help="local Qwen2.5-VL-style checkpoint directory (model.name_or_path)")
    parser.add_argument("--data", help="dataset spec, e.g. ava:/data/AVA,tad66k:/data/TAD66K or synthetic")
    parser.add_argument(
        "--cold-start",
        help=f"AesCoT JSONL for the SFT stage, or a folder holding {AESCOT_FILE_NAME} (data.cold_start)",
    )
    parser.add_argument("--output-dir", help="where checkpoints, logs, the table and the plot go")
    parser.add_argument("--seed", type=int, help="run seed")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --output-dir from its last checkpoint (with no settings given: its saved ones)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="delete the run in --output-dir and start afresh"
    )
    parser.add_argument(
        "--stages", default="sft,rapo", help="comma-separated stages to run (default sft,rapo)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML syntax), e.g. --set rapo.learning_rate=2e-6")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--report-to", metavar="TRACKERS",
        help="experiment trackers (report_to): tensorboard, wandb, mlflow, trackio, a comma-separated list, "
        "none or all (default tensorboard)",
    )  # fmt: skip
    parser.add_argument(
        "--show-config", action="store_true",
        help="print the resolved config (every key with its help, and its default where it differs) as YAML and exit",
    )  # fmt: skip
    parser.add_argument(
        "--deepspeed", metavar="NAME_OR_JSON",
        help="DeepSpeed config for both stages: zero3, zero3_offload, zero2 (packaged) or a JSON path",
    )  # fmt: skip
    parser.add_argument(
        "--merge", action="store_true",
        help="with LoRA (model.lora.r): the final model directories hold full weights with the adapter merged "
        "in (model.lora.save_merged); by default they hold the adapter alone",
    )  # fmt: skip
    parser.add_argument(
        "--plan", action="store_true",
        help="print the memory each GPU needs for this configuration (both stages, itemised) and exit: "
        "no training, no weights loaded (aesr1.train.plan)",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-memory", metavar="SIZE",
        help="with --plan: the GPU's memory, e.g. 24GB (10^9 bytes), 24GiB (2^30 bytes), 80G; says whether it fits",
    )  # fmt: skip
    parser.add_argument(
        "--num-gpus", type=int, metavar="N",
        help="with --plan: processes (GPUs) to plan for (default: WORLD_SIZE of the launcher, else 1)",
    )  # fmt: skip
    # The `deepspeed` launcher appends --local_rank=N; the rank is read from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def cold_start_file(path: str) -> str:
    """The AesCoT JSONL that `--cold-start PATH` names: PATH itself, or PATH/aescot.jsonl for the
    folder that `aescot build --output-dir` writes."""
    given = Path(path)
    if given.is_dir():
        inside = given / AESCOT_FILE_NAME
        if not inside.is_file():
            raise FileNotFoundError(
                f"--cold-start {path!r}: the folder holds no {AESCOT_FILE_NAME} "
                "(give the folder `aesr1 aescot build --output-dir` wrote, or the JSONL file itself)"
            )
        return str(inside)
    if not given.is_file():
        raise FileNotFoundError(
            f"--cold-start {path!r}: no such file or folder "
            f"(give an AesCoT JSONL file or a folder holding {AESCOT_FILE_NAME})"
        )
    return path


def build_config(args: argparse.Namespace):
    from aesr1.train.config import TrainConfig, config_from_dict, embedded_default, load_config, set_override

    embedded = not any([args.config, args.model, args.data, args.cold_start])
    base = embedded_default() if embedded else TrainConfig()
    # Validated once, by preflight, with the process count: not after each step of building it.
    config = load_config(args.config, base, validate=False) if args.config else base
    values: dict = {}
    if args.model:
        values.setdefault("model", {})["name_or_path"] = args.model
    if args.data:
        values.setdefault("data", {})["spec"] = args.data
    if args.cold_start:
        values.setdefault("data", {})["cold_start"] = cold_start_file(args.cold_start)
    if args.output_dir:
        values["output_dir"] = args.output_dir
    if args.seed is not None:
        values["seed"] = args.seed
    if args.no_progress:
        values["progress"] = False
    if args.deepspeed:
        values["deepspeed"] = args.deepspeed
    if args.report_to is not None:
        values["report_to"] = args.report_to
    if args.merge:
        values.setdefault("model", {}).setdefault("lora", {})["save_merged"] = True
    for assignment in args.set:
        set_override(values, assignment)
    return config_from_dict(values, config, validate=False), embedded


def memory_plan_text(config, args: argparse.Namespace) -> str:
    """`--plan`: the per-GPU memory plan of `config` (`aesr1.train.plan`), checked against `--gpu-memory`."""
    import os

    from aesr1.train.config import validate_config
    from aesr1.train.plan import format_plan, parse_memory_size, plan_memory

    world = args.num_gpus
    if world is None:
        raw = os.environ.get("WORLD_SIZE", "1")
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"WORLD_SIZE={raw!r} in the environment is not a process count: give --num-gpus")
        world = int(raw)
    elif world < 1:
        raise ValueError(f"--num-gpus must be >= 1, got {world}")
    memory = parse_memory_size(args.gpu_memory) if args.gpu_memory is not None else None
    validate_config(config, world)
    plan = plan_memory(config, world, gpu_memory=memory[0] if memory else None)
    return format_plan(plan, memory)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = parse_args(argv, prog)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - {"sft", "rapo"}
    if unknown:
        raise SystemExit(f"--stages: unknown stage(s) {sorted(unknown)}; choose from sft, rapo")
    try:
        config, embedded = build_config(args)
        from accelerate.state import PartialState

        from aesr1.train.pipeline import check_output_dir, saved_run_config

        given = [args.config, args.model, args.data, args.cold_start, args.seed, args.set, args.deepspeed,
                 args.report_to, args.merge or None]  # fmt: skip
        settled = not args.resume or any(g not in (None, []) for g in given)
        saved = None if settled else saved_run_config(config)
        if saved is not None:  # `--output-dir DIR --resume` alone continues DIR as it was started
            config, embedded = saved, False
        if args.show_config:
            from aesr1.train.config_help import describe_config

            print(describe_config(config))
            return 0
        if args.plan:
            print(memory_plan_text(config, args))
            return 0
        if args.gpu_memory is not None or args.num_gpus is not None:
            raise ValueError("--gpu-memory and --num-gpus go with --plan")

        if config.deepspeed is not None:
            from aesr1.train.distributed import ensure_process_group_env

            ensure_process_group_env()

        from aesr1.train.pipeline import preflight

        preflight(config, PartialState(cpu=not torch.cuda.is_available()).num_processes)
        check_output_dir(config, resume=args.resume, overwrite=args.overwrite, stages=stages)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {os_error_message(error)}", file=sys.stderr)
        return 1
    from aesr1.train.pipeline import run_pipeline

    started = time.time()
    if embedded:
        print("[aesr1.train] embedded CPU default: synthetic data, tiny Qwen2.5-VL, AesCoT templates")
    try:
        check_writable(config.output_dir)  # before data and models, not at the first checkpoint
        result = run_pipeline(config, resume=args.resume, overwrite=args.overwrite, stages=stages)
    except OSError as error:
        # Checkpoints and results written so far stay; --resume continues once the cause is fixed.
        where = "" if error.filename is not None else f" (output folder {config.output_dir})"
        print(f"error: {os_error_message(error)}{where}", file=sys.stderr)
        return 1
    from accelerate.state import PartialState

    if PartialState(cpu=not torch.cuda.is_available()).is_main_process:
        print()
        print(result.table)
        print()
        if result.plot is not None:
            print(f"plot: {result.plot}")
        print(f"wall time: {time.time() - started:.0f} s")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # before interpreter shutdown tears its threads down
    return 0


if __name__ == "__main__":
    sys.exit(main())
