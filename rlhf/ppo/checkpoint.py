"""PPO checkpoints: ``output_dir/step_N/`` and ``output_dir/final/``, each complete or absent.

A checkpoint folder holds:

* ``adapter/`` — the LoRA adapter (loads with PEFT), when training LoRA;
* the merged (or fully fine-tuned) policy at the folder root, loadable with ``AutoModelForCausalLM`` — always in
  ``final/``, in ``step_N/`` with ``--save_merged``;
* ``value_head.safetensors``, the tokenizer, ``prompt_format.json`` and ``ppo_config.json`` (the PPO flags);
* what an exact resume needs: ``trainable_state.safetensors`` (every trained parameter) and ``optimizer.pt`` —
  or, in sharded runs (FSDP, DeepSpeed ZeRO), ``accelerate_state/`` with every process's shards —, ``rng.pt`` (all
  random generators, per process) and ``state.json`` (step, data position, KL controller).

Weights are safetensors; the ``.pt`` files hold only tensors and numbers and are read with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlhf.data.prompt_format import PromptFormat
from rlhf.errors import UsageError
from rlhf.outputs.folders import COMPLETE_MARKER, STAGING, discard_staging, is_complete, prepare_staging, publish_staged
from rlhf.runtime.distributed import full_state_dict, rebuild_from_state_dict, shards_optimizer, shards_parameters

SHARDED_STATE = "accelerate_state"  # FSDP/DeepSpeed: weights and optimizer shards, written by every process
PPO_CONFIG = "ppo_config.json"  # the PPO flags (evaluate.py samples at their temperature)


def _trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in policy.named_parameters() if p.requires_grad}


def _rng_state() -> dict[str, Any]:
    """Every random generator a step draws from: the CPU's, and the accelerator's (CUDA, or Gaudi's HPU)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if _hpu_available():
        state["hpu"] = torch.hpu.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "hpu" in state and _hpu_available():
        torch.hpu.set_rng_state_all(state["hpu"])


def _hpu_available() -> bool:
    """Habana's PyTorch bridge registers ``torch.hpu`` (and its generators) once imported."""
    hpu = getattr(torch, "hpu", None)
    return hpu is not None and bool(getattr(hpu, "is_available", lambda: False)())


def save_checkpoint(
    folder: Path,
    accelerator: Any,
    engine: Any,
    sampler: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    step: int,
    merged: bool,
    final: bool = False,
) -> None:
    """Write a checkpoint, complete or absent (rlhf.outputs.folders). Called on every rank (each contributes its
    random state); rank 0 writes.

    Sharded runs (FSDP, DeepSpeed ZeRO) write weights and optimizer state through ``accelerator.save_state``
    (every process its shard, into ``accelerate_state/``; the folder must be on a file system all nodes share), and
    the loadable policy from weights gathered once on rank 0.
    """
    from accelerate.utils import gather_object

    rng_per_rank = gather_object([_rng_state()])
    policy = engine.unwrapped
    staging = prepare_staging(folder) if accelerator.is_main_process else folder / STAGING
    try:
        if shards_optimizer(accelerator):
            accelerator.wait_for_everyone()  # the staging folder exists before any process writes its shard
            accelerator.save_state(str(staging / SHARDED_STATE))
        full = full_state_dict(accelerator, engine.policy) if shards_parameters(accelerator) else None
        if accelerator.is_main_process:
            _write(
                staging, accelerator, engine, policy, sampler, tokenizer, fmt, step, merged, final, full, rng_per_rank
            )
            publish_staged(folder, {"step": step, "final": final})
    except BaseException:
        if accelerator.is_main_process:
            discard_staging(folder)
        raise
    accelerator.wait_for_everyone()


def _write(
    tmp: Path,
    accelerator: Any,
    engine: Any,
    policy: Any,
    sampler: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    step: int,
    merged: bool,
    final: bool,
    full: dict[str, torch.Tensor] | None,
    rng_per_rank: list[dict[str, Any]],
) -> None:
    """The checkpoint's files (main process): resume state, the adapter and/or merged policy, value head, tokenizer,
    prompt format, the PPO settings."""
    if not shards_optimizer(accelerator):
        save_file(_trainable_state(policy), str(tmp / "trainable_state.safetensors"))
        torch.save(engine.optimizer.state_dict(), tmp / "optimizer.pt")
    head = (
        {k.split(".", 1)[1]: v for k, v in full.items() if k.startswith("value_head.")}
        if full is not None
        else policy.value_head.state_dict()
    )
    save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp / "value_head.safetensors"))
    torch.save({"ranks": rng_per_rank, **engine.state_dict()}, tmp / "rng.pt")
    state = {"step": step, "sampler": sampler.state_dict(), "kl_ctl": engine.kl_ctl.state_dict()}
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    (tmp / PPO_CONFIG).write_text(json.dumps(dataclasses.asdict(engine.config), indent=2) + "\n", encoding="utf-8")
    lm = policy.lm
    is_peft = hasattr(lm, "peft_config")
    if full is not None:  # sharded: a plain CPU copy of the LM from the gathered weights
        lm = rebuild_from_state_dict(lm, {k[3:]: v for k, v in full.items() if k.startswith("lm.")})
    if is_peft:
        lm.save_pretrained(str(tmp / "adapter"))
    if merged or not is_peft:
        # Final or a gathered copy: merge in place. Mid-run on the live model: merge a copy, so training weights
        # stay exact.
        target = lm if final or full is not None else copy.deepcopy(lm)
        plain = target.merge_and_unload() if is_peft else target
        plain.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    fmt.save(tmp)


