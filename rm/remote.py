"""A reward model behind HTTP: the JSON protocol and its client (standard library only).

Protocol (served by ``align rm serve``, see :mod:`rm.server`; any service speaking it works)::

    POST <url>                       e.g. http://127.0.0.1:8000/score
    Authorization: Bearer <token>    when the server has a token
    Content-Type: application/json
    {"prompts":     [str | [{"role", "content"}, ...], ...],
     "completions": [str | [{"role", "content"}, ...], ...],     same length as prompts
     "metadata":    {"column": [one value per sample], ...},      optional
     "id":          any JSON value                                optional, echoed back}

    200 {"scores": [float | null, ...], "id": <echoed>}           one score per sample, in order
    4xx/5xx {"error": "<reason>"}

    GET <base>/health  ->  200 {"status": "ok", ...}

``null`` is a sample the service does not score; what happens to it is the reward policy's call
(see :func:`rm.functions.check_scores`).

OpenRLHF's remote reward protocol (``protocol: openrlhf``; its ``--remote_rm_url``), spoken by this
client and also served by ``align rm serve`` at ``POST /get_reward``::

    POST <url>                       e.g. http://127.0.0.1:5000/get_reward
    {"query":   [str, ...],          the whole rendered text: prompt in the chat template + answer
     "prompts": [str, ...],          the rendered prompt alone (a prefix of its query)
     "labels":  [str | null, ...]}   a dataset column (label_column), or null

    200 {"rewards": [float, ...], "scores": [...], "extra_logs": {...}}   "rewards" is read

The client renders each (prompt, answer) with ``chat_format`` (``hf``: the template of the
``tokenizer`` directory) or, without one, joins a text prompt and its answer as they are.

The client sends ``batch_size`` samples per request; it retries connection errors, timeouts and
5xx answers ``retries`` times with exponential backoff, and then raises :class:`RemoteRewardError`
(a :class:`rm.errors.RewardError`, which the command line reports as one line with exit status 2)
naming the URL and the last failure. 4xx answers are not retried: 401 says the token was missing or
wrong, other 4xx carry the server's reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from align.core.chat_formats import as_conversation, get_chat_format
from align.core.http import HTTPExhausted, HTTPRejected, request_json
from rm.errors import RewardError

PROTOCOLS = ("align", "openrlhf")
#: ``(prompt, completion) -> (rendered prompt, rendered prompt + answer)`` for OpenRLHF queries.
Render = Callable[[object, object], tuple[str, str]]


class RemoteRewardError(RewardError):
    """A remote reward model could not be reached (after its retries) or refused the request;
    names the URL. A :class:`~rm.errors.RewardError`: one line and exit status 2 at the CLI."""


def plain_render(prompt, completion) -> tuple[str, str]:
    """A text prompt and its answer joined as they are (no chat template)."""
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError(
            "protocol openrlhf: conversations need a chat_format to become OpenRLHF queries "
            "(set chat_format, and tokenizer for hf)"
        )
    return prompt, prompt + completion


def template_render(chat_format: str, tokenizer: str | None = None) -> Render:
    """Render with an align chat format (``hf``: the template of the ``tokenizer`` directory)."""
    fmt = get_chat_format(chat_format)
    tok = None
    if tokenizer is not None:
        # lazy: transformers (~2 s) loads only for a reward server that needs a tokenizer
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    elif fmt.template is None:
        raise ValueError("chat_format hf: set tokenizer (a directory with a chat template)")

    def render(prompt, completion) -> tuple[str, str]:
        head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        rendered = fmt.render(head, add_generation_prompt=True, tokenizer=tok)
        return rendered, fmt.render(as_conversation(prompt, completion), tokenizer=tok)

    return render


class RemoteRewardModel:
    """TRL ``reward_funcs`` callable scoring through either HTTP protocol above."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        columns: Sequence[str] = (),
        name: str | None = None,
        protocol: str = "align",
        chat_format: str | None = None,
        tokenizer: str | None = None,
        label_column: str | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http:// or https://, got {url!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")
        if protocol == "align" and (chat_format or tokenizer or label_column):
            raise ValueError("chat_format, tokenizer and label_column go with protocol openrlhf")
        if protocol == "openrlhf" and columns:
            raise ValueError("columns go with protocol align (openrlhf sends label_column)")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(
                "remote reward: expected batch_size >= 1, timeout > 0, retries >= 0, "
                f"backoff >= 0, got {batch_size}, {timeout}, {retries}, {backoff}"
            )
        self.url, self.token = url, token
        self.batch_size, self.timeout = batch_size, timeout
        self.retries, self.backoff = retries, backoff
        self.columns = list(columns)
        self.protocol, self.label_column = protocol, label_column
        self.score_key = "rewards" if protocol == "openrlhf" else "scores"
        self.render: Render = plain_render
        if chat_format is not None or tokenizer is not None:
            self.render = template_render(chat_format or "hf", tokenizer)
        self.__name__ = name or f"http:{url}"

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        wanted = self.columns + ([self.label_column] if self.label_column else [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise ValueError(f"remote reward {self.url}: columns {missing} are not in the data")
        scores: list[float | None] = []
        for start in range(0, len(completions), self.batch_size):
            stop = start + self.batch_size
            body = self._body(prompts[start:stop], completions[start:stop], columns, start, stop)
            got = self.post(body)[self.score_key]
            sent = min(stop, len(completions)) - start
            if len(got) != sent:
                raise RemoteRewardError(
                    f"reward server {self.url} returned {len(got)} scores for {sent} samples"
                )
            scores.extend(got)
        return scores

    def _body(self, prompts: list, completions: list, columns: dict, start: int, stop: int):
        """One request in this client's protocol for samples ``start:stop``."""
        if self.protocol == "openrlhf":
            rendered = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
            labels = columns[self.label_column][start:stop] if self.label_column else None
            return {
                "query": [q for _, q in rendered],
                "prompts": [p for p, _ in rendered],
                "labels": list(labels) if labels is not None else [None] * len(rendered),
            }
        body = {"prompts": list(prompts), "completions": list(completions)}
        if self.columns:
            body["metadata"] = {c: list(columns[c][start:stop]) for c in self.columns}
        return body

    def post(self, body: dict) -> dict:
        """POST one JSON request with retries; the decoded JSON answer."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            raw = request_json(self.url, body, headers=headers, timeout=self.timeout,
                               retries=self.retries, backoff=self.backoff)  # fmt: skip
        except HTTPRejected as err:
            raise self._client_error(err.status, _reason(err.body)) from None
        except HTTPExhausted as err:
            last = f"HTTP {err.status}: {_reason(err.body)}" if err.status else err.reason
            raise RemoteRewardError(
                f"reward server {self.url} failed after {err.attempts} attempts: {last}"
            ) from None
        return self._decode(raw)

    def _client_error(self, code: int, reason: str) -> RemoteRewardError:
        if code == 401:
            return RemoteRewardError(
                f"reward server {self.url} answered 401 Unauthorized: the token is missing or "
                f"wrong ({reason})"
            )
        return RemoteRewardError(f"reward server {self.url} rejected the request: {code} {reason}")

    def _decode(self, raw: bytes) -> dict:
        try:
            answer = json.loads(raw)
        except ValueError as err:
            raise RemoteRewardError(
                f"reward server {self.url}: the answer is not JSON ({err})"
            ) from err
        if not isinstance(answer, dict) or not isinstance(answer.get(self.score_key), list):
            raise RemoteRewardError(
                f"reward server {self.url}: answer has no '{self.score_key}' list "
                f"(protocol {self.protocol})"
            )
        return answer


def _reason(body: str) -> str:
    """The server's ``{"error": ...}`` message, or the body as it came."""
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body[:200]
