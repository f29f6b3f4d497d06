"""Fault suite, hostile data: every damaged or odd input either loads with exact drop counts or stops with one line.

Each case is a file (or folder) built in a temporary folder, loaded the way every stage loads it (``load_pairs``),
and checked against exactly one of two outcomes:

* ``Clean``: the rows load; how many are kept for training/eval and the count per drop reason are exact;
* ``Fatal``: ``UsageError`` whose one-line message names the file and where in it (line, column). The same input
  is then run through ``run_main(sft.main)`` (what ``python sft.py`` runs): exit code 2, one ``error:`` line on
  stderr, no traceback, and no output folder at all (data is read before anything is written).

A few cases run through the real command lines of both Trainer stages (``run_forked``, see conftest), and one
clean-but-hostile file is trained on to show the counts reach ``metrics.json``.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from transformers import AutoTokenizer, HfArgumentParser

from conftest import run_forked
from rlhf.data.encoding import encode_split
from rlhf.data.pairs import DataArguments, load_pairs, load_rows
from rlhf.data.prompt_format import resolve_prompt_format
from rlhf.errors import UsageError, run_main
from rlhf.outputs.folders import COMPLETE_MARKER
from tiny import write_rows

NAN = float("nan")


def data_args(path: Path | str, *flags: str) -> DataArguments:
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(args=["--dataset_name", str(path), *flags])
    return args


def rows(n: int, start: int = 0, system: str = "") -> list[dict]:
    """n distinct valid rows."""
    return [
        {"system": system, "question": f"What is {i} plus 1?", "chosen": f"{i} plus 1 is {i + 1}.", "rejected": "No."}
        for i in range(start, start + n)
    ]


BASE = {"system": "", "question": "Q?", "chosen": "good", "rejected": "bad"}


@dataclass
class Clean:
    train: int
    dropped: dict[str, int] = field(default_factory=dict)
    eval: int = 0
    flags: tuple[str, ...] = ("--validation_split_percentage", "0")
    check: Callable | None = None  # extra check on the SplitPairs


@dataclass
class Fatal:
    expected: list[str]  # substrings of the one-line message (besides the path, always checked)
    flags: tuple[str, ...] = ()
    names: str | None = None  # the path the message must name, relative to the case's input (default: the input)


# Each builder gets an empty folder and returns (input path, expected outcome).
CASES: dict[str, Callable[[Path], tuple[Path, Clean | Fatal]]] = {}
FATAL: set[str] = set()  # names of the cases that must stop (known before building, for parametrize)


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def fatal(fn):
    FATAL.add(fn.__name__)
    return case(fn)


# ---------------------------------------------------------------------------------------------------- JSON


@fatal
def json_wrong_column_names(tmp):
    data = [{"system": "", "prompt": "q", "response_good": "a", "response_bad": "b"}]
    path = tmp / "d.json"
    path.write_text(json.dumps(data))
    return path, Fatal(
        ["missing column 'question'", "columns found: prompt, response_bad, response_good, system", "--prompt_column"]
    )


@case
def json_none_nan_number_list_dict_bool_values(tmp):
    path = tmp / "d.json"
    bad = [
        {**BASE, "question": None},
        {**BASE, "question": 7},
        {**BASE, "question": ["a", "list"]},
        {**BASE, "chosen": {"a": "dict"}},
        {**BASE, "chosen": True},
        {**BASE, "rejected": None},
        {**BASE, "rejected": 1.5},
        {**BASE, "system": 3},
        {**BASE, "system": ["not", "text"]},
    ]
    # NaN is not JSON, but Python's json (and pandas' to_json) write it: read as a missing value.
    text = json.dumps(rows(3) + bad)[:-1] + ', {"question": NaN, "chosen": "x", "rejected": "y"}]'
    path.write_text(text)
    expect = Counter(
        missing_question=2,
        non_string_question=2,
        non_string_chosen=2,
        missing_rejected=1,
        non_string_rejected=1,
        non_string_system=2,
    )
    return path, Clean(train=3, dropped=expect)


@case
def json_empty_and_whitespace_strings(tmp):
    path = tmp / "d.json"
    bad = [
        {**BASE, "question": ""},
        {**BASE, "question": " \t\n"},
        {**BASE, "chosen": "\u3000"},
        {**BASE, "rejected": "\n"},
    ]
    path.write_text(json.dumps(rows(2) + bad))
    return path, Clean(train=2, dropped=Counter(empty_question=2, empty_chosen=1, empty_rejected=1))


@case
def json_empty_absent_null_system_is_valid(tmp):
    path = tmp / "d.json"
    data = [
        {**rows(1, 0)[0], "system": ""},
        {**rows(1, 1)[0], "system": None},
        {k: v for k, v in rows(1, 2)[0].items() if k != "system"},
        {**rows(1, 3)[0], "system": "   "},
        {**rows(1, 4)[0], "system": "You are kind."},
    ]
    path.write_text(json.dumps(data))

    def check(split):
        assert [p.system for p in split.train] == ["", "", "", "   ", "You are kind."]

    return path, Clean(train=5, check=check)


@case
def json_with_bom(tmp):
    path = tmp / "d.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(rows(3)).encode())
    return path, Clean(train=3)


@fatal
def json_non_utf8_bytes(tmp):
    path = tmp / "d.json"
    lines = json.dumps(rows(3), indent=1).encode().split(b"\n")
    assert b"What is 1" in lines[9]
    lines[9] = lines[9].replace(b"What", b"Wh\xe4t")  # Latin-1 a-umlaut, in the second row (line 10)
    path.write_bytes(b"\n".join(lines))
    return path, Fatal(["line 10: not valid UTF-8"])


@fatal
def json_zero_bytes(tmp):
    path = tmp / "d.json"
    path.write_bytes(b"")
    return path, Fatal(["no rows"])


@fatal
def json_truncated(tmp):
    path = tmp / "d.json"
    path.write_text(json.dumps(rows(3), indent=1)[:-40])
    return path, Fatal(["invalid JSON", "line "])


@fatal
def json_nested_too_deeply(tmp):
    path = tmp / "d.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    return path, Fatal(["nested too deeply"])


@fatal
def json_top_level_scalar(tmp):
    path = tmp / "d.json"
    path.write_text("42")
    return path, Fatal(["expected a list of JSON objects"])


@case
def json_lone_surrogate(tmp):
    # JSON may escape half a surrogate pair; Python reads it, tokenizers cannot take it: a dropped row, not a crash.
    path = tmp / "d.json"
    text = json.dumps(rows(2) + [{**BASE, "question": "x"}, {**BASE, "chosen": "y"}, {**BASE, "system": "z"}])
    text = text.replace('"question": "x"', '"question": "bad \\ud800"').replace('"chosen": "y"', '"chosen": "\\udfff"')
    path.write_text(text.replace('"system": "z"', '"system": "\\ud83d"'))
    return path, Clean(
        train=2, dropped=Counter(invalid_unicode_question=1, invalid_unicode_chosen=1, invalid_unicode_system=1)
    )


@fatal
def json_all_rows_invalid(tmp):
    path = tmp / "d.json"
    path.write_text(json.dumps([{**r, "rejected": r["chosen"]} for r in rows(3)] + [{**BASE, "chosen": None}]))
    return path, Fatal(["no usable training rows", "chosen_equals_rejected=3", "missing_chosen=1"])


@case
def json_duplicates_and_chosen_equals_rejected(tmp):
    path = tmp / "d.json"
    good = rows(4)
    data = good + [
        good[0],
        good[0],
        {**good[1], "system": "other"},
        {**BASE, "chosen": "same", "rejected": "same"},
        {**BASE, "chosen": " same\n", "rejected": "same"},
    ]
    path.write_text(json.dumps(data))
    return path, Clean(train=5, dropped=Counter(duplicate_pair=2, chosen_equals_rejected=2))


# ---------------------------------------------------------------------------------------------------- JSONL


@fatal
def jsonl_broken_line_in_the_middle(tmp):
    path = tmp / "d.jsonl"
    lines = [json.dumps(r) for r in rows(5)]
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    return path, Fatal(["line 3: invalid JSON"])


@fatal
def jsonl_line_that_is_not_an_object(tmp):
    path = tmp / "d.jsonl"
    path.write_text(f"{json.dumps(rows(1)[0])}\n[1, 2]\n")
    return path, Fatal(["line 2: expected a JSON object, got list"])


@case
def jsonl_bom_crlf_and_blank_lines(tmp):
    path = tmp / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n\r\n".join(json.dumps(r).encode() for r in rows(4)) + b"\r\n\r\n")
    return path, Clean(train=4)


@fatal
def jsonl_non_utf8_line(tmp):
    path = tmp / "d.jsonl"
    path.write_bytes(json.dumps(rows(1)[0]).encode() + b'\n{"question": "caf\xe9"}\n')
    return path, Fatal(["line 2: not valid UTF-8"])


@fatal
def jsonl_zero_bytes(tmp):
    path = tmp / "d.jsonl"
    path.write_bytes(b"")
    return path, Fatal(["no rows"])


@fatal
def jsonl_only_blank_lines(tmp):
    path = tmp / "d.jsonl"
    path.write_text("\n  \n\t\n")
    return path, Fatal(["no rows"])


@case
def jsonl_column_missing_in_some_rows(tmp):
    path = tmp / "d.jsonl"
    data = rows(3) + [{k: v for k, v in BASE.items() if k != "rejected"}, {"question": "only a question"}]
    write_rows(path, data)
    return path, Clean(train=3, dropped=Counter(missing_rejected=1, missing_chosen=1))


@fatal
def jsonl_column_missing_everywhere(tmp):
    path = write_rows(tmp / "d.jsonl", [{k: v for k, v in r.items() if k != "chosen"} for r in rows(3)])
    return path, Fatal(["missing column 'chosen'", "--chosen_column"])


@case
def jsonl_split_and_drops_together(tmp):
    # 10 rows, first 20% held out; a bad row in the eval part and a duplicate of an eval pair in the train part.
    data = rows(10)
    data[1]["chosen"] = None
    data[7] = dict(data[0])
    path = write_rows(tmp / "d.jsonl", data)
    return path, Clean(
        train=7,
        eval=1,
        dropped=Counter(missing_chosen=1, duplicate_pair=1),
        flags=("--validation_split_percentage", "20"),
    )


# ---------------------------------------------------------------------------------------------------- CSV


@case
def csv_embedded_newlines_quotes_commas(tmp):
    path = tmp / "d.csv"
    tricky = [
        {
            "system": "Line one\nline two",
            "question": 'He said "hi", then left.',
            "chosen": "a,b,c\r\nd",
            "rejected": '""',
        },
        {"system": "", "question": "Tab\there", "chosen": "ends with newline\n", "rejected": "x\n\n\ny"},
    ]
    write_rows(path, tricky)

    def check(split):
        got = [(p.system, p.question, p.chosen, p.rejected) for p in split.train]
        assert got == [(r["system"], r["question"], r["chosen"], r["rejected"]) for r in tricky]

    return path, Clean(train=2, check=check)


@case
def csv_with_bom(tmp):
    path = tmp / "d.csv"
    write_rows(path, rows(3))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's "CSV UTF-8": the header must still be "system"
    return path, Clean(train=3, check=lambda split: [p.system for p in split.train] == ["", "", ""])


@fatal
def csv_non_utf8_bytes(tmp):
    path = tmp / "d.csv"
    write_rows(path, rows(3))
    path.write_bytes(path.read_bytes().replace(b"What is 1", b"Wh\xe0t is 1"))  # row 2 = line 3
    return path, Fatal(["line 3: not valid UTF-8"])


@fatal
def csv_unterminated_quote(tmp):
    path = tmp / "d.csv"
    path.write_text('question,chosen,rejected\na,b,c\n"never closed,b,c\nd,e,f\n')
    return path, Fatal(["line 3: malformed CSV"])


@fatal
def csv_text_after_closing_quote(tmp):
    path = tmp / "d.csv"
    path.write_text('question,chosen,rejected\na,b,c\nd,e,f\n"g"h,i,j\n')
    return path, Fatal(["line 4: malformed CSV"])


@case
def csv_short_and_long_rows(tmp):
    path = tmp / "d.csv"
    path.write_text("system,question,chosen,rejected\n,q1,a1,b1\n,q2,a2\n,q3,a3,b3,extra,more\n,q4\n")
    # a missing cell is missing; extra cells are ignored
    return path, Clean(train=2, dropped=Counter(missing_rejected=1, missing_chosen=1))


@case
def csv_empty_cells_and_nan_text(tmp):
    path = tmp / "d.csv"
    # CSV has no null: an empty cell is an empty string; "nan"/"None" are text like any other.
    path.write_text("system,question,chosen,rejected\n,q1,a1,b1\n,,a2,b2\n,q3,,b3\n,q4,a4,\n,nan,None,null\n")
    return path, Clean(train=2, dropped=Counter(empty_question=1, empty_chosen=1, empty_rejected=1))


@fatal
def csv_header_only(tmp):
    path = tmp / "d.csv"
    path.write_text("system,question,chosen,rejected\n")
    return path, Fatal(["no rows"])


@fatal
def csv_zero_bytes(tmp):
    path = tmp / "d.csv"
    path.write_bytes(b"")
    return path, Fatal(["no rows"])


@fatal
def csv_wrong_header(tmp):
    path = tmp / "d.csv"
    path.write_text("instruction,output,bad_output\nq,a,b\n")
    return path, Fatal(["missing column 'question'", "instruction"])


@case
def csv_huge_field(tmp):
    # Over the csv module's default limit of 131,072 characters per field: read, not refused.
    path = tmp / "d.csv"
    write_rows(path, rows(2) + [{**BASE, "chosen": "long " * 60_000}])
    return path, Clean(train=3, check=lambda split: len(split.train[2].chosen) == 300_000)


# ---------------------------------------------------------------------------------------------------- Parquet


def _parquet(path: Path, columns: dict[str, tuple[list, object]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: pa.array(v, type=t) for k, (v, t) in columns.items()}), path)
    return path


@case
def parquet_nulls_nan_and_empty_strings(tmp):
    import pyarrow as pa

    path = _parquet(
        tmp / "d.parquet",
        {
            "system": (["", None, "sys", None, None, None], pa.string()),
            "question": (["q1", "q2", None, "", "q5", "q6"], pa.string()),
            "chosen": (["a1", "a2", "a3", "a4", " ", "a6"], pa.string()),
            "rejected": (["b1", "b2", "b3", "b4", "b5", None], pa.string()),
        },
    )
    return path, Clean(
        train=2, dropped=Counter(missing_question=1, empty_question=1, empty_chosen=1, missing_rejected=1)
    )


@fatal
def parquet_numeric_and_list_columns(tmp):
    import pyarrow as pa

    path = _parquet(
        tmp / "d.parquet",
        {
            "question": (["q1", "q2", "q3"], pa.string()),
            "chosen": ([["a"], ["b", "c"], None], pa.list_(pa.string())),
            "rejected": ([1.0, float("nan"), 2.0], pa.float64()),
        },
    )
    return path, Fatal(["no usable training rows", "non_string_chosen=2", "missing_chosen=1"])


@fatal
def parquet_zero_bytes(tmp):
    path = tmp / "d.parquet"
    path.write_bytes(b"")
    return path, Fatal(["unreadable Parquet file"])


@fatal
def parquet_truncated(tmp):
    path = write_rows(tmp / "d.parquet", rows(20))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, Fatal(["unreadable Parquet file"])


@fatal
def parquet_no_rows(tmp):
    import pyarrow as pa

    path = _parquet(tmp / "d.parquet", {c: ([], pa.string()) for c in ("question", "chosen", "rejected")})
    return path, Fatal(["no rows"])


@fatal
def parquet_wrong_columns(tmp):
    path = write_rows(tmp / "d.parquet", [{"q": "a", "good": "b", "bad": "c"}])
    return path, Fatal(["missing column 'question'", "bad, good, q"])


@case
def parquet_remapped_columns(tmp):
    path = write_rows(
        tmp / "d.parquet", [{"q": r["question"], "good": r["chosen"], "bad": r["rejected"]} for r in rows(3)]
    )
    flags = (
        "--validation_split_percentage",
        "0",
        "--prompt_column",
        "q",
        "--chosen_column",
        "good",
        "--rejected_column",
        "bad",
    )
    return path, Clean(train=3, flags=flags)


# ---------------------------------------------------------------------------------------------------- folders, paths


@case
def folder_with_mixed_formats_and_junk(tmp):
    folder = tmp / "mixed"
    folder.mkdir()
    write_rows(folder / "a.json", rows(2, 0))
    write_rows(folder / "b.jsonl", rows(2, 2) + [{**BASE, "chosen": None}])
    write_rows(folder / "c.csv", rows(2, 4) + [rows(1, 0)[0]])  # a duplicate of a.json's first row
    write_rows(folder / "d.parquet", rows(2, 6))
    (folder / "e.jsonl").write_bytes(b"")  # empty file: no rows, not an error
    (folder / "notes.txt").write_text("not data")
    (folder / "sub.json").mkdir()  # a folder named like a file is skipped
    (folder / "dangling.jsonl").symlink_to(tmp / "nowhere.jsonl")  # a broken link is skipped

    def check(split):
        assert [p.question for p in split.train] == [f"What is {i} plus 1?" for i in range(8)]
        assert "c.csv row 3" in split.report.summary()  # the duplicate is named by file and row

    return folder, Clean(train=8, dropped=Counter(missing_chosen=1, duplicate_pair=1), check=check)


@fatal
def folder_with_one_broken_file(tmp):
    folder = tmp / "mixed"
    folder.mkdir()
    write_rows(folder / "a.json", rows(2))
    (folder / "b.jsonl").write_text(json.dumps(rows(1)[0]) + "\n{oops\n")
    return folder, Fatal(["line 2: invalid JSON"], names="b.jsonl")


@fatal
def folder_without_data_files(tmp):
    folder = tmp / "nothing"
    folder.mkdir()
    (folder / "readme.md").write_text("hello")
    return folder, Fatal(["holds no .json, .jsonl, .parquet or .csv file"])


@fatal
def path_that_does_not_exist(tmp):
    return tmp / "absent" / "pairs.jsonl", Fatal(["no such file or folder"])


@fatal
def unsupported_file_type(tmp):
    path = tmp / "pairs.tsv"
    path.write_text("question\tchosen\trejected\n")
    return path, Fatal(["unsupported file type"])


@case
def validation_split_takes_every_row(tmp):
    path = write_rows(tmp / "d.jsonl", rows(1))  # one row, 50% eval -> 0 eval rows, 1 train: fine
    return path, Clean(train=1, flags=("--validation_split_percentage", "50"))


@fatal
def validation_split_leaves_no_train_row(tmp):
    path = write_rows(tmp / "d.jsonl", rows(3) + [{**BASE, "chosen": None}])  # 3 eval, the train row is bad
    return path, Fatal(["no usable training rows", "missing_chosen=1"], flags=("--validation_split_percentage", "75"))


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case built once: name -> (path, outcome)."""
    out = {}
    for name, build in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = build(folder)
    return out


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 30
    assert {name.split("_")[0] for name in CASES} >= {"json", "jsonl", "csv", "parquet", "folder", "path"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_data_api(built, name):
    path, outcome = built[name]
    if isinstance(outcome, Clean):
        assert name not in FATAL
        split = load_pairs(data_args(path, *outcome.flags))
        assert split.report.dropped == Counter(outcome.dropped), split.report.summary()
        assert len(split.train) == outcome.train and len(split.eval) == outcome.eval
        assert split.report.total == outcome.train + outcome.eval + sum(outcome.dropped.values())
        assert "\n" not in split.report.summary()
        if outcome.check is not None:
            assert outcome.check(split) in (None, True)
    else:
        assert name in FATAL
        with pytest.raises(UsageError) as err:
            load_pairs(data_args(path, *outcome.flags))
        message = str(err.value)
        named = path / outcome.names if outcome.names else path
        assert str(named) in message, message
        for text in outcome.expected:
            assert text in message, message
        assert "\n" not in message


@pytest.fixture(scope="module")
def sft_module():
    return importlib.import_module("sft")


@pytest.mark.parametrize("name", sorted(FATAL))
def test_fatal_cases_through_the_command_line_entry(built, name, tiny_dir, tmp_path, capfd, sft_module):
    """``run_main(sft.main)``, exactly what ``python sft.py`` runs: exit 2, one line, nothing written."""
    path, outcome = built[name]
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(path),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        *outcome.flags,
    ]
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_main(sft_module.main, argv)
    assert exit_.value.code == 2
    printed = capfd.readouterr()
    lines = [line for line in printed.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), printed.err[-2000:]
    assert "Traceback" not in printed.err + printed.out
    assert not out.exists()


