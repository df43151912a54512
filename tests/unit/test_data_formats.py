"""Other data shapes read as align records: TRL's formats, UltraFeedback-binarized, HelpSteer2,
Hub ids from the local datasets cache, and ``default_category``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from align.core.data import DataError, load_records, validate
from align.core.data_formats import HELPSTEER2_RULE, helpsteer2_pairs
from align.core.pref_data import helpsteer2_prefs, ultrafeedback_prefs


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def load(tmp_path: Path, kind: str, rows: list[dict], **kwargs) -> list[dict]:
    return load_records(write_rows(tmp_path / "d.jsonl", rows), kind, **kwargs).to_list()


# --------------------------------------------------------------------------- TRL's formats


def test_trl_prompt_only_standard_and_conversational(tmp_path):
    rows = [
        {"prompt": "What color is the sky?", "category": "a"},
        {"prompt": [user("Hi"), assistant("Hello"), user("Sky?")], "category": "a"},
    ]
    out = load(tmp_path, "prompts", rows)
    assert out[0]["prompt"] == "What color is the sky?"
    assert out[1]["messages"] == [user("Hi"), assistant("Hello"), user("Sky?")]
    assert out[1]["prompt"] is None  # the column is shared with row 1; this row has none


def test_trl_standard_preference_explicit_and_implicit_prompt(tmp_path):
    rows = [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "category": "a"},
        {"chosen": "The sky is blue.", "rejected": "The sky is green.", "category": "a"},
    ]
    out = load(tmp_path, "prefs", rows)
    assert (out[0]["prompt"], out[0]["chosen"], out[0]["rejected"]) == (
        "The sky is",
        " blue.",
        " green.",
    )
    # TRL's extract_prompt cut: the common prefix, less the space before the difference
    assert (out[1]["prompt"], out[1]["chosen"], out[1]["rejected"]) == (
        "The sky is",
        " blue.",
        " green.",
    )


def test_trl_conversational_preference_explicit_and_implicit_prompt(tmp_path):
    sky = [user("What color is the sky?")]
    rows = [
        {"prompt": sky, "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]},
        {"chosen": [*sky, assistant("Blue.")], "rejected": [*sky, assistant("Green.")]},
    ]
    out = load(tmp_path, "prefs", rows, default_category="general")
    for record in out:
        assert record["messages"] == sky
        assert (record["chosen"], record["rejected"]) == ("Blue.", "Green.")
        assert record["category"] == "general"


def test_trl_conversational_sft_and_prompt_completion(tmp_path):
    rows = [
        {"messages": [user("q"), assistant("a")], "category": "a"},
        {"prompt": "q", "completion": "a", "category": "a"},
        {"prompt": [user("q")], "completion": [assistant("a")], "category": "a"},
    ]
    out = load(tmp_path, "sft", rows)
    assert out[0]["messages"] == out[2]["messages"] == [user("q"), assistant("a")]
    assert (out[1]["prompt"], out[1]["completion"]) == ("q", "a")


ERRORS = [
    # (id, kind, bad row on line 2, the field named)
    ("conv-prompt-bad-role", "prompts",
     {"prompt": [{"role": "bot", "content": "x"}, user("q")], "category": "a"}, "prompt[0].role"),
    ("conv-prompt-ends-on-assistant", "prompts",
     {"prompt": [user("q"), assistant("a")], "category": "a"}, "prompt[1].role"),
    ("two-replies", "prefs",
     {"prompt": [user("q")], "chosen": [assistant("a"), assistant("b")],
      "rejected": [assistant("c")], "category": "a"}, "chosen"),
    ("mixed-sides", "prefs",
     {"chosen": [user("q"), assistant("a")], "rejected": "c", "category": "a"}, "rejected"),
    ("no-shared-prompt", "prefs",
     {"chosen": [user("q"), assistant("a")], "rejected": [user("p"), assistant("b")],
      "category": "a"}, "chosen|rejected"),
    ("implicit-text-no-prefix", "prefs",
     {"chosen": "blue", "rejected": "green", "category": "a"}, "prompt|messages"),
    ("empty-reply", "prefs",
     {"prompt": [user("q")], "chosen": [assistant(" ")], "rejected": [assistant("c")],
      "category": "a"}, "chosen"),
    ("lm-text-for-sft", "sft", {"text": "plain text", "category": "a"}, "text"),
    ("conv-completion-no-assistant", "sft",
     {"prompt": [user("q")], "completion": [user("a")], "category": "a"}, "prompt+completion"),
    ("no-category", "prompts", {"prompt": [user("q")]}, "category"),
]  # fmt: skip

GOOD = {
    "prompts": {"prompt": "q", "category": "a"},
    "prefs": {"prompt": "q", "chosen": "c", "rejected": "r", "category": "a"},
    "sft": {"prompt": "q", "completion": "a", "category": "a"},
}


@pytest.mark.parametrize(
    ("kind", "bad", "field"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS]
)
def test_errors_name_file_row_and_source_field(tmp_path, kind, bad, field):
    path = write_rows(tmp_path / "d.jsonl", [GOOD[kind], bad, GOOD[kind]])
    with pytest.raises(DataError) as info:
        load_records(path, kind)
    assert (info.value.row, info.value.field) == (2, field)
    assert str(info.value).startswith(f"{path}: row 2: field '{field}': expected ")
    report = validate(path, kind)
    assert (report.n_rows, report.n_invalid) == (3, 1)


def test_default_category_fills_only_missing_categories(tmp_path):
    rows = [{"prompt": "q"}, {"prompt": "r", "category": "own"}, {"prompt": "s", "category": None}]
    out = load(tmp_path, "prompts", rows, default_category="general")
    assert [r["category"] for r in out] == ["general", "own", "general"]
    report = validate(tmp_path / "d.jsonl", "prompts", default_category="general")
    assert report.counts == {"general": 2, "own": 1}


def test_rows_already_in_shape_keep_their_parquet_columns(tmp_path):
    path = tmp_path / "p.parquet"
    Dataset.from_list([{"prompt": "q", "category": "a", "score": 1}]).to_parquet(path)
    data = load_records(path, "prompts")
    assert data.column_names == ["prompt", "category", "score"]


# --------------------------------------------------------------------------- UltraFeedback


def ultrafeedback_row(prompt: str, good: str, bad: str, pid: str) -> dict:
    """One row in HuggingFaceH4/ultrafeedback_binarized's schema."""
    chosen = [user(prompt), assistant(good)]
    return {
        "prompt": prompt,
        "prompt_id": pid,
        "chosen": chosen,
        "rejected": [user(prompt), assistant(bad)],
        "messages": chosen,
        "score_chosen": 8.0,
        "score_rejected": 5.5,
    }


