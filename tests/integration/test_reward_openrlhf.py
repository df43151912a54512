"""OpenRLHF's remote reward protocol, both ways, against real servers on 127.0.0.1.

- ``align rm serve`` answers OpenRLHF's ``POST /get_reward`` (``{query, prompts, labels}`` →
  ``{rewards, scores, extra_logs}``) with the score ``/score`` gives the same conversation.
- align's ``http`` reward source with ``protocol: openrlhf`` calls a server written the way
  OpenRLHF's examples write one (a reward function of ``queries, prompts, labels``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from align.core.chat_formats import get_chat_format
from rm.functions import LocalRewardModel, rewards_from_config, score_rewards
from rm.remote import RemoteRewardError, RemoteRewardModel
from tests.helpers import TOKEN, raw_post

PROMPTS = ["什么是市盈率？", "什么是国债？", [{"role": "user", "content": "你好"}]]
COMPLETIONS = ["市盈率是股价与每股收益之比。", "不知道", "您好"]


def openrlhf_body(queries: list[str], prompts: list[str], labels: list) -> bytes:
    """The body OpenRLHF's ``remote_rm_fn`` posts (its ``request_api_wrapper``)."""
    return json.dumps({"query": queries, "prompts": prompts, "labels": labels}).encode()


def test_get_reward_scores_the_rendered_query_as_score_scores_the_conversation(server, tiny_world):
    local = LocalRewardModel.from_pretrained(tiny_world.reward)
    expected = local(PROMPTS, COMPLETIONS)
    assert len(set(expected)) == len(expected)  # distinct, so a permutation would be caught
    fmt, tok = get_chat_format("hf"), local.tokenizer
    queries = [fmt.render(c, tokenizer=tok) for c in local_conversations()]
    prompts = [q[: q.rindex(a)] for q, a in zip(queries, COMPLETIONS, strict=True)]
    status, answer = raw_post(server + "/get_reward", openrlhf_body(queries, prompts, [None] * 3))
    assert status == 200
    assert answer["rewards"] == pytest.approx(expected, abs=1e-5)
    assert answer["scores"] == answer["rewards"] and answer["extra_logs"] == {}
    # align's client in the OpenRLHF protocol renders the same queries from the raw records
    client = RemoteRewardModel(
        server + "/get_reward", token=TOKEN, protocol="openrlhf", chat_format="hf",
        tokenizer=str(tiny_world.reward), batch_size=2,
    )  # fmt: skip
    assert client(PROMPTS, COMPLETIONS) == pytest.approx(expected, abs=1e-5)


def local_conversations() -> list[list[dict]]:
    out = []
    for p, c in zip(PROMPTS, COMPLETIONS, strict=True):
        head = [{"role": "user", "content": p}] if isinstance(p, str) else p
        out.append(head + [{"role": "assistant", "content": c}])
    return out


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"query": "one"}', "'query' must be a list of strings"),
        (b'{"query": ["a", 3]}', "'query' must be a list of strings"),
        (b'{"query": ["a", "b"], "labels": ["x"]}', "'labels' must be a list of 2 values"),
        (b'{"query": ["a"], "prompts": "a"}', "'prompts' must be a list of 1 values"),
    ],
)
def test_get_reward_refuses_malformed_bodies_with_the_reason(server, body, reason):
    status, answer = raw_post(server + "/get_reward", body)
    assert status == 400 and reason in answer["error"]
    assert raw_post(server + "/get_reward", body, token=None)[0] == 401


class _OpenRLHFStyle(BaseHTTPRequestHandler):
    """A reward server as OpenRLHF's examples write one: reward 1 when the label appears in the
    response (the query with its prompt removed), else 0, plus 0.01 per character of the
    response; answers ``{rewards, scores, extra_logs}``. Records the bodies it got."""

    bodies: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        rewards = []
        for query, prompt, label in zip(body["query"], body["prompts"], body["labels"]):
            response = query.replace(prompt, "", 1)
            rewards.append(float(bool(label) and label in response) + 0.01 * len(response))
        data = json.dumps({"rewards": rewards, "scores": rewards, "extra_logs": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def openrlhf_server():
    handler = type("Handler", (_OpenRLHFStyle,), {"bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/get_reward"
    httpd.shutdown()
    httpd.server_close()


def test_an_openrlhf_reward_server_plugs_into_align_as_an_http_source(openrlhf_server):
    handler, url = openrlhf_server
    spec = {"type": "http", "url": url, "protocol": "openrlhf", "label_column": "answer",
            "batch_size": 2, "name": "remote"}  # fmt: skip
    (reward,) = rewards_from_config([spec])
    prompts, answers = ["1+1=", "2+2=", "3+3="], ["2", "5", "6!"]
    got = score_rewards([reward], prompts, answers, {"answer": ["2", "4", "6"]})
    # label found: 1 + 0.01·len; not found: 0.01·len (hand-computed)
    assert got.total.tolist() == pytest.approx([1.01, 0.01, 1.02], abs=1e-6)
    assert [len(b["query"]) for b in handler.bodies] == [2, 1]  # batch_size 2
    assert handler.bodies[0] == {
        "query": ["1+1=2", "2+2=5"], "prompts": ["1+1=", "2+2="], "labels": ["2", "4"],
    }  # fmt: skip


def test_openrlhf_queries_in_a_chat_format_and_without_labels(openrlhf_server):
    handler, url = openrlhf_server
    client = RemoteRewardModel(url, protocol="openrlhf", chat_format="xuanyuan-6b")
    assert client(["q?"], ["a"]) == pytest.approx([0.01 * len(" a</s>")], abs=1e-6)
    body = handler.bodies[0]
    assert body["prompts"] == [" Human: q? Assistant:"]  # docs/methods.md §7's XuanYuan-6B format
    assert body["query"] == [" Human: q? Assistant: a</s>"] and body["labels"] == [None]


def test_openrlhf_protocol_mistakes_are_one_line_errors(openrlhf_server):
    _, url = openrlhf_server
    with pytest.raises(ValueError, match="columns go with protocol align"):
        RemoteRewardModel(url, protocol="openrlhf", columns=["category"])
    with pytest.raises(ValueError, match="label_column go with protocol openrlhf"):
        RemoteRewardModel(url, label_column="answer")
    with pytest.raises(ValueError, match="protocol: expected one of"):
        RemoteRewardModel(url, protocol="grpc")
    with pytest.raises(ValueError, match="chat_format hf: set tokenizer"):
        RemoteRewardModel(url, protocol="openrlhf", chat_format="hf")
    plain = RemoteRewardModel(url, protocol="openrlhf", label_column="answer")
    with pytest.raises(ValueError, match=r"columns \['answer'\] are not in the data"):
        plain(["q"], ["a"])
    with pytest.raises(ValueError, match="conversations need a chat_format"):
        plain([[{"role": "user", "content": "q"}]], ["a"], answer=["a"])


def test_a_server_of_the_other_protocol_is_named_in_the_error(server):
    client = RemoteRewardModel(server + "/score", token=TOKEN, protocol="openrlhf", retries=0)
    with pytest.raises(RemoteRewardError, match=r"rejected the request: 400 unknown fields"):
        client(["q"], ["a"])
