"""Stage 3 — PPO.

The recipe is ``rlhf/scripts/rl_training.py``; ``python rl_training.py --help`` shows its usage and every flag.
This file is the entry point that ``python``, ``torchrun``, ``accelerate launch`` and ``gaudi_spawn.py`` run; after
``pip install .`` the same recipe is the ``rlhf-ppo`` command.
"""

from rlhf.errors import run_main
from rlhf.scripts.rl_training import main

if __name__ == "__main__":
    run_main(main)
