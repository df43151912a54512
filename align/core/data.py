"""Data contracts: record kinds, reading, validation and writing (layer 0).

Four record kinds (``KINDS``), each a plain dict per row:

- ``prompts``: ``{id?, prompt | messages, category}``
- ``prefs``:   ``{prompt | messages, chosen, rejected, category, margin?}``
- ``sft``:     ``{messages | prompt + completion, category}``
- ``mcq``:     FinanceIQ CSV layout ``Question,A,B,C,D,Answer`` (``category`` defaults to the
  file's stem)

Files are JSON Lines (``.jsonl`` / ``.json``), Parquet, CSV, or a directory written by
``datasets.Dataset.save_to_disk``; all are read with ``datasets``. A Hub id ``org/name[:split]``
(a missing path spelled so) is read from the local datasets cache, never the network. Rows in
TRL's formats, UltraFeedback-binarized's or HelpSteer2's are turned into the records above
(:mod:`align.core.data_formats`), and ``default_category`` fills a missing ``category``.
Every problem is reported as a :class:`DataError` naming the file, the row, the field and what
was expected. Rows are never dropped silently: :func:`load_records` either returns every row or
raises (HelpSteer2 rows that make no preference pair are counted in a warning).

Row numbers are 1-based: the line number for JSON Lines (blank lines are skipped but counted),
the record number (header excluded) for CSV, the row index + 1 otherwise.

CSV cells are read as text, exactly as written (``007`` stays ``"007"``, ``NA`` stays ``"NA"``);
an empty cell reads as ``None``. In a CSV of ``prefs``, ``margin`` is parsed as a number.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING, Any

from align.core.data_formats import _MISSING, helpsteer2_pairs, is_helpsteer2, normalise
from align.core.io import atomic_path

if TYPE_CHECKING:  # read lazily: the record helpers work without them (the GPU benchmark)
    from datasets import Dataset

__all__ = [
    "KINDS",
    "DataError",
    "ValidationReport",
    "check_record",
    "load_records",
    "read_table",
    "split_held_out",
    "validate",
    "write_jsonl",
]

KINDS = ("prompts", "prefs", "sft", "mcq")
ROLES = ("system", "user", "assistant")
MCQ_OPTIONS = ("A", "B", "C", "D")


_REPR_LIMIT = 80

Problem = tuple[str | None, str, object]  # (field, expected, got)


def _short_repr(value: object) -> str:
    """One-line repr of ``value``, truncated to about ``_REPR_LIMIT`` characters."""
    text = repr(value).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


class DataError(ValueError):
    """Invalid input: names the file, the row, the field and what was expected."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        row: int | None,
        field: str | None,
        expected: str,
        got: object = _MISSING,
    ) -> None:
        self.path = str(path)
        self.row = row
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.path]
        if self.row is not None:
            parts.append(f"row {self.row}")
        if self.field is not None:
            parts.append(f"field '{self.field}'")
        tail = f"expected {self.expected}"
        if self.got is not _MISSING:
            tail += f", got {_short_repr(self.got)}"
        return ": ".join([*parts, tail])

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return (type(self), (self.path, self.row, self.field, self.expected, self.got))


# --------------------------------------------------------------------------- record checks

_TEXT = "a non-empty string"
_MESSAGE = "a {'role': ..., 'content': ...} object"


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _present(record: Mapping[str, Any], name: str) -> bool:
    return record.get(name) is not None


def _text(record: Mapping[str, Any], name: str) -> list[Problem]:
    value = record.get(name, _MISSING)
    return [] if _is_text(value) else [(name, _TEXT, value)]


def _check_message(message: object, where: str) -> list[Problem]:
    if not isinstance(message, Mapping):
        return [(where, _MESSAGE, message)]
    problems: list[Problem] = []
    role = message.get("role", _MISSING)
    if role not in ROLES:
        problems.append((f"{where}.role", "one of 'system', 'user', 'assistant'", role))
    content = message.get("content", _MISSING)
    if not _is_text(content):
        problems.append((f"{where}.content", _TEXT, content))
    return problems


