"""Each stage's command line from the config, and the reward models' disjoint data (rm2's independence)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.outputs.folders import write_whole
from rlhf.pipeline.config import RM_SEED, ConfigError, _count, _seed, last_value

# ---------------------------------------------------------------------------------------------------- the stages


@dataclass
class Stage:
    name: str
    argv: list[str]  # interpreter, script, the pipeline's own flags, then the config's
    extra: list[str]  # the config's part of argv
    output: Path | None  # the folder whose marker says the stage is done; None: never skipped (the report)
    clean: Path  # what a fresh run removes first; for trainer and PPO stages, where their checkpoints live
    checkpoints: str | None = None  # "trainer" (checkpoint-N) or "ppo" (step_N), or None: nothing to resume
    reads: list[str] = field(default_factory=list)  # data the result depends on (fingerprinted when local)

    @property
    def own_flags(self) -> list[str]:
        """Flags the pipeline sets itself: a config that sets them too would break the chaining."""
        own = [token for token in self.argv[: len(self.argv) - len(self.extra)] if token.startswith("--")]
        return own + (["--resume_from_checkpoint"] if self.checkpoints else [])


def judge_files(output: str | Path) -> dict[str, Path]:
    """Where the pipeline writes the rows each reward model reads when there are two (``split_for_judges``)."""
    return {name: Path(output) / "data" / f"{name}.jsonl" for name in ("rm", "rm2")}


def judge_seeds(config: dict) -> dict[str, list[str]]:
    """The ``--seed`` flags the pipeline adds so that rm2's seed differs from rm's (none without ``rm2``)."""
    if "rm2" not in config:
        return {"rm": [], "rm2": []}
    rm_seed, rm2_seed = _seed("rm", config.get("rm", [])), _seed("rm2", config["rm2"])
    seeds: dict[str, list[str]] = {"rm": [], "rm2": []}
    if rm_seed is None:
        rm_seed = RM_SEED
        seeds["rm"] = ["--seed", str(rm_seed)]  # explicit, so rm2's can differ without knowing the scripts' default
    used = range(rm_seed, rm_seed + _count("rm", config.get("rm", []), "--average_seeds"))  # rm's members' seeds
    if rm2_seed is None:
        seeds["rm2"] = ["--seed", str(used.stop)]
    elif rm2_seed in used:
        whose = "rm's seed" if len(used) == 1 else f"the seed of one of rm's members ({used.start}-{used.stop - 1})"
        raise ConfigError(f"'rm2': --seed {rm2_seed} is {whose} too; rm2 needs its own (or leave it out)")
    return seeds


def build_stages(config: dict, python: str = sys.executable) -> list[Stage]:
    """The command line of every stage, from a checked config; ``rm2`` runs only when the config has an ``rm2`` entry.

    With ``rm2``, the two reward models read disjoint parts of the dataset (``split_for_judges``) with different
    seeds: the judge's independence is made here, whatever the config's flags. Raises ConfigError for config flags
    that would override what the pipeline sets.
    """
    out = Path(config["output"])
    model, data = config["model"], config["dataset"]
    heldout = config.get("heldout", data)
    sft, rm, rm2, ppo, ev = out / "sft", out / "rm", out / "rm2", out / "ppo", out / "eval"
    judges = "rm2" in config
    rm_data = {name: str(path) for name, path in judge_files(out).items()} if judges else {"rm": data}
    seeds = judge_seeds(config)

    def stage(name: str, script: list[str], own: list[str], **kwargs: Any) -> Stage:
        extra = list(config.get(name, []))
        return Stage(name, [python, *script, *own, *extra], extra, **kwargs)

    def trainer_stage(name: str, script: str, base: str, dataset: str, own: Sequence[str] = ()) -> Stage:
        """SFT and reward-model stages share one command shape; a finished folder is replaced on a rerun."""
        folder = out / name
        flags = ["--model_name_or_path", base, "--dataset_name", dataset, "--output_dir", str(folder)]
        return stage(
            name,
            ["-m", f"rlhf.scripts.{script}"],
            [*flags, "--overwrite_output_dir", *own],
            output=folder,
            clean=folder,
            checkpoints="trainer",
            reads=[dataset],
        )

    stages = [
        trainer_stage("sft", "sft", model, data),
        trainer_stage("rm", "reward_modeling", str(sft), rm_data["rm"], seeds["rm"]),
    ]
    judge = []
    if judges:
        stages.append(trainer_stage("rm2", "reward_modeling", str(sft), rm_data["rm2"], seeds["rm2"]))
        judge = ["--second_reward_model", str(rm2)]
    ppo_flags = ["--model_name", str(sft), "--reward_model_name", str(rm), "--dataset_name", data]
    eval_flags = ["--sft_model", str(sft), "--ppo_model", str(ppo / "final"), "--reward_model", str(rm), *judge]
    stages += [
        stage(
            "ppo",
            ["-m", "rlhf.scripts.rl_training"],
            [*ppo_flags, "--output_dir", str(ppo)],
            output=ppo / "final",
            clean=ppo,
            checkpoints="ppo",
            reads=[data],
        ),
        stage(
            "eval",
            ["-m", "rlhf.scripts.evaluate"],
            [*eval_flags, "--dataset_name", heldout, "--output_dir", str(ev)],
            output=ev,
            clean=ev,
            reads=[heldout],
        ),
        # The report is redrawn every time (no output to call complete); it takes no flags from the config.
        Stage("report", [python, "-m", "rlhf.pipeline.report", "--run", str(out)], [], None, out / "report.md"),
    ]
    for each in stages:
        _check_own_flags(each, judges)
    return stages


def _check_own_flags(stage: Stage, judges: bool) -> None:
    own = stage.own_flags
    for token in stage.extra:
        name = token.split("=", 1)[0]
        # A prefix counts: the scripts' argparse takes an unambiguous abbreviation (--dataset_n) for the full name.
        hit = next((flag for flag in own if token.startswith("--") and len(name) > 3 and flag.startswith(name)), None)
        if hit is None:
            continue
        if hit == "--dataset_name" and judges and stage.name in ("rm", "rm2"):
            why = "each reward model reads its own part of 'dataset', disjoint from the other's"
        elif hit == "--dataset_name":
            why = "use the top-level 'dataset' (or 'heldout' for eval)"
        elif hit == "--output_dir":
            why = "use the top-level 'output'"
        elif hit == "--resume_from_checkpoint":
            why = "the pipeline resumes an interrupted stage by itself"
        else:
            why = "the pipeline chains each stage to the outputs before it"
        shown = name if name == hit else f"{name} ({hit})"
        raise ConfigError(f"'{stage.name}': {shown} is set by the pipeline: {why}")


# ---------------------------------------------------------------------------------------------------- rm2's rows


def split_for_judges(dataset: str, files: dict[str, Path], rm_flags: list[str]) -> None:
    """Write the rows ``rm`` and ``rm2`` read: each row of the dataset goes to one of them, never to both.

    A row's side is decided by its content alone (a bit of its sha256), not by its position: identical rows land on
    the same side, and a row stays on its side when the dataset is edited, so a model rerun on the new files never
    meets a row the other one trained on. Both files keep the dataset's order and every column (the column flags of
    the reward-model stages still apply); each model holds out the first ``--validation_split_percentage`` % of
    its own file, rows the other model never sees either. A file is rewritten only when its content changes.
    """
    from rlhf.data.pairs import load_hub, load_local, looks_local

    name = str(Path(dataset).expanduser()) if dataset.startswith("~") else dataset
    if looks_local(name):
        source = load_local(Path(name))
    else:  # a hub dataset: the split and token rm would use
        split, token = last_value(rm_flags, "--dataset_split") or "train", last_value(rm_flags, "--hf_access_token")
        source = load_hub(name, split, token)
    sides: dict[str, list[str]] = {"rm": [], "rm2": []}
    for row in source.rows:
        key = json.dumps(row, sort_keys=True, default=str)
        side = "rm" if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else "rm2"
        # ASCII escapes: a lone surrogate in the data stays valid JSON, for the stage to count and drop.
        sides[side].append(json.dumps(row, default=str) + "\n")
    for side, lines in sides.items():
        path, text = files[side], "".join(lines)
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):
            write_whole(path, text)
