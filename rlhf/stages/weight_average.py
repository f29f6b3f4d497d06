"""A reward model averaged over seeds: ``reward_modeling.py --average_seeds N``.

N runs of the same recipe that differ only in ``--seed`` (the LoRA and score-head initialisation, the order of the
pairs), published as one model whose weights are the mean of theirs (weight-averaged reward models: Ramé et al.,
2024, "WARM"). One run's reward model ranks the pairs it was shown well, but where it is wrong depends on its seed,
and PPO finds those places; the average keeps what the runs agree on. It costs N trainings, and nothing at scoring
time: the result is one model of the same size.

Each member is an ordinary run of the stage into ``<output_dir>/checkpoints/members/seed_S`` (its Trainer checkpoints
inside it), so ``--resume_from_checkpoint latest`` keeps the finished members and resumes the one that was cut off;
without it every member is trained afresh. The members' saved (merged) weights are averaged tensor by tensor, each in
its own dtype: with LoRA the mean is of the fine-tuned models, not of their low-rank factors. The held-out metrics and
the reward statistics are then measured on the average, exactly as a single run measures its own, and the folder is
published like a single run's: complete or absent, the members removed with the checkpoints unless
``--keep_checkpoints``. One process only (a multi-process launch is refused).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rlhf.errors import RunError, UsageError, first_line
from rlhf.outputs.folders import (
    COMPLETE_MARKER,
    discard_staging,
    is_complete,
    prepare_staging,
    publish_staged,
    start_output,
)
from rlhf.outputs.trainer_checkpoints import checkpoints_dir, remove_checkpoints

logger = logging.getLogger("rlhf.stages.weight_average")

MEMBERS = "members"
# What a member's folder holds that the average gets anew (the rest, config and tokenizer files, is copied).
MEASURED = ("metrics.json", "reward_stats.json", "log_history.jsonl", "README.md", COMPLETE_MARKER)


@dataclass
class AverageArguments:
    average_seeds: int = field(
        default=1,
        metadata={
            "help": "Train N reward models that differ only in their seed (--seed, --seed + 1, ...) and publish the "
            "average of their weights: where one seed's model is wrong, PPO exploits it; the average is wrong in "
            "fewer places. N times the training time (run side by side: --member_processes), no cost when scoring. "
            "Not under a launcher; the members are kept for --resume_from_checkpoint latest in "
            "<output_dir>/checkpoints/members/."
        },
    )

    member_processes: int = field(
        default=1,
        metadata={
            "help": "With --average_seeds: train up to this many members at once, each in a process of its own "
            "with an equal share of this process's threads, its output in <output_dir>/checkpoints/members/"
            "seed_S.log. On a CPU with few cores that is sooner than one after another (the demo's two reward-model "
            "members on 2 cores, one thread each: 259 s instead of 422 s, the same average). Default 1: one after "
            "another, in this process."
        },
    )

    average_members: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated folders of finished reward-model runs of one recipe (e.g. each trained under "
            "a launcher with its own --seed, where --average_seeds cannot run): publish the average of their "
            "weights into --output_dir, measured on this command's held-out pairs; nothing is trained and the "
            "folders are left as they are."
        },
    )

    def __post_init__(self) -> None:
        if self.average_members is not None:
            folders = [p.strip() for p in self.average_members.split(",") if p.strip()]
            if len(folders) < 2:
                raise UsageError(f"--average_members: expected two or more comma-separated folders, got {folders}")
            if self.average_seeds > 1:
                raise UsageError("--average_members and --average_seeds: give one of them")
            self.average_members = ",".join(folders)
        if self.average_seeds < 1:
            raise UsageError(f"--average_seeds: expected a positive integer, got {self.average_seeds}")
        if self.member_processes < 1:
            raise UsageError(f"--member_processes: expected a positive integer, got {self.member_processes}")
        if self.member_processes > 1 and self.average_seeds == 1:
            raise UsageError(f"--member_processes {self.member_processes}: only with --average_seeds 2 or more")
        from rlhf.runtime.distributed import world_size

        if self.average_seeds > 1 and world_size() > 1:
            raise UsageError(
                f"--average_seeds {self.average_seeds}: needs one process (under a launcher, train each seed with "
                "--seed into its own folder, then average them with --average_members in one process)"
            )
        if self.average_members and world_size() > 1:
            raise UsageError("--average_members: needs one process (run it without a launcher)")
        getattr(super(), "__post_init__", lambda: None)()  # the other flag classes of the script


def members_dir(output_dir: str | Path) -> Path:
    """Where the members of an averaged run of ``output_dir`` are trained."""
    return checkpoints_dir(output_dir) / MEMBERS


def has_members(output_dir: str | Path) -> bool:
    """An averaged run was started here: something the next ``--resume_from_checkpoint latest`` can keep."""
    folder = members_dir(output_dir)
    return folder.is_dir() and any(folder.iterdir())


def weight_files(folder: Path) -> list[str]:
    """The safetensors files of a saved model: one, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    raise RunError(f"{folder}: no model.safetensors (or index) to average")