def test_over_long_and_huge_rows_are_dropped_after_tokenization(tmp_path, tiny_dir):
    huge = "word " * 200_000  # a 1 MB answer
    data = rows(3) + [{**BASE, "chosen": huge}, {**BASE, "question": huge, "chosen": "a"}]
    path = write_rows(tmp_path / "d.jsonl", data)
    split = load_pairs(data_args(path, "--validation_split_percentage", "0"))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dir))
    train, _ = encode_split(split, tokenizer, resolve_prompt_format("auto", tokenizer, None), 64)
    assert len(train) == 3 and split.report.dropped == Counter(over_max_length=2)


# ---------------------------------------------------------------------------------------------------- permissions


def as_unprivileged(fn: Callable[[], object]) -> str:
    """Run ``fn`` where file permissions apply and return ``'ok'`` or the UsageError message.

    Root reads any file whatever its mode, so as root ``fn`` runs in a forked child that first drops to the
    ``nobody`` user (uid/gid 65534); everything it needs is already imported. As any other user it runs here.
    """
    if os.geteuid() != 0:
        try:
            fn()
            return "ok"
        except UsageError as err:
            return str(err)
    if not _nobody_can_read_python():
        pytest.skip(
            "the 'nobody' user cannot read this Python installation (e.g. a checkout under a private "
            "folder); test_permission_error_from_the_reader_is_one_line_for_any_user covers the message"
        )
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                fn()
                result = "ok"
            except UsageError as err:
                result = str(err)
            except BaseException as err:  # reported to the parent, which fails the test
                result = f"UNEXPECTED {type(err).__name__}: {err}"
            os.write(write, result.encode())
        finally:
            os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@functools.cache