def _check_messages(messages: object) -> list[Problem]:
    if not isinstance(messages, list) or not messages:
        return [("messages", "a non-empty list of {'role', 'content'} messages", messages)]
    problems: list[Problem] = []
    for i, message in enumerate(messages):
        problems += _check_message(message, f"messages[{i}]")
    return problems


def _check_prompt_messages(messages: Any) -> list[Problem]:
    """Messages that end on the user's turn (the turn the model answers)."""
    problems = _check_messages(messages)
    if problems:
        return problems
    last = len(messages) - 1
    role = messages[last]["role"]
    return [] if role == "user" else [(f"messages[{last}].role", "'user' (the last turn)", role)]


def _check_prompt_source(record: Mapping[str, Any]) -> list[Problem]:
    """Exactly one of ``prompt`` (text) or ``messages`` (ending with a user turn)."""
    has_prompt, has_messages = _present(record, "prompt"), _present(record, "messages")
    if has_prompt and has_messages:
        return [("prompt|messages", "exactly one of prompt or messages, not both", _MISSING)]
    if has_messages:
        return _check_prompt_messages(record["messages"])
    if has_prompt:
        return _text(record, "prompt")
    return [("prompt|messages", "exactly one of prompt or messages", _MISSING)]


def _check_id(record: Mapping[str, Any]) -> list[Problem]:
    value = record.get("id")
    if value is None or _is_text(value) or (isinstance(value, int) and not isinstance(value, bool)):
        return []
    return [("id", "a non-empty string or an integer", value)]


def _check_margin(record: Mapping[str, Any]) -> list[Problem]:
    value = record.get("margin")
    return [] if value is None or _is_number(value) else [("margin", "a finite number", value)]


def _check_prompts(record: Mapping[str, Any]) -> list[Problem]:
    return _check_id(record) + _check_prompt_source(record) + _text(record, "category")


def _check_prefs(record: Mapping[str, Any]) -> list[Problem]:
    return (
        _check_prompt_source(record)
        + _text(record, "chosen")
        + _text(record, "rejected")
        + _text(record, "category")
        + _check_margin(record)
    )


def _check_sft_messages(messages: Any) -> list[Problem]:
    problems = _check_messages(messages)
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    return [] if "assistant" in roles else [("messages", "at least one assistant turn", roles)]


_SFT_SOURCE = "messages|prompt+completion"


def _check_sft(record: Mapping[str, Any]) -> list[Problem]:
    has_messages = _present(record, "messages")
    has_pair = _present(record, "prompt") or _present(record, "completion")
    if has_messages and has_pair:
        source = [(_SFT_SOURCE, "messages or prompt+completion, not both", _MISSING)]
    elif has_messages:
        source = _check_sft_messages(record["messages"])
    elif has_pair:
        source = _text(record, "prompt") + _text(record, "completion")
    else:
        source = [(_SFT_SOURCE, "messages or prompt+completion", _MISSING)]
    return source + _text(record, "category")


def _check_option(record: Mapping[str, Any], name: str) -> list[Problem]:
    value = record.get(name, _MISSING)
    ok = _is_text(value) or _is_number(value)
    return [] if ok else [(name, "a non-empty string or a number", value)]


def _check_answer(record: Mapping[str, Any]) -> list[Problem]:
    value = record.get("Answer", _MISSING)
    ok = isinstance(value, str) and value.strip() in MCQ_OPTIONS
    return [] if ok else [("Answer", "one of 'A', 'B', 'C', 'D'", value)]


def _check_mcq(record: Mapping[str, Any]) -> list[Problem]:
    problems = _text(record, "Question")
    for name in MCQ_OPTIONS:
        problems += _check_option(record, name)
    problems += _check_answer(record)
    if "category" in record:  # present (even as null) must be valid; absent -> file stem
        problems += _text(record, "category")
    return problems


_VALIDATORS: dict[str, Callable[[Mapping[str, Any]], list[Problem]]] = {
    "prompts": _check_prompts,
    "prefs": _check_prefs,
    "sft": _check_sft,
    "mcq": _check_mcq,
}


