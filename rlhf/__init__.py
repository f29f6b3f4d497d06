"""Shared library of the RLHF pipeline: data and prompt format, backend selection, checkpoints, PPO engine.

The three stage scripts at the top level (``sft.py``, ``reward_modeling.py``, ``rl_training.py``) import from
here; nothing here imports a script.
"""
