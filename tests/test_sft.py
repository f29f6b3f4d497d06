"""sft.py: answer-only loss, the output folder (merged model, adapter, tokenizer, format), CLI errors, torchrun."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import trl
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import free_port, run_forked, run_script
from rlhf.data.encoding import encode_pairs, sft_features
from rlhf.data.pairs import Pair
from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format
from rlhf.errors import UsageError
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import ORCA_ROWS, write_rows

ROWS = ORCA_ROWS + [
    {"system": "", "question": f"What is {i} plus 1?", "chosen": f"{i} plus 1 is {i + 1}.", "rejected": "No idea."}
    for i in range(4)
]  # 8 rows; with --validation_split_percentage 25 the first 2 are eval, the other 6 train


def run_capturing(argv: list[str]):
    """Run sft.main in this process and return the SFTTrainer it built."""
    sft = importlib.import_module("sft")
    built = []

    class Capturing(trl.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, "SFTTrainer", Capturing)
        assert sft.main(argv) == 0
    (trainer,) = built
    return trainer


QUICK = "--max_steps 2 --report_to none --save_strategy no --per_device_train_batch_size 2"


def quick_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    paths = ["--model_name_or_path", str(model), "--dataset_name", str(data), "--output_dir", str(out)]
    return [*paths, *QUICK.split(), "--validation_split_percentage", "25", *extra]


def encoded_by_sequence(folder: Path, rows: list[dict]) -> dict[tuple[int, ...], dict]:
    """Each row rendered with the folder's saved tokenizer and format, keyed by its prompt + chosen token ids."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    fmt = PromptFormat.load(folder)
    pairs = [Pair(r["system"], r["question"], r["chosen"], r["rejected"]) for r in rows]
    return {tuple(e["prompt_ids"] + e["chosen_ids"]): e for e in encode_pairs(pairs, tok, fmt, None)}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_rows(tmp_path_factory.mktemp("sft-data") / "pairs.jsonl", ROWS)


