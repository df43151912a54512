"""Judges: the reward judge (hand-checked verdicts), and the LLM judge against a real
OpenAI-compatible chat server on 127.0.0.1 (a FastAPI app started by a fixture, whose replies
are scripted per question: a fair judge, a position-biased one, unparsable replies, a transient
500)."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request  # module level: the route's annotations must resolve
from fastapi.responses import JSONResponse

from eval.judges import RewardJudge, verdicts_from_scores
from eval.llm_judge import LLMJudge, LLMJudgeError, parse_judgement, retry_after
from rm.functions import WeightedReward

# ---------------------------------------------------------------- reward judge


def length_reward(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def test_reward_judge_verdicts_with_margin_by_hand():
    judge = RewardJudge(length_reward, margin=1.0)
    # len differences a - b: 3-1 = +2 (good), 2-1 = +1 (within margin: same), 1-4 = -3 (bad)
    got = judge.judge(["p"] * 3, ["aaa", "aa", "a"], ["b", "b", "bbbb"], ["x", "y", "x"])
    assert got == ["good", "same", "bad"]
    assert RewardJudge(length_reward).judge(["p"], ["ab"], ["cd"], ["x"]) == ["same"]


def test_reward_judge_passes_columns_and_leaves_dropped_samples_unjudged():
    seen = {}

    def picky(prompts, completions, category, reference, **_):
        seen.update(category=list(category), reference=list(reference))
        return [None if c == "?" else float(c == r) for c, r in zip(completions, reference)]

    judge = RewardJudge([WeightedReward("picky", picky, 1.0, on_invalid="drop")])
    got = judge.judge(["p1", "p2", "p3"], ["42", "?", "x"], ["41", "42", "42"], ["a", "b", "c"],
                      reference=["42", "42", "42"])  # fmt: skip
    assert got == ["good", None, "bad"]
    # candidate and baseline answers were scored in one call, columns repeated for both halves
    assert seen["category"] == ["a", "b", "c", "a", "b", "c"]
    assert seen["reference"] == ["42"] * 6


def test_reward_judge_from_ppo_config_entries():
    judge = RewardJudge.from_config([
        {"type": "python", "fn": "align.tiny.reward:tiny_world_reward", "weight": 2.0},
        {"type": "rule", "rule": "length", "max_chars": 5, "coef": 1.0, "name": "len"},
    ])  # fmt: skip
    ref = "市盈率是指股票价格与每股收益的比率。"
    a, b, _ = judge.scores(["什么是市盈率？"] * 2, [ref, "不知道"], ["不知道", "不知道"],
                           ["金融百科"] * 2, reference=[ref, ref])  # fmt: skip
    from align.tiny.reward import score

    # hand: 2·tiny_score - 1·(len - 5)
    assert a.tolist() == pytest.approx([2 * score("金融百科", ref, ref) - (len(ref) - 5),
                                        2 * score("金融百科", "不知道", ref)])  # fmt: skip
    assert b.tolist() == pytest.approx([2 * score("金融百科", "不知道", ref)] * 2)


def test_verdicts_from_scores_boundaries():
    import torch

    a, b = torch.tensor([1.5, 1.0, 0.5, 0.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert verdicts_from_scores(a, b, 0.5) == ["same", "same", "same", "same"]  # |d| <= margin
    assert verdicts_from_scores(a, b, 0.0) == ["good", "same", "bad", "same"]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "reply, label",
    [
        ("理由……因此助手A更好。\n[[A]]", "A"),
        ("[[B]]", "B"),
        ("两者都准确。[[C]]", "tie"),
        ("起初我认为[[A]]，但复核后[[B]]", "B"),  # the last bracketed verdict wins
        ("[[ 平局 ]]", "tie"),
        ("最终结论：B", "B"),
        ("综合来看，助手B的回答更好。", "B"),
        ("两者相当，不分伯仲。", "tie"),
        ("助手A的回答更好，但助手B的回答更好地提示了风险", None),  # points both ways
        ("我无法判断。", None),
        ("<think>也许[[A]]？再想想。</think>最终：[[B]]", "B"),  # reasoning is ignored
        ("", None),
    ],
)
def test_parse_judgement(reply, label):
    assert parse_judgement(reply) == label


# ---------------------------------------------------------------- a real chat server

KEY = "sk-test-0123"
GOOD, BASE = "候选回答：市盈率是股价与每股收益之比。", "基线回答：不知道。"


def _answers(content: str) -> tuple[str, str]:
    a = re.search(r"\[助手A的回答开始\]\n(.*?)\n\[助手A的回答结束\]", content, re.S).group(1)
    b = re.search(r"\[助手B的回答开始\]\n(.*?)\n\[助手B的回答结束\]", content, re.S).group(1)
    return a, b


def _script(question: str, cand_first: bool, hits: int) -> tuple[int, str]:
    """(status, reply text) of the hits-th request (1-based) about ``question`` in one order."""
    prefers_candidate = "[[A]]" if cand_first else "[[B]]"
    if question == "q-fair":  # always prefers the candidate, wherever it stands
        return 200, f"候选回答更准确。{prefers_candidate}"
    if question == "q-worse":  # prefers the baseline, in free text
        return 200, "助手B的回答更好。" if cand_first else "助手A的回答更好。"
    if question == "q-bias":  # always the first position: cancels out to "same"
        return 200, "第一个回答更好。[[A]]"
    if question == "q-garbage":  # never readable
        return 200, "嗯……这个很难说。"
    if question == "q-once":  # unreadable at first, readable when asked again
        return 200, "让我想想" if hits == 1 else prefers_candidate
    if question == "q-500":  # a transient server error first
        return (500, "overloaded") if hits == 1 else (200, prefers_candidate)
    if question == "q-429":  # rate-limited first, told to wait 1 s (Retry-After)
        return (429, "slow down") if hits == 1 else (200, prefers_candidate)
    raise AssertionError(question)


@pytest.fixture(scope="module")
def chat_server():
    app = FastAPI()
    log: list[dict] = []
    hits: dict[str, int] = {}
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    async def complete(request: Request):
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        content = body["messages"][0]["content"]
        question = re.search(r"\[用户问题\]\n(?:用户：)?(.*?)\n", content).group(1)
        cand_first = _answers(content)[0].startswith("候选")
        key = (question, cand_first)
        with lock:  # counted per question and order: the two orders are asked concurrently
            hits[key] = hits.get(key, 0) + 1
            log.append({"question": question, "body": body})
            status, text = _script(question, cand_first, hits[key])
        if status != 200:
            headers = {"Retry-After": "1"} if status == 429 else None
            return JSONResponse({"error": {"message": text}}, status_code=status, headers=headers)
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}  # fmt: skip

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "chat server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}/v1", "log": log, "hits": hits}
    server.should_exit = True
    thread.join(timeout=10)


def test_llm_judge_against_a_real_server(chat_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = LLMJudge(chat_server["url"], "judge-model", api_key_env="JUDGE_KEY",
                     backoff=0.05, parse_retries=1, max_workers=4)  # fmt: skip
    questions = ["q-fair", "q-worse", "q-bias", "q-garbage", "q-once", "q-500"]
    verdicts = judge.judge(questions, [GOOD] * 6, [BASE] * 6, ["金融百科"] * 6)
    assert verdicts == ["good", "bad", "same", None, "good", "good"]
    hits = chat_server["hits"]
    for order in (True, False):  # candidate first, then second
        assert hits["q-fair", order] == 1 and hits["q-bias", order] == 1
        assert hits["q-garbage", order] == 2  # asked, then re-asked once
        assert hits["q-once", order] == 2  # unreadable, then readable when asked again
        assert hits["q-500", order] == 2  # a 500, then retried
    s = judge.stats
    # unreadable: 2 orders × 2 (q-garbage) + 2 (q-once); retried 500s: one per order
    assert (s.unparsable_replies, s.unjudged, s.http_retries) == (6, 1, 2)
    assert s.both_orders == 5 and s.position_consistent == 4  # q-bias disagrees with itself
    # the request: the model, a Chinese judging prompt with the category, candidate in A or B
    bodies = [e["body"] for e in chat_server["log"] if e["question"] == "q-fair"]
    assert all(b["model"] == "judge-model" and b["temperature"] == 0.0 for b in bodies)
    contents = [b["messages"][0]["content"] for b in bodies]
    assert all("请你作为一名公正的评审" in c and "问题所属领域：金融百科" in c for c in contents)
    assert sorted(_answers(c)[0] for c in contents) == sorted([GOOD, BASE])


def test_llm_judge_conversations_are_shown_turn_by_turn(chat_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    judge = LLMJudge(chat_server["url"], "m", api_key_env="JUDGE_KEY", max_workers=1)
    convo = [{"role": "user", "content": "q-fair"}, {"role": "assistant", "content": "您好"},
             {"role": "user", "content": "再问一次"}]  # fmt: skip
    before = len(chat_server["log"])
    assert judge.judge([convo], [GOOD], [BASE], ["客服对话"]) == ["good"]
    content = chat_server["log"][before]["body"]["messages"][0]["content"]
    assert "[用户问题]\n用户：q-fair\n助手：您好\n用户：再问一次\n" in content


def test_llm_judge_wrong_key_fails_at_once_and_missing_env_is_named(chat_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-wrong")
    judge = LLMJudge(chat_server["url"], "m", api_key_env="JUDGE_KEY", retries=3, backoff=5)
    started = time.monotonic()
    with pytest.raises(LLMJudgeError, match="rejected the request: 401"):
        judge.judge(["q-fair"], [GOOD], [BASE], ["x"])
    assert time.monotonic() - started < 4  # 4xx is not retried (a retry would sleep 5 s)
    monkeypatch.delenv("JUDGE_KEY")
    with pytest.raises(ValueError, match="environment variable JUDGE_KEY is not set"):
        LLMJudge(chat_server["url"], "m", api_key_env="JUDGE_KEY")


def test_llm_judge_waits_what_retry_after_asks(chat_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", KEY)
    # backoff 0: without Retry-After the retry would come at once
    judge = LLMJudge(chat_server["url"], "m", api_key_env="JUDGE_KEY", backoff=0, max_workers=2)
    started = time.monotonic()
    assert judge.judge(["q-429"], [GOOD], [BASE], ["x"]) == ["good"]
    assert time.monotonic() - started >= 1.0
    assert judge.stats.http_retries == 2  # one 429 per order, each retried once


@pytest.mark.parametrize(
    "headers, wait",
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # the finer one wins
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),  # a date, 10 s after "now"
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),  # a date in the past
        ({"Retry-After": "100000"}, 300.0),  # capped
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_dates_and_milliseconds(headers, wait):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after(headers, now=now) == (None if wait is None else pytest.approx(wait))


def test_llm_judge_gives_up_on_a_dead_server_naming_it():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    judge = LLMJudge(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, retries=1, backoff=0)
    with pytest.raises(LLMJudgeError, match=f"127.0.0.1:{port}.*failed after 2 attempts"):
        judge.judge(["q"], ["a"], ["b"], ["x"])
