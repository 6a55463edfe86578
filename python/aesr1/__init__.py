"""aesr1: Aes-R1 aesthetic reasoning with RAPO (Relative-Absolute Policy Optimization).

`aesr1.rewards` and `aesr1.metrics` need only numpy; training, data and evaluation modules
import torch/transformers lazily and live behind the `aesr1[train]` extra.
"""

from aesr1._core import __version__

__all__ = ["__version__"]
