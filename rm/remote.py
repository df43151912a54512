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

The client sends ``batch_size`` samples per request; it retries connection errors, timeouts and
5xx answers ``retries`` times with exponential backoff, and then raises :class:`RemoteRewardError`
(a :class:`rm.errors.RewardError`, which the command line reports as one line with exit status 2)
naming the URL and the last failure. 4xx answers are not retried: 401 says the token was missing or
wrong, other 4xx carry the server's reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from align.core.http import HTTPExhausted, HTTPRejected, request_json
from rm.errors import RewardError


class RemoteRewardError(RewardError):
    """A remote reward model could not be reached (after its retries) or refused the request;
    names the URL. A :class:`~rm.errors.RewardError`: one line and exit status 2 at the CLI."""


class RemoteRewardModel:
    """TRL ``reward_funcs`` callable scoring through the HTTP protocol above."""

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
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http:// or https://, got {url!r}")
        if batch_size < 1 or timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError(
                "remote reward: expected batch_size >= 1, timeout > 0, retries >= 0, "
                f"backoff >= 0, got {batch_size}, {timeout}, {retries}, {backoff}"
            )
        self.url, self.token = url, token
        self.batch_size, self.timeout = batch_size, timeout
        self.retries, self.backoff = retries, backoff
        self.columns = list(columns)
        self.__name__ = name or f"http:{url}"

    def __call__(self, prompts: list, completions: list, **columns) -> list[float | None]:
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise ValueError(f"remote reward {self.url}: columns {missing} are not in the data")
        scores: list[float | None] = []
        for start in range(0, len(completions), self.batch_size):
            stop = start + self.batch_size
            body = {"prompts": list(prompts[start:stop]), "completions": completions[start:stop]}
            if self.columns:
                body["metadata"] = {c: list(columns[c][start:stop]) for c in self.columns}
            got = self.post(body)["scores"]
            if len(got) != len(body["completions"]):
                raise RemoteRewardError(
                    f"reward server {self.url} returned {len(got)} scores for "
                    f"{len(body['completions'])} samples"
                )
            scores.extend(got)
        return scores

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
        if not isinstance(answer, dict) or not isinstance(answer.get("scores"), list):
            raise RemoteRewardError(f"reward server {self.url}: answer has no 'scores' list")
        return answer


def _reason(body: str) -> str:
    """The server's ``{"error": ...}`` message, or the body as it came."""
    try:
        return str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        return body[:200]
