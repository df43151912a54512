"""Trackers (``report_to``) on every long command, read back from what they wrote: tensorboard
event files (tensorboard's own reader), wandb's offline run files (``WANDB_MODE=offline``; its
``.wandb`` record log parsed here, independently of wandb's writer) and trackio's local SQLite
database (when trackio is installed). Tiny step counts: the whole file takes seconds."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.core.data import load_records, messages_of, write_jsonl
from align.core.tracking import Tracker, check_report_to, samples_markdown

# ------------------------------------------------------------------ readers


def tensorboard_events(logdir: Path):
    """Tensorboard's own reader over every event file under ``logdir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_scalars(acc, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def tb_texts(acc, tag: str) -> dict[int, str]:
    """``add_text`` summaries of ``tag``: step → markdown."""
    return {
        e.step: e.tensor_proto.string_val[0].decode("utf-8")
        for e in acc.Tensors(f"{tag}/text_summary")
    }


def wandb_records(run_dir: Path) -> list:
    """The records of an offline wandb run: its ``run-*.wandb`` file is a LevelDB-style log
    (7-byte file header, 32 KiB blocks, records of crc32 / length / type + payload, FIRST /
    MIDDLE / LAST fragments) of ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto.wandb_internal_pb2 import Record

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, chunk, records, block = 7, b"", [], 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            records.append(Record.FromString(chunk))
            chunk = b""
    return records


def wandb_run(out: Path, name: str | None = None, wait: float = 30.0) -> tuple[dict, dict]:
    """``({name, project}, {step: {key: value}})`` of the offline run under ``out/wandb`` (the
    one there, or the one called ``name``). wandb reads ``WANDB_DIR`` once per process, so runs
    that transformers starts in a test process that used wandb before land in that process's
    wandb folder: it is searched too. wandb's service process writes the run's log on its own
    time (seen: still without its run record right after ``finish`` in a busy suite), so the
    log is read again until it holds the run record, for at most ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        info, history = _wandb_run_once(out, name)
        if info or time.monotonic() > deadline:
            return info, history
        time.sleep(0.5)


def _wandb_run_once(out: Path, name: str | None) -> tuple[dict, dict[int, dict]]:
    import wandb

    folders = [out / "wandb", Path(wandb.setup().settings.wandb_dir)]
    runs = []
    for run_dir in sorted({d for f in folders for d in f.glob("offline-run-*")}):
        info, history = {}, {}
        for r in wandb_records(run_dir):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                info = {"name": r.run.display_name, "project": r.run.project}
            elif kind == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in r.history.item
                }
                history.setdefault(r.history.step.num, {}).update(items)
        if name is None and run_dir.parent == out / "wandb" or info.get("name") == name:
            runs.append((info, history))
    assert len(runs) == 1, (out, name, [i for i, _ in runs])
    return runs[0]


