"""Orca preference pairs: load from the hub or local files, validate, split, render and tokenize.

Every stage goes through here, in this order, before any model is loaded:

    rows = load_rows(args, token)                # hub name or local JSON/JSONL/Parquet/CSV file or folder
    split = validate_and_split(rows, args)       # bad rows dropped and counted, first N% is eval
    ...tokenizer loaded...
    encoded = encode_pairs(split.train, tokenizer, fmt, max_length, split.report)   # over-long pairs dropped
    split.report.log()                           # one summary line with a count per reason
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.data.prompt_format import TEMPLATE_CHOICES
from rlhf.errors import UsageError

logger = logging.getLogger("rlhf.data.pairs")


SUPPORTED_SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}


DEFAULT_DATASET = "Intel/orca_dpo_pairs"


@dataclass
class DataArguments:
    """Where the preference pairs come from and how they are split and formatted."""

    dataset_name: str = field(
        default=DEFAULT_DATASET,
        metadata={
            "help": "Hub dataset name, or a local JSON/JSONL/Parquet/CSV file or a folder of them, with the "
            "Orca columns (system, question, chosen, rejected)."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read from a hub dataset."})
    system_column: str = field(
        default="system", metadata={"help": "Column holding the system prompt (may be empty or absent)."}
    )
    prompt_column: str = field(default="question", metadata={"help": "Column holding the user question."})
    chosen_column: str = field(default="chosen", metadata={"help": "Column holding the preferred answer."})
    rejected_column: str = field(default="rejected", metadata={"help": "Column holding the dispreferred answer."})
    validation_split_percentage: float = field(
        default=2,
        metadata={
            "help": "Percentage of rows held out for evaluation: the FIRST N percent of the rows, as in the "
            "reference example."
        },
    )
    prompt_template: str = field(
        default="auto",
        metadata={
            "help": "auto (the format saved with the input model, else the tokenizer's chat template, else "
            "plain), chat, plain, or raw (the reference's bare system + question concatenation).",
            "choices": list(TEMPLATE_CHOICES),
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval pairs."})

    def __post_init__(self) -> None:
        # Checked while parsing the flags, before any file, tokenizer or model is read.
        if self.prompt_template not in TEMPLATE_CHOICES:
            raise UsageError(
                f"--prompt_template: expected one of {', '.join(TEMPLATE_CHOICES)}, got {self.prompt_template!r}"
            )
        check_percentage(self.validation_split_percentage)
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise UsageError(f"--max_train_samples: expected a positive integer, got {self.max_train_samples}")
        if self.max_eval_samples is not None and self.max_eval_samples < 0:
            raise UsageError(f"--max_eval_samples: expected 0 or more, got {self.max_eval_samples}")

    def columns(self) -> dict[str, str]:
        """Our field name -> the dataset's column name."""
        return {
            "system": self.system_column,
            "question": self.prompt_column,
            "chosen": self.chosen_column,
            "rejected": self.rejected_column,
        }