def average_weights(members: list[Path], into: Path) -> None:
    """Write into ``into`` the tensor-by-tensor mean of the members' weight files (computed in float32, stored in
    each tensor's own dtype); the members must hold the same tensors with the same shapes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    files = weight_files(members[0])
    for other in members[1:]:
        if weight_files(other) != files:
            raise RunError(f"{other}: its weight files differ from {members[0]}'s; they cannot be averaged")
    for name in files:
        handles = [safe_open(str(m / name), framework="pt") for m in members]
        keys = set(handles[0].keys())
        for member, handle in zip(members[1:], handles[1:], strict=True):
            if set(handle.keys()) != keys:
                raise RunError(f"{member / name}: other tensors than {members[0] / name}; they cannot be averaged")
        averaged = {}
        for key in sorted(keys):
            tensors = [h.get_tensor(key) for h in handles]
            if any(t.shape != tensors[0].shape for t in tensors):
                raise RunError(f"{name}: tensor {key} has different shapes in the members; they cannot be averaged")
            if tensors[0].is_floating_point():
                mean = torch.stack([t.float() for t in tensors]).mean(0)
                averaged[key] = mean.to(tensors[0].dtype).contiguous()
            else:  # integer buffers (position ids...) are the same in every member
                averaged[key] = tensors[0].contiguous()
        save_file(averaged, str(into / name), metadata={"format": "pt"})
    index = members[0] / "model.safetensors.index.json"
    if index.is_file():
        shutil.copy2(index, into / index.name)


def train_averaged(stage: Any, argv: list[str] | None, measure: Callable[[Any, Any], tuple[dict, dict]]) -> int:
    """The stage's ``main``: one run as before, or with ``--average_seeds N`` the members, then their average.

    ``measure(run, trainer)`` is the stage's ``after_training``: called with the averaged model as the trainer's
    ``model``, it gives the metrics and files a single run would save.
    """
    from rlhf.cli import setup_logging
    from rlhf.secrets import drop_secret_flags, protect_secrets
    from rlhf.stages.member_processes import train_side_by_side
    from rlhf.stages.trainer_stage import parse_stage_arguments, run_trainer_stage

    args = sys.argv[1:] if argv is None else list(argv)
    parsed = parse_stage_arguments(stage, args)
    script, stage_args, train_args = parsed[0], parsed[2], parsed[-1]
    if script.average_members:
        return average_folders(stage, parsed, measure)
    count = script.average_seeds
    if count == 1:
        return run_trainer_stage(stage, args, parsed)
    resume = train_args.resume_from_checkpoint
    if resume not in (None, "", "latest"):
        raise UsageError(
            f"--resume_from_checkpoint {resume}: with --average_seeds give 'latest' (each member resumes from its own)"
        )
    setup_logging(train_args.log_level)
    resuming = resume == "latest"
    output_dir = start_output(train_args.output_dir, stage_args.overwrite_output_dir, resuming)
    root = members_dir(output_dir)
    if not resuming:
        shutil.rmtree(root, ignore_errors=True)
    seeds = [train_args.seed + k for k in range(count)]
    members = [root / f"seed_{seed}" for seed in seeds]
    todo = []
    for number, (seed, folder) in enumerate(zip(seeds, members, strict=True), start=1):
        if resuming and is_complete(folder):
            logger.info("member %d/%d (seed %d): finished before, kept (%s)", number, count, seed, folder)
            continue
        own = ["--output_dir", str(folder), "--seed", str(seed), "--average_seeds", "1", "--member_processes", "1"]
        own += ["--overwrite_output_dir", "True", "--keep_checkpoints", "False", "--push_to_hub", "False"]
        todo.append((seed, folder, [*args, *own, *(["--resume_from_checkpoint", "latest"] if resuming else [])]))
    if script.member_processes > 1:
        protect_secrets(parsed[4], train_args)  # the token goes to the members through the environment
        root.mkdir(parents=True, exist_ok=True)
        runs = [(seed, folder, drop_secret_flags(member_args)) for seed, folder, member_args in todo]
        code = train_side_by_side(stage.module, runs, script.member_processes, root)
    else:
        code = 0
        for seed, folder, member_args in todo:
            logger.info("member %d/%d: seed %d, trained into %s", seeds.index(seed) + 1, count, seed, folder)
            code = run_trainer_stage(stage, member_args)
            if code != 0:
                break
    if code != 0:
        return code  # preempted: each member's checkpoint is kept; the same command plus resume goes on
    publish_average(stage, parsed, members, output_dir, measure)
    if not stage_args.keep_checkpoints:
        remove_checkpoints(output_dir)
    return 0


def average_folders(stage: Any, parsed: tuple, measure: Callable[[Any, Any], tuple[dict, dict]]) -> int:
    """``--average_members A,B,...``: the average of finished runs' folders, published like ``--average_seeds``'s
    (nothing trained, the folders left as they are)."""
    from rlhf.cli import setup_logging
    from rlhf.secrets import protect_secrets

    script, stage_args, hub, train_args = parsed[0], parsed[2], parsed[4], parsed[-1]
    members = [Path(folder) for folder in script.average_members.split(",")]
    for folder in members:
        if not is_complete(folder):
            raise UsageError(f"--average_members: {folder} is not a finished run's folder (no {COMPLETE_MARKER})")
        kind = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("stage")
        if kind != stage.name:
            raise UsageError(f"--average_members: {folder} holds a {kind} result, not a {stage.name} one")
        if folder.resolve() == Path(train_args.output_dir).resolve():
            raise UsageError(f"--output_dir {folder}: is one of --average_members; publish the average elsewhere")
    setup_logging(train_args.log_level)
    protect_secrets(hub, train_args)  # as a trained run does: the token lives in the environment, not in the args
    output_dir = start_output(train_args.output_dir, stage_args.overwrite_output_dir, False)
    publish_average(stage, parsed, members, output_dir, measure)
    return 0


def publish_average(
    stage: Any,
    parsed: tuple,
    members: list[Path],
    output_dir: Path,
    measure: Callable[[Any, Any], tuple[dict, dict]],
) -> None:
    """Average the members into a staging folder, measure the average as a single run measures itself, publish."""
    from rlhf.data.encoding import encode_split
    from rlhf.data.pairs import load_pairs
    from rlhf.data.prompt_format import PromptFormat
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.reward import load_scorer
    from rlhf.outputs.hub import hub_repo_id, push_folder
    from rlhf.outputs.model_card import write_model_card
    from rlhf.runtime.backend import select_backend
    from rlhf.runtime.precision import autocast
    from rlhf.stages.trainer_stage import Run, card_inputs

    script, model_args, stage_args, data_args, hub, backend_args, train_args = parsed
    backend = select_backend(backend_args)
    staging = prepare_staging(output_dir)
    try:
        for item in members[0].iterdir():  # config, tokenizer, prompt format: the same in every member
            if item.is_file() and item.name not in MEASURED and not item.name.endswith(".safetensors"):
                shutil.copy2(item, staging / item.name)
        average_weights(members, staging)
        tokenizer = load_tokenizer(
            str(staging), use_fast=model_args.use_fast_tokenizer, trust_remote_code=model_args.trust_remote_code
        )
        fmt = PromptFormat.load(staging)
        split = load_pairs(data_args, hub.token)
        run = Run(script, model_args, stage_args, data_args, hub, backend_args, train_args, backend, None, tokenizer)
        run.train_rows, run.eval_rows = encode_split(split, tokenizer, fmt, train_args.max_length)
        # loaded as PPO and the evaluation load it: its own dtype, the score head in float32
        scorer = load_scorer(
            str(staging), token=None, trust_remote_code=model_args.trust_remote_code, device=backend.name
        )
        precision = "bf16" if train_args.bf16 else "fp16" if train_args.fp16 else "no"
        with autocast(precision, backend.name):
            measured, files = measure(run, SimpleNamespace(model=scorer.model))
        del scorer
        each = []
        with (staging / "log_history.jsonl").open("w", encoding="utf-8") as history:
            for folder in members:
                metrics_file = folder / "metrics.json"
                metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
                seed = metrics.get("seed")  # what every run of the stage records (None: a run from before that)
                each.append({"seed": seed, "train": metrics.get("train"), "heldout": metrics.get("heldout")})
                label = folder.name if seed is None else seed  # one curve per member in the pipeline's report
                history_file = folder / "log_history.jsonl"
                for line in history_file.read_text(encoding="utf-8").splitlines() if history_file.is_file() else []:
                    history.write(json.dumps({**json.loads(line), "seed": label}) + "\n")
        # how the members came to be: trained here, one per seed, or finished runs' folders named on the command line
        origin = (
            {"average_members": [str(folder) for folder in members]}
            if script.average_members
            else {"average_seeds": len(members)}
        )
        payload = {"stage": stage.name, "data": split.report.summary(), **origin, **measured, "members": each}
        for name, content in {"metrics.json": payload, **files}.items():
            (staging / name).write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
        write_model_card(staging, **card_inputs(stage, run), metrics=payload, fmt=fmt)
        publish_staged(output_dir, {"stage": stage.name, "adapter": False, **origin})
    except UsageError:
        discard_staging(output_dir)
        raise
    except Exception as err:
        discard_staging(output_dir)
        again = "rerun the command" if script.average_members else "rerun with --resume_from_checkpoint latest"
        raise RunError(
            f"{stage.name}: averaging the members into {output_dir} failed ({first_line(err)}); nothing was marked "
            f"complete and the members are kept: {again}"
        ) from err
    logger.info("%s: the average of %d members saved to %s", stage.name, len(members), output_dir)
    if train_args.push_to_hub:
        push_folder(output_dir, hub_repo_id(train_args.hub_model_id, output_dir), private=train_args.hub_private_repo)