def wandb_table(out: Path, name: str = "samples") -> list[dict]:
    """The last table ``name`` a wandb offline run wrote, as row dicts."""
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    path = sorted((run_dir / "files" / "media" / "table").glob(f"{name}_*.table.json"))[-1]
    table = json.loads(path.read_text(encoding="utf-8"))
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def metrics_lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path_factory):
    """wandb without a network; the env transformers' callbacks read restored afterwards.
    ``WANDB_DIR``: a folder of the session (not the working directory) for the runs wandb
    places by the directory it read first in this process."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    process_dir = tmp_path_factory.getbasetemp() / "wandb-process"
    process_dir.mkdir(exist_ok=True)
    monkeypatch.setenv("WANDB_DIR", str(process_dir))
    for name in ("WANDB_PROJECT", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------ the tracker itself

ROWS = [
    {"prompt": "利率|是多少？", "answer": "3%\n下一行", "score": 0.5},
    {"prompt": "b", "answer": "c", "score": float("nan")},
]


def test_markdown_table_escapes_pipes_and_newlines():
    assert samples_markdown(ROWS).splitlines() == [
        "| prompt | answer | score |",
        "|---|---|---|",
        "| 利率\\|是多少？ | 3%<br>下一行 | 0.5 |",
        "| b | c | nan |",
    ]


def test_tensorboard_and_wandb_read_back(tmp_path, offline_wandb):
    out = tmp_path / "my-run"
    tracker = Tracker.start(["tensorboard", "wandb"], out, "proj", None, {"lr": 0.1, "x": [1]})
    tracker.log({"step": 1, "loss": 2.0, "flag": True, "name": "text is skipped"}, step=1)
    tracker.log({"loss": 1.5}, step=3)
    tracker.log_samples(ROWS, step=3)
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    tracker.log_samples([{"prompt": chat, "answer": "a"}], step=3, name="chat")
    tracker.finish()

    acc = tensorboard_events(out / "tensorboard")
    assert tb_texts(acc, "chat")[3].splitlines()[2] == "| system: s<br>user: q | a |"
    assert tb_scalars(acc, "loss") == {1: 2.0, 3: 1.5}
    assert tb_scalars(acc, "flag") == {1: 1.0}
    assert "step" not in acc.Tags()["scalars"] and "name" not in acc.Tags()["scalars"]
    assert tb_texts(acc, "samples") == {3: samples_markdown(ROWS)}
    assert "| lr | 0.1 |" in tb_texts(acc, "config")[0]

    info, history = wandb_run(out)
    assert info == {"name": "my-run", "project": "proj"}  # default name: the output directory's
    assert history[1]["loss"] == 2.0 and history[3]["loss"] == 1.5
    assert history[3]["samples/nrows"] == 2
    table = wandb_table(out)
    assert [r["prompt"] for r in table] == ["利率|是多少？", "b"]
    assert table[0]["answer"] == "3%\n下一行" and table[0]["score"] == 0.5


def test_trackio_read_back(tmp_path):
    import importlib.util

    if importlib.util.find_spec("trackio") is None:  # not in the test extra: it pins pillow < 13
        pytest.skip("trackio is not installed here")
    # a process of its own: trackio reads TRACKIO_DIR once, when it is imported
    script = (
        "from align.core.tracking import Tracker\n"
        f"t = Tracker.start(['trackio'], {str(tmp_path)!r}, 'proj', 'named', {{'lr': 0.1}})\n"
        "t.log({'loss': 2.0}, step=1)\n"
        f"t.log_samples({ROWS[:1]!r}, step=1)\n"
        "t.finish()\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    (db,) = (tmp_path / "trackio").glob("proj*.db")
    with sqlite3.connect(db) as con:
        rows = con.execute("select run_name, step, metrics from metrics order by id").fetchall()
    logged = [(name, step, json.loads(m)) for name, step, m in rows]
    assert logged[0] == ("named", 1, {"loss": 2.0})
    assert logged[1][:2] == ("named", 1)
    assert logged[1][2]["samples"]["_value"] == ROWS[:1]


def test_unknown_tracker_is_one_line_naming_the_field():
    with pytest.raises(ValueError, match=r"^report_to: expected some of tensorboard, wandb, "):
        check_report_to(["mlflow"])
    assert check_report_to("none") == [] and check_report_to(None) == []
    assert check_report_to(["mlflow"], others=True) == ["mlflow"]  # transformers' own trackers


def test_a_missing_tracker_package_exits_2_before_any_model_loads(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    from align.cli.app import main

    never = str(tmp_path / "never")
    for args in (["ppo", "--report_to", "trackio", "--output_dir", never],
                 ["pei", "--ppo.report_to", "trackio", "--output_dir", never],
                 ["eval", "gsb", "--candidate", "x", "--report_to", "trackio", "--out", never],
                 ["filter", "--report_to", "trackio", "--out", f"{never}/kept.jsonl"]):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            main(args)
        said = capsys.readouterr()
        assert stopped.value.code == 2, (args, said)
        lines = (said.out + said.err).strip().splitlines()
        assert len(lines) == 1, lines
        assert "report_to: trackio needs the trackio package" in lines[0]
        assert lines[0].endswith("pip install trackio")
        assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------ commands


def test_ppo_reports_metrics_and_sample_answers(tiny_world, tmp_path, offline_wandb):
    from align.ppo.config import PPOConfig
    from align.ppo.run import build_trainer
    from rm.spec import tiny_reward

    out = tmp_path / "ppo-run"
    cfg = PPOConfig(
        policy=str(tiny_world.policy), critic=str(tiny_world.reward), rewards=tiny_reward(),
        prompts=str(tiny_world.data("prompts")), eval_prompts=str(tiny_world.data("eval_prompts")),
        output_dir=str(out), rollout_batch_size=4, samples_per_prompt=2, max_new_tokens=8,
        total_steps=1, num_minibatches=1, micro_batch_size=8, eval_max_prompts=3, save_every=0,
        report_to=["tensorboard", "wandb"], project="align-test",
    )  # fmt: skip
    build_trainer(cfg).train()
    lines = {r["step"]: r for r in metrics_lines(out)}
    acc = tensorboard_events(out / "tensorboard")
    for tag in ("eval/score", "objective/kl", "loss/policy_avg"):
        expected = {s: r[tag] for s, r in lines.items() if tag in r}
        assert expected and tb_scalars(acc, tag) == pytest.approx(expected, rel=1e-6), tag
    texts = tb_texts(acc, "samples")
    assert set(texts) == {0, 1}  # the evaluation at the start and at the end
    assert texts[1].startswith("| prompt | answer | score |") and len(texts[1].splitlines()) == 5

    info, history = wandb_run(out)
    assert info == {"name": "ppo-run", "project": "align-test"}
    assert history[1]["eval/score"] == pytest.approx(lines[1]["eval/score"], rel=1e-6)
    table = wandb_table(out)
    assert len(table) == 3 and set(table[0]) == {"prompt", "answer", "score"}
    kept_mean = [r["score"] for r in table if r["score"] == r["score"]]
    assert sum(kept_mean) / len(kept_mean) == pytest.approx(lines[1]["eval/score"], rel=1e-5)


def test_pretrain_reports_its_metrics(tiny_world, tmp_path):
    from align.pretrain.run import PretrainConfig, run, tiny_documents

    write_jsonl(tiny_documents(tiny_world, seed=0)[:24], tmp_path / "docs.jsonl")
    out = tmp_path / "pretrain"
    cfg = PretrainConfig(
        model=str(tiny_world.policy), docs=str(tmp_path / "docs.jsonl"), output_dir=str(out),
        buckets=[64, 128], tokens_per_step=256, stage_documents=12, logging_steps=1,
        save_every=0, report_to=["tensorboard"],
    )  # fmt: skip
    run(cfg)
    acc = tensorboard_events(out / "tensorboard")
    lines = metrics_lines(out)
    for tag in ("loss", "eval_loss/all"):
        expected = {r["step"]: r[tag] for r in lines if tag in r}
        assert expected and tb_scalars(acc, tag) == pytest.approx(expected, rel=1e-6), tag


def _sft_rows(world, n: int) -> list[dict]:
    return [
        {"messages": [*messages_of(r), {"role": "assistant", "content": r["chosen"]}],
         "category": r["category"]}
        for r in load_records(world.data("prefs"), "prefs").to_list()[:n]
    ]  # fmt: skip


def test_sft_passes_run_name_and_project_to_transformers(tiny_world, tmp_path, offline_wandb):
    from align.sft.run import SFTRecipeConfig, run

    write_jsonl(_sft_rows(tiny_world, 40), tmp_path / "train.jsonl")
    out = tmp_path / "sft-run"
    cfg = SFTRecipeConfig(
        model=str(tiny_world.policy), train_data=[str(tmp_path / "train.jsonl")],
        output_dir=str(out), max_length=128, epoch_size=16, num_train_epochs=1,
        per_device_train_batch_size=8, logging_steps=1, save_strategy="no", eval_share=0.2,
        report_to=["tensorboard", "wandb"], project="align-sft", use_cpu=True,
    )  # fmt: skip
    run(cfg)
    acc = tensorboard_events(out / "tensorboard")
    assert tb_scalars(acc, "train/loss")  # transformers' callback, in our directory
    info, history = wandb_run(out, "sft-run")
    assert info == {"name": "sft-run", "project": "align-sft"}
    losses = [h["train/loss"] for h in history.values() if "train/loss" in h]
    assert losses == pytest.approx(list(tb_scalars(acc, "train/loss").values()), rel=1e-6)


def test_rm_train_names_each_stage(tiny_world, tmp_path, offline_wandb):
    from align.ufrm.run import run
    from rm.ufrm import UFRMConfig

    prefs = load_records(tiny_world.data("prefs"), "prefs").to_list()[:16]
    write_jsonl(prefs, tmp_path / "prefs.jsonl")
    out = tmp_path / "rm-run"
    cfg = UFRMConfig(
        model=str(tiny_world.reward), train_data=str(tmp_path / "prefs.jsonl"),
        stage2_data=str(tmp_path / "prefs.jsonl"), output_dir=str(out), max_length=96,
        per_device_train_batch_size=8, num_train_epochs=1, logging_steps=1,
        report_to=["tensorboard", "wandb"], project="align-rm", use_cpu=True,
    )  # fmt: skip
    summary = run(cfg)
    for stage in (1, 2):  # a tensorboard folder and a wandb run per stage
        logged = [h["loss"] for h in summary["stages"][stage - 1]["log_history"] if "loss" in h]
        acc = tensorboard_events(out / f"stage{stage}" / "tensorboard")
        assert list(tb_scalars(acc, "train/loss").values()) == pytest.approx(logged, rel=1e-6)
        info, history = wandb_run(out, f"rm-run/stage{stage}")
        assert info == {"name": f"rm-run/stage{stage}", "project": "align-rm"}
        losses = [h["train/loss"] for h in history.values() if "train/loss" in h]
        assert losses == pytest.approx(logged, rel=1e-6)


def test_filter_gsb_and_mcq_report_their_results(tiny_world, tmp_path):
    from align.filter.run import FilterConfig, run_filter
    from eval.gsb_run import GSBConfig, run_gsb
    from rm.spec import tiny_rule

    prompts = load_records(tiny_world.data("eval_prompts"), "prompts").to_list()[:4]
    write_jsonl(prompts, tmp_path / "prompts.jsonl")
    kept = tmp_path / "kept.jsonl"
    result = run_filter(FilterConfig(
        prompts=str(tmp_path / "prompts.jsonl"), policy=str(tiny_world.policy), out=str(kept),
        rewards=tiny_rule(), n=2, max_new_tokens=6, batch_size=4, use_cache=False,
        report_to=["tensorboard"],
    ))  # fmt: skip
    acc = tensorboard_events(result.report_dir / "tensorboard")
    assert tb_scalars(acc, "kept") == {0: len(result.kept)}
    assert tb_scalars(acc, "prompts") == {0: 4}
    table = tb_texts(acc, "samples")[0].splitlines()
    assert table[0] == "| prompt | category | answer | scores | mean | std | kept |"
    assert len(table) == 2 + 4

    gsb = run_gsb(GSBConfig(
        candidate=str(tiny_world.policy), baseline=str(tiny_world.policy),
        prompts=str(tmp_path / "prompts.jsonl"), rewards=tiny_rule(), max_new_tokens=6,
        n_boot=10, out=str(tmp_path / "gsb"), report_to=["tensorboard"],
    ))  # fmt: skip
    acc = tensorboard_events(tmp_path / "gsb" / "tensorboard")
    overall = gsb.report.overall
    for rate, value in overall.rates.items():
        assert tb_scalars(acc, f"gsb/{overall.category}/{rate}") == {0: pytest.approx(value)}
    table = tb_texts(acc, "samples")[0].splitlines()
    assert table[0] == "| prompt | category | candidate | baseline | verdict |"
    assert len(table) == 2 + 4
    assert all(line.endswith("| same |") for line in table[2:])  # the same greedy policy


def test_mcq_reports_accuracy_and_answers(tiny_world, tmp_path):
    import csv

    from click.testing import CliRunner

    from align.cli.app import cli

    (tmp_path / "bench" / "test").mkdir(parents=True)
    with (tmp_path / "bench" / "test" / "经济师.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
        w.writerow([0, "下列哪项属于货币政策工具？", "税收", "准备金率", "补贴", "国债", "B"])
        w.writerow([1, "利率上升时债券价格？", "上升", "下降", "不变", "不确定", "B"])
    out = tmp_path / "mcq"
    args = ["eval", "mcq", "--data", str(tmp_path / "bench"), "--policy", str(tiny_world.policy),
            "--max_new_tokens", "4", "--out", str(out), "--report_to", "tensorboard"]  # fmt: skip
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "mcq.json").read_text(encoding="utf-8"))["results"]["generate"]
    acc = tensorboard_events(out / "tensorboard")
    assert tb_scalars(acc, "mcq/generate/micro") == {0: pytest.approx(data["micro"])}
    assert tb_scalars(acc, "mcq/generate/经济师") == {0: pytest.approx(data["micro"])}
    table = tb_texts(acc, "samples/generate")[0].splitlines()
    assert table[0].startswith("| category | row | answer | prediction |")
    assert len(table) == 2 + 2
