"""Evaluation of the PPO policy against the SFT policy.

The recipe is ``rlhf/scripts/evaluate.py``; ``python evaluate.py --help`` shows its usage and every flag.
This file is the entry point that ``python``, ``torchrun``, ``accelerate launch`` and ``gaudi_spawn.py`` run; after
``pip install .`` the same recipe is the ``rlhf-evaluate`` command.
"""

from rlhf.errors import run_main
from rlhf.scripts.evaluate import main

if __name__ == "__main__":
    run_main(main)
