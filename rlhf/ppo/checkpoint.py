"""PPO outputs: ``output_dir/step_N/`` checkpoints and ``output_dir/final/``, each complete or absent.

``step_N/`` (every ``--save_freq`` steps and at the last step; the newest ``--save_total_limit`` kept) holds:

* ``adapter/`` — the LoRA adapter (loads with PEFT), when training LoRA; the merged policy with ``--save_merged``;
* ``value_head.safetensors``, the tokenizer, ``prompt_format.json``, ``ppo_config.json`` (the PPO flags) and
  ``run.json`` (what makes the run this run: models, data, flags; a resume from another run's checkpoint is refused);
* what an exact resume needs: ``trainable_state.safetensors`` (every trained parameter) and ``optimizer.pt`` —
  or, in sharded runs (FSDP, DeepSpeed ZeRO), ``accelerate_state/`` with every process's shards —, ``rng.pt`` (all
  random generators, per process) and ``state.json`` (step, data position, KL controller).

``final/`` is what users upload, and nothing else: the merged (or fully fine-tuned) policy loadable with
``AutoModelForCausalLM``, ``adapter/``, ``value_head.safetensors``, the tokenizer, ``prompt_format.json``,
``ppo_config.json`` and our model card ``README.md``. Its resume state is in the last ``step_N/``.

Weights are safetensors; the ``.pt`` files hold only tensors and numbers and are read with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlhf.data.pairs import data_fingerprint
from rlhf.data.prompt_format import PromptFormat
from rlhf.errors import UsageError
from rlhf.outputs.folders import COMPLETE_MARKER, STAGING, discard_staging, is_complete, prepare_staging, publish_staged
from rlhf.outputs.model_card import write_model_card
from rlhf.runtime.distributed import full_state_dict, rebuild_from_state_dict, shards_optimizer, shards_parameters

logger = logging.getLogger("rlhf.ppo.checkpoint")

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
    run_info: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint (``final=False``: resume state, ``run_info`` as ``run.json``) or the published ``final/``
    (the model and ``card``, a model card's content), complete or absent (rlhf.outputs.folders). Called on every
    rank (each contributes its random state); rank 0 writes.

    Sharded runs (FSDP, DeepSpeed ZeRO) write weights and optimizer state through ``accelerator.save_state``
    (every process its shard, into ``accelerate_state/``; the folder must be on a file system all nodes share), and
    the loadable policy from weights gathered once on rank 0.
    """
    from accelerate.utils import gather_object

    rng_per_rank = gather_object([_rng_state()])
    policy = engine.unwrapped
    staging = prepare_staging(folder) if accelerator.is_main_process else folder / STAGING
    try:
        if shards_optimizer(accelerator) and not final:
            accelerator.wait_for_everyone()  # the staging folder exists before any process writes its shard
            accelerator.save_state(str(staging / SHARDED_STATE))
        full = full_state_dict(accelerator, engine.policy) if shards_parameters(accelerator) else None
        if accelerator.is_main_process:
            if not final:
                _write_resume_state(staging, accelerator, engine, policy, sampler, step, rng_per_rank)
                _write_json(staging / RUN_FILE, run_info or {})
            _write_model(staging, engine, policy, tokenizer, fmt, merged or final, final, full)
            if card is not None:
                write_model_card(staging, **card)
            publish_staged(folder, {"step": step, "final": final})
    except BaseException:
        if accelerator.is_main_process:
            discard_staging(folder)
        raise
    accelerator.wait_for_everyone()


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")


def _write_resume_state(
    tmp: Path,
    accelerator: Any,
    engine: Any,
    policy: Any,
    sampler: Any,
    step: int,
    rng_per_rank: list[dict[str, Any]],
) -> None:
    """What an exact resume needs besides the model: trained parameters and optimizer, generators, data position."""
    if not shards_optimizer(accelerator):
        save_file(_trainable_state(policy), str(tmp / "trainable_state.safetensors"))
        torch.save(engine.optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save({"ranks": rng_per_rank, **engine.state_dict()}, tmp / "rng.pt")
    _write_json(
        tmp / "state.json", {"step": step, "sampler": sampler.state_dict(), "kl_ctl": engine.kl_ctl.state_dict()}
    )


def _write_model(
    tmp: Path,
    engine: Any,
    policy: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    merged: bool,
    final: bool,
    full: dict[str, torch.Tensor] | None,
) -> None:
    """The adapter and/or merged policy, value head (a file of its own), tokenizer, prompt format, PPO settings."""
    head = (
        {k.split(".", 1)[1]: v for k, v in full.items() if k.startswith("value_head.")}
        if full is not None
        else policy.value_head.state_dict()
    )
    save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(tmp / "value_head.safetensors"))
    _write_json(tmp / PPO_CONFIG, dataclasses.asdict(engine.config))
    lm = policy.lm
    is_peft = hasattr(lm, "peft_config")
    if full is not None:  # sharded: a plain CPU copy of the LM from the gathered weights
        lm = rebuild_from_state_dict(lm, {k[3:]: v for k, v in full.items() if k.startswith("lm.")})
    if is_peft:
        lm.save_pretrained(str(tmp / "adapter"))
        (tmp / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's empty template card: ours is the folder's
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


def _marker_step(folder: Path) -> int:
    try:
        return int(json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("step", -1))
    except (OSError, ValueError, TypeError, AttributeError):
        return -1


def complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint in ``output_dir``, oldest first: the ``step_N`` folders, and
    a ``final/`` that holds resume state (written before final/ held the model only)."""
    out = Path(output_dir)
    found = []
    for path in out.iterdir() if out.is_dir() else []:
        resumable = path.name.startswith("step_") or (path.name == "final" and (path / "state.json").is_file())
        if path.is_dir() and resumable and is_complete(path):
            found.append((_marker_step(path), path))
    return sorted(found)


def find_latest(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def rotate_checkpoints(output_dir: str | Path, keep: int | None, protected: Path | None = None) -> None:
    """``--save_total_limit``: delete all but the newest ``keep`` complete ``step_N`` folders. The one the run
    resumed from is never deleted; incomplete folders are never counted (rlhf.outputs.folders)."""
    if not keep:
        return
    steps = [path for _, path in complete_checkpoints(output_dir) if path.name.startswith("step_")]
    for path in steps[:-keep]:
        if protected is None or path.resolve() != protected.resolve():
            logger.info("--save_total_limit %d: removing %s", keep, path)
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(value: str | None, output_dir: str | Path) -> Path | None:
    """``--resume_from_checkpoint PATH|latest`` -> a complete checkpoint folder, or None to start fresh."""
    if not value:
        return None
    if value == "latest":
        return find_latest(output_dir)
    path = Path(value)
    if not is_complete(path) or not (path / "state.json").is_file():
        raise UsageError(f"--resume_from_checkpoint {value}: not a complete PPO checkpoint (a step_N folder)")
    return path


def start_output(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse what would mix two runs in one folder, before anything is loaded: a file where the folder should be,
    a finished run (``final/`` complete) or an unfinished run's checkpoints, unless ``--overwrite_output_dir`` or a
    resume says what to do with them."""
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir}: is a file, not a folder")
    if overwrite or resuming:
        return
    if is_complete(output_dir / "final"):
        raise UsageError(
            f"--output_dir {output_dir}: holds a finished run; pass --overwrite_output_dir to replace it or choose "
            "another folder"
        )
    if complete_checkpoints(output_dir):
        raise UsageError(
            f"--output_dir {output_dir}: holds checkpoints of an unfinished run; pass --resume_from_checkpoint "
            "latest to continue it, --overwrite_output_dir to start afresh, or choose another folder"
        )


