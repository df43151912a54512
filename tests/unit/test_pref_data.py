"""HH-RLHF and FinanceIQ conversion to ``prefs`` records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from align.core.data import load_records, write_jsonl
from align.core.pref_data import financeiq_prefs, hh_rlhf_prefs, parse_hh_transcript

SHARED = Path(
    os.environ.get("ALIGN_SHARED_DATA", Path(__file__).resolve().parents[2] / "../shared/data")
)


def test_parse_hh_transcript():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how?"},
        {"role": "assistant", "content": "like this"},
    ]
    with pytest.raises(ValueError):
        parse_hh_transcript("Assistant: no human")


def test_hh_rows_convert_and_bad_rows_are_counted(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
        {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant:"},
        {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: other\n\nAssistant: b"},
        {"chosen": "plain text", "rejected": "plain"},
    ]
    out = hh_rlhf_prefs(rows, "hh-harmless")
    assert out.records == [
        {
            "messages": [{"role": "user", "content": "q"}],
            "chosen": "good",
            "rejected": "bad",
            "category": "hh-harmless",
        }
    ]
    assert out.skipped == {
        "empty response": 1,
        "chosen and rejected dialogues differ before the last turn": 1,
        "not a Human/Assistant transcript": 1,
    }
    write_jsonl(out.records, tmp_path / "p.jsonl")
    assert len(load_records(tmp_path / "p.jsonl", "prefs")) == 1


def test_financeiq_pairs(tmp_path):
    (tmp_path / "税务.csv").write_text(
        ",Question,A,B,C,D,Answer\n0,税率是？,1%,2%,3%,2%,B\n", encoding="utf-8"
    )
    out = financeiq_prefs(tmp_path)
    # wrong options A and C; D has the answer's text and is left out, counted
    assert [r["rejected"] for r in out.records] == ["A. 1%", "C. 3%"]
    assert {r["chosen"] for r in out.records} == {"B. 2%"}
    assert out.skipped == {"wrong option identical to the answer": 1}
    first = out.records[0]
    assert first["category"] == "税务" and first["id"] == "税务-0"
    assert first["prompt"].startswith("以下是关于税务的单项选择题") and first["prompt"].endswith(
        "答案是："
    )


@pytest.mark.skipif(not (SHARED / "financeiq").is_dir(), reason="../shared/data not present")
def test_real_files_load_as_prefs(tmp_path):
    from align.core.pref_data import load_hh_rlhf

    fiq = financeiq_prefs(SHARED / "financeiq/dev")
    assert len(fiq.records) == 150 and len({r["category"] for r in fiq.records}) == 10
    hh = load_hh_rlhf(SHARED / "hh-rlhf/harmless-base-sample.jsonl")
    assert len(hh.records) + hh.n_skipped == 1200
    write_jsonl(fiq.records + hh.records, tmp_path / "all.jsonl")
    assert len(load_records(tmp_path / "all.jsonl", "prefs")) == 150 + len(hh.records)
