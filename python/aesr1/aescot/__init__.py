"""AesCoT: the aesthetic reasoning data pipeline of Aes-R1 (paper §3.2, Appendix B and E).

An expert told the hidden score writes a critique along the five dimensions of Table 5; the critique
is filtered for score leakage (programmatic), reasoning-score inconsistency and factual errors (judge
model), and kept items are balanced over the bad / fair / good bins and written as SFT-ready JSONL.

    from aesr1.aescot import build_dataset, TemplateExpert, TemplateJudge
    report = build_dataset(items, TemplateExpert(), "aescot.jsonl", per_bin=300, judge=TemplateJudge())

Command line: ``aesr1 aescot build --data ... --expert ... --output-dir DIR`` (writes ``DIR/aescot.jsonl``).
"""

from aesr1.aescot.chat_client import ChatClient, ChatError, ChatFatalError, EndpointConfig
from aesr1.aescot.construction import construction_prompt, judge_prompt
from aesr1.aescot.experts import ChatExpert, Critique, Expert, LocalModel, TemplateExpert, TransformersExpert
from aesr1.aescot.filters import DROP_REASONS, ERROR_REASONS, check_format, check_leakage
from aesr1.aescot.judges import (
    ChatJudge,
    Judge,
    JudgeParseError,
    JudgeVerdict,
    TemplateJudge,
    TransformersJudge,
    parse_verdict,
)
from aesr1.aescot.leakage import LeakHit, find_leaks
from aesr1.aescot.pipeline import DEFAULT_PER_BIN, BuildConfig, abuild_dataset, build_dataset, sft_record
from aesr1.aescot.report import BinReport, BuildReport
from aesr1.aescot.store import OutputPaths

__all__ = [
    "DEFAULT_PER_BIN",
    "DROP_REASONS",
    "ERROR_REASONS",
    "BinReport",
    "BuildConfig",
    "BuildReport",
    "ChatClient",
    "ChatError",
    "ChatExpert",
    "ChatFatalError",
    "ChatJudge",
    "Critique",
    "EndpointConfig",
    "Expert",
    "Judge",
    "JudgeParseError",
    "JudgeVerdict",
    "LeakHit",
    "LocalModel",
    "OutputPaths",
    "TemplateExpert",
    "TemplateJudge",
    "TransformersExpert",
    "TransformersJudge",
    "abuild_dataset",
    "build_dataset",
    "check_format",
    "check_leakage",
    "construction_prompt",
    "find_leaks",
    "judge_prompt",
    "parse_verdict",
    "sft_record",
]
