"""Ablation studies of the pipeline: grids of variants over seeds with shared stages, and reports.

`python -m aesr1.train.study` (`aesr1 study`) runs them; `grid` reads grids, `plan` decides which
stages variants share, `runner` runs them resumably, `measures` reads a finished run, `verdicts`
judges a grid's claims from the per-seed numbers, `report` and `plots` write the results.
"""
