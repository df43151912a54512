"""JSON over HTTP with retries (standard library only): the one request loop behind the remote
reward client, the LLM judge and the vLLM server engine, each of which words its own errors.

Connection failures, timeouts and 5xx answers (and any status in ``retry_statuses``, e.g. 429)
are retried with exponential back-off; any other 4xx is final at once.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection


class HTTPRejected(Exception):
    """A 4xx answer that retrying would not change."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status} {body}")
        self.status, self.body = status, body


class HTTPExhausted(Exception):
    """No answer after every attempt. ``reason`` describes the last failure; ``status`` and
    ``body`` are its HTTP status and body, or None when there was no answer at all (refused,
    reset, timed out)."""

    def __init__(self, attempts: int, reason: str, status: int | None, body: str | None) -> None:
        super().__init__(f"failed after {attempts} attempts: {reason}")
        self.attempts, self.reason, self.status, self.body = attempts, reason, status, body


def request_json(
    url: str,
    body: dict | None = None,
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    timeout: float,
    retries: int = 0,
    backoff: float = 0.0,
    retry_statuses: Collection[int] = (),
    on_attempt: Callable[[int], None] | None = None,
) -> bytes:
    """The raw answer body of one JSON request, trying ``retries + 1`` times at most (sleeping
    ``backoff · 2^(k-1)`` before retry k). ``on_attempt(k)`` is called before each attempt.
    Raises :class:`HTTPRejected` or :class:`HTTPExhausted`; error bodies keep 500 characters."""
    data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    reason, status, text = "", None, None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        if on_attempt is not None:
            on_attempt(attempt)
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            text = _body(err)
            if err.code < 500 and err.code not in retry_statuses:
                raise HTTPRejected(err.code, text) from None
            reason, status = f"HTTP {err.code}: {text}", err.code
        except (urllib.error.URLError, OSError) as err:
            cause = getattr(err, "reason", err)
            timed_out = isinstance(err, TimeoutError) or isinstance(cause, TimeoutError)
            reason = f"timed out after {timeout} s" if timed_out else f"connection failed: {cause}"
            status, text = None, None
    raise HTTPExhausted(retries + 1, reason, status, text)


def _body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", "replace")[:500] or str(err.reason)
    except OSError:
        return str(err.reason)
