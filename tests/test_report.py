"""The pipeline report draws PNG plots with matplotlib (in requirements.txt) and, where it is not installed (e.g.
``pip install .`` without the ``report`` extra), shows the same numbers as tables instead of failing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rlhf.pipeline.report import NO_MATPLOTLIB, TABLE_ROWS, build_report


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture()
def run(tmp_path) -> Path:
    """A pipeline folder with 30 SFT log steps, 4 RM steps, 3 PPO steps and held-out margins."""
    write_jsonl(tmp_path / "sft" / "log_history.jsonl", [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 31)])
    write_jsonl(
        tmp_path / "rm" / "log_history.jsonl",
        [{"step": s, "loss": 0.7 - s / 10, "accuracy": 0.5 + s / 10} for s in range(1, 5)],
    )
    ppo = [
        {
            "step": s,
            "objective/scores": 0.25 * s,
            "objective/kl": 0.5 * s,
            "objective/token_entropy": 2.0,
            "tokens/responses_len_mean": 8.0,
        }
        for s in range(1, 4)
    ]
    write_jsonl(tmp_path / "ppo" / "metrics.jsonl", ppo)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "margins.json").write_text(json.dumps({"rm": [-1.0, 0.5, 1.0, 2.0, 3.0]}))
    return tmp_path


def test_without_matplotlib_the_plots_become_tables(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    report = build_report(run).read_text(encoding="utf-8")
    assert NO_MATPLOTLIB in report
    assert not list(run.glob("*.png")) and "![" not in report
    assert "| step | train loss |" in report
    sft_rows = [line for line in report.splitlines() if line.startswith("| ") and line.count("|") == 3]
    assert len(sft_rows) == 1 + TABLE_ROWS  # header + 30 steps thinned to TABLE_ROWS, first and last kept
    assert "| 1 | 2.900 |" in report and "| 30 | 0.000 |" in report
    assert "| step | train accuracy | train loss |" in report and "| 4 | 0.900 | 0.300 |" in report
    assert "| 3 | 0.750 | 1.500 | 2.000 | 8.000 |" in report  # the PPO table, last step
    assert "3 steps; last step: reward 0.750, KL 1.500" in report
    assert "| -1.000 | 0.500 | 1.000 | 2.000 | 3.000 | 0.800 |" in report  # margins: quantiles and share > 0


def test_with_matplotlib_the_report_links_its_plots(run):
    pytest.importorskip("matplotlib")
    report = build_report(run).read_text(encoding="utf-8")
    assert NO_MATPLOTLIB not in report
    for name in ("sft_loss.png", "rm_training.png", "rm_margins.png", "ppo.png"):
        assert (run / name).is_file() and f"]({name})" in report
    assert "| step | train loss |" not in report


def test_an_average_of_runs_trained_apart_names_their_folders_not_seeds_trained_here(run):
    """``--average_members A,B``: the report names the folders and their recorded seeds, and does not claim the
    runs were trained by ``--average_seeds``."""
    heldout = {"split": "eval", "pairs": 4, "accuracy": 1.0, "tie_rate": 0.0, "margin_mean": 2.0}
    members = {"average_members": ["out/rm_7", "out/rm_8"], "members": [{"seed": 7}, {"seed": 8}]}
    (run / "rm" / "metrics.json").write_text(json.dumps({"heldout": heldout, **members}))
    report = build_report(run).read_text(encoding="utf-8")
    assert (
        "The weight average of 2 runs trained apart (seeds 7, 8; `--average_members` `out/rm_7`, `out/rm_8`)." in report
    )
    assert "`--average_seeds`" not in report


def test_an_averaged_reward_model_is_named_and_each_member_drawn_apart(run, monkeypatch):
    """``--average_seeds 2``: the report says the model is an average of which seeds, and each member's training
    curve is its own (one line per seed, not one line jumping back to step 1)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # tables: the curves can be read back
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    rows = [{"seed": seed, "step": s, "loss": 0.7 - s / 10, "accuracy": s / 10 + seed - 42} for seed in (42, 43)
            for s in (1, 2)]  # fmt: skip
    write_jsonl(run / "rm" / "log_history.jsonl", rows)
    heldout = {"split": "eval", "pairs": 4, "accuracy": 1.0, "tie_rate": 0.0, "margin_mean": 2.0}
    metrics = {"heldout": heldout, "average_seeds": 2, "members": [{"seed": 42}, {"seed": 43}]}
    (run / "rm" / "metrics.json").write_text(json.dumps(metrics))
    report = build_report(run).read_text(encoding="utf-8")
    assert "The weight average of 2 runs (seeds 42, 43; `--average_seeds`)." in report
    header = (
        "| step | train accuracy (seed 42) | train loss (seed 42) | train accuracy (seed 43) | train loss (seed 43) |"
    )
    assert header in report and "| 2 | 0.200 | 0.500 | 1.200 | 0.500 |" in report
