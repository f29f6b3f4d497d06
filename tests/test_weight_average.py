"""reward_modeling.py --average_seeds N: members trained with seeds S..S+N-1, published as the mean of their weights,
measured as a single run is; resumable member by member; refused where it cannot work. --average_members: the same
average of runs trained apart."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlhf.data.encoding import encode_pairs, reward_features
from rlhf.data.pairs import Pair
from rlhf.errors import run_main
from rlhf.models.reward import load_reward_stats, load_scorer
from rlhf.outputs.folders import COMPLETE_MARKER
from rlhf.pipeline.config import load_config
from rlhf.pipeline.records import latest_checkpoint
from rlhf.pipeline.stages import build_stages
from rlhf.runtime.precision import autocast, default_bf16
from rlhf.stages.weight_average import average_weights, members_dir
from tiny import write_rows

FLAGS = (
    "--validation_split_percentage 25 --torch_dtype float32 --max_steps 3 --report_to none --save_strategy no "
    "--per_device_train_batch_size 2 --logging_steps 1 --learning_rate 1e-3 --lora_layers 0-1"
)


def rows(n: int) -> list[dict]:
    return [
        {"question": f"What is {i} plus {i % 5}?", "chosen": f"It is {i + i % 5}.", "rejected": f"It is {i + 7}."}
        for i in range(n)
    ]


def train(tiny_dir, data, out, *extra: str) -> int:
    reward_modeling = importlib.import_module("reward_modeling")
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)]
    return reward_modeling.main([*paths, *FLAGS.split(), *extra])


@pytest.fixture
def averaged(tiny_dir, tmp_path):
    """Two members (seeds 7 and 8) and their average, members kept."""
    data = write_rows(tmp_path / "pairs.jsonl", rows(16))
    out = tmp_path / "rm"
    assert train(tiny_dir, data, out, "--seed", "7", "--average_seeds", "2", "--keep_checkpoints") == 0
    return data, out


def test_the_published_weights_are_the_members_mean_and_measured_like_one_run(tiny_dir, averaged):
    data, out = averaged
    members = [members_dir(out) / f"seed_{s}" for s in (7, 8)]
    assert all((m / COMPLETE_MARKER).is_file() for m in members)
    a, b, mean = (load_file(str(f / "model.safetensors")) for f in (*members, out))
    assert set(mean) == set(a)
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert "score.weight" in differ and any("layers.1" in k for k in differ)  # LoRA'd layers and the head moved
    for key in a:
        assert mean[key].dtype == a[key].dtype
        torch.testing.assert_close(mean[key], (a[key].float() + b[key].float()).div(2).to(a[key].dtype))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["average_seeds"] == 2 and [m["seed"] for m in metrics["members"]] == [7, 8]
    assert metrics["heldout"]["pairs"] == 4 and metrics["heldout"]["split"] == "eval"
    # the average is measured on its own: its statistics are not the members' mean (scores are not linear in weights)
    stats = [load_reward_stats(f) for f in (*members, out)]
    assert stats[2]["n"] == 8 and stats[2]["std"] > 0
    assert stats[2]["mean"] != pytest.approx((stats[0]["mean"] + stats[1]["mean"]) / 2, abs=1e-6)
    # measured as PPO and the evaluation will score it: the published folder, its head in float32
    scorer = load_scorer(str(out), token=None)
    eval_rows = [json.loads(line) for line in data.read_text().splitlines()][:4]  # the first 25 %: held out
    pairs = [Pair("", r["question"], r["chosen"], r["rejected"]) for r in eval_rows]
    features = reward_features(encode_pairs(pairs, scorer.tokenizer, scorer.fmt, None))
    ids = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
    with autocast("bf16" if default_bf16("rm") else "no", "cpu"):  # the stage's precision on this host
        scores = scorer.score_ids(ids)
    tol = 2e-2 if default_bf16("rm") else 1e-5
    assert stats[2]["mean"] == pytest.approx(scores.mean().item(), abs=tol)
    assert metrics["heldout"]["margin_mean"] == pytest.approx((scores[:4] - scores[4:]).mean().item(), abs=tol)
    # and a single run with the first member's seed is that member: the members are ordinary runs
    assert train(tiny_dir, data, out.parent / "single", "--seed", "7") == 0
    single = load_file(str(out.parent / "single" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(single[key], a[key])
    marker = json.loads((out / COMPLETE_MARKER).read_text())
    assert marker["average_seeds"] == 2 and "adapter" not in marker["files"]
    seeds = {json.loads(line)["seed"] for line in (out / "log_history.jsonl").read_text().splitlines()}
    assert seeds == {7, 8}


def test_a_resumed_run_keeps_finished_members_and_a_fresh_run_retrains_them(tiny_dir, averaged, capfd):
    data, out = averaged
    first, second = (members_dir(out) / f"seed_{s}" for s in (7, 8))
    before = load_file(str(out / "model.safetensors"))
    stamp = (first / COMPLETE_MARKER).stat().st_mtime_ns
    (second / COMPLETE_MARKER).unlink()  # as if the run was cut off while training the second member
    (out / COMPLETE_MARKER).unlink()
    extra = ["--seed", "7", "--average_seeds", "2", "--keep_checkpoints", "--resume_from_checkpoint", "latest"]
    capfd.readouterr()
    assert train(tiny_dir, data, out, *extra) == 0
    logged = capfd.readouterr().err
    assert "member 1/2 (seed 7): finished before, kept" in logged and "member 2/2: seed 8, trained" in logged
    assert (first / COMPLETE_MARKER).stat().st_mtime_ns == stamp and (second / COMPLETE_MARKER).is_file()
    after = load_file(str(out / "model.safetensors"))
    for key in before:  # the second member retrained from its seed: the same average
        torch.testing.assert_close(after[key], before[key])
    # without --resume_from_checkpoint both are trained again; without --keep_checkpoints they are removed after
    assert train(tiny_dir, data, out, "--seed", "7", "--average_seeds", "2", "--overwrite_output_dir") == 0
    assert not members_dir(out).exists() and (out / COMPLETE_MARKER).is_file()


def test_runs_trained_apart_are_averaged_by_average_members(tiny_dir, averaged, capfd, monkeypatch):
    """What a launcher's user does instead of --average_seeds: one run per seed, each into its own folder, then their
    average in one process. Runs with the members' seeds give the --average_seeds result, to the bit."""
    data, out = averaged
    apart = [out.parent / f"apart_{seed}" for seed in (7, 8)]
    for seed, folder in zip((7, 8), apart, strict=True):
        assert train(tiny_dir, data, folder, "--seed", str(seed)) == 0
    stamps = [(f / "model.safetensors").stat().st_mtime_ns for f in apart]
    joined = out.parent / "joined"
    secret = "hf_averageMembersSecret123"
    monkeypatch.delenv("HF_TOKEN", raising=False)  # restored after the test: the command puts the token there
    monkeypatch.setattr(sys, "argv", ["reward_modeling.py", "--hf_access_token", secret])  # the command scrubs it
    members = ["--average_members", ",".join(map(str, apart)), "--hf_access_token", secret]
    assert train(tiny_dir, data, joined, *members) == 0
    # the token is handled as a trained run handles it: in the environment, out of argv and of every written file
    assert os.environ["HF_TOKEN"] == secret and secret not in sys.argv
    assert not [f for f in joined.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
    expected, got = load_file(str(out / "model.safetensors")), load_file(str(joined / "model.safetensors"))
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    metrics, before = (json.loads((f / "metrics.json").read_text()) for f in (joined, out))
    assert [m["seed"] for m in metrics["members"]] == [7, 8] and metrics["average_members"] == [str(f) for f in apart]
    marker = json.loads((joined / COMPLETE_MARKER).read_text())
    assert marker["average_members"] == metrics["average_members"]  # folders named, not seeds trained here
    assert "average_seeds" not in metrics and "average_seeds" not in marker
    assert metrics["heldout"] == before["heldout"]  # measured the same way on the same held-out pairs
    assert [(f / "model.safetensors").stat().st_mtime_ns for f in apart] == stamps  # the folders left as they were
    assert all((f / COMPLETE_MARKER).is_file() for f in apart) and (joined / COMPLETE_MARKER).is_file()
    # a folder that is not a finished reward-model run is refused before anything is written
    (apart[1] / COMPLETE_MARKER).unlink()
    capfd.readouterr()
    with pytest.raises(SystemExit):
        run_main(
            lambda argv: train(tiny_dir, data, out.parent / "none", *argv), ["--average_members", f"{out},{apart[1]}"]
        )
    assert f"{apart[1]} is not a finished run's folder" in capfd.readouterr().err
    assert not (out.parent / "none").exists()


def test_members_trained_side_by_side_give_the_same_average(tiny_dir, averaged, monkeypatch):
    """--member_processes 2: each member is `python -m rlhf.scripts.reward_modeling` in a process of its own with
    half the threads; the members, and so the average, are those of the same seeds trained one after another."""
    data, out = averaged
    side = out.parent / "side"
    secret = "hf_sideBySideSecret123"
    monkeypatch.delenv("HF_TOKEN", raising=False)  # restored after the test: the command puts the token there
    monkeypatch.setattr(sys, "argv", ["reward_modeling.py", "--hf_access_token", secret])  # the command scrubs it
    flags = ["--seed", "7", "--average_seeds", "2", "--member_processes", "2", "--keep_checkpoints"]
    assert train(tiny_dir, data, side, *flags, "--hf_access_token", secret) == 0
    expected, got = load_file(str(out / "model.safetensors")), load_file(str(side / "model.safetensors"))
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    metrics = json.loads((side / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [7, 8] and metrics["average_seeds"] == 2
    logs = [members_dir(side) / f"seed_{seed}.log" for seed in (7, 8)]
    assert all("reward model on" in log.read_text() for log in logs)  # each member measured itself in its process
    # the members got the token from the environment: not on their command lines, in no file
    assert os.environ["HF_TOKEN"] == secret and secret not in sys.argv
    assert not [f for f in side.rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]


def test_members_that_do_not_match_are_refused(tmp_path):
    from safetensors.torch import save_file

    from rlhf.errors import RunError

    for name, shape in (("a", (2, 3)), ("b", (3, 2))):
        (tmp_path / name).mkdir()
        save_file({"w": torch.zeros(shape)}, str(tmp_path / name / "model.safetensors"))
    (tmp_path / "out").mkdir()
    with pytest.raises(RunError, match="tensor w has different shapes"):
        average_weights([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


@pytest.mark.parametrize(
    "extra, env, expected",
    [
        (["--average_seeds", "0"], {}, "--average_seeds: expected a positive integer, got 0"),
        (["--member_processes", "2"], {}, "--member_processes 2: only with --average_seeds 2 or more"),
        (["--average_seeds", "2", "--member_processes", "0"], {}, "--member_processes: expected a positive integer"),
        (["--average_seeds", "2"], {"WORLD_SIZE": "2", "RANK": "1"}, "--average_seeds 2: needs one process"),
        (["--average_seeds", "2", "--resume_from_checkpoint", "x"], {}, "with --average_seeds give 'latest'"),
        (["--average_members", "a"], {}, "--average_members: expected two or more comma-separated folders"),
        (["--average_members", "a,b", "--average_seeds", "2"], {}, "--average_members and --average_seeds: give one"),
        (["--average_members", "a,b"], {"WORLD_SIZE": "2", "RANK": "1"}, "--average_members: needs one process"),
        (["--average_members", "nope_a,nope_b"], {}, "--average_members: nope_a is not a finished run's folder"),
    ],
)
def test_what_cannot_work_is_refused_in_one_line(tiny_dir, tmp_path, capfd, monkeypatch, extra, env, expected):
    reward_modeling = importlib.import_module("reward_modeling")
    data = write_rows(tmp_path / "pairs.jsonl", rows(8))
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # restored after the test
    # Parsing the Trainer's flags logs at INFO; an earlier test's handler on the root logger may hold a capture stream
    # closed since (a user's stderr is open): without handlers, that record is dropped and only the error is printed.
    monkeypatch.setattr(logging.root, "handlers", [])
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        run_main(reward_modeling.main, [*paths, *FLAGS.split(), *extra])
    assert exit_info.value.code == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "o" / COMPLETE_MARKER).exists()


def test_the_pipeline_resumes_an_averaged_reward_model_stage_and_gives_rm2_a_seed_no_member_has(tmp_path):
    """A stage cut off between members has no Trainer checkpoint of its own: its members count as one, so the
    pipeline reruns it with --resume_from_checkpoint latest instead of starting it afresh."""
    config = {"model": "m", "dataset": "d.jsonl", "output": str(tmp_path / "run"), "rm": ["--average_seeds", "2"]}
    (tmp_path / "c.json").write_text(json.dumps({**config, "rm2": []}))
    stages = {s.name: s for s in build_stages(load_config(str(tmp_path / "c.json"), {}))}
    rm, rm2 = stages["rm"], stages["rm2"]
    # rm's members take seeds 42 and 43: the judge's own seed comes after them
    assert rm.argv[rm.argv.index("--seed") + 1] == "42" and rm2.argv[rm2.argv.index("--seed") + 1] == "44"
    assert latest_checkpoint(rm) is None
    (members_dir(rm.clean) / "seed_42").mkdir(parents=True)
    assert latest_checkpoint(rm) == members_dir(rm.clean)
    assert os.path.isdir(latest_checkpoint(rm))
