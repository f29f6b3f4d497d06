"""What sharded training (DeepSpeed ZeRO, FSDP) changes for this project's code, in one place.

accelerate and the Trainer do the sharding; the code here covers the few spots where the project itself touches the
weights: saving a merged model (gather the full state dict once, rebuild the model on the main process), generating
with a sharded policy, loading frozen models next to a ZeRO-3 policy, and the DeepSpeed settings the PPO loop needs.
Ready accelerate config files are in ``configs/accelerate/`` (README, "Scaling out").
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.runtime.distributed")


class Collectives:
    """Every agreement between processes the project needs, in one place: whether any process says yes, the mean
    of some numbers, an object from the main process. Plain ``torch.distributed`` (what accelerate, the Trainer and
    DeepSpeed all initialise: gloo, NCCL or HCCL); a single process communicates nothing."""

    def __init__(self, device: Any) -> None:
        self.device = torch.device(device)

    @property
    def world_size(self) -> int:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def any(self, *flags: bool) -> Any:
        """Whether any process raised each flag (one flag: a bool; several: a tuple), in one collective."""
        if self.world_size > 1:
            import torch.distributed as dist

            tensor = torch.tensor([float(f) for f in flags], device=self.device)
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
            flags = tuple(bool(v) for v in tensor.tolist())
        return bool(flags[0]) if len(flags) == 1 else tuple(bool(f) for f in flags)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the processes (float64), in one collective."""
        if self.world_size == 1:
            return {k: float(v) for k, v in values.items()}
        import torch.distributed as dist

        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(keys, (tensor / self.world_size).tolist(), strict=True))

    def broadcast(self, value: Any) -> Any:
        """``value`` of the main process, on every process (a small picklable object)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def world_size(environ: dict[str, str] | None = None) -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 without one). Known before the Trainer's flags set
    up distribution, so flag checks that need one process read it here."""
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1"))


def deepspeed_stage(accelerator: Any) -> int | None:
    """The ZeRO stage when accelerate runs DeepSpeed, else None."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return None
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def shards_parameters(accelerator: Any) -> bool:
    """Whether no process holds the whole model: FSDP or ZeRO-3. Then saving and generating need the gathers here."""
    return is_fsdp(accelerator) or deepspeed_stage(accelerator) == 3


def shards_optimizer(accelerator: Any) -> bool:
    """Whether each process holds only part of the optimizer state (FSDP, any ZeRO stage): checkpoints are then
    written by every process through ``accelerator.save_state``."""
    return is_fsdp(accelerator) or deepspeed_stage(accelerator) is not None


def full_state_dict(accelerator: Any, wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on the main process (CPU tensors), gathered once; other processes may get an
    empty or partial dict. Every process must call this. ``wrapped`` is what ``accelerator.prepare`` returned (the
    DeepSpeed engine under DeepSpeed)."""
    if deepspeed_stage(accelerator) == 3 and not hasattr(wrapped, "zero_gather_16bit_weights_on_model_save"):
        raise RuntimeError("ZeRO-3: the DeepSpeed engine is needed to gather the weights")
    if is_fsdp(accelerator) and hasattr(wrapped, "unshard"):  # FSDP2: gather tensor by tensor, keep on the main one
        return _gather_dtensors(wrapped.state_dict(), accelerator.is_main_process)
    state = accelerator.get_state_dict(wrapped)
    return {k: v.detach().cpu() for k, v in state.items()} if accelerator.is_main_process else {}