@pytest.fixture(scope="module")
def lora_run(tiny_dir, data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft-lora") / "out"
    trainer = run_capturing(quick_args(tiny_dir, data_file, out, "--learning_rate", "5e-3"))
    return out, trainer


# ----------------------------------------------------------------------------------------------------------------
# Answer-only loss


def test_sft_features_mask_the_prompt(tiny_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    fmt = resolve_prompt_format("auto", tok, None)
    encoded = encode_pairs([Pair("Be brief.", "Capital of France?", "Paris.", "Rome.")], tok, fmt, None)
    (feature,) = sft_features(encoded)
    n_prompt, n_answer = len(encoded[0]["prompt_ids"]), len(encoded[0]["chosen_ids"])
    assert feature["input_ids"] == encoded[0]["prompt_ids"] + encoded[0]["chosen_ids"]
    assert feature["completion_mask"] == [0] * n_prompt + [1] * n_answer
    assert tok.decode([i for i, m in zip(feature["input_ids"], feature["completion_mask"], strict=True) if m]) == (
        "Paris.<|im_end|>"
    )


def test_trainer_labels_ignore_prompt_tokens_and_keep_the_answer_with_eos(lora_run):
    out, trainer = lora_run
    encoded = encoded_by_sequence(out, ROWS)
    eos = AutoTokenizer.from_pretrained(str(out)).eos_token_id
    for dataset, size in ((trainer.train_dataset, 6), (trainer.eval_dataset, 2)):
        assert len(dataset) == size
        for example in dataset:
            enc = encoded[tuple(example["input_ids"])]
            n = len(enc["prompt_ids"])
            assert example["labels"][:n] == [-100] * n
            assert example["labels"][n:] == example["input_ids"][n:] == enc["chosen_ids"]
            assert example["labels"][-1] == eos
    # the collator keeps them: padding is -100 and every real label survives
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    for row, example in enumerate([trainer.train_dataset[0], trainer.train_dataset[1]]):
        n = len(example["labels"])
        assert batch["labels"][row, :n].tolist() == example["labels"]
        assert (batch["labels"][row, n:] == -100).all()


def test_packing_keeps_the_answer_only_loss(tiny_dir, data_file, tmp_path):
    args = quick_args(tiny_dir, data_file, tmp_path / "out", "--dataset_concatenation", "--max_steps", "1")
    trainer = run_capturing(args)
    encoded = encoded_by_sequence(tmp_path / "out", ROWS[2:])
    packed = trainer.train_dataset
    assert len(packed) < 6  # several pairs per sequence
    labels = [label for example in packed for label in example["labels"]]
    assert sum(label != -100 for label in labels) == sum(len(e["chosen_ids"]) for e in encoded.values())
    assert len(labels) == sum(len(seq) for seq in encoded)


# ----------------------------------------------------------------------------------------------------------------
# Output folder


def test_output_folder_is_complete(lora_run):
    out, _ = lora_run
    expected = "config.json tokenizer_config.json prompt_format.json metrics.json log_history.jsonl model.safetensors"
    for name in [
        COMPLETE_MARKER,
        *expected.split(),
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    ]:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage"] == "sft" and metrics["data"] == "data: 8 rows, all usable"
    assert metrics["train"]["train_loss"] > 0 and "eval_loss" in metrics["eval"]
    assert not list(out.parent.glob(".tmp-*")) and not list(out.glob(".tmp-*"))


def test_merged_model_loads_generates_and_equals_base_plus_adapter(lora_run, tiny_dir):
    from peft import PeftModel

    out, _ = lora_run
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token_id != tok.eos_token_id
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert merged.config.pad_token_id == tok.pad_token_id
    assert merged.generation_config.eos_token_id == tok.eos_token_id
    prompt = PromptFormat.load(out).render_prompt("", "What is 2 plus 3?", tok)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    generated = merged.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1] and torch.equal(generated[0, : ids.shape[1]], ids[0])

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
        adapter_logits = adapted(ids).logits
        merged_logits = merged(ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-4  # training changed the model


def test_full_fine_tune_with_a_tokenizer_without_pad_or_chat_template(tiny_plain_dir, data_file, tmp_path):
    out = tmp_path / "out"
    run_capturing(quick_args(tiny_plain_dir, data_file, out, "--peft", "none"))
    assert (out / COMPLETE_MARKER).is_file() and not (out / "adapter").exists()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    assert PromptFormat.load(out).kind == "plain"
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == model.get_output_embeddings().weight.shape[0]
    assert model.config.pad_token_id == tok.pad_token_id
    ids = tok(PromptFormat.load(out).render_prompt("", "What is 2 plus 3?"), return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_the_nonfinite_check_reuses_the_trainers_gradient_norm(tiny_dir, data_file, tmp_path, monkeypatch):
    """The NaN/inf guard reads the global gradient norm the Trainer took for this step (clipping), instead of a
    second pass over every gradient; after training the accelerator's own method is back."""
    import rlhf.stages.guard

    own_passes = []
    monkeypatch.setattr(
        rlhf.stages.guard, "_total_norm", lambda grads: own_passes.append(1) or torch.tensor(float("nan"))
    )
    trainer = run_capturing(quick_args(tiny_dir, data_file, tmp_path / "out", "--max_grad_norm", "1.0"))
    assert own_passes == []  # a pass of its own would have returned NaN and stopped the run
    assert trainer.state.global_step == 2
    assert "clip_grad_norm_" not in vars(trainer.accelerator)


def test_the_model_card_is_ours_and_holds_no_secret(lora_run, tiny_dir, data_file):
    out, _ = lora_run
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "# Supervised fine-tuning (sft.py)" in card
    assert f"- started from: `{tiny_dir}`" in card and f"- data: `{data_file}`" in card
    assert "- prompt format: `chat`" in card and "AutoModelForCausalLM.from_pretrained" in card
    assert '"learning_rate": 0.005' in card and '"max_steps": 2' in card  # flags not at their default
    assert '"train_loss"' in card  # metrics
    assert "huggingface/trl" not in card  # not the card TRL generates
    assert not (out / "adapter" / "README.md").exists()  # nor PEFT's template


def test_checkpoints_live_apart_and_go_after_success_unless_kept(tiny_dir, data_file, tmp_path):
    """The Trainer checkpoints into <output_dir>/checkpoints/; publishing removes them unless --keep_checkpoints."""
    saving = ["--save_strategy", "steps", "--save_steps", "1", "--overwrite_output_dir"]
    sft = importlib.import_module("sft")
    assert sft.main(quick_args(tiny_dir, data_file, tmp_path / "default", *saving)) == 0
    assert (tmp_path / "default" / COMPLETE_MARKER).is_file() and not (tmp_path / "default" / "checkpoints").exists()
    assert not list((tmp_path / "default").rglob("checkpoint-*"))
    kept = tmp_path / "kept"
    assert sft.main(quick_args(tiny_dir, data_file, kept, *saving, "--keep_checkpoints")) == 0
    assert sorted(p.name for p in (kept / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert not list(kept.glob("checkpoint-*"))  # never next to the model
    trl_card = kept / "checkpoints" / "README.md"  # TRL writes its card where it checkpoints: not the published one
    assert trl_card.is_file() and trl_card.read_text() != (kept / "README.md").read_text()


@pytest.fixture()
def hub_recorder(monkeypatch):
    """huggingface_hub's HfApi with its two calls (create_repo, upload_folder) replaced by a recorder. A stand-in
    only because the real hub is unreachable from the test machines; the upload's file list is computed with
    huggingface_hub's own pattern filter, so the ignore patterns are checked as the library applies them."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    calls: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"call": "create_repo", "repo_id": repo_id, **kwargs})
        return f"https://hub.invalid/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        folder = Path(folder_path)
        files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        uploaded = sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        complete = (folder / COMPLETE_MARKER).is_file()
        calls.append(
            {"call": "upload_folder", "repo_id": repo_id, "folder": folder, "files": uploaded, "complete": complete}
        )
        if repo_id.endswith("/unreachable"):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_published_folder_only(tiny_dir, data_file, tmp_path, hub_recorder):
    out = tmp_path / "out"
    sft = importlib.import_module("sft")
    flags = ["--save_strategy", "steps", "--save_steps", "1", "--keep_checkpoints", "--push_to_hub"]
    assert sft.main(quick_args(tiny_dir, data_file, out, *flags, "--hub_model_id", "me/tiny-sft")) == 0
    assert [c["call"] for c in hub_recorder] == ["create_repo", "upload_folder"]
    upload = hub_recorder[1]
    assert upload["repo_id"] == "me/tiny-sft" and upload["folder"] == out and upload["complete"]
    assert {"README.md", "model.safetensors", "prompt_format.json", "adapter/adapter_model.safetensors"} <= set(
        upload["files"]
    )
    assert (out / "checkpoints").is_dir()  # kept here (--keep_checkpoints), never uploaded
    assert not [f for f in upload["files"] if f.startswith(("checkpoints/", "runs/", ".")) or f == COMPLETE_MARKER]


def test_push_to_hub_failures_are_one_line_and_leave_the_result(tiny_dir, data_file, tmp_path, hub_recorder):
    from rlhf.errors import RunError

    sft = importlib.import_module("sft")
    with pytest.raises(UsageError, match="--hub_model_id 'not a/valid/name'"):
        sft.main(
            quick_args(tiny_dir, data_file, tmp_path / "bad", "--push_to_hub", "--hub_model_id", "not a/valid/name")
        )
    assert not (tmp_path / "bad").exists() and hub_recorder == []  # checked before anything ran
    out = tmp_path / "out"
    with pytest.raises(RunError, match="the model is saved in .*, but uploading it to me/unreachable failed"):
        sft.main(quick_args(tiny_dir, data_file, out, "--push_to_hub", "--hub_model_id", "me/unreachable"))
    assert (out / COMPLETE_MARKER).is_file()


def test_finished_run_is_not_overwritten_without_the_flag(lora_run, tiny_dir, data_file):
    out, _ = lora_run
    sft = importlib.import_module("sft")
    with pytest.raises(UsageError, match="holds a finished run; pass --overwrite_output_dir"):
        sft.main(quick_args(tiny_dir, data_file, out))
    assert (out / COMPLETE_MARKER).is_file()


def test_help_documents_the_reference_flags(capsys):
    sft = importlib.import_module("sft")
    with pytest.raises(SystemExit) as exit_:
        sft.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = """--model_name_or_path --dataset_name --dataset_concatenation --evaluation_strategy --overwrite_output_dir
        --use_auth_token --use_fast_tokenizer --peft --bf16 --use_habana --use_lazy_mode --device --prompt_column
        --validation_split_percentage --prompt_template --lora_rank --hf_access_token --trust_remote_code"""
    for flag in flags.split():
        assert f"  {flag} " in text or f"  {flag}," in text, flag


# ----------------------------------------------------------------------------------------------------------------
# Fatal input errors, as a user sees them: exit code 2, one line, no traceback, no finished-looking output.

FATAL = ["missing_column", "nonexistent_path", "unreadable_file", "broken_jsonl_line", "no_usable_rows"]


@pytest.fixture(scope="module")
def fatal_runs(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sft-fatal")
    no_rejected = [{k: v for k, v in r.items() if k != "rejected"} for r in ROWS]
    same = [{**r, "rejected": r["chosen"]} for r in ROWS]
    cases = {
        "missing_column": (write_rows(tmp / "nocol.jsonl", no_rejected), ["'rejected'", "missing column"]),
        "nonexistent_path": (tmp / "absent.jsonl", ["no such file or folder"]),
        "unreadable_file": (tmp / "broken.parquet", ["unreadable Parquet"]),
        "broken_jsonl_line": (tmp / "broken.jsonl", ["line 3: invalid JSON"]),
        "no_usable_rows": (
            write_rows(tmp / "same.jsonl", same),
            ["no usable training rows", "chosen_equals_rejected=8"],
        ),
        "debug": (tmp / "absent.jsonl", ["no such file or folder"]),
    }
    (tmp / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    good = json.dumps(ROWS[0])
    (tmp / "broken.jsonl").write_text(f'{good}\n{good}\n{{"question": \n{good}\n')
    base = ["--model_name_or_path", str(tiny_dir), "--report_to", "none", "--max_steps", "1"]
    runs = {}
    for name, (data, _) in cases.items():
        debug = ["--debug"] if name == "debug" else []
        runs[name] = ("sft.py", [*base, "--dataset_name", str(data), "--output_dir", f"{tmp}/out-{name}", *debug])
    return tmp, cases, run_forked(runs, tmp)


@pytest.mark.parametrize("case", FATAL)
def test_fatal_input_error_is_one_line_exit_2_and_no_output(fatal_runs, case):
    tmp, cases, results = fatal_runs
    data, expected = cases[case]
    proc = results[case]
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert str(data) in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp / f"out-{case}" / COMPLETE_MARKER).exists()
    assert not (tmp / f"out-{case}").exists()  # stopped before the output folder was created


def test_debug_flag_shows_the_traceback(fatal_runs):
    _, _, results = fatal_runs
    proc = results["debug"]
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UsageError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


# ----------------------------------------------------------------------------------------------------------------
# The reference SFT command of SPEC.md, under torchrun with two CPU processes


def test_reference_command_under_torchrun_trains_and_rank_0_alone_writes(tiny_dir, tmp_path):
    rows = [
        {"system": "", "question": f"What is {i} plus {j}?", "chosen": f"It is {i + j}.", "rejected": f"{i + j + 1}."}
        for i in range(8)
        for j in range(5)
    ]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out"
    reference = (
        f"--model_name_or_path {tiny_dir} --bf16 True --dataset_name {data} --dataset_concatenation "
        "--per_device_train_batch_size 2 --per_device_eval_batch_size 2 --gradient_accumulation_steps 4 "
        "--evaluation_strategy no --save_strategy steps --save_steps 2000 --save_total_limit 1 --learning_rate 1e-4 "
        "--logging_steps 1 --do_train --num_train_epochs 3 --overwrite_output_dir --log_level info "
        f"--output_dir {out} --peft lora --use_fast_tokenizer false --use_auth_token True"
    ).split()  # (pytest's temporary paths have no spaces)
    # The reference flags unchanged, plus --max_steps 2 so that the test takes seconds, not an epoch.
    torchrun = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2", "--master_port"]
    proc = run_script(
        *torchrun, str(free_port()), "sft.py", *reference, "--max_steps", "2", env={"OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    # two processes took part: 2 per device x 4 accumulation x 2 processes
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in proc.stderr
    assert "--evaluation_strategy is the old name of --eval_strategy" in proc.stderr
    assert "--use_auth_token True has no effect" in proc.stderr
    assert proc.stderr.count("sft: model saved to") == 1
    assert (out / COMPLETE_MARKER).is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert not [p.name for p in out.rglob("*") if p.name.startswith((".tmp", ".old"))]
    assert json.loads((out / "metrics.json").read_text())["train"]["train_loss"] > 0
    # published: the model only, the Trainer's checkpoints removed (no --keep_checkpoints), our card
    assert not (out / "checkpoints").exists() and not list(out.rglob("checkpoint-*"))
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: transformers")
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token_id != tok.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(str(out))
    ids = tok("What is 2 plus 3?", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=2, do_sample=False).shape[1] > ids.shape[1]


def test_lora_layers_adapt_only_the_listed_layers_and_backprop_stops_below_them(tiny_dir):
    """--lora_layers with all-linear: LoRA weights only in the listed decoder layers, and no gradient work below."""
    from peft import get_peft_model

    from rlhf.models.arguments import ModelArguments, parse_layers
    from rlhf.models.loading import check_lora_targets

    assert parse_layers("0, 3-5,4") == [0, 3, 4, 5]
    for bad in ("top-2", "5-3", "", "1,,2"):
        with pytest.raises(UsageError, match="--lora_layers"):
            parse_layers(bad)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    config = ModelArguments(model_name_or_path=str(tiny_dir), lora_layers="1").peft_config("CAUSAL_LM")
    check_lora_targets(base, config)
    model = get_peft_model(base, config)
    adapted = {name.split(".layers.")[1].split(".")[0] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert adapted == {"1"}
    kinds = {name.rsplit(".", 2)[-2] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert {"q_proj", "v_proj", "down_proj"} <= kinds  # all-linear kept its meaning inside the chosen layer

    layer0_out = []
    model.base_model.model.model.layers[0].register_forward_hook(lambda m, i, o: layer0_out.append(o))
    model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits.sum().backward()
    out0 = layer0_out[0][0] if isinstance(layer0_out[0], tuple) else layer0_out[0]
    assert not out0.requires_grad  # autograd records nothing in layer 0: the speed-up --lora_layers promises
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