def _require_kind(kind: str) -> Callable[[Mapping[str, Any]], list[Problem]]:
    try:
        return _VALIDATORS[kind]
    except (KeyError, TypeError):
        allowed = ", ".join(KINDS)
        raise ValueError(f"unknown record kind {kind!r}; expected one of {allowed}") from None


def check_record(kind: str, record: Mapping[str, Any]) -> list[Problem]:
    """Problems of one record of ``kind`` as ``(field, expected, got)``; empty when valid.

    Pure: never raises for bad records (only for an unknown ``kind``). ``got`` is the offending
    value, or a ``<missing>`` sentinel when the field is absent.
    """
    validator = _require_kind(kind)
    if not isinstance(record, Mapping):
        return [(None, "a record (an object of field: value)", record)]
    return validator(record)


# --------------------------------------------------------------------------- reading

Numbered = list[tuple[int, dict | DataError]]  # JSON Lines: (line number, row or error)
Raw = "Numbered | Dataset"  # a Dataset read by the datasets library, or JSON Lines

_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}
_FORMATS_HELP = "a .jsonl, .json, .parquet or .csv file, or a saved datasets directory"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence datasets' progress bars for tiny local reads, restoring the previous state."""
    import datasets  # lazy: datasets (and pyarrow) only when a file is read

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


# ``org/name`` or ``org/name:split``: a dataset id of the Hugging Face Hub
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(:[\w.-]+)?")


def _is_hub_id(path: str | os.PathLike[str]) -> bool:
    """A missing local path spelled like a Hub dataset id (and not like a data file)."""
    text = os.fspath(path)
    return (
        _HUB_ID.fullmatch(text) is not None
        and Path(text.partition(":")[0]).suffix.lower() not in _SUFFIXES
    )


