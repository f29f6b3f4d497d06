"""``python -m rlhf.pipeline --config configs/demo.json``: the stages as separate processes (rlhf.pipeline.runner)."""

import sys

from rlhf.pipeline.runner import main

sys.exit(main())
