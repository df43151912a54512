"""Tests for align.core.data: record contracts, readers, validation and atomic writing."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from align.core.data import (
    KINDS,
    DataError,
    check_record,
    load_records,
    read_table,
    validate,
    write_jsonl,
)

SHARED_DATA = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


def financeiq_dir(split: str) -> Path:
    """The shared FinanceIQ split folder, or skip when this checkout has no shared data."""
    folder = SHARED_DATA / "financeiq" / split
    if not folder.is_dir():
        pytest.skip(f"shared FinanceIQ data not found at {folder} (set ALIGN_SHARED_DATA)")
    return folder


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [json.dumps(row, ensure_ascii=False) for row in rows])


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


PROMPT_ROWS = [
    {"id": "p1", "prompt": "什么是市盈率？", "category": "stocks"},
    {"id": "p2", "prompt": "What is a bond?", "category": "bonds"},
    {"id": "p3", "prompt": "定投是什么？", "category": "stocks"},
]


def write_prompts(tmp_path: Path, fmt: str) -> Path:
    """PROMPT_ROWS in one of the four formats."""
    data = Dataset.from_list(PROMPT_ROWS)
    writers = {
        "jsonl": lambda p: write_rows(Path(p), PROMPT_ROWS),
        "parquet": data.to_parquet,
        "csv": lambda p: data.to_csv(p, index=False),
        "dir": data.save_to_disk,
    }
    path = tmp_path / ("prompts" if fmt == "dir" else f"prompts.{fmt}")
    writers[fmt](str(path))
    return path


# --------------------------------------------------------------------------- valid files


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "dir"])
def test_prompts_load_from_every_format(tmp_path, fmt):
    path = write_prompts(tmp_path, fmt)
    data = load_records(path, "prompts")
    assert data.to_list() == PROMPT_ROWS
    report = validate(path, "prompts")
    assert report.ok and report.n_rows == 3 and report.n_invalid == 0
    assert report.counts == {"stocks": 2, "bonds": 1}


def test_jsonl_keeps_columns_that_first_row_lacks(tmp_path):
    # Dataset.from_list keeps only the first row's keys; the loader must not lose `messages`
    # (row 2) or the extra `reference` column (row 3).
    rows = [
        {"id": 1, "prompt": "p1", "category": "a"},
        {"id": 2, "messages": [{"role": "system", "content": "s"}, user("u")], "category": "a"},
        {"prompt": "p3", "category": "b", "reference": "r3"},
    ]
    path = write_rows(tmp_path / "p.jsonl", rows)
    data = load_records(path, "prompts")
    assert len(data) == 3
    assert data[1]["messages"] == rows[1]["messages"]
    assert data["reference"] == [None, None, "r3"]
    assert data["prompt"] == ["p1", None, "p3"]
    assert validate(path, "prompts").counts == {"a": 2, "b": 1}


def test_prefs_parquet_with_margin(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "good", "rejected": "bad", "category": "tax", "margin": 1.5},
        {"prompt": "q2", "chosen": "好", "rejected": "差", "category": "tax", "margin": None},
        {"prompt": "q3", "chosen": "c", "rejected": "r", "category": "fund", "margin": 2.0},
    ]
    path = tmp_path / "prefs.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    data = load_records(path, "prefs")
    assert data.to_list() == rows
    assert validate(path, "prefs").counts == {"tax": 2, "fund": 1}


def test_prefs_csv_margin_is_parsed_as_number(tmp_path):
    path = write_lines(
        tmp_path / "prefs.csv",
        ["prompt,chosen,rejected,category,margin", "q1,c,r,tax,0.5", "q2,c,r,tax,", "q3,c,r,x,2"],
    )
    data = load_records(path, "prefs")
    assert data["margin"] == [0.5, None, 2.0]
    assert validate(path, "prefs").counts == {"tax": 2, "x": 1}


def test_prefs_csv_bad_margin_is_reported(tmp_path):
    path = write_lines(
        tmp_path / "prefs.csv", ["prompt,chosen,rejected,category,margin", "q,c,r,t,big"]
    )
    with pytest.raises(DataError) as info:
        load_records(path, "prefs")
    assert (info.value.row, info.value.field, info.value.got) == (1, "margin", "big")


def test_sft_saved_dir_with_both_layouts(tmp_path):
    rows = [
        {"messages": [user("hi"), assistant("hello")], "prompt": None, "completion": None,
         "category": "chat"},
        {"messages": None, "prompt": "1+1=", "completion": "2", "category": "math"},
        {"messages": [user("a"), assistant("b"), user("c")], "prompt": None, "completion": None,
         "category": "chat"},
    ]  # fmt: skip
    path = tmp_path / "sft_dir"
    Dataset.from_list(rows).save_to_disk(str(path))
    data = load_records(path, "sft")
    assert data.to_list() == rows
    assert validate(path, "sft").counts == {"chat": 2, "math": 1}


def test_saved_datasetdict_with_one_split(tmp_path):
    path = tmp_path / "dd"
    DatasetDict({"train": Dataset.from_list(PROMPT_ROWS)}).save_to_disk(str(path))
    assert len(load_records(path, "prompts")) == 3


def test_saved_datasetdict_with_two_splits_is_refused(tmp_path):
    path = tmp_path / "dd"
    split = Dataset.from_list(PROMPT_ROWS)
    DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    with pytest.raises(DataError, match="one-split"):
        load_records(path, "prompts")


def test_mcq_csv_text_kept_exactly_and_category_from_stem(tmp_path):
    path = write_lines(
        tmp_path / "税务师.csv",
        [
            ",Question,A,B,C,D,Answer",
            "0,税率是多少？,007,2.50,NA,None, B ",
            '1,"两行\n题目",1,2,3,4,D',
        ],
    )
    data = load_records(path, "mcq")
    assert data.column_names == ["Question", "A", "B", "C", "D", "Answer", "category"]
    first = data[0]
    # pandas would turn these into 7.0, 2.5, NaN, NaN: cells must come back as written.
    assert (first["A"], first["B"], first["C"], first["D"]) == ("007", "2.50", "NA", "None")
    assert first["Answer"] == "B"
    assert data[1]["Question"] == "两行\n题目"
    assert data["category"] == ["税务师", "税务师"]
    assert validate(path, "mcq").counts == {"税务师": 2}


def test_mcq_numeric_options_from_jsonl_become_text(tmp_path):
    path = write_rows(
        tmp_path / "quant.jsonl",
        [{"Question": "1+1?", "A": 1, "B": 2, "C": 2.5, "D": 4, "Answer": "B", "category": "m"}],
    )
    row = load_records(path, "mcq")[0]
    assert [row[k] for k in "ABCD"] == ["1", "2", "2.5", "4"]
    assert row["category"] == "m"


def test_empty_jsonl_file_has_no_rows(tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [""])
    report = validate(path, "prompts")
    assert (report.n_rows, report.ok, report.counts) == (0, True, {})
    assert len(load_records(path, "prompts")) == 0


# --------------------------------------------------------------------------- malformed rows

GOOD_PREF = {"prompt": "q", "chosen": "c", "rejected": "r", "category": "t"}
GOOD_PROMPT = {"prompt": "q", "category": "t"}

BAD_JSONL = [
    # (id, kind, the bad row placed on line 2, field)
    ("missing-category", "prompts", {"prompt": "q"}, "category"),
    ("category-not-string", "prompts", {"prompt": "q", "category": 7}, "category"),
    ("null-category", "prompts", {"prompt": "q", "category": None}, "category"),
    ("empty-prompt", "prompts", {"prompt": "   ", "category": "t"}, "prompt"),
    ("prompt-not-string", "prompts", {"prompt": ["q"], "category": "t"}, "prompt"),
    ("id-float", "prompts", {"id": 1.5, "prompt": "q", "category": "t"}, "id"),
    ("both-prompt-and-messages", "prompts",
     {"prompt": "q", "messages": [user("q")], "category": "t"}, "prompt|messages"),
    ("neither-prompt-nor-messages", "prompts", {"category": "t"}, "prompt|messages"),
    ("empty-messages", "prompts", {"messages": [], "category": "t"}, "messages"),
    ("bad-role", "prompts",
     {"messages": [{"role": "bot", "content": "x"}, user("q")], "category": "t"},
     "messages[0].role"),
    ("empty-content", "prompts", {"messages": [user("")], "category": "t"}, "messages[0].content"),
    ("message-not-object", "prompts", {"messages": ["hi"], "category": "t"}, "messages[0]"),
    ("last-not-user", "prompts",
     {"messages": [user("q"), assistant("a")], "category": "t"}, "messages[1].role"),
    ("missing-chosen", "prefs", {"prompt": "q", "rejected": "r", "category": "t"}, "chosen"),
    ("rejected-int", "prefs", {**GOOD_PREF, "rejected": 3}, "rejected"),
    ("margin-string", "prefs", {**GOOD_PREF, "margin": "0.5"}, "margin"),
    ("margin-bool", "prefs", {**GOOD_PREF, "margin": True}, "margin"),
    ("prefs-last-not-user", "prefs",
     {**GOOD_PREF, "prompt": None, "messages": [assistant("a")]}, "messages[0].role"),
    ("sft-no-assistant", "sft", {"messages": [user("q")], "category": "t"}, "messages"),
    ("sft-no-completion", "sft", {"prompt": "q", "category": "t"}, "completion"),
    ("sft-both", "sft",
     {"messages": [user("q"), assistant("a")], "prompt": "q", "completion": "a", "category": "t"},
     "messages|prompt+completion"),
    ("sft-neither", "sft", {"category": "t"}, "messages|prompt+completion"),
    ("mcq-answer-E", "mcq",
     {"Question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "E"}, "Answer"),
    ("mcq-null-category", "mcq",
     {"Question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "A", "category": None},
     "category"),
]  # fmt: skip

GOOD_ROW = {
    "prompts": GOOD_PROMPT,
    "prefs": GOOD_PREF,
    "sft": {"prompt": "q", "completion": "a", "category": "t"},
    "mcq": {"Question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "A"},
}


@pytest.mark.parametrize(
    ("kind", "bad", "field"), [case[1:] for case in BAD_JSONL], ids=[c[0] for c in BAD_JSONL]
)
def test_malformed_jsonl_row_names_row_and_field(tmp_path, kind, bad, field):
    good = GOOD_ROW[kind]
    path = write_rows(tmp_path / "data.jsonl", [good, bad, good])
    assert check_record(kind, good) == []
    assert [problem[0] for problem in check_record(kind, bad)] == [field]
    with pytest.raises(DataError) as info:
        load_records(path, kind)
    error = info.value
    assert (error.row, error.field) == (2, field)
    message = str(error)
    assert message.startswith(f"{path}: row 2: field '{field}': expected ")
    assert "\n" not in message
    report = validate(path, kind)
    assert (report.n_rows, report.n_invalid, report.ok) == (3, 1, False)
    assert [(e.row, e.field) for e in report.errors] == [(2, field)]


def test_bad_json_line_counts_blank_lines(tmp_path):
    good = json.dumps(GOOD_PROMPT)
    path = write_lines(tmp_path / "p.jsonl", [good, "", '{"prompt": "q", "category": ', good])
    with pytest.raises(DataError) as info:
        load_records(path, "prompts")
    assert (info.value.row, info.value.field, info.value.expected) == (3, None, "a JSON object")
    assert str(info.value).startswith(f"{path}: row 3: expected a JSON object, got ")
    with pytest.raises(DataError):
        read_table(path)


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_lines(tmp_path / "p.json", [json.dumps(GOOD_PROMPT), "[1, 2]"])
    with pytest.raises(DataError) as info:
        load_records(path, "prompts")
    assert (info.value.row, info.value.field, info.value.got) == (2, None, [1, 2])


def test_mixed_types_in_extra_column_are_named(tmp_path):
    # Each row is valid alone, but Arrow needs one type per column: row 3's int id
    # would otherwise surface as a bare pyarrow error.
    rows = [{**GOOD_PROMPT, "id": "a"}, {**GOOD_PROMPT, "id": "b"}, {**GOOD_PROMPT, "id": 3}]
    path = write_rows(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path, "prompts")
    assert (info.value.row, info.value.field, info.value.got) == (3, "id", 3)
    with pytest.raises(DataError) as info:
        read_table(path)
    assert (info.value.row, info.value.field) == (3, "id")
    report = validate(path, "prompts")
    assert (report.n_invalid, report.counts) == (1, {"t": 2})


def test_mcq_csv_answer_e_and_empty_cell(tmp_path):
    path = write_lines(
        tmp_path / "bank.csv",
        [",Question,A,B,C,D,Answer", "0,q,a,b,c,d,A", "1,q,a,b,c,d,E", "2,,a,b,c,d,C"],
    )
    with pytest.raises(DataError) as info:
        load_records(path, "mcq")
    assert (info.value.row, info.value.field, info.value.got) == (2, "Answer", "E")
    assert str(path) in str(info.value)
    report = validate(path, "mcq")
    assert [(e.row, e.field, e.got) for e in report.errors] == [
        (2, "Answer", "E"),
        (3, "Question", None),  # an empty CSV cell reads as None
    ]
    assert (report.n_invalid, report.counts) == (2, {"bank": 1})


def test_mcq_missing_column(tmp_path):
    path = write_lines(tmp_path / "x.csv", ["Question,A,B,C,Answer", "q,a,b,c,A"])
    with pytest.raises(DataError) as info:
        load_records(path, "mcq")
    assert (info.value.row, info.value.field) == (1, "D")
    assert str(info.value) == f"{path}: row 1: field 'D': expected a non-empty string or a number"


# --------------------------------------------------------------------------- validate


def test_validate_collects_errors_in_row_order(tmp_path):
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            json.dumps({"prompt": "ok", "category": "a"}),  # 1 valid
            json.dumps({"prompt": "no category"}),  # 2 category
            "",  # 3 blank, still counted
            "not json",  # 4 bad line
            json.dumps({"prompt": "ok", "category": "b"}),  # 5 valid
            json.dumps({"messages": [{"role": "bot", "content": ""}], "category": 1}),  # 6: three
            json.dumps({"prompt": "ok", "category": "a"}),  # 7 valid
        ],
    )
    report = validate(path, "prompts")
    assert report.n_rows == 6
    assert report.n_invalid == 3
    assert report.n_valid == 3
    assert not report.ok
    assert report.counts == {"a": 2, "b": 1}
    assert [(e.row, e.field) for e in report.errors] == [
        (2, "category"),
        (4, None),
        (6, "messages[0].role"),
        (6, "messages[0].content"),
        (6, "category"),
    ]
    capped = validate(path, "prompts", max_errors=2)
    assert [(e.row, e.field) for e in capped.errors] == [(2, "category"), (4, None)]
    assert capped.n_invalid == 3  # counted beyond max_errors


def test_validate_never_raises_for_rows_but_raises_for_format(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", ["{", "[", "3"])
    report = validate(path, "sft")
    assert (report.n_rows, report.n_invalid) == (3, 3)
    with pytest.raises(DataError):
        validate(tmp_path / "absent.jsonl", "sft")


def test_unknown_kind_names_allowed_kinds(tmp_path):
    path = write_rows(tmp_path / "p.jsonl", [GOOD_PROMPT])
    for call in (lambda: check_record("chat", {}), lambda: validate(path, "chat")):
        with pytest.raises(ValueError, match="prompts, prefs, sft, mcq") as info:
            call()
        assert not isinstance(info.value, DataError)
    assert KINDS == ("prompts", "prefs", "sft", "mcq")


# --------------------------------------------------------------------------- format errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as info:
        load_records(path, "prompts")
    assert (info.value.row, info.value.field) == (None, None)
    assert str(info.value) == f"{path}: expected an existing file or directory"


def test_unknown_extension(tmp_path):
    path = write_lines(tmp_path / "p.txt", ["hello"])
    with pytest.raises(DataError, match=r"\.jsonl") as info:
        read_table(path)
    assert info.value.got == ".txt"


def test_csv_row_with_extra_field_is_not_shifted(tmp_path):
    # pandas would silently turn the first data row's extra field into an index column.
    path = write_lines(tmp_path / "p.csv", ["prompt,category", "x,q,t", "q,t"])
    with pytest.raises(DataError) as info:
        read_table(path)
    assert (info.value.row, info.value.got) == (1, 3)


def test_csv_not_utf8(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("prompt,category\n你好,t\n".encode("gbk"))
    with pytest.raises(DataError, match="UTF-8"):
        load_records(path, "prompts")


def test_parquet_garbage(tmp_path):
    path = tmp_path / "p.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="Parquet"):
        read_table(path)


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        read_table(tmp_path)


# --------------------------------------------------------------------------- DataError


def test_data_error_message_and_pickle():
    error = DataError("d/x.jsonl", 4, "chosen", "a non-empty string", 12)
    assert str(error) == "d/x.jsonl: row 4: field 'chosen': expected a non-empty string, got 12"
    assert isinstance(error, ValueError)
    assert str(DataError("f", None, None, "x", None)) == "f: expected x, got None"
    long = DataError("f", 1, None, "short text", "line\n" * 100)
    assert "\n" not in str(long) and len(str(long)) < 140
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.row, copy.field, copy.got, str(copy)) == (
        "d/x.jsonl", 4, "chosen", 12, str(error),
    )  # fmt: skip


def test_check_record_reports_got_values():
    problems = check_record("prefs", {"prompt": "q", "chosen": "", "rejected": "r", "margin": "1"})
    assert [(f, g) for f, _, g in problems[::2]] == [("chosen", ""), ("margin", "1")]
    assert [f for f, _, _ in problems] == ["chosen", "category", "margin"]
    assert repr(problems[1][2]) == "<missing>"  # absent, as opposed to present and null
    assert check_record("prompts", ["not", "a", "dict"])[0][0] is None


# --------------------------------------------------------------------------- write_jsonl


def test_write_jsonl_round_trips_unicode_atomically(tmp_path):
    rows = [
        {"prompt": "请解释一下可转债。", "category": "债券", "id": 1},
        {"prompt": 'emoji 📈 and "quotes"\nnewline', "category": "股票", "id": 2},
    ]
    path = tmp_path / "out" / "prompts.jsonl"
    assert write_jsonl(iter(rows), path) == 2
    text = path.read_text(encoding="utf-8")
    assert "请解释一下可转债" in text and "\\u" not in text  # ensure_ascii=False
    assert len(text.splitlines()) == 2
    assert load_records(path, "prompts").to_list() == rows
    assert os.listdir(path.parent) == ["prompts.jsonl"]  # no temp file left behind


def test_write_jsonl_failure_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "p.jsonl"
    write_jsonl([GOOD_PROMPT], path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl([GOOD_PROMPT, {"prompt": object(), "category": "t"}], path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.jsonl"]


def test_write_jsonl_from_loaded_dataset(tmp_path):
    src = write_prompts(tmp_path, "parquet")
    out = tmp_path / "copy.jsonl"
    assert write_jsonl(load_records(src, "prompts"), out) == 3
    assert load_records(out, "prompts").to_list() == PROMPT_ROWS


# --------------------------------------------------------------------------- real FinanceIQ


@pytest.mark.parametrize(("split", "n_rows"), [("dev", 5), ("test-sample", 40)])
def test_financeiq_files_load_as_mcq(split, n_rows):
    files = sorted(financeiq_dir(split).glob("*.csv"))
    assert len(files) == 10
    for path in files:
        data = load_records(path, "mcq")
        assert len(data) == n_rows, path
        assert set(data["category"]) == {path.stem}
        assert set(data["Answer"]) <= set("ABCD")
        assert all(isinstance(data[0][k], str) and data[0][k] for k in "ABCD")
        report = validate(path, "mcq")
        assert report.ok and report.counts == {path.stem: n_rows}