UF_ROWS = [
    ultrafeedback_row("Name a colour.", "Blue.", "Seven.", "p1"),
    ultrafeedback_row("Add 2 and 2.", "4", "5", "p2"),
]


def test_ultrafeedback_rows_as_prefs(tmp_path):
    path = tmp_path / "uf.parquet"
    Dataset.from_list(UF_ROWS).to_parquet(path)
    out = load_records(path, "prefs", default_category="ultrafeedback").to_list()
    assert out[0]["messages"] == [user("Name a colour.")]
    assert (out[0]["chosen"], out[0]["rejected"]) == ("Blue.", "Seven.")
    assert (out[1]["id"], out[1]["score_chosen"], out[1]["category"]) == (
        "p2",
        8.0,
        "ultrafeedback",
    )
    assert "prompt" not in out[0] and "margin" not in out[0]


def test_ultrafeedback_rows_as_prompts_and_sft(tmp_path):
    prompts = load(tmp_path, "prompts", UF_ROWS, default_category="uf")
    assert [(r["id"], r["prompt"]) for r in prompts] == [
        ("p1", "Name a colour."),
        ("p2", "Add 2 and 2."),
    ]
    assert "chosen" not in prompts[0] and "messages" not in prompts[0]
    sft = load(tmp_path, "sft", UF_ROWS, default_category="uf")
    assert sft[1]["messages"] == [user("Add 2 and 2."), assistant("4")]
    assert "prompt" not in sft[1]


# --------------------------------------------------------------------------- HelpSteer2


def helpsteer_row(prompt: str, response: str, helpfulness: int) -> dict:
    """One row in nvidia/HelpSteer2's schema."""
    scores = {"correctness": 3, "coherence": 4, "complexity": 1, "verbosity": 1}
    return {"prompt": prompt, "response": response, "helpfulness": helpfulness, **scores}


HS_ROWS = [
    helpsteer_row("q1", "weak", 1),  # row 1 \ pair: the second is chosen
    helpsteer_row("q1", "strong", 4),  # row 2 /
    helpsteer_row("q2", "same a", 2),  # row 3 \ tie: left out
    helpsteer_row("q2", "same b", 2),  # row 4 /
    helpsteer_row("q3", "alone", 3),  # row 5: no second response, left out
    helpsteer_row("q4", "good", 3),  # row 6 \ pair: the first is chosen
    helpsteer_row("q4", "bad", 0),  # row 7 /
]


def test_helpsteer2_rows_pair_into_prefs(tmp_path):
    path = write_rows(tmp_path / "hs.jsonl", HS_ROWS)
    with pytest.warns(UserWarning, match="2 equal helpfulness, 1 no second response"):
        out = load_records(path, "prefs", default_category="helpsteer2").to_list()
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in out] == [
        ("q1", "strong", "weak"),
        ("q4", "good", "bad"),
    ]
    assert (out[0]["helpfulness_chosen"], out[0]["helpfulness_rejected"]) == (4.0, 1.0)
    assert out[1]["category"] == "helpsteer2"
    report = validate(path, "prefs", default_category="helpsteer2")
    assert (report.n_rows, report.ok) == (2, True)
    assert report.skipped == {"equal helpfulness": 2, "no second response to the same prompt": 1}
    assert "higher helpfulness is chosen" in HELPSTEER2_RULE


