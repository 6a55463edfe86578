"""aesr1: Aes-R1 aesthetic reasoning with RAPO (Relative-Absolute Policy Optimization).

`aesr1.rewards` and `aesr1.metrics` need only numpy; training, data and evaluation modules
import torch/transformers lazily and live behind the `aesr1[train]` extra.
"""

from aesr1._core import __version__

__all__ = ["Scorer", "__version__", "compare"]


def __getattr__(name: str):
    # Lazy: `import aesr1` must stay numpy-only; Scorer pulls in torch and transformers.
    if name == "Scorer":
        from aesr1.score import Scorer

        return Scorer
    if name == "compare":
        from aesr1.score.compare import compare

        return compare
    raise AttributeError(f"module 'aesr1' has no attribute {name!r}")