def load_ppo_config(folder: str | Path) -> dict[str, Any] | None:
    """The PPO settings a checkpoint (or ``final/``) was trained with, or None for another kind of folder."""
    path = Path(folder) / PPO_CONFIG
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def find_latest(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir`` (``step_N`` or ``final``), or None."""
    best: tuple[int, Path] | None = None
    for path in Path(output_dir).iterdir() if Path(output_dir).is_dir() else []:
        if path.is_dir() and (path.name.startswith("step_") or path.name == "final") and is_complete(path):
            step = json.loads((path / COMPLETE_MARKER).read_text(encoding="utf-8")).get("step", -1)
            if best is None or step > best[0]:
                best = (step, path)
    return best[1] if best else None


def resolve_checkpoint(value: str | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint PATH|latest`` -> a complete checkpoint folder, or None to start fresh."""
    if not value:
        return None
    if value == "latest":
        return find_latest(output_dir)
    path = Path(value)
    if not is_complete(path):
        raise UsageError(f"--resume_from_checkpoint {value}: not a complete PPO checkpoint (no {COMPLETE_MARKER})")
    return path


def load_checkpoint(folder: Path, accelerator: Any, engine: Any, sampler: Any) -> int:
    """Restore weights, optimizer, generators and data position; returns the step to continue from."""
    policy = engine.unwrapped
    sharded_state = folder / SHARDED_STATE
    if shards_optimizer(accelerator) != sharded_state.is_dir():
        written = "a sharded run (FSDP/DeepSpeed)" if sharded_state.is_dir() else "an unsharded run (DDP/one process)"
        raise UsageError(
            f"--resume_from_checkpoint {folder}: written by {written}; resume it with the same accelerate config"
        )
    if sharded_state.is_dir():
        accelerator.load_state(str(sharded_state))  # weights and optimizer, each process its shard
    else:
        _load_replicated(folder, engine, policy)
    rng = torch.load(folder / "rng.pt", weights_only=True)
    engine.load_state_dict(rng)
    ranks = rng["ranks"]
    mine = ranks[accelerator.process_index] if accelerator.process_index < len(ranks) else ranks[0]
    _set_rng_state(mine)
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    sampler.load_state_dict(state["sampler"])
    engine.kl_ctl.load_state_dict(state["kl_ctl"])
    return int(state["step"])


def _load_replicated(folder: Path, engine: Any, policy: torch.nn.Module) -> None:
    """Trained parameters and optimizer state of an unsharded run (every process holds them whole)."""
    saved = load_file(str(folder / "trainable_state.safetensors"))
    expected = {n for n, p in policy.named_parameters() if p.requires_grad}
    if set(saved) != expected:
        missing = sorted(expected - set(saved))[:3]
        raise UsageError(
            f"--resume_from_checkpoint {folder}: trained parameters do not match this run "
            f"(e.g. missing {missing}); same --peft/--lora_* flags are needed"
        )
    with torch.no_grad():
        params = dict(policy.named_parameters())
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
    engine.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