def test_helpsteer2_parquet_pairs_like_jsonl(tmp_path):
    path = tmp_path / "hs.parquet"
    Dataset.from_list(HS_ROWS).to_parquet(path)
    with pytest.warns(UserWarning, match="left out"):
        out = load_records(path, "prefs", default_category="hs").to_list()
    assert [(r["chosen"], r["rejected"]) for r in out] == [("strong", "weak"), ("good", "bad")]


def test_helpsteer2_pair_errors_name_the_first_row(tmp_path):
    rows = [helpsteer_row("q1", "a", 1), helpsteer_row("q1", "", 3)]
    path = write_rows(tmp_path / "hs.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_records(path, "prefs", default_category="hs")
    assert (info.value.row, info.value.field) == (1, "chosen")


def test_helpsteer2_pairs_is_pure_and_numbered_by_first_row():
    pairs, skipped = helpsteer2_pairs(enumerate(HS_ROWS, start=1))
    assert [n for n, _ in pairs] == [1, 6]
    assert sum(skipped.values()) + 2 * len(pairs) == len(HS_ROWS)


def test_helpsteer2_rows_as_sft_and_prompts(tmp_path):
    sft = load(tmp_path, "sft", HS_ROWS[:2], default_category="hs")
    assert [(r["prompt"], r["completion"]) for r in sft] == [("q1", "weak"), ("q1", "strong")]
    assert "response" not in sft[0]
    prompts = load(tmp_path, "prompts", HS_ROWS[:2], default_category="hs")
    assert [r["prompt"] for r in prompts] == ["q1", "q1"]


def test_in_memory_converters_match_load_records(tmp_path):
    bad = {**UF_ROWS[0], "rejected": [user("Name a colour."), assistant("")]}
    uf = ultrafeedback_prefs([*UF_ROWS, bad])
    assert [r["chosen"] for r in uf.records] == ["Blue.", "4"]
    assert uf.skipped == {"rejected: expected a non-empty string": 1}
    path = write_rows(tmp_path / "uf.jsonl", UF_ROWS)
    assert load_records(path, "prefs", default_category="ultrafeedback").to_list() == uf.records
    hs = helpsteer2_prefs(HS_ROWS)
    assert [(r["chosen"], r["category"]) for r in hs.records] == [
        ("strong", "helpsteer2"),
        ("good", "helpsteer2"),
    ]
    assert hs.n_skipped == 3


# --------------------------------------------------------------------------- Hub ids


def cache_dataset(cache: Path, repo_id: str, splits: dict[str, list[dict]]) -> None:
    """Put ``splits`` into a datasets cache where ``load_dataset(repo_id)`` finds it offline
    (``<cache>/<org>___<name>/default/0.0.0/<hash>``, as a download leaves it)."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    files = {}
    for split, rows in splits.items():
        files[split] = str(cache.parent / f"{split}.parquet")
        Dataset.from_list(rows).to_parquet(files[split])
    name = repo_id.split("/")[1]
    builder = Parquet(cache_dir=str(cache), dataset_name=name, data_files=files, hash="0" * 16)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)
    dest = cache / repo_id.replace("/", "___") / "default" / built.parts[-2] / built.parts[-1]
    dest.parent.mkdir(parents=True)
    shutil.move(built, dest)
    info = json.loads((dest / "dataset_info.json").read_text())
    (dest / "dataset_info.json").write_text(json.dumps({**info, "config_name": "default"}))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub") / "datasets"
    cache.mkdir()
    cache_dataset(cache, "org/prefs", {"train_prefs": UF_ROWS, "test_prefs": UF_ROWS[:1]})
    cache_dataset(cache, "org/prompts", {"train": [{"prompt": "q"}, {"prompt": "r"}]})
    return cache


def test_hub_id_read_from_the_local_cache(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hub_cache))
    prompts = load_records("org/prompts", "prompts", default_category="c").to_list()
    assert [(r["prompt"], r["category"]) for r in prompts] == [("q", "c"), ("r", "c")]
    prefs = load_records("org/prefs:test_prefs", "prefs", default_category="c").to_list()
    assert [(r["chosen"], r["rejected"]) for r in prefs] == [("Blue.", "Seven.")]


def test_hub_id_with_several_splits_needs_one(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hub_cache))
    with pytest.raises(DataError, match=r"org/prefs:SPLIT, one of \['train_prefs', 'test_prefs'\]"):
        load_records("org/prefs", "prefs")
    with pytest.raises(DataError, match="got 'nope'"):
        load_records("org/prefs:nope", "prefs")


def test_hub_id_not_in_the_cache_is_one_line(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(hub_cache))
    with pytest.raises(DataError) as info:
        load_records("org/absent", "prompts")
    message = str(info.value)
    assert message.startswith("org/absent: expected an existing file or directory, or a dataset")
    assert str(hub_cache) in message and "\n" not in message


def test_missing_data_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match=r"^data/p\.jsonl: expected an existing file or directory$"):
        load_records("data/p.jsonl", "prompts")
