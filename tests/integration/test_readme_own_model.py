"""README "Your own model, end to end": the chain of commands runs exactly as written.

The commands are read from the README section (as ``test_readme_commands`` reads every README
command: continuations joined, comments dropped) and run one after the other, in this process,
in an empty folder: a tiny random Qwen2 and the tiny world's data files, a reward model, the
filter, PPO, a GSB comparison and the export. Each must exit 0; the export must then load with
transformers alone and give the logits of the PPO run's last actor.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.integration.test_export import run_align
from tests.integration.test_readme_commands import MARKDOWN, block_commands, fenced_blocks

SECTION = "## Your own model, end to end"


def section_commands() -> list:
    """The ``align`` command lines of the README section's code block, in order."""
    start = MARKDOWN.index(SECTION)
    end = MARKDOWN.find("\n## ", start + len(SECTION))
    before = MARKDOWN.count("\n", 0, start)  # README lines above the section
    found = []
    for first, lines in fenced_blocks(MARKDOWN[start:end]):
        commands = block_commands(before + first, lines)
        found += [c for c in commands if c.text.startswith("align ")]
    return found


CHAIN = section_commands()


def test_the_section_is_the_whole_chain():
    """Preference data → rm train → filter → ppo (or pei) → eval gsb → export, in this order,
    each on the paths the one before wrote."""
    steps = [" ".join(c.words[1:3]) for c in CHAIN]
    wanted = ["tiny model", "tiny data", "rm train", "filter --policy", "ppo --policy",
              "eval gsb", "export runs/own/ppo"]  # fmt: skip
    assert steps == wanted, steps


@pytest.mark.slow
def test_the_chain_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command in CHAIN:
        code, _, err = run_align(command.words[1:])
        assert code == 0, f"README.md:{command.lineno}: {command.text}\nexit {code}\n{err[-3000:]}"
    kept = (tmp_path / "runs/own/kept.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(kept) == 12
    gsb = json.loads((tmp_path / "runs/own/gsb/gsb.json").read_text(encoding="utf-8"))
    assert gsb  # the comparison's numbers are written

    exported, actor = tmp_path / "models/qwen2-tiny-ppo", tmp_path / "runs/own/ppo/checkpoints"
    tokenizer = AutoTokenizer.from_pretrained(exported)
    ids = tokenizer("什么是市盈率？", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(exported)(ids).logits
        want = AutoModelForCausalLM.from_pretrained(actor / "step-2" / "actor")(ids).logits
    assert torch.equal(got, want)


def test_the_stand_ins_refuse_an_occupied_folder_unless_forced(tmp_path):
    args = ["tiny", "data", "--out", str(tmp_path), "--eval_per_category", "1"]
    (tmp_path / "mine.txt").write_text("mine")
    code, _, err = run_align(args)
    assert code == 2 and "pass --force" in err and not (tmp_path / "prefs.jsonl").exists()
    code, _, err = run_align([*args, "--force"])
    assert code == 0, err
    assert len((tmp_path / "eval_prompts.jsonl").read_text().splitlines()) == 6  # 1 a category
    assert (tmp_path / "mine.txt").is_file()  # only the data files are written
    code, _, err = run_align(["tiny", "model", "--architecture", "bert", "--out", str(tmp_path)])
    assert code == 2 and "--architecture: expected one of llama" in err
