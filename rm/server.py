"""The reward server behind ``align rm serve``: a reward function over HTTP (FastAPI + uvicorn).

Speaks the protocol of :mod:`rm.remote` (``POST /score``, ``GET /health``) and, given a scorer of
rendered texts, OpenRLHF's (``POST /get_reward``: ``{query, prompts, labels}`` → ``{rewards,
scores, extra_logs}``, each query scored as the text it is). Concurrent requests
are batched: one worker scores whatever requests are waiting when the previous batch finishes (up
to ``max_batch`` samples; a larger request is scored alone), in a thread so the event loop keeps
accepting connections. Each request gets its own scores back, in its own order.

Guards: request bodies over ``max_request_bytes`` → 413; more than ``max_items`` samples → 413;
malformed JSON or fields → 400 with the reason, including JSON that is not strict (``NaN``,
``Infinity``, numbers that overflow to ±inf) or nested deeper than :data:`MAX_DEPTH` levels; a
configured token must come as ``Authorization: Bearer <token>`` (compared in constant time) → else
401. Non-finite scores are sent as ``null``. Binds 127.0.0.1 unless told otherwise (``align rm
serve`` refuses another interface without a token unless ``--allow_unauthenticated``).
"""

import asyncio
import hmac
import json
import math
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class BadRequest(ValueError):
    """A request the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


#: Deepest JSON nesting a request may have (a conversation in a request is 4 levels deep).
MAX_DEPTH = 32
#: Names the scorer takes as keywords of its own, so no metadata column may use them.
RESERVED_COLUMNS = ("prompts", "completions")


def _reject_constant(name: str):
    raise BadRequest(f"malformed JSON: {name} is not a JSON number (use null)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"malformed JSON: the number {text[:40]} overflows a double")
    return value


def _depth(value, limit: int) -> int:
    """Nesting depth of a decoded JSON value, counted iteratively up to ``limit + 1``."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return deepest


def decode_json(body: bytes, max_depth: int = MAX_DEPTH):
    """Strict JSON: no ``NaN``/``Infinity``, no number overflowing to ±inf, at most ``max_depth``
    nested arrays/objects; anything else is a :class:`BadRequest` (400) saying why."""
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise BadRequest(f"malformed JSON: nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as err:
        if isinstance(err, BadRequest):
            raise
        raise BadRequest(f"malformed JSON: {err}") from None
    if _depth(value, max_depth) > max_depth:
        raise BadRequest(f"malformed JSON: nested deeper than {max_depth} levels")
    return value


def _check_texts(name: str, values) -> None:
    if not isinstance(values, list):
        raise BadRequest(f"'{name}' must be a list")
    for k, v in enumerate(values):
        if isinstance(v, str):
            continue
        ok = isinstance(v, list) and all(
            isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and isinstance(m.get("role"), str)
            for m in v
        )
        if not ok:
            raise BadRequest(
                f"'{name}[{k}]' must be a string or a list of {{role, content}} messages"
            )


def parse_request(body: bytes, max_items: int) -> tuple[list, list, dict, object]:
    """``(prompts, completions, metadata, id)`` of a ``/score`` body, or :class:`BadRequest`."""
    request = decode_json(body)
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(request) - {"prompts", "completions", "metadata", "id"}
    if unknown:
        raise BadRequest(f"unknown fields {sorted(unknown)}")
    prompts, completions = request.get("prompts"), request.get("completions")
    _check_texts("prompts", prompts)
    _check_texts("completions", completions)
    if len(prompts) != len(completions):
        raise BadRequest(f"{len(prompts)} prompts but {len(completions)} completions")
    if len(prompts) > max_items:
        raise BadRequest(f"{len(prompts)} samples, at most {max_items} per request", 413)
    metadata = request.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object of columns")
    for key, column in metadata.items():
        if key in RESERVED_COLUMNS:
            raise BadRequest(f"metadata may not have a column named '{key}'")
        if not isinstance(column, list) or len(column) != len(prompts):
            raise BadRequest(f"metadata '{key}' must be a list of {len(prompts)} values")
    return prompts, completions, metadata, request.get("id")


def parse_openrlhf_request(body: bytes, max_items: int) -> list[str]:
    """The ``query`` texts of an OpenRLHF ``/get_reward`` body, or :class:`BadRequest`.

    ``prompts`` and ``labels`` are accepted (OpenRLHF always sends them) but a reward model
    scores the whole query, as OpenRLHF's own reward server does.
    """
    request = decode_json(body)
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object")
    queries = request.get("query")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise BadRequest("'query' must be a list of strings (prompt + answer, rendered)")
    if len(queries) > max_items:
        raise BadRequest(f"{len(queries)} samples, at most {max_items} per request", 413)
    for key in ("prompts", "labels"):
        value = request.get(key)
        if value is not None and (not isinstance(value, list) or len(value) != len(queries)):
            raise BadRequest(f"'{key}' must be a list of {len(queries)} values")
    return queries


@dataclass
class _Job:
    prompts: list
    completions: list
    metadata: dict
    future: asyncio.Future


@dataclass
class Stats:
    requests: int = 0
    samples: int = 0
    batches: int = 0
    rejected: int = 0
    largest_batch: int = 0
    extra: dict = field(default_factory=dict)


def _merge(jobs: list[_Job]) -> tuple[list, list, dict]:
    prompts = [p for j in jobs for p in j.prompts]
    completions = [c for j in jobs for c in j.completions]
    keys = sorted({k for j in jobs for k in j.metadata})
    columns = {
        k: [v for j in jobs for v in j.metadata.get(k, [None] * len(j.prompts))] for k in keys
    }
    return prompts, completions, columns


def _as_json_scores(scores) -> list[float | None]:
    out = []
    for s in scores:
        ok = isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s)
        out.append(float(s) if ok else None)
    return out


