"""Charts, the markdown report of a run directory, and ``align eval gsb`` end to end on the tiny
world (reward judge = the tiny world's rule)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from eval.charts import cjk_font
from eval.gsb import summarize
from eval.mcq import MCQItem, accuracy_summary
from eval.report import gsb_section, mcq_section, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _links(markdown: str) -> list[str]:
    import re

    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def test_gsb_section_writes_json_png_and_links_them_relatively(tmp_path):
    verdicts = ["good"] * 13 + ["same"] * 5 + ["bad"] * 2 + ["good", "bad", "bad", "same"]
    categories = ["合规与风险管理"] * 20 + ["保险"] * 4
    report = summarize(verdicts, categories, n_boot=300, seed=0)
    run = tmp_path / "run"
    section = gsb_section(report, run, extra={"round": 1})
    path = write_report(run, [section], title="PEI round 1")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# PEI round 1\n")
    assert "| 合规与风险管理 | 20 | 13 | 5 | 2 | 65.0 [" in text
    assert _links(text) == ["plots/gsb.png"]
    png = run / "plots" / "gsb.png"
    assert png.read_bytes()[:8] == PNG
    width, height = Image.open(png).size
    assert width > 500 and height > 150
    saved = json.loads((run / "gsb.json").read_text(encoding="utf-8"))
    assert saved["round"] == 1 and saved["per_category"]["保险"]["bad"] == 2
    assert saved["overall"]["rates"]["net_win"] == pytest.approx((14 - 4) / 24)
    if cjk_font() is None:  # the chart could not draw Chinese: aliases explained in the report
        assert "S1 = 合规与风险管理, S2 = 保险" in text
    assert not list(run.glob("**/.*"))  # no temporary files left behind


def test_mcq_section_writes_accuracy_chart_and_tables(tmp_path):
    items = [MCQItem(c, "q", ("a", "b", "c", "d"), "A", k) for k, c in enumerate("xxyyy")]
    gen = accuracy_summary(items, ["A", None, "A", "A", "B"], "generate")
    ll = accuracy_summary(items, ["A", "A", "B", "B", "B"], "loglik")
    section = mcq_section({"generate": gen, "loglik": ll}, tmp_path, extra={"shots": 5})
    # x: 1/2, y: 2/3 → macro (0.5 + 0.6667)/2 = 58.33, micro 3/5 = 60
    assert "| **macro average** | 5 | | **58.33** | |" in section
    assert "| micro average | 5 | | 60.00 | |" in section
    assert "| x | 2 | 1 | 50.00 | 1 |" in section  # one generated answer had no letter
    assert _links(section) == ["plots/mcq.png"]
    assert (tmp_path / "plots" / "mcq.png").read_bytes()[:8] == PNG


# ---------------------------------------------------------------- align eval gsb


def _run_cli(args: list[str]):
    from click.testing import CliRunner

    from align.cli.app import cli

    result = CliRunner().invoke(cli(), ["eval", *args])
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_gsb_cli_identical_policies_are_all_same(tiny_world, tmp_path):
    out = tmp_path / "same"
    _run_cli(["gsb", "--candidate", str(tiny_world.policy), "--baseline", str(tiny_world.policy),
              "--prompts", str(tiny_world.data("eval_prompts")), "--limit", "1",
              "--rewards", "tiny", "--max_new_tokens", "16", "--n_boot", "200",
              "--out", str(out)])  # fmt: skip
    saved = json.loads((out / "gsb.json").read_text(encoding="utf-8"))
    overall = saved["overall"]
    assert (overall["good"], overall["same"], overall["bad"]) == (0, 6, 0)  # 6 domains × 1
    assert len(saved["per_category"]) == 6
    lines = (out / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    assert _links((out / "report.md").read_text(encoding="utf-8")) == ["plots/gsb.png"]


@pytest.mark.slow
def test_gsb_cli_verdicts_match_the_rule_recomputed_per_answer(tiny_world, tmp_path):
    """SFT policy vs an untrained policy of the same shape: every verdict must be what the tiny
    rule says of that pair of answers, and the counts what those verdicts add up to."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from align.tiny.reward import score

    untrained = tmp_path / "untrained"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_world.policy))
    model.save_pretrained(untrained)
    AutoTokenizer.from_pretrained(tiny_world.policy).save_pretrained(untrained)
    out = tmp_path / "run"
    _run_cli(["gsb", "--candidate", str(tiny_world.policy), "--baseline", str(untrained),
              "--prompts", str(tiny_world.data("eval_prompts")), "--limit", "2",
              "--rewards", "tiny", "--max_new_tokens", "16", "--n_boot", "200",
              "--out", str(out)])  # fmt: skip
    records = [json.loads(x) for x in (out / "answers.jsonl").read_text("utf-8").splitlines()]
    references = {}
    for line in tiny_world.data("eval_prompts").read_text("utf-8").splitlines():
        row = json.loads(line)
        references[row.get("prompt") or json.dumps(row.get("messages"), ensure_ascii=False)] = row
    counts = {"good": 0, "same": 0, "bad": 0}
    for r in records:
        key = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"],
                                                                          ensure_ascii=False)
        ref = references[key]["reference"]
        d = score(r["category"], r["candidate"], ref) - score(r["category"], r["baseline"], ref)
        assert r["verdict"] == ("good" if d > 0 else "bad" if d < 0 else "same")
        counts[r["verdict"]] += 1
    overall = json.loads((out / "gsb.json").read_text(encoding="utf-8"))["overall"]
    assert {k: overall[k] for k in counts} == counts
    assert counts["good"] > counts["bad"]  # the SFT policy beats an untrained one
