"""The library behind the RLHF stages: data and prompt format (``data/``), models (``models/``), the Trainer-stage
skeleton (``stages/``), the PPO engine (``ppo/``), where it runs (``runtime/``), outputs that are complete or absent
(``outputs/``), the pipeline (``pipeline/``), and the stage recipes (``scripts/``). README, "Layout", maps them.

Nothing here imports a top-level script; the scripts import the recipes in ``rlhf.scripts``.
"""
