"""The stage recipes (SFT, reward model, PPO, evaluation). Run them as the top-level scripts (``python sft.py``,
``torchrun ... sft.py``, ``gaudi_spawn.py ... sft.py``) or, after ``pip install .``, as console commands
(``rlhf-sft``, ``rlhf-reward-model``, ``rlhf-ppo``, ``rlhf-evaluate``)."""
