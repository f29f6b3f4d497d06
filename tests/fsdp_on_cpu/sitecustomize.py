"""Test-only shim, put on PYTHONPATH by tests/test_distributed_fsdp.py: lets accelerate run FSDP on CPU processes.

accelerate 1.15 turns ``distributed_type: FSDP`` into FSDP only when the processes own accelerators (MULTI_GPU and
the like, accelerate/state.py, AcceleratorState.__init__); with ``--cpu`` it silently falls back to DDP (MULTI_CPU).
torch's FSDP2 itself shards, gathers and checkpoints on CPU tensors over gloo, so this shim stands in for the GPU
only: after accelerate built its state from the launcher's FSDP settings, it keeps FSDP instead of the fallback.
Everything else (wrapping, sharded checkpoints, gathering) is the real accelerate/torch code path.
"""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and os.environ.get("RLHF_TEST_FSDP_ON_CPU") == "1":
    from accelerate import state as _state
    from accelerate.utils import DistributedType

    _original_init = _state.AcceleratorState.__init__
    _plugin = []  # the FSDP plugin of the first Accelerator; later bare AcceleratorState() calls must keep FSDP

    def _init(self, *args, fsdp_plugin=None, **kwargs):
        _original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and not _plugin:
            _plugin.append(fsdp_plugin)
        if self.distributed_type == DistributedType.MULTI_CPU and _plugin:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = _plugin[0]

    _state.AcceleratorState.__init__ = _init
