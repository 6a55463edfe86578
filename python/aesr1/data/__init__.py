"""Dataset loaders (the IAA benchmarks in their distributed formats), the synthetic aesthetic dataset
and the paper's training mix."""

from aesr1.data.files import DatasetFileNotFoundError
from aesr1.data.mix import (
    PAPER_MIX_RATIO,
    PAPER_MIX_TOTAL,
    balance_bins,
    bin_counts,
    mix_datasets,
    paper_training_mix,
)
from aesr1.data.normalization import ScoreRange
from aesr1.data.records import ScoredImage
from aesr1.data.registry import (
    DATASETS,
    TABLE1_DATASETS,
    DataSpec,
    canonical_name,
    display_name,
    find_dataset_root,
    load_dataset,
    load_many,
    parse_data_spec,
)
from aesr1.data.report import LoadedDataset, LoadReport

__all__ = [
    "DATASETS",
    "PAPER_MIX_RATIO",
    "PAPER_MIX_TOTAL",
    "TABLE1_DATASETS",
    "DataSpec",
    "DatasetFileNotFoundError",
    "LoadReport",
    "LoadedDataset",
    "ScoreRange",
    "ScoredImage",
    "balance_bins",
    "bin_counts",
    "canonical_name",
    "display_name",
    "find_dataset_root",
    "load_dataset",
    "load_many",
    "mix_datasets",
    "paper_training_mix",
    "parse_data_spec",
]