def _gather_dtensors(state: dict[str, Any], keep: bool) -> dict[str, torch.Tensor]:
    """Full CPU tensors from FSDP2's sharded ones (every process gathers each tensor in the same order; only the
    main process keeps them, so at most one whole tensor at a time lives on the others)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, value in state.items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            out[name] = full.detach().cpu()
        del full
    return out


def rebuild_from_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A plain CPU copy of ``model`` (a transformers model, or a PEFT model around one) holding ``state``.

    The copy is built on the meta device and takes the tensors of ``state`` without copying them, so the main
    process needs the model's memory once, not twice. Used on the main process after ``full_state_dict``.
    """
    from peft import PeftModel, get_peft_model

    is_peft = isinstance(model, PeftModel)
    base = model.get_base_model() if is_peft else model
    # Only the main process builds this: under ZeRO-3 it must not be partitioned (a collective on one process).
    with without_zero3_init(), torch.device("meta"):
        skeleton = _unsharded_class(base)._from_config(base.config)
        if is_peft:
            adapter = model.active_adapter
            skeleton = get_peft_model(skeleton, model.peft_config[adapter], adapter_name=adapter)
    result = skeleton.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if not _is_tied(skeleton, k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the gathered weights do not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    _materialize_buffers(skeleton, base)
    left = [n for n, p in skeleton.named_parameters() if p.is_meta]
    if left:
        raise RuntimeError(f"the gathered weights lack {left[:3]}")
    return skeleton


def _unsharded_class(module: nn.Module) -> type:
    """The model's own class: FSDP2 swaps the class of a module it shards for an ``FSDP<Name>`` subclass."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(module)
    if issubclass(cls, FSDPModule):
        cls = next(c for c in cls.__mro__[1:] if not issubclass(c, FSDPModule))
    return cls


def _is_tied(model: nn.Module, key: str) -> bool:
    """A missing key that is a tied copy of another weight (e.g. lm_head.weight = embed_tokens.weight)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    names = tied if isinstance(tied, dict) else {k: None for k in tied}
    return any(key.endswith(name) for name in names)


def _materialize_buffers(skeleton: nn.Module, original: nn.Module) -> None:
    """Non-persistent buffers (rotary frequencies) are not in state dicts: take them from the original module."""
    originals = dict(original.named_buffers())
    for name, buf in list(skeleton.named_buffers()):
        if not buf.is_meta:
            continue
        key = name.split("base_model.model.", 1)[-1]
        source = originals.get(key)
        module_name, _, attr = name.rpartition(".")
        module = skeleton.get_submodule(module_name) if module_name else skeleton
        value = source.detach().cpu().clone() if source is not None and not source.is_meta else None
        if value is None:
            value = torch.zeros(buf.shape, dtype=buf.dtype)
        module._buffers[attr] = value


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating tensors holding NaN or inf."""
    with torch.no_grad():
        return [
            k for k, v in state.items() if v.is_floating_point() and v.numel() and not bool(torch.isfinite(v).all())
        ]


@contextmanager
def full_parameters(accelerator: Any, wrapped: nn.Module):
    """Let code call submodules of a sharded model directly (``generate`` on the policy's LM, the reference
    forward with the adapter off).

    FSDP2 gathers a unit's parameters in that unit's forward hook; the root unit's own parameters (embeddings,
    LM head, value head) are gathered only when the root module itself is called, which ``generate`` never does.
    So the root unit is unsharded for the duration. Decoder layers still gather and free one at a time, and
    ``synced_gpus`` (see ``generation_kwargs``) keeps every process stepping until all are done. ZeRO-3 hooks every
    submodule, and DDP/ZeRO-1/2 replicate the parameters: nothing to do there.
    """
    if not is_fsdp(accelerator) or not hasattr(wrapped, "unshard"):
        yield
        return
    _fsdp2_lazy_init(wrapped)
    wrapped.unshard()
    try:
        yield
    finally:
        wrapped.reshard()


def _fsdp2_lazy_init(wrapped: nn.Module) -> None:
    """FSDP2 decides which unit is the root at its first forward; generation may come before any forward of the
    root, so make that decision now (otherwise the first decoder layer called would take itself for the root)."""
    state = wrapped._get_fsdp_state()  # FSDPModule API of torch >= 2.6
    state._lazy_init()


def generation_kwargs(accelerator: Any) -> dict[str, Any]:
    """``synced_gpus`` when parameters are sharded: a process whose responses all ended must keep taking part in
    the per-layer gathers of the others (otherwise they wait forever)."""
    return {"synced_gpus": True} if shards_parameters(accelerator) and accelerator.num_processes > 1 else {}


def frozen_weights_dtype(accelerator: Any, dtype: Any) -> Any:
    """The dtype for models that are only run next to the policy (a frozen reference copy, the reward model).

    DeepSpeed and FSDP mixed precision compute the policy with its *parameters* in bf16/fp16, not under autocast
    alone; frozen models stored in float32 would compute differently (norms, residual sums) and the KL to a frozen
    reference would not start at 0. They take the same low-precision weights there; elsewhere ``dtype`` stands.
    """
    if deepspeed_stage(accelerator) is None and not is_fsdp(accelerator):
        return dtype
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, dtype)


def frozen_model_loading(accelerator: Any) -> Any:
    """Context for loading models that are only run, never trained (reward model, frozen reference) under ZeRO-3.

    With ZeRO-3 active, ``from_pretrained`` partitions every model it loads (``deepspeed.zero.Init``, switched on by
    transformers' global DeepSpeed config); a model that never goes through ``accelerator.prepare`` would then hold
    empty parameters. Inside this context that global config is lifted, so these models load as whole replicas.
    """
    return without_zero3_init() if deepspeed_stage(accelerator) == 3 else nullcontext()


@contextmanager
def without_zero3_init():
    """Lift transformers' global DeepSpeed config (if any) for the duration: models built inside are plain."""
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)


