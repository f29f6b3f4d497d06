"""Stage 2 — reward modeling.

The recipe is ``rlhf/scripts/reward_modeling.py``; ``python reward_modeling.py --help`` shows its usage and every flag.
This file is the entry point that ``python``, ``torchrun``, ``accelerate launch`` and ``gaudi_spawn.py`` run; after
``pip install .`` the same recipe is the ``rlhf-reward-model`` command.
"""

from rlhf.errors import run_main
from rlhf.scripts.reward_modeling import main

if __name__ == "__main__":
    run_main(main)
