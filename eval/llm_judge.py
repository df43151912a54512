"""An LLM judge over any OpenAI-compatible chat API (vLLM, SGLang, hosted services).

Each comparison is asked twice, once with the candidate as 助手A and once as 助手B, so a judge
that prefers a position cannot move the result: the two answers, each turned into the
candidate's point of view (+1 better, 0 tie, -1 worse), are added; a positive sum is "good", a
negative one "bad", zero "same" (so "A" in both orders, pure position bias, is "same"). A reply
whose verdict cannot be read is asked again (``parse_retries`` times); an order that never
yields a verdict is left out, and a comparison with no readable order is unjudged (``None``).

HTTP through the ``openai`` client: ``POST {base_url}/chat/completions`` with ``Authorization:
Bearer $<api_key_env>`` (a placeholder key when ``api_key_env`` is None: local servers).
Connection errors, timeouts, 429 and 5xx answers are retried ``retries`` times, waiting what the
server asks for in ``Retry-After`` / ``retry-after-ms`` (at most :data:`MAX_RETRY_AFTER` seconds),
else ``backoff · 2^k``; other 4xx answers raise :class:`LLMJudgeError` at once.
"""

from __future__ import annotations

import email.utils
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from align.core.config import check_ranges, help_field

#: The longest wait a server's Retry-After may ask for (seconds); longer asks are cut to this.
MAX_RETRY_AFTER = 300.0

JUDGE_PROMPT_ZH = (
    "请你作为一名公正的评审，比较两位AI助手对同一个用户问题的回答质量。问题所属领域：{category}。\n"
    "请从有用性、准确性、相关性、合规性（例如不承诺收益、提示风险）和表达清晰度等方面进行比较。"
    "不要因为回答出现的先后顺序、长度或助手的名字而产生偏见，尽量客观。\n\n"
    "[用户问题]\n{question}\n\n"
    "[助手A的回答开始]\n{answer_a}\n[助手A的回答结束]\n\n"
    "[助手B的回答开始]\n{answer_b}\n[助手B的回答结束]\n\n"
    "请先简要说明理由，最后严格按照以下格式给出结论：如果助手A的回答更好，输出“[[A]]”；"
    "如果助手B的回答更好，输出“[[B]]”；如果两者质量相当，输出“[[C]]”。"
)

_BRACKETED = re.compile(r"\[\[\s*(A|B|C|平局|相当|tie)\s*\]\]", re.IGNORECASE)
_CONCLUSION = re.compile(r"(?:结论|判断|裁决|verdict)\s*(?:是|为)?\s*[:：]?\s*[“\"]?\s*([ABC])\b")
_BETTER = re.compile(
    r"(?:助手|回答|assistant\s*)\s*([AB])\s*(?:的回答)?\s*(?:更好|更优|更佳|胜出|获胜)"
)
_TIE = re.compile(r"平局|两者相当|二者相当|质量相当|不相上下|一样好|同样好|难分高下|\btie\b", re.I)
_THINKING = re.compile(r"<think>.*?</think>", re.S)
_LABELS = {"a": "A", "b": "B", "c": "tie", "平局": "tie", "相当": "tie", "tie": "tie"}