def configure_deepspeed_for_ppo(
    accelerator: Any, mini_batch_size: int, accumulation: int, max_grad_norm: float
) -> None:
    """Fill the DeepSpeed settings that accelerate cannot infer without a data loader.

    The PPO loop accumulates ``accumulation`` minibatches per optimizer step through ``accelerator.accumulate``;
    DeepSpeed counts the same micro-batches and steps its optimizer at the same boundary.
    """
    if deepspeed_stage(accelerator) is None:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = mini_batch_size
    config["gradient_accumulation_steps"] = accumulation
    config["train_batch_size"] = mini_batch_size * accumulation * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm  # 0: off, as for the PPO loop itself


def ppo_optimizer(accelerator: Any, params: list[nn.Parameter], lr: float, adafactor: bool) -> torch.optim.Optimizer:
    """Adam (or Adafactor), or accelerate's placeholder when the DeepSpeed config defines the optimizer itself
    (the CPU-offload config: DeepSpeed's CPU Adam runs the update)."""
    if deepspeed_stage(accelerator) is not None and "optimizer" in accelerator.state.deepspeed_plugin.deepspeed_config:
        if adafactor:
            raise UsageError("--adafactor: this DeepSpeed config defines its own optimizer; drop --adafactor")
        from accelerate.utils import DummyOptim

        return DummyOptim(params, lr=lr)
    if adafactor:
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    # fused: one kernel per parameter for the whole Adam update. On a CPU it is about 4x faster than foreach's chain
    # of multi-tensor ops (0.13 s against 0.6 s per step of a 135M model, one thread: a third of a PPO minibatch's
    # time), the same math as the Trainer stages' default adamw_torch_fused. Kept to plain CPU/CUDA runs; sharded
    # optimizers (FSDP, ZeRO) and other devices keep foreach, the multi-tensor update they were verified with.
    if not shards_optimizer(accelerator) and accelerator.device.type in ("cpu", "cuda"):
        return torch.optim.Adam(params, lr=lr, fused=True)
    return torch.optim.Adam(params, lr=lr, foreach=True)


def all_finite(accelerator: Any, grads: list[torch.Tensor]) -> bool:
    """Whether every gradient is free of NaN/inf. Sharded gradients (FSDP) are checked shard by shard and the
    processes agree; replicated ones (DDP, already all-reduced) give the same answer everywhere without a
    collective. Under DeepSpeed the gradients live inside the engine (``p.grad`` is None): nothing to check here."""
    from torch.distributed.tensor import DTensor

    local = [g.to_local() if isinstance(g, DTensor) else g for g in grads]
    # One fused norm (torch >= 2.6) instead of a check per tensor: a NaN or inf anywhere makes the total norm
    # non-finite (so does a total norm beyond float range, a step no one wants applied either).
    total_norm = getattr(torch.nn.utils, "get_total_norm", None)
    if total_norm is None or not local:
        finite = all(bool(torch.isfinite(g).all()) for g in local)
    else:
        finite = bool(torch.isfinite(total_norm(local)))
    if not is_fsdp(accelerator):
        return finite
    return not Collectives(accelerator.device).any(not finite)


def check_quantized_launch(quantization: Any, environ: dict[str, str] | None = None) -> None:
    """QLoRA with parameter sharding (FSDP, ZeRO-3) is not supported here: stop before loading anything.

    Read from the launcher's environment (``accelerate launch`` sets these), because the Trainer-based stages build
    their Accelerator only after the model is loaded.
    """
    if quantization is None:
        return
    import json
    import os

    env = os.environ if environ is None else environ
    sharding = None
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        sharding = "FSDP"
    elif env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if config_file and os.path.isfile(config_file):
            with open(config_file, encoding="utf-8") as handle:
                stage = json.load(handle).get("zero_optimization", {}).get("stage", stage)
        if str(stage) == "3":
            sharding = "DeepSpeed ZeRO-3"
    if sharding:
        raise UsageError(
            f"--load_in_4bit/--load_in_8bit: quantized weights cannot be sharded with {sharding} here; launch with "
            "configs/accelerate/ddp.yaml or deepspeed_zero2.yaml"
        )