class Batcher:
    """Collects concurrent requests and scores them together in a worker thread."""

    def __init__(self, score: Callable, max_batch: int, stats: Stats) -> None:
        self.score, self.max_batch, self.stats = score, max_batch, stats
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.held: _Job | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def submit(self, prompts: list, completions: list, metadata: dict) -> list:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(prompts, completions, metadata, future))
        return await future

    def _take(self, first: _Job) -> list[_Job]:
        """``first`` plus the waiting jobs that fit in ``max_batch`` samples; a job that does not
        fit is held back to start the next batch (so arrival order is kept)."""
        jobs, n = [first], len(first.prompts)
        while self.held is None and not self.queue.empty():
            job = self.queue.get_nowait()
            if n + len(job.prompts) > self.max_batch:
                self.held = job
                break
            jobs.append(job)
            n += len(job.prompts)
        return jobs

    async def _next(self) -> _Job:
        if self.held is not None:
            job, self.held = self.held, None
            return job
        return await self.queue.get()

    async def _run(self) -> None:
        while True:
            jobs = self._take(await self._next())
            prompts, completions, columns = _merge(jobs)
            try:
                scores = await asyncio.to_thread(
                    self.score, prompts=prompts, completions=completions, **columns
                )
                if len(scores) != len(prompts):
                    raise RuntimeError(f"scorer returned {len(scores)} for {len(prompts)}")
                scores = _as_json_scores(scores)
            except Exception as err:  # every waiting request hears about it
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, len(prompts))
            start = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(scores[start : start + len(j.prompts)])
                start += len(j.prompts)


def _authorized(header: str | None, token: str | None) -> bool:
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((header or "").encode(), expected)


async def _read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"body of {declared} bytes, at most {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"body over {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Guard:
    """What every scoring endpoint checks: the token, the body size and the sample count."""

    token: str | None
    max_request_bytes: int
    max_items: int
    stats: Stats

    async def handle(self, request, parse: Callable, batcher: Batcher, respond: Callable):
        """Authorize, read and parse a body into ``(prompts, completions, metadata, id)``, score
        it in ``batcher`` and answer ``respond(scores, id)``; errors as 401/4xx/500 + reason."""
        from fastapi.responses import JSONResponse  # lazy: fastapi loads only to serve

        if not _authorized(request.headers.get("authorization"), self.token):
            self.stats.rejected += 1
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        try:
            body = await _read_body(request, self.max_request_bytes)
            prompts, completions, metadata, request_id = parse(body, self.max_items)
        except BadRequest as err:
            self.stats.rejected += 1
            return JSONResponse({"error": str(err)}, status_code=err.status)
        try:
            scores = await batcher.submit(prompts, completions, metadata) if prompts else []
        except Exception as err:
            return JSONResponse({"error": f"scoring failed: {err}"}, status_code=500)
        self.stats.requests += 1
        self.stats.samples += len(prompts)
        return respond(scores, request_id)


def _align_answer(scores: list, request_id) -> dict:
    answer = {"scores": scores}
    if request_id is not None:
        answer["id"] = request_id
    return answer


def _openrlhf_job(body: bytes, max_items: int) -> tuple[list, list, dict, None]:
    """An OpenRLHF body as a job of the text scorer: the queries ride as completions."""
    queries = parse_openrlhf_request(body, max_items)
    return [""] * len(queries), queries, {}, None


def _openrlhf_answer(scores: list, request_id) -> dict:
    return {"rewards": scores, "scores": scores, "extra_logs": {}}


def create_app(
    score: Callable,
    token: str | None = None,
    max_batch: int = 64,
    max_request_bytes: int = 1 << 20,
    max_items: int = 1024,
    info: dict | None = None,
    score_text: Callable[[list[str]], list] | None = None,
):
    """A FastAPI app serving ``score`` (a TRL ``reward_funcs`` callable) at ``/score`` and, when
    given, ``score_text`` (rendered texts → scores) at OpenRLHF's ``/get_reward``."""
    from fastapi import FastAPI, Request  # lazy: fastapi loads only to serve

    stats = Stats(extra=dict(info or {}))
    guard = _Guard(token, max_request_bytes, max_items, stats)
    batcher = Batcher(score, max_batch, stats)
    batchers = [batcher]
    if score_text is not None:  # queries ride in the completions slot of a batch
        texts = Batcher(lambda prompts, completions: score_text(completions), max_batch, stats)
        batchers.append(texts)

    @asynccontextmanager
    async def lifespan(app):
        for b in batchers:
            b.start()
        yield
        for b in batchers:
            await b.stop()

    app = FastAPI(title="align reward server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.stats = stats

    @app.get("/health")
    async def health() -> dict:
        return {
            "status": "ok",
            **stats.extra,
            **{k: v for k, v in vars(stats).items() if k != "extra"},
        }

    @app.post("/score")
    async def score_endpoint(request: Request):
        return await guard.handle(request, parse_request, batcher, _align_answer)

    if score_text is not None:

        @app.post("/get_reward")
        async def openrlhf_endpoint(request: Request):
            return await guard.handle(request, _openrlhf_job, texts, _openrlhf_answer)

    return app


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn  # lazy: uvicorn loads only to serve

    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
