"""Data loading, validation and splitting (rlhf.data.pairs), in-process and without any model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer, HfArgumentParser

from conftest import ROOT
from rlhf.data.encoding import encode_pairs, encode_split
from rlhf.data.pairs import DataArguments, DropReport, Pair, load_pairs, load_rows, looks_local, validate_and_split
from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format
from rlhf.errors import UsageError
from tiny import ORCA_ROWS, write_rows

NAN = float("nan")


def data_args(path: Path | str, *flags: str) -> DataArguments:
    """DataArguments parsed from flags exactly as the scripts parse them."""
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(args=["--dataset_name", str(path), *flags])
    return args


def as_pairs(rows: list[dict]) -> list[Pair]:
    return [Pair(r.get("system") or "", r["question"], r["chosen"], r["rejected"]) for r in rows]


def numbered(n: int) -> list[dict]:
    """n distinct valid rows q0..q{n-1}."""
    return [{"system": "", "question": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("suffix", ["json", "jsonl", "csv", "parquet"])
def test_each_file_format_loads_all_rows_in_order(tmp_path, suffix):
    path = write_rows(tmp_path / f"pairs.{suffix}", ORCA_ROWS)
    split = load_pairs(data_args(path, "--validation_split_percentage", "0"))
    assert split.train == as_pairs(ORCA_ROWS)
    assert split.eval == []
    assert split.report.total == 4 and not split.report.dropped


def test_folder_with_mixed_formats_reads_every_supported_file_sorted_by_name(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_rows(folder / "a.json", ORCA_ROWS[:2])
    write_rows(folder / "b.csv", ORCA_ROWS[2:3])
    write_rows(folder / "c.parquet", ORCA_ROWS[3:])
    (folder / "notes.txt").write_text("not data")
    (folder / "sub").mkdir()
    write_rows(folder / "sub" / "ignored.jsonl", [{"question": "x", "chosen": "y", "rejected": "z"}])
    source = load_rows(data_args(folder))
    assert [r["question"] for r in source.rows] == [r["question"] for r in ORCA_ROWS]
    assert [(Path(f).name, n) for f, n in source.origins] == [
        ("a.json", 1),
        ("a.json", 2),
        ("b.csv", 1),
        ("c.parquet", 1),
    ]


def test_json_lines_saved_with_a_json_name(tmp_path):
    path = write_rows(tmp_path / "lines.json", ORCA_ROWS, fmt="jsonl")
    assert load_pairs(data_args(path, "--validation_split_percentage", "0")).train == as_pairs(ORCA_ROWS)


def test_json_lines_with_a_json_name_and_a_single_row(tmp_path):
    path = write_rows(tmp_path / "one.json", ORCA_ROWS[:1], fmt="jsonl")
    assert load_pairs(data_args(path, "--validation_split_percentage", "0")).train == as_pairs(ORCA_ROWS[:1])


def test_json_object_holding_one_list_of_rows(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "train": ORCA_ROWS}))
    assert load_pairs(data_args(path, "--validation_split_percentage", "0")).train == as_pairs(ORCA_ROWS)


def test_columns_remapped_by_flag(tmp_path):
    rows = [{"sys": r["system"], "q": r["question"], "good": r["chosen"], "bad": r["rejected"]} for r in ORCA_ROWS]
    path = write_rows(tmp_path / "renamed.jsonl", rows)
    flags = ["--system_column", "sys", "--prompt_column", "q", "--chosen_column", "good", "--rejected_column", "bad"]
    split = load_pairs(data_args(path, "--validation_split_percentage", "0", *flags))
    assert split.train == as_pairs(ORCA_ROWS)


@pytest.mark.parametrize(
    "drop, column, flag",
    [("question", "question", "--prompt_column"), ("rejected", "rejected", "--rejected_column")],
)
def test_missing_column_names_file_column_and_flag(tmp_path, drop, column, flag):
    rows = [{k: v for k, v in r.items() if k != drop} for r in ORCA_ROWS]
    path = write_rows(tmp_path / "nocol.jsonl", rows)
    with pytest.raises(UsageError) as err:
        load_rows(data_args(path))
    message = str(err.value)
    assert str(path) in message and f"'{column}'" in message and flag in message
    assert "\n" not in message


def test_system_column_may_be_absent(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "system"} for r in ORCA_ROWS]
    path = write_rows(tmp_path / "nosystem.csv", rows)
    split = load_pairs(data_args(path, "--validation_split_percentage", "0"))
    assert [p.system for p in split.train] == ["", "", "", ""]


def test_unreadable_inputs_are_usage_errors_naming_the_file(tmp_path):
    cases = {}
    cases["no such file or folder"] = tmp_path / "absent.jsonl"
    (tmp_path / "pairs.txt").write_text("x")
    cases["unsupported file type"] = tmp_path / "pairs.txt"
    (tmp_path / "empty").mkdir()
    cases["holds no .json"] = tmp_path / "empty"
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    cases["unreadable Parquet"] = tmp_path / "broken.parquet"
    (tmp_path / "latin1.jsonl").write_bytes(
        b'{"question": "ok", "chosen": "a", "rejected": "b"}\n{"question": "\xe9"}\n'
    )
    cases["line 2: not valid UTF-8"] = tmp_path / "latin1.jsonl"
    (tmp_path / "list.json").write_text("[1, 2]")
    cases["expected a list of JSON objects"] = tmp_path / "list.json"
    (tmp_path / "zero.jsonl").write_text("\n\n")
    cases["no rows"] = tmp_path / "zero.jsonl"
    (tmp_path / "bad.csv").write_text('question,chosen,rejected\n"a"b,c,d\n')
    cases["malformed CSV"] = tmp_path / "bad.csv"
    for expected, path in cases.items():
        with pytest.raises(UsageError) as err:
            load_rows(data_args(path))
        assert expected in str(err.value) and str(path) in str(err.value), (expected, str(err.value))


@pytest.mark.parametrize("name", ["broken.jsonl", "broken.json"])
def test_broken_json_line_is_named_by_number(tmp_path, name):
    good = json.dumps(ORCA_ROWS[0])
    (tmp_path / name).write_text(f'{good}\n{good}\n{{"question": "oops",\n{good}\n')
    with pytest.raises(UsageError, match=r"line 3: invalid JSON"):
        load_rows(data_args(tmp_path / name))


def test_local_paths_and_hub_names_are_told_apart():
    assert not looks_local("Intel/orca_dpo_pairs")
    assert looks_local("./orca") and looks_local("/data/orca") and looks_local("pairs.jsonl")
    assert looks_local("some/deep/folder")


# ----------------------------------------------------------------------------------------------------------------
# Bad rows


def test_each_bad_row_reason_is_counted_exactly(tmp_path):
    good = [
        ORCA_ROWS[0],  # system ""
        ORCA_ROWS[1],  # system non-empty
        {**ORCA_ROWS[2], "system": None},  # None system is valid
        {k: v for k, v in ORCA_ROWS[3].items() if k != "system"},  # absent system is valid
        {"system": NAN, "question": "Q5", "chosen": "yes", "rejected": "no"},  # NaN system is valid
        {**ORCA_ROWS[1], "system": "Another system prompt."},  # same pair, other system: not a duplicate
    ]
    base = {"system": "", "question": "Q?", "chosen": "good", "rejected": "bad"}
    bad = [
        {k: v for k, v in base.items() if k != "question"},
        {**base, "question": None},
        {**base, "question": NAN},
        {"system": "", "chosen": None, "rejected": "r"},  # two problems: counted once, question first
        {**base, "question": 5},
        {**base, "question": ["a list"]},
        {**base, "question": ""},
        {**base, "question": "  \n\t"},
        {**base, "chosen": None},
        {**base, "chosen": 1.5},
        {**base, "chosen": " "},
        {k: v for k, v in base.items() if k != "rejected"},
        {**base, "rejected": {"a": 1}},
        {**base, "rejected": ""},
        {**base, "system": 3},
        {**base, "chosen": "same", "rejected": "same"},
        {**base, "chosen": "same ", "rejected": " same"},
        ORCA_ROWS[0],  # exact duplicates of the first row
        ORCA_ROWS[0],
    ]
    path = write_rows(tmp_path / "bad.jsonl", good + bad)
    split = load_pairs(data_args(path, "--validation_split_percentage", "0"))
    assert split.report.dropped == Counter(
        missing_question=4,
        non_string_question=2,
        empty_question=2,
        missing_chosen=1,
        non_string_chosen=1,
        empty_chosen=1,
        missing_rejected=1,
        non_string_rejected=1,
        empty_rejected=1,
        non_string_system=1,
        chosen_equals_rejected=2,
        duplicate_pair=2,
    )
    assert len(split.train) == len(good)
    assert [p.system for p in split.train] == ["", ORCA_ROWS[1]["system"], "", "", "", "Another system prompt."]
    summary = split.report.summary()
    assert "\n" not in summary
    assert summary.startswith(f"data: {len(good) + len(bad)} rows, {len(good)} usable, dropped {len(bad)}: ")
    assert f"duplicate_pair=2 (first: {path} row {len(good) + len(bad) - 1})" in summary
    assert "missing_question=4" in summary and "chosen_equals_rejected=2" in summary


def test_over_long_pairs_are_dropped_after_tokenization_by_the_longer_answer(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    fmt = resolve_prompt_format("auto", tokenizer, None)
    pairs = [
        Pair("", "What is 2 plus 3?", "5.", "It is 5."),
        Pair("", "What is 2 plus 3?", "Two plus three is five.", "5."),
        Pair("", "What is 2 plus 3?", "5.", "I am not sure I can help with that, sorry."),  # longest by rejected
    ]
    lengths = [
        len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))
        for e in encode_pairs(pairs, tokenizer, fmt, None)
    ]
    assert lengths[0] < lengths[1] < lengths[2]
    report = DropReport(total=3)
    kept = encode_pairs(pairs, tokenizer, fmt, lengths[1], report)  # a pair of exactly max_length is kept
    assert [e["chosen"] for e in kept] == [fmt.render_completion(p.chosen) for p in pairs[:2]]
    assert report.dropped == Counter(over_max_length=1)
    report = DropReport(total=3)
    assert len(encode_pairs(pairs, tokenizer, fmt, lengths[0] - 1, report)) == 0
    assert report.dropped == Counter(over_max_length=3)


def test_encoded_pair_is_rendered_prompt_then_answer_with_eos(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    fmt = resolve_prompt_format("auto", tokenizer, None)
    (enc,) = encode_pairs([Pair("Be brief.", "Capital of France?", "Paris.", "Rome.")], tokenizer, fmt, None)
    assert enc["prompt"] == fmt.render_prompt("Be brief.", "Capital of France?", tokenizer)
    assert enc["chosen"] == "Paris." + tokenizer.eos_token and enc["rejected"] == "Rome." + tokenizer.eos_token
    assert enc["prompt_ids"] == tokenizer(enc["prompt"], add_special_tokens=False)["input_ids"]
    assert enc["chosen_ids"][-1] == enc["rejected_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(enc["prompt_ids"] + enc["chosen_ids"]) == enc["prompt"] + enc["chosen"]


def test_no_usable_rows_is_a_usage_error_with_the_reasons(tmp_path):
    rows = [{**r, "rejected": r["chosen"]} for r in ORCA_ROWS]
    path = write_rows(tmp_path / "same.jsonl", rows)
    with pytest.raises(UsageError, match=r"no usable training rows \(chosen_equals_rejected=4\)"):
        load_pairs(data_args(path))


def test_all_pairs_over_max_length_is_a_usage_error_naming_the_flag(tmp_path, tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    split = load_pairs(data_args(write_rows(tmp_path / "d.jsonl", ORCA_ROWS), "--validation_split_percentage", "0"))
    fmt = PromptFormat(kind="plain", eos_token=tokenizer.eos_token)
    with pytest.raises(UsageError, match=r"no usable training pairs left after tokenization.*raise --max_length"):
        encode_split(split, tokenizer, fmt, 3)
    assert split.report.dropped == Counter(over_max_length=4)


# ----------------------------------------------------------------------------------------------------------------
# Split


def test_first_n_percent_of_rows_is_eval_and_the_split_is_deterministic(tmp_path):
    path = write_rows(tmp_path / "ten.jsonl", numbered(10))
    split = load_pairs(data_args(path, "--validation_split_percentage", "20"))
    assert [p.question for p in split.eval] == ["q0", "q1"]
    assert [p.question for p in split.train] == [f"q{i}" for i in range(2, 10)]
    again = load_pairs(data_args(path, "--validation_split_percentage", "20"))
    assert again.train == split.train and again.eval == split.eval
    assert load_pairs(data_args(path, "--validation_split_percentage", "0")).eval == []
    # 25% of 10 rows is 2.5: the eval part is the first 2 rows (rounded down)
    assert [p.question for p in load_pairs(data_args(path, "--validation_split_percentage", "25")).eval] == ["q0", "q1"]


def test_split_is_by_row_position_before_filtering(tmp_path):
    rows = numbered(10)
    rows[0]["chosen"] = None
    split = load_pairs(data_args(write_rows(tmp_path / "d.jsonl", rows), "--validation_split_percentage", "20"))
    assert [p.question for p in split.eval] == ["q1"]
    assert [p.question for p in split.train] == [f"q{i}" for i in range(2, 10)]


def test_duplicate_of_an_eval_pair_in_train_is_dropped(tmp_path):
    rows = numbered(10)
    rows[6] = dict(rows[1])
    split = load_pairs(data_args(write_rows(tmp_path / "d.jsonl", rows), "--validation_split_percentage", "20"))
    assert [p.question for p in split.eval] == ["q0", "q1"]
    assert "q1" not in [p.question for p in split.train] and len(split.train) == 7
    assert split.report.dropped == Counter(duplicate_pair=1)


def test_sample_limits_and_bad_percentage(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", numbered(10))
    split = load_pairs(
        data_args(path, "--validation_split_percentage", "30", "--max_train_samples", "2", "--max_eval_samples", "1")
    )
    assert [p.question for p in split.train] == ["q3", "q4"] and [p.question for p in split.eval] == ["q0"]
    with pytest.raises(UsageError, match="validation_split_percentage"):
        validate_and_split(load_rows(data_args(path)), data_args(path, "--validation_split_percentage", "100"))


def test_sample_data_is_valid_orca_schema(sample_data):
    split = load_pairs(data_args(sample_data / "train.jsonl"))
    assert len(split.train) + len(split.eval) == split.report.total - sum(split.report.dropped.values())
    assert len(split.eval) == int(split.report.total * 2 / 100)
    assert not split.report.dropped, split.report.summary()


def test_extra_columns_are_ignored_by_the_stages(tmp_path):
    """A gold column (as in data/orca_sample/heldout.jsonl) or any other extra column changes nothing a stage reads."""
    extra = [{**row, "gold": ["5", "five"], "source": i} for i, row in enumerate(ORCA_ROWS)]
    for suffix in ("jsonl", "parquet"):
        plain = load_pairs(
            data_args(write_rows(tmp_path / f"plain.{suffix}", ORCA_ROWS), "--validation_split_percentage", "25")
        )
        more = load_pairs(
            data_args(write_rows(tmp_path / f"extra.{suffix}", extra), "--validation_split_percentage", "25")
        )
        assert more.train == plain.train and more.eval == plain.eval and not more.report.dropped


def test_sample_heldout_rows_carry_gold_answers_that_the_chosen_answer_contains(sample_data):
    """Ground truth for evaluate.py's gold accuracy: every held-out row has a gold list (empty for open questions)
    and its kind of question; the chosen answer contains its gold answer by the evaluation's own rule and the
    question never does; the arithmetic and fact rows all have one; train rows keep exactly the Orca columns."""
    from rlhf.evaluation import matches_gold

    rows = [json.loads(line) for line in (sample_data / "heldout.jsonl").read_text().splitlines()]
    assert all(list(r) == ["system", "question", "chosen", "rejected", "gold", "kind"] for r in rows)
    assert {r["kind"] for r in rows} == {"arithmetic", "facts", "helpfulness", "format"}
    assert all(r["gold"] for r in rows if r["kind"] == "arithmetic")
    with_gold = [r for r in rows if r["gold"]]
    assert len(with_gold) >= 0.5 * len(rows)
    assert all(matches_gold(r["chosen"], r["gold"]) for r in with_gold)
    assert not any(matches_gold(r["question"], r["gold"]) for r in with_gold)
    # Arithmetic and count rejections give a number off by a little, or none: the rule tells it from the right one.
    numbers = [r for r in with_gold if r["gold"][0].isdigit()]
    assert len(numbers) >= 0.25 * len(rows)
    assert sum(matches_gold(r["rejected"], r["gold"]) for r in numbers) <= 0.1 * len(numbers)
    train = [json.loads(line) for line in (sample_data / "train.jsonl").read_text().splitlines()[:50]]
    assert all(list(r) == ["system", "question", "chosen", "rejected"] for r in train)
    split = load_pairs(data_args(sample_data / "heldout.jsonl", "--validation_split_percentage", "0"))
    assert len(split.train) == len(rows) and not split.report.dropped


def test_sample_data_is_what_its_generator_writes(tmp_path, sample_data):
    """data/make_sample_data.py (standard library, seeded) reproduces the committed files byte for byte, and its
    arithmetic mix makes the number decide: explanations of the method are both chosen (with the result) and
    rejected (without it), and terse equations are chosen with the right result and rejected with a wrong one."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "data" / "make_sample_data.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (sample_data / name).read_bytes(), name
    rows = [json.loads(line) for line in (sample_data / "train.jsonl").read_text().splitlines()]
    method = re.compile(r"^To (calculate|work out|find|solve|get) \d+ (\+|-|x|plus|minus|times) \d+, ")
    terse = re.compile(r"^(\d+) (\+|-|x) (\d+) = (\d+)\.$")
    assert sum(bool(method.match(r["chosen"])) for r in rows) >= 50
    assert sum(bool(method.match(r["rejected"])) for r in rows) >= 50
    equations = [(terse.match(r["chosen"]), terse.match(r["rejected"])) for r in rows if terse.match(r["chosen"])]
    assert len(equations) >= 30
    apply = {"+": int.__add__, "-": int.__sub__, "x": int.__mul__}
    for chosen, rejected in equations:
        a, op, b, r = chosen.groups()
        assert apply[op](int(a), int(b)) == int(r), chosen.string
        if rejected:
            assert rejected.groups()[:3] == (a, op, b) and rejected.group(4) != r, rejected.string
