"""The hub token is used for hub calls only: never saved, logged or handed to a tracker. Remote code is opt-in."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys

import pytest

from rlhf.secrets import HubArguments, protect_secrets, public_dict, redact, scrub_argv
from tiny import ORCA_ROWS, write_rows

TOKEN = "hf_SECRETaccess7Qw2Xe9"
HUB_TOKEN = "hf_SECREThub4Rt6Yu1"


def test_redact_blanks_secret_fields_and_secret_strings_at_any_depth():
    data = {
        "hf_access_token": TOKEN,
        "hub_token": "other",
        "empty_token_field": None,
        "token": None,
        "nested": {"cmd": f"run --hf_access_token {TOKEN}", "list": [TOKEN, "plain"], "tuple": (f"x{TOKEN}y",)},
        "lr": 1e-4,
    }
    out = redact(data, [TOKEN, ""])
    assert out["hf_access_token"] == out["hub_token"] == "<redacted>"
    assert out["token"] is None  # nothing to hide
    assert out["nested"] == {
        "cmd": "run --hf_access_token <redacted>",
        "list": ["<redacted>", "plain"],
        "tuple": ("x<redacted>y",),
    }
    assert out["lr"] == 1e-4
    assert TOKEN not in repr(out)


def test_public_dict_of_arguments_holds_no_token():
    hub = HubArguments(hf_access_token=TOKEN)
    assert TOKEN not in repr(public_dict(hub, [TOKEN]))


def test_scrub_argv_replaces_the_token_in_both_flag_spellings(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["rm.py", "--hf_access_token", TOKEN, f"--hf_access_token={TOKEN}", "--x", "1"])
    scrub_argv([TOKEN, None])
    assert sys.argv == ["rm.py", "--hf_access_token", "<redacted>", "--hf_access_token=<redacted>", "--x", "1"]


def test_protect_secrets_moves_tokens_out_of_saved_objects(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(sys, "argv", ["sft.py", "--use_auth_token", TOKEN, "--hub_token", HUB_TOKEN])

    @dataclasses.dataclass
    class Args:
        hub_token: str | None = HUB_TOKEN

    hub, args = HubArguments(use_auth_token=TOKEN), Args()
    protect_secrets(hub, args)
    assert hub.token == TOKEN  # a token passed as --use_auth_token is used as the token ...
    assert hub.use_auth_token is None and args.hub_token is None  # ... but kept in no argument object
    assert os.environ["HF_TOKEN"] in (TOKEN, HUB_TOKEN)
    assert TOKEN not in " ".join(sys.argv) and HUB_TOKEN not in " ".join(sys.argv)


def test_use_auth_token_true_is_a_documented_no_op(monkeypatch, caplog):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = HubArguments(use_auth_token="True")
    with caplog.at_level(logging.WARNING, logger="rlhf.secrets"):
        protect_secrets(hub)
    assert hub.token is None and "HF_TOKEN" not in os.environ
    assert "--use_auth_token True has no effect" in caplog.text


@pytest.mark.parametrize("module, config", [("sft", "SFTArguments"), ("reward_modeling", "RewardArguments")])
def test_remote_code_is_not_trusted_by_default(module, config, tmp_path):
    args = getattr(importlib.import_module(f"rlhf.scripts.{module}"), config)(output_dir=str(tmp_path))
    assert args.trust_remote_code is False


def test_sft_run_with_tokens_and_a_tracker_writes_them_nowhere(tiny_dir, tmp_path, monkeypatch, capfd):
    """In-process, so the tracker and the Trainer see the same objects the script built."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    sft = importlib.import_module("sft")
    data = write_rows(tmp_path / "pairs.jsonl", ORCA_ROWS)
    out = tmp_path / "out"
    paths = ["--model_name_or_path", str(tiny_dir), "--dataset_name", str(data), "--output_dir", str(out)]
    flags = "--max_steps 1 --save_steps 1 --logging_steps 1 --report_to tensorboard --validation_split_percentage 0"
    tokens = ["--hf_access_token", TOKEN, "--hub_token", HUB_TOKEN]
    assert sft.main([*paths, *flags.split(), *tokens, "--log_level", "info"]) == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files), "the tracker wrote nothing: the test would prove nothing"
    assert any(p.name == "training_args.bin" for p in files)
    for secret in (TOKEN, HUB_TOKEN):
        assert [str(p) for p in files if secret.encode() in p.read_bytes()] == []
    printed = capfd.readouterr()
    assert TOKEN not in printed.out + printed.err and HUB_TOKEN not in printed.out + printed.err