def _nobody_can_read_python() -> bool:
    """Whether a process dropped to ``nobody`` can still import lazily-loaded modules (venv, checkout)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            # The venv and the checkout: what the child may still import lazily. (The interpreter's own stdlib
            # may live under a private home folder; what the reader needs from it is imported already.)
            for folder in (sys.prefix, str(Path(__file__).resolve().parent)):
                os.listdir(folder)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def open_tmp():
    """A folder that every user may enter (pytest's own temporary folders are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="faults-perm-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_file_without_read_permission(open_tmp, suffix):
    path = write_rows(open_tmp / f"d.{suffix}", rows(2))
    path.chmod(0o000)
    message = as_unprivileged(lambda: load_rows(data_args(path)))
    assert str(path) in message
    assert "permission denied" in message or "Permission denied" in message, message


def test_folder_that_cannot_be_entered_or_listed(open_tmp):
    locked = open_tmp / "locked"
    locked.mkdir()
    inner = write_rows(locked / "d.jsonl", rows(2))
    unlisted = open_tmp / "unlisted"
    unlisted.mkdir()
    write_rows(unlisted / "d.jsonl", rows(2))
    locked.chmod(0o000)
    unlisted.chmod(0o311)  # may be entered, not listed
    message = as_unprivileged(lambda: load_rows(data_args(inner)))
    assert message == f"--dataset_name {inner}: permission denied"
    message = as_unprivileged(lambda: load_rows(data_args(unlisted)))
    assert message == f"{unlisted}: permission denied"


def test_permission_error_from_the_reader_is_one_line_for_any_user(tmp_path, monkeypatch):
    """Portable variant (works as root and in containers that ignore modes): the read itself raises."""
    path = write_rows(tmp_path / "d.jsonl", rows(2))

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", denied)
    with pytest.raises(UsageError, match=r"d\.jsonl: permission denied$"):
        load_rows(data_args(path))


# ---------------------------------------------------------------------------------------------------- real CLI


def test_real_command_lines_of_both_stages(built, tiny_dir, tmp_path):
    """A few cases as a user runs them (``python sft.py ...`` / ``python reward_modeling.py ...``)."""
    picked = [
        "jsonl_broken_line_in_the_middle",
        "csv_non_utf8_bytes",
        "json_nested_too_deeply",
        "parquet_truncated",
        "path_that_does_not_exist",
    ]
    runs = {}
    for script in ("sft.py", "reward_modeling.py"):
        for name in picked:
            path, _ = built[name]
            args = [
                "--model_name_or_path",
                str(tiny_dir),
                "--dataset_name",
                str(path),
                "--report_to",
                "none",
                "--output_dir",
                str(tmp_path / f"out-{script}-{name}"),
            ]
            runs[f"{script[:-3]}-{name}"] = (script, args)
    results = run_forked(runs, tmp_path)
    for key, proc in results.items():
        script, name = key.split("-", 1)
        path, outcome = built[name]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (key, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0], (key, proc.stderr)
        assert all(text in lines[0] for text in outcome.expected), lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout
        assert not (tmp_path / f"out-{script}.py-{name}").exists()


def test_hostile_but_usable_file_trains_and_reports_the_counts(built, tiny_dir, tmp_path, sft_module):
    path, outcome = built["folder_with_mixed_formats_and_junk"]
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(tiny_dir),
        "--dataset_name",
        str(path),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--max_steps",
        "1",
        "--save_strategy",
        "no",
        *outcome.flags,
    ]
    assert sft_module.main(argv) == 0
    assert (out / COMPLETE_MARKER).is_file()
    summary = json.loads((out / "metrics.json").read_text())["data"]
    assert summary.startswith("data: 10 rows, 8 usable, dropped 2: duplicate_pair=1 (first: ")
    assert "missing_chosen=1" in summary
