"""Stage 1 — supervised fine-tuning.

The recipe is ``rlhf/scripts/sft.py``; ``python sft.py --help`` shows its usage and every flag. This file is
the entry point that ``python``, ``torchrun``, ``accelerate launch`` and ``gaudi_spawn.py`` run; after
``pip install .`` the same recipe is the ``rlhf-sft`` command.
"""

from rlhf.errors import run_main
from rlhf.scripts.sft import main

if __name__ == "__main__":
    run_main(main)