def discard_previous_run(output_dir: Path) -> None:
    """``--overwrite_output_dir`` on a fresh start: the old run's checkpoints go (a later ``latest`` must not find
    them); its ``final/`` stays whole until the new one replaces it."""
    for _, path in complete_checkpoints(output_dir):
        if path.name.startswith("step_"):
            shutil.rmtree(path, ignore_errors=True)
    for path in output_dir.glob("step_*"):  # half-written ones too
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# the run's identity


RUN_FILE = "run.json"
# Flags that do not change what the run computes: a resume may change them.
NOT_IDENTITY = {"forward_batch_size", "stop_on_nonfinite", "trust_remote_code"}


def run_identity(
    model: Any, ppo: Any, data: Any, reward_model: str, seed: int, processes: int, mixed_precision: str
) -> dict[str, Any]:
    """What makes a PPO run this run (``run.json``): the policy and reward model, the data (and a local file's
    sha256), every PPO, model and data flag that changes the computation, the seed, processes and precision."""
    flags: dict[str, Any] = {}
    for obj in (model, data, ppo):
        flags.update({k: v for k, v in dataclasses.asdict(obj).items() if k not in NOT_IDENTITY})
    flags.update(
        reward_model_name=reward_model,
        seed=seed,
        processes=processes,
        mixed_precision=str(mixed_precision),
        dataset_content=data_fingerprint(data.dataset_name),
    )
    return json.loads(json.dumps(flags, default=str))


def _difference(name: str, old: Any, new: Any) -> str:
    if name == "dataset_content":
        return "the data file's content (sha256) changed"
    label = {"processes": "processes", "mixed_precision": "mixed precision"}.get(name, f"--{name}")
    return f"{label} {old!r} -> {new!r}"


def check_same_run(folder: Path, identity: dict[str, Any], sharded: bool) -> None:
    """Refuse to continue another run's checkpoint, naming what differs (a checkpoint without ``run.json``, from
    before it was written, is resumed with a warning). First whether it was sharded as this run is (``sharded``):
    that one needs another launch, not other flags."""
    check_sharding(folder, sharded)
    path = folder / RUN_FILE
    if not path.is_file():
        logger.warning("%s has no %s (an older checkpoint): cannot check it belongs to this run", folder, RUN_FILE)
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    diffs = [
        _difference(name, saved.get(name), identity.get(name))
        for name in sorted(set(saved) | set(identity))
        if saved.get(name) != identity.get(name)
    ]
    if diffs:
        shown = ", ".join(diffs[:4]) + (f" and {len(diffs) - 4} more" if len(diffs) > 4 else "")
        raise UsageError(
            f"--resume_from_checkpoint {folder}: a checkpoint of a different run ({shown}); resume with the flags it "
            "was made with, or start afresh in another --output_dir"
        )


def check_sharding(folder: Path, sharded: bool) -> None:
    """A checkpoint's optimizer is whole or in shards (FSDP/DeepSpeed): only a run sharded the same way reads it."""
    if sharded != (folder / SHARDED_STATE).is_dir():
        written = "a sharded run (FSDP/DeepSpeed)" if not sharded else "an unsharded run (DDP/one process)"
        raise UsageError(
            f"--resume_from_checkpoint {folder}: written by {written}; resume it with the same accelerate config"
        )


def load_checkpoint(folder: Path, accelerator: Any, engine: Any, sampler: Any) -> int:
    """Restore weights, optimizer, generators and data position; returns the step to continue from."""
    policy = engine.unwrapped
    sharded_state = folder / SHARDED_STATE
    check_sharding(folder, shards_optimizer(accelerator))
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
