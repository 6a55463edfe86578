"""Dataset loaders, the synthetic aesthetic dataset and the training mix."""

from aesr1.data.records import ScoredImage

__all__ = ["ScoredImage"]
