"""RAPO rewards inside other RL stacks.

- `aesr1.integrations.trl`: reward functions for trl's `GRPOTrainer` (`reward_funcs=`), which gather the
  generation batch across processes so the rank reward (Eq. 3-5) sees every group whole.
- `aesr1.integrations.verl`: a batch reward manager for verl that groups by the `uid` field, and a
  per-sample `compute_score` for the components that need no group (absolute, binary, format).

Neither submodule is imported here: each needs its own stack (torch for trl; nothing beyond numpy for
the verl adapter itself), and `import aesr1.integrations` stays free.
"""

__all__ = ["trl", "verl"]