class LLMJudgeError(RuntimeError):
    """The chat API could not be reached or refused the request (names the URL)."""


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a server asks to wait before the next request: ``retry-after-ms``, else
    ``Retry-After`` as seconds or as an HTTP date; None when it asks nothing readable. Capped at
    :data:`MAX_RETRY_AFTER`, never negative."""
    lower = {k.lower(): v for k, v in headers.items()}
    wait = None
    try:
        if "retry-after-ms" in lower:
            wait = float(lower["retry-after-ms"]) / 1000
        elif "retry-after" in lower:
            value = lower["retry-after"].strip()
            try:
                wait = float(value)
            except ValueError:
                date = email.utils.parsedate_to_datetime(value)
                wait = date.timestamp() - (time.time() if now is None else now)
    except (ValueError, TypeError):
        return None
    if wait is None or wait != wait:  # NaN
        return None
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


def parse_judgement(text: str) -> str | None:
    """``"A"``, ``"B"``, ``"tie"`` or None from a judge's reply.

    The last ``[[A]]`` / ``[[B]]`` / ``[[C]]`` wins; without one, an explicit "结论：A" or a
    phrase like "助手B的回答更好" / "两者相当" counts when it points one way only.
    """
    text = _THINKING.sub("", text)  # reasoning models: judge the answer, not the musings
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        return _LABELS[bracketed[-1].lower()]
    conclusion = _CONCLUSION.findall(text)
    if conclusion:
        return _LABELS[conclusion[-1].lower()]
    found = {m.upper() for m in _BETTER.findall(text)}
    if _TIE.search(text):
        found.add("tie")
    return found.pop() if len(found) == 1 else None


def _question_text(prompt) -> str:
    """A prompt as the judge reads it: the text, or the conversation's turns one per line."""
    if isinstance(prompt, str):
        return prompt
    names = {"system": "系统", "user": "用户", "assistant": "助手"}
    return "\n".join(f"{names.get(m['role'], m['role'])}：{m['content']}" for m in prompt)