def check_percentage(pct: float) -> None:
    if not 0 <= pct < 100:  # NaN fails too
        raise UsageError(f"--validation_split_percentage: expected a value in [0, 100), got {pct}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number).strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
            except RecursionError:
                raise UsageError(f"{path}: line {number}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: line {line}: not valid UTF-8 (byte {err.start})") from None


def _decode_file(path: Path) -> str:
    """The whole file as text (a UTF-8 BOM is dropped); bad bytes are reported with their line and offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}: line {line}: not valid UTF-8 (byte offset {err.start})") from None


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = _decode_file(path)
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{") and err.msg == "Extra data":
            return _read_jsonl(path)  # JSON Lines saved with a .json name, as `datasets` writes them
        raise UsageError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    except RecursionError:
        raise UsageError(f"{path}: JSON nested too deeply") from None
    if isinstance(obj, dict):
        # {"train": [...]} or {"data": [...]}: the one list of objects inside.
        lists = [v for v in obj.values() if isinstance(v, list)]
        if not lists:
            return [obj]  # a single row: one line of JSON Lines saved with a .json name
        if len(lists) != 1:
            raise UsageError(f"{path}: expected a list of objects (or an object holding exactly one such list)")
        obj = lists[0]
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise UsageError(f"{path}: expected a list of JSON objects")
    return obj


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file with a header line. Quoted fields may hold commas, quotes and newlines, of any length."""
    # Orca answers can be long; the csv module's default limit (131,072 characters per field) would reject them.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    reader = csv.DictReader(io.StringIO(_decode_file(path), newline=""), strict=True)
    try:
        return list(reader)
    except csv.Error as err:
        # line_num counts the lines of the records read completely; the broken record starts on the next one.
        raise UsageError(f"{path}: line {reader.line_num + 1}: malformed CSV ({err})") from None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        raise UsageError(f"{path}: unreadable Parquet file ({type(err).__name__}: {err})") from None


READERS = {"json": _read_json, "jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}


@dataclass
class SourceRows:
    """Rows with where they came from, so messages can name file and row."""

    rows: list[dict[str, Any]]
    origins: list[tuple[str, int]]  # (file, 1-based row number) per row
    source: str


def _read_file(path: Path) -> list[dict[str, Any]]:
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: unsupported file type (use .json, .jsonl, .parquet or .csv)")
    try:
        return READERS[kind](path)
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory") from None
    except OSError as err:  # I/O error, a file that vanished while reading, ...
        raise UsageError(f"{path}: cannot read ({err.strerror or err})") from None


def load_local(path: Path) -> SourceRows:
    """Read a local file, or every supported file directly inside a folder (sorted by name, formats may mix)."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except PermissionError:  # a parent folder that may not be entered
        raise UsageError(f"--dataset_name {path}: permission denied") from None
    if not exists:
        raise UsageError(f"--dataset_name {path}: no such file or folder")
    if is_dir:
        try:
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
        except PermissionError:
            raise UsageError(f"{path}: permission denied") from None
        if not files:
            raise UsageError(f"{path}: folder holds no .json, .jsonl, .parquet or .csv file")
    else:
        files = [path]
    rows: list[dict[str, Any]] = []
    origins: list[tuple[str, int]] = []
    for file in files:
        file_rows = _read_file(file)
        rows.extend(file_rows)
        origins.extend((str(file), i) for i in range(1, len(file_rows) + 1))
    return SourceRows(rows, origins, str(path))


def looks_local(name: str) -> bool:
    """A dataset name is a local path if it exists, or is written like one (./x, /x, x.jsonl)."""
    try:
        exists = Path(name).exists()
    except OSError:  # e.g. inside a folder that may not be entered: a path all the same
        exists = True
    return (
        exists
        or name.startswith((".", "/", "~"))
        or Path(name).suffix.lower() in SUPPORTED_SUFFIXES
        or name.count("/") > 1
    )


def load_hub(name: str, split: str, token: str | None) -> SourceRows:
    """Read a hub dataset split (needs the network or a warm cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, token=token)
    except Exception as err:  # network, auth and missing-dataset errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"--dataset_name {name}: cannot load from the hub ({first})") from None
    rows = ds.to_list()
    return SourceRows(rows, [(name, i) for i in range(1, len(rows) + 1)], name)


def load_rows(args: DataArguments, token: str | None = None) -> SourceRows:
    """Rows of the dataset named by ``--dataset_name`` (local path or hub), with required columns checked."""
    name = str(Path(args.dataset_name).expanduser()) if args.dataset_name.startswith("~") else args.dataset_name
    source = load_local(Path(name)) if looks_local(name) else load_hub(name, args.dataset_split, token)
    check_columns(source, args)
    return source


def check_columns(source: SourceRows, args: DataArguments) -> None:
    """Stop with a clear message if a required column is absent everywhere (system may be absent)."""
    if not source.rows:
        raise UsageError(f"{source.source}: no rows")
    present: set[str] = set()
    for row in source.rows:
        present.update(row.keys())
    for ours, theirs in args.columns().items():
        if ours != "system" and theirs not in present:
            found = ", ".join(sorted(map(str, present))) or "none"
            flag = {"question": "prompt_column", "chosen": "chosen_column", "rejected": "rejected_column"}[ours]
            raise UsageError(
                f"{source.source}: missing column '{theirs}' (columns found: {found}; remap with --{flag})"
            )


@dataclass
class DropReport:
    """How many rows were dropped, per reason; logged as one line."""

    total: int = 0
    dropped: Counter = field(default_factory=Counter)
    first_example: dict[str, str] = field(default_factory=dict)

    def drop(self, reason: str, origin: tuple[str, int] | None = None) -> None:
        self.dropped[reason] += 1
        if origin and reason not in self.first_example:
            self.first_example[reason] = f"{origin[0]} row {origin[1]}"

    def summary(self) -> str:
        kept = self.total - sum(self.dropped.values())
        if not self.dropped:
            return f"data: {self.total} rows, all usable"
        parts = ", ".join(
            f"{reason}={count} (first: {self.first_example.get(reason, '?')})"
            for reason, count in sorted(self.dropped.items())
        )
        return f"data: {self.total} rows, {kept} usable, dropped {sum(self.dropped.values())}: {parts}"

    def log(self) -> None:
        logger.info(self.summary())


def _text_problem(value: Any, column: str) -> str | None:
    """Why a required field is unusable, or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"missing_{column}"
    if not isinstance(value, str):
        return f"non_string_{column}"
    if not value.strip():
        return f"empty_{column}"
    if not _encodable(value):
        return f"invalid_unicode_{column}"
    return None


def _encodable(text: str) -> bool:
    """False for text holding lone surrogates (JSON allows "\\ud800"): tokenizers cannot take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Pair:
    system: str
    question: str
    chosen: str
    rejected: str


@dataclass
class SplitPairs:
    train: list[Pair]
    eval: list[Pair]
    report: DropReport


def clean_row(row: dict[str, Any], columns: dict[str, str]) -> tuple[Pair | None, str | None]:
    """One row -> a Pair, or the reason it is unusable."""
    values = {ours: row.get(theirs) for ours, theirs in columns.items()}
    for name in ("question", "chosen", "rejected"):
        problem = _text_problem(values[name], name)
        if problem:
            return None, problem
    system = values["system"]
    if system is None or (isinstance(system, float) and math.isnan(system)):
        system = ""  # most Orca rows have no system prompt: that is valid
    if not isinstance(system, str):
        return None, "non_string_system"
    if not _encodable(system):
        return None, "invalid_unicode_system"
    if values["chosen"].strip() == values["rejected"].strip():
        return None, "chosen_equals_rejected"
    return Pair(system, values["question"], values["chosen"], values["rejected"]), None


def validate_and_split(source: SourceRows, args: DataArguments) -> SplitPairs:
    """Drop unusable rows (counted per reason) and split: the first N% of the rows is eval.

    The split is made on row position before filtering, so which row is held out does not depend on what else was
    dropped. A pair that appears twice is kept once, the first time it is seen (eval before train, so no eval pair
    leaks into training).
    """
    pct = args.validation_split_percentage
    check_percentage(pct)
    report = DropReport(total=len(source.rows))
    n_eval = int(len(source.rows) * pct / 100)
    seen: set[tuple[str, str, str, str]] = set()
    parts: list[list[Pair]] = [[], []]
    columns = args.columns()
    for index, (row, origin) in enumerate(zip(source.rows, source.origins, strict=True)):
        pair, reason = clean_row(row, columns)
        if pair is None:
            report.drop(reason, origin)
            continue
        key = (pair.system, pair.question, pair.chosen, pair.rejected)
        if key in seen:
            report.drop("duplicate_pair", origin)
            continue
        seen.add(key)
        parts[0 if index < n_eval else 1].append(pair)
    eval_pairs, train_pairs = parts
    if args.max_train_samples is not None:
        train_pairs = train_pairs[: args.max_train_samples]
    if args.max_eval_samples is not None:
        eval_pairs = eval_pairs[: args.max_eval_samples]
    if not train_pairs:
        reasons = ", ".join(f"{r}={c}" for r, c in sorted(report.dropped.items())) or "no training rows after split"
        raise UsageError(f"{source.source}: no usable training rows ({reasons})")
    return SplitPairs(train_pairs, eval_pairs, report)


def load_pairs(args: DataArguments, token: str | None = None) -> SplitPairs:
    """Load, validate and split in one call (what every stage does first)."""
    return validate_and_split(load_rows(args, token), args)


def data_fingerprint(path: str) -> str | None:
    """sha256 of a local data file, or of the data files in a folder; ``missing``; None for a hub dataset name."""
    if not looks_local(path):
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())
    elif target.is_file():
        files = [target]
    else:
        return "missing"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()