def _locate(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """The path and its format name; DataError when missing or of unknown type."""
    p = Path(path)
    if not p.exists() and _is_hub_id(path):
        return Path(os.fspath(path)), "hub"
    if not p.exists():
        raise DataError(p, None, None, "an existing file or directory")
    if p.is_dir():
        return p, "dir"
    fmt = _SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise DataError(p, None, None, _FORMATS_HELP, p.suffix or p.name)
    return p, fmt


def _parse_line(path: Path, lineno: int, line: bytes) -> dict | DataError:
    try:
        text = line.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        return DataError(path, lineno, None, "UTF-8 text", str(exc))
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return DataError(path, lineno, None, "a JSON object", text.strip())
    if not isinstance(value, dict):
        return DataError(path, lineno, None, "a JSON object", value)
    return value


def _read_jsonl(path: Path) -> Numbered:
    """Every non-blank line as ``(line number, dict)``, or ``(line number, DataError)``."""
    rows: Numbered = []
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                rows.append((lineno, _parse_line(path, lineno, line)))
    return rows


def _csv_prescan(path: Path) -> None:
    """Check the header and that every record has as many fields as the header.

    pandas silently shifts a row with one extra field into an index column (or truncates it),
    so ragged rows are caught here with the csv module before pandas reads the file.
    """
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise DataError(path, None, None, "a CSV header row", _MISSING)
            dupes = sorted({name for name in header if name and header.count(name) > 1})
            if dupes:
                raise DataError(path, None, None, "unique column names", dupes)
            _check_field_counts(path, reader, len(header))
    except UnicodeDecodeError as exc:
        raise DataError(path, None, None, "UTF-8 text", str(exc)) from exc
    except csv.Error as exc:
        raise DataError(path, None, None, "a well-formed CSV file", str(exc)) from exc


def _check_field_counts(path: Path, reader: Iterator[list[str]], n_fields: int) -> None:
    n = 0
    for record in reader:
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # blank line: pandas skips it too
        n += 1
        if len(record) != n_fields:
            raise DataError(path, n, None, f"{n_fields} fields, as in the header", len(record))


def _read_csv(path: Path) -> Dataset:
    """Every cell as text, exactly as written; empty cells as None."""
    # lazy: datasets, pandas and pyarrow only when a file is read
    import pandas as pd
    from datasets import Dataset, Features, Value
    from datasets.exceptions import DatasetGenerationError

    _csv_prescan(path)
    try:
        columns = list(pd.read_csv(path, nrows=0, index_col=False).columns)
        features = Features({name: Value("string") for name in columns})
        with _quiet(), TemporaryDirectory() as cache:
            return Dataset.from_csv(
                str(path), features=features, keep_in_memory=True, cache_dir=cache,
                keep_default_na=False, na_values=[""], index_col=False,
            )  # fmt: skip
    except (ValueError, pd.errors.ParserError, DatasetGenerationError) as exc:
        raise DataError(path, None, None, "a well-formed CSV file", str(exc)) from exc


def _read_parquet(path: Path) -> Dataset:
    # lazy: datasets and pyarrow only when a file is read
    import pyarrow as pa
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    try:
        with _quiet(), TemporaryDirectory() as cache:
            return Dataset.from_parquet(str(path), keep_in_memory=True, cache_dir=cache)
    except (pa.ArrowException, OSError, DatasetGenerationError) as exc:
        raise DataError(path, None, None, "a Parquet file", str(exc)) from exc


def _read_dir(path: Path) -> Dataset:
    import datasets  # lazy: datasets only when a file is read

    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except FileNotFoundError as exc:
        raise DataError(path, None, None, "a directory saved by Dataset.save_to_disk") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise DataError(path, None, None, "a Dataset or a one-split DatasetDict", list(loaded))
        loaded = next(iter(loaded.values()))
    return loaded


def _datasets_cache() -> str:
    """The datasets cache, read when needed (``HF_DATASETS_CACHE`` may be set after import)."""
    import datasets  # lazy: datasets only when a file is read

    return os.environ.get("HF_DATASETS_CACHE") or str(datasets.config.HF_DATASETS_CACHE)


def _read_hub(path: Path) -> Dataset:
    """A Hub dataset ``org/name[:split]`` from the local datasets cache only (never the network).

    The cache is where ``datasets.load_dataset`` leaves a dataset it downloaded (or where it
    finds one with ``HF_HUB_OFFLINE=1``); the latest cached configuration is read. A split must
    be named when the dataset has more than one.
    """
    # lazy: datasets only when a file is read
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.cache.cache import Cache

    repo_id, _, split = os.fspath(path).partition(":")
    cache = _datasets_cache()
    try:
        with _quiet():
            builder = Cache(
                repo_id=repo_id,
                dataset_name=camelcase_to_snakecase(repo_id.split("/")[1]),  # as downloads name it
                version="auto",
                hash="auto",
                cache_dir=cache,
            )
    except (ValueError, FileNotFoundError, OSError):
        expected = (
            f"an existing file or directory, or a dataset in the local datasets cache {cache}"
        )
        raise DataError(path, None, None, expected) from None
    splits = list(builder.info.splits or {})
    if not split and len(splits) == 1:
        split = splits[0]
    if split not in splits:
        expected = f"a split given as {repo_id}:SPLIT, one of {splits}"
        raise DataError(path, None, None, expected, split or _MISSING)
    with _quiet():
        return builder.as_dataset(split=split, in_memory=False)


_RAW_READERS: dict[str, Callable[[Path], Raw]] = {
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "csv": _read_csv,
    "dir": _read_dir,
    "hub": _read_hub,
}


def _numbered(raw: Raw) -> Iterable[tuple[int, dict | DataError]]:
    return raw if isinstance(raw, list) else enumerate(raw, start=1)


def _type_name(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    names = {str: "string", list: "list", dict: "object"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _type_errors(path: Path, rows: Numbered) -> dict[int, list[DataError]]:
    """JSON rows whose column holds another type than most rows do (Arrow needs one type)."""
    seen: dict[str, Counter[str]] = {}
    for _, row in rows:
        if isinstance(row, dict):
            for name, value in row.items():
                kind = _type_name(value)
                if kind is not None:
                    seen.setdefault(name, Counter())[kind] += 1
    usual = {name: c.most_common(1)[0][0] for name, c in seen.items() if len(c) > 1}
    errors: dict[int, list[DataError]] = {}
    for n, row in rows if usual else ():
        for name, value in row.items() if isinstance(row, dict) else ():
            if name in usual and _type_name(value) not in (None, usual[name]):
                expected = f"a {usual[name]}, like the other rows"
                errors.setdefault(n, []).append(DataError(path, n, name, expected, value))
    return errors


def _rows_to_dataset(path: Path, rows: Iterable[dict]) -> Dataset:
    """A Dataset holding every key of every row (``Dataset.from_list`` keeps the first row's)."""
    # lazy: datasets and pyarrow only when a file is read
    import pyarrow as pa
    from datasets import Dataset

    rows = list(rows)
    names = list(dict.fromkeys(name for row in rows for name in row))
    try:
        return Dataset.from_dict({name: [row.get(name) for row in rows] for name in names})
    except (pa.ArrowException, TypeError) as exc:
        raise DataError(path, None, None, "one type per column", str(exc)) from exc


def _first_error(path: Path, rows: Numbered) -> DataError | None:
    """The first unparsable line or mixed-type cell, in row order."""
    bad = [row for _, row in rows if isinstance(row, DataError)]
    typed = _type_errors(path, rows)
    bad += [errors[0] for errors in typed.values()]
    return min(bad, key=lambda e: e.row or 0, default=None)


def read_table(path: str | os.PathLike[str]) -> Dataset:
    """Read a file or saved directory as a Dataset, checking the format only (not the rows).

    Raises DataError for a missing path, an unknown extension, an unparsable JSON line, a
    JSON line that is not an object, a column of mixed JSON types, or a malformed CSV/Parquet.
    """
    p, fmt = _locate(path)
    raw = _RAW_READERS[fmt](p)
    if not isinstance(raw, list):  # a Dataset already (not JSON Lines)
        return raw
    error = _first_error(p, raw)
    if error is not None:
        raise error
    return _rows_to_dataset(p, (row for _, row in raw))


# --------------------------------------------------------------------------- validation

_CSV_NUMBERS = {"prefs": ("margin",)}  # CSV has no types: these columns are parsed as numbers


def _parse_number(value: object) -> object:
    """``float(value)`` for numeric text, else the value unchanged (reported by the checks)."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return value


def _prepare(row: dict, kind: str, fmt: str) -> dict:
    names = _CSV_NUMBERS.get(kind, ()) if fmt == "csv" else ()
    return {**row, **{n: _parse_number(row[n]) for n in names if n in row}} if names else row


def _category(kind: str, row: Mapping[str, Any], stem: str) -> str:
    value = row.get("category")
    return stem if kind == "mcq" and value is None else value


@dataclass
class ValidationReport:
    """What :func:`validate` found in one file."""

    path: str
    kind: str
    n_rows: int
    counts: dict[str, int] = field(default_factory=dict)  # valid rows per category
    errors: list[DataError] = field(default_factory=list)  # the first ``max_errors``
    n_invalid: int = 0  # every invalid row, including those beyond ``max_errors``
    skipped: dict[str, int] = field(default_factory=dict)  # source rows left out, by reason

    @property
    def ok(self) -> bool:
        """True when every row is valid."""
        return self.n_invalid == 0

    @property
    def n_valid(self) -> int:
        """Number of valid rows."""
        return self.n_rows - self.n_invalid


def _source_field(name: str | None, renames: Mapping[str, str]) -> str | None:
    """A record field as the source row spells it (``messages[1].role`` → ``prompt[1].role``)."""
    for ours, theirs in renames.items():
        if name is not None and (name == ours or name.startswith((f"{ours}[", f"{ours}."))):
            return theirs + name[len(ours) :]
    return name


def _checked(
    path: Path, kind: str, fmt: str, number: int, row: dict | DataError, default: str | None
) -> tuple[dict | None, list[DataError]]:
    """The row in its kind's shape, or None, and its errors (named as the source names them)."""
    if isinstance(row, DataError):
        return None, [row]
    row = _prepare(row, kind, fmt)
    if kind == "mcq":  # one layout; category falls back to the file's stem
        out, problems, renames = row, check_record(kind, row), {}
    else:
        converted = normalise(kind, row, default)
        out, renames = converted.record, converted.renames
        problems = converted.problems or check_record(kind, out)
    errors = [
        DataError(path, number, _source_field(name, renames), expected, got)
        for name, expected, got in problems
    ]
    return out, errors


def _rows_of(kind: str, raw: Raw) -> tuple[Iterable[tuple[int, dict | DataError]], Counter]:
    """The numbered rows to check; HelpSteer2 rows become preference pairs first."""
    numbered = _numbered(raw)
    if kind != "prefs":
        return numbered, Counter()
    if isinstance(raw, list):
        columns = dict.fromkeys(k for _, row in raw if isinstance(row, dict) for k in row)
    else:
        columns = raw.column_names
    if not is_helpsteer2(columns):
        return numbered, Counter()
    if isinstance(raw, list) and any(isinstance(row, DataError) for _, row in raw):
        return numbered, Counter()  # a line that is not JSON: reported, nothing paired
    return helpsteer2_pairs(numbered)


@dataclass
class _Checked:
    report: ValidationReport
    rows: list[dict]  # every valid row in its kind's shape (when kept)
    changed: bool  # some row differs from the source row


def _check_all(
    path: Path, kind: str, fmt: str, raw: Raw, max_errors: int, default: str | None, keep: bool
) -> _Checked:
    """Check every row; keep the first ``max_errors`` errors and count all invalid rows.

    Rows are checked in their kind's shape, so a JSON column of mixed types is reported only
    where it stays mixed after conversion (TRL's message-list ``prompt`` becomes ``messages``).
    """
    report = ValidationReport(path=str(path), kind=kind, n_rows=0)
    rows, skipped = _rows_of(kind, raw)
    checked = [(n, row, *_checked(path, kind, fmt, n, row, default)) for n, row in rows]
    converted: Numbered = [(n, record) for n, _, record, _ in checked if record is not None]
    typed = _type_errors(path, converted) if isinstance(raw, list) else {}
    counts: Counter[str] = Counter()
    out = _Checked(report, [], changed=bool(skipped))
    for number, row, record, errors in checked:
        report.n_rows += 1
        fields = {e.field for e in errors}
        errors += [e for e in typed.get(number, []) if e.field not in fields]
        if errors:
            report.n_invalid += 1
            report.errors += errors[: max(0, max_errors - len(report.errors))]
            continue
        counts[_category(kind, record, path.stem)] += 1
        out.changed = out.changed or record != row
        if keep:
            out.rows.append(record)
    report.counts, report.skipped = dict(counts), dict(skipped)
    return out


def validate(
    path: str | os.PathLike[str],
    kind: str,
    max_errors: int = 20,
    default_category: str | None = None,
) -> ValidationReport:
    """Check every row of ``path`` as records of ``kind``.

    Rows are read in any shape :mod:`align.core.data_formats` knows (TRL's formats,
    UltraFeedback-binarized, HelpSteer2); ``default_category`` fills ``category`` where a row has
    none. Row problems (including unparsable JSON lines) are collected, never raised; format
    problems (missing file, unknown extension, malformed CSV/Parquet) raise DataError. Unknown
    ``kind`` raises ValueError.
    """
    _require_kind(kind)
    p, fmt = _locate(path)
    raw = _RAW_READERS[fmt](p)
    return _check_all(p, kind, fmt, raw, max_errors, default_category, keep=False).report


# --------------------------------------------------------------------------- loading

_INDEX_PREFIX = "Unnamed: "


def _is_index_column(name: str) -> bool:
    """pandas' name for a blank CSV header (FinanceIQ's unnamed leading index)."""
    return name == "" or (name.startswith(_INDEX_PREFIX) and name[len(_INDEX_PREFIX) :].isdigit())


def _mcq_row(row: Mapping[str, Any], stem: str) -> dict:
    out = {name: value for name, value in row.items() if not _is_index_column(name)}
    out.update({name: str(out[name]) for name in MCQ_OPTIONS})
    out["Answer"] = out["Answer"].strip()
    out["category"] = _category("mcq", out, stem)
    return out


def _finish(path: Path, kind: str, fmt: str, data: Dataset) -> Dataset:
    """Kind-specific normalisation of a validated Dataset."""
    from datasets import Value  # lazy: datasets only when a file is read

    if kind == "mcq":
        return _rows_to_dataset(path, (_mcq_row(row, path.stem) for row in data))
    for name in _CSV_NUMBERS.get(kind, ()) if fmt == "csv" else ():
        if name in data.column_names:
            with _quiet():
                data = data.cast_column(name, Value("float64"))
    return data


def _warn_skipped(path: Path, skipped: Mapping[str, int]) -> None:
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        warnings.warn(f"{path}: source rows left out: {reasons}", stacklevel=3)


def load_records(
    path: str | os.PathLike[str], kind: str, default_category: str | None = None
) -> Dataset:
    """Read and validate ``path`` as records of ``kind``; every row or the first DataError.

    ``path`` is a file, a saved ``datasets`` directory, or a Hub id ``org/name[:split]`` read
    from the local datasets cache. Rows in another known shape (TRL's formats,
    UltraFeedback-binarized, HelpSteer2; see :mod:`align.core.data_formats`) come back in the
    shape of ``kind``; ``default_category`` fills ``category`` where a row has none. HelpSteer2
    rows that make no preference pair are counted in a warning, never dropped silently.

    ``mcq`` records come back with options A-D as text, ``Answer`` stripped, the unnamed index
    column removed and ``category`` set to the file's stem where the file gives none.
    """
    _require_kind(kind)
    p, fmt = _locate(path)
    raw = _RAW_READERS[fmt](p)
    checked = _check_all(p, kind, fmt, raw, 1, default_category, keep=kind != "mcq")
    if checked.report.errors:
        raise checked.report.errors[0]
    _warn_skipped(p, checked.report.skipped)
    if checked.changed:
        data = _rows_to_dataset(p, checked.rows)
    elif isinstance(raw, list):
        data = _rows_to_dataset(p, (row for _, row in raw))
    else:
        data = raw
    return _finish(p, kind, fmt, data)


# --------------------------------------------------------------------------- writing


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> int:
    """Write ``records`` as JSON Lines (UTF-8, not ASCII-escaped) atomically; return the count.

    The lines go to a temporary file in the same directory, which then replaces ``path``, so a
    reader never sees a half-written file and a failure leaves any old file untouched.
    """
    count = 0
    with atomic_path(path, fsync=True) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            count += 1
    return count  # a failed write (full disk) is raised naming ``path`` (atomic_path)


def messages_of(record: Mapping[str, Any]) -> list[dict]:
    """The conversation of a prompt record: its ``messages``, or its ``prompt`` as one user turn."""
    if record.get("messages"):
        return [dict(m) for m in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}]


# --------------------------------------------------------------------------- held-out split


def split_held_out(
    records: Iterable[Mapping[str, Any]], share: float, seed: int
) -> tuple[list, list]:
    """``(train, held_out)``: per category, the last ``share`` of a seeded shuffle is held out.

    Each category's rows (in input order) are shuffled by ``random.Random(seed)`` and their
    last ``max(1, round(share * n))`` held out, so a category of one row goes entirely to the
    held-out side. Categories are taken in sorted order, so both lists, and everything drawn
    from them by position, do not depend on where each category first appears in the input
    (the order of the files, say). The records themselves are returned, not copies.
    """
    if not 0 < share < 1:
        raise ValueError(f"share: expected in (0, 1), got {share}")
    by_category: dict[str, list] = {}
    for record in records:
        by_category.setdefault(record["category"], []).append(record)
    train: list = []
    held: list = []
    for _, rows in sorted(by_category.items()):
        random.Random(seed).shuffle(rows)
        k = max(1, round(share * len(rows)))
        train += rows[:-k]
        held += rows[-k:]
    return train, held