@dataclass
class JudgeStats:
    """What the last :meth:`LLMJudge.judge` call saw."""

    requests: int = 0
    http_retries: int = 0
    unparsable_replies: int = 0
    one_order_only: int = 0
    unjudged: int = 0
    position_consistent: int = 0
    both_orders: int = 0
    replies: list[str] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: str, k: int = 1) -> None:
        """Thread-safe ``self.<name> += k`` (the judge asks from several threads)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + k)


@dataclass
class LLMJudgeConfig:
    """A judge model behind an OpenAI-compatible chat API (both answer orders per comparison)."""

    base_url: str = field(metadata={"help": "API base URL, e.g. http://127.0.0.1:8000/v1."})
    model: str = field(metadata={"help": "Model name sent to the API."})
    api_key_env: str | None = help_field(
        "Environment variable holding the API key; none = a server without a key.", None
    )
    temperature: float = help_field("Sampling temperature of the judge.", 0.0, ge=0)
    max_tokens: int = help_field("Longest judgement (tokens).", 512, ge=1)
    timeout: float = help_field("Seconds per request.", 120.0, gt=0)
    retries: int = help_field("Retries of a failed request.", 3, ge=0)
    backoff: float = help_field("Seconds before the first retry (doubling).", 1.0, ge=0)
    parse_retries: int = help_field("Asks again when a reply names no verdict.", 1, ge=0)
    max_workers: int = help_field("Concurrent requests.", 8, ge=1)

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected http:// or https://, got {self.base_url!r}")


class LLMJudge:
    """A :class:`~eval.judges.Judge` asking a chat model, both answer orders per comparison."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        *,
        template: str = JUDGE_PROMPT_ZH,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        parse_retries: int = 1,
        max_workers: int = 8,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected http:// or https://, got {base_url!r}")
        if min(retries, parse_retries) < 0 or backoff < 0 or timeout <= 0 or max_workers < 1:
            raise ValueError(
                "LLMJudge: expected retries >= 0, parse_retries >= 0, backoff >= 0, timeout > 0, "
                f"max_workers >= 1, got {retries}, {parse_retries}, {backoff}, {timeout}, "
                f"{max_workers}"
            )
        self.api_key = None
        if api_key_env:
            if api_key_env not in os.environ:
                raise ValueError(
                    f"api_key_env: environment variable {api_key_env} is not set (pass an empty "
                    "name for a server without a key)"
                )
            self.api_key = os.environ[api_key_env]
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._openai = None
        self.model, self.template = model, template
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.retries, self.backoff, self.parse_retries = retries, backoff, parse_retries
        self.max_workers = max_workers
        self.stats = JudgeStats()

    @classmethod
    def from_config(cls, cfg: LLMJudgeConfig) -> LLMJudge:
        """The judge a :class:`LLMJudgeConfig` describes."""
        return cls(**asdict(cfg))

    # ----------------------------------------------------------------- HTTP

    def _client(self):
        """The ``openai`` client (made on first use; thread-safe, shared by the workers)."""
        if self._openai is None:
            import openai  # lazy: the openai client loads only when a judge asks

            self._openai = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key or "none", timeout=self.timeout,
                max_retries=0,  # retries are ours: counted, and Retry-After is honoured
            )  # fmt: skip
        return self._openai

    def complete(self, content: str) -> str:
        """One chat completion (a single user turn) with retries; the reply's text."""
        import openai  # lazy: as in _client

        last = ""
        for attempt in range(self.retries + 1):
            self.stats.add("requests")
            if attempt:
                self.stats.add("http_retries")
            wait = None
            try:
                reply = self._client().chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": content}],
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
                return self._reply_text(reply)
            except openai.APIStatusError as err:
                if err.status_code != 429 and err.status_code < 500:
                    raise LLMJudgeError(
                        f"chat API {self.url} rejected the request: {err.status_code} "
                        f"{err.message[:300]}"
                    ) from None
                last, wait = f"HTTP {err.status_code}: {err.message[:200]}", retry_after(
                    err.response.headers
                )
            except openai.APITimeoutError:
                last = f"timed out after {self.timeout} s"
            except openai.APIConnectionError as err:
                last = f"connection failed: {err.__cause__ or err}"
            if attempt < self.retries:
                time.sleep(wait if wait is not None else self.backoff * 2**attempt)
        raise LLMJudgeError(f"chat API {self.url} failed after {self.retries + 1} attempts: {last}")

    def _reply_text(self, reply) -> str:
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as err:
            raise LLMJudgeError(
                f"chat API {self.url}: expected a chat completion "
                f"(choices[0].message.content), got {str(reply)[:200]} ({err!r})"
            ) from None
        return content if isinstance(content, str) else ""

    # ----------------------------------------------------------------- judging

    def ask(self, prompt, category: str, first: str, second: str) -> str | None:
        """``"A" | "B" | "tie" | None`` for one order, re-asking unreadable replies."""
        content = self.template.format(
            category=category, question=_question_text(prompt), answer_a=first, answer_b=second
        )
        for _ in range(self.parse_retries + 1):
            reply = self.complete(content)
            with self.stats._lock:
                self.stats.replies.append(reply)
            label = parse_judgement(reply)
            if label is not None:
                return label
            self.stats.add("unparsable_replies")
        return None

    def _one_order(self, job: tuple) -> int | None:
        """+1 / 0 / -1 from the candidate's point of view, or None."""
        prompt, category, cand, base, swapped = job
        label = self.ask(prompt, category, base, cand) if swapped else self.ask(
            prompt, category, cand, base
        )
        if label is None:
            return None
        sign = {"A": 1, "B": -1, "tie": 0}[label]
        return -sign if swapped else sign

    def _combine(self, first: int | None, second: int | None) -> str | None:
        votes = [v for v in (first, second) if v is not None]
        if not votes:
            self.stats.add("unjudged")
            return None
        if len(votes) == 1:
            self.stats.add("one_order_only")
        else:
            self.stats.add("both_orders")
            self.stats.add("position_consistent", int(first == second))
        total = sum(votes)
        return "good" if total > 0 else "bad" if total < 0 else "same"

    def judge(
        self,
        prompts: Sequence,
        answers_a: Sequence[str],
        answers_b: Sequence[str],
        categories: Sequence[str],
        **columns,
    ) -> list[str | None]:
        """Verdicts of candidate ``answers_a`` against baseline ``answers_b`` (both orders)."""
        # lazy: eval.judges loads torch/transformers, kept off 'align pei --help'
        from eval.judges import check_lengths

        check_lengths(prompts, answers_a, answers_b, categories)
        self.stats = JudgeStats()
        jobs = [
            (p, c, a, b, swapped)
            for p, a, b, c in zip(prompts, answers_a, answers_b, categories)
            for swapped in (False, True)
        ]
        with ThreadPoolExecutor(self.max_workers) as pool:
            signs = list(pool.map(self._one_order, jobs))
        return [self._combine(signs[2 * i], signs[2 * i + 1]) for i in range(len(prompts))]
