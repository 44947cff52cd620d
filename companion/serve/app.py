"""The HTTP API: OpenAI's /v1/completions, /v1/chat/completions and /v1/models, streaming or not,
with /health and /metrics (Prometheus text).

FastAPI (on Starlette) parses requests and streams server-sent events; uvicorn runs it. The engine
steps in one background thread; each request waits on an asyncio queue the engine feeds. Bodies are
size-limited and are parsed and tokenised in a worker thread, so that a large prompt never stalls
the streams on the event loop. Every error, 404 to 500, has OpenAI's shape. Install with
`pip install "llm-course-companion[serve]"`. Chapter 11.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest)
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..tokenizer import Tokenizer
from .engine import Engine, QueueFull, Request
from .protocol import (APIError, BadRequest, Limits, Plan, error_body, parse_chat,
                       parse_completion)

__all__ = ["APIError", "BadRequest", "Limits", "Plan", "parse_completion", "parse_chat",
           "build_app"]


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status,
                        headers=headers)


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


@dataclass
class _Choice:
    index: int
    req: Request
    tokens: list[int] = field(default_factory=list)  # the answer's ids (no stop id)
    received: int = 0  # every token the engine sent, stop ids included
    sent: str = ""  # text already sent
    finish: str | None = None
    lp_sent: int = 0  # logprob entries already sent
    started: bool = False  # chat: the role delta went out


class _Metrics:
    """Prometheus metrics in a registry of their own (several apps may live in one process)."""

    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        Gauge("companion_queue_depth", "Requests waiting for admission",
              registry=r).set_function(lambda: len(engine.waiting))
        Gauge("companion_running_rows", "Requests in the running batch",
              registry=r).set_function(lambda: len(engine.running))
        Gauge("companion_kv_blocks_in_use", "KV-cache blocks held by sequences",
              registry=r).set_function(lambda: engine.cache.blocks_in_use)
        Gauge("companion_kv_blocks_total", "KV-cache blocks in the pool",
              registry=r).set_function(lambda: engine.cache.allocator.num_blocks)
        Gauge("companion_engine_errors", "Requests failed by an error inside the engine",
              registry=r).set_function(lambda: engine.errors)
        # The engine counts; these counters follow it at each scrape (see sync).
        self.prefix_hits = Counter("companion_prefix_cache_hits",
                                   "Prompt blocks served from the prefix cache", registry=r)
        self.prefix_queries = Counter("companion_prefix_cache_queries",
                                      "Full prompt blocks looked up in the prefix cache",
                                      registry=r)
        self.preemptions = Counter("companion_preemptions",
                                   "Rows whose KV blocks were taken back, to be recomputed",
                                   registry=r)
        self._engine, self._seen = engine, {"hits": 0, "queries": 0, "preemptions": 0}
        buckets = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
        self.ttft = Histogram("companion_time_to_first_token_seconds",
                              "From a request's arrival to its first token", buckets=buckets,
                              registry=r)
        self.itl = Histogram("companion_inter_token_latency_seconds",
                             "Between consecutive tokens of one request", buckets=buckets,
                             registry=r)
        self.requests = Counter("companion_requests", "Answered requests by route and status",
                                ["route", "status"], registry=r)

    def sync(self) -> None:
        """Bring the counters up to the engine's own tallies (they only grow)."""
        e = self._engine
        now = {"hits": e.cache.prefix_hits, "queries": e.cache.prefix_queries,
               "preemptions": e.preemptions}
        for key, counter in [("hits", self.prefix_hits), ("queries", self.prefix_queries),
                             ("preemptions", self.preemptions)]:
            counter.inc(max(0, now[key] - self._seen[key]))
        self._seen = now


def build_app(engine: Engine, tokenizer: Tokenizer, model_name: str = "companion-gpt",
              limits: Limits | None = None) -> FastAPI:
    """The FastAPI app in front of `engine`, whose loop starts and stops with the app."""
    limits = limits or Limits()
    metrics = _Metrics(engine)
    thread = threading.Thread(target=engine.run_forever, daemon=True, name="engine")
    created_at = int(time.time())

    async def lifespan(app: FastAPI):
        thread.start()
        yield
        engine.shutdown()  # uvicorn has drained the open requests by now
        thread.join(timeout=10)

    app = FastAPI(title="companion LLM server", lifespan=lifespan)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits

    @app.exception_handler(APIError)
    async def api_error(_: HTTPRequest, err: APIError) -> JSONResponse:
        return _error(err.status, str(err), err.param, err.code, err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(http: HTTPRequest, err: StarletteHTTPException) -> JSONResponse:
        what = {404: f"no route {http.method} {http.url.path}",
                405: f"{http.method} is not allowed on {http.url.path}"}
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return _error(err.status_code, what.get(err.status_code, str(err.detail)), None, code,
                      getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_: HTTPRequest, err: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(err).__name__}: {err}"[:300])

    @app.get("/health")
    async def health() -> JSONResponse:
        h = engine.health(limits.stall_s)
        body = {"status": h.pop("state"), "model": model_name,
                "context_length": engine.context_length, **h}
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.sync()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created_at,
                "owned_by": "companion", "context_length": engine.context_length}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{model_name!r}", "model", "model_not_found")
        return model_card()

    async def read_body(http: HTTPRequest) -> bytes:
        """The body, or 413 past max_body_bytes (declared or counted, so chunked bodies too)."""
        limit = limits.max_body_bytes
        declared = http.headers.get("content-length", "")
        too_big = APIError(413, f"the body exceeds {limit} bytes", None, "request_too_large")
        if declared.isdigit() and int(declared) > 64 * limit:
            raise too_big  # not worth reading: uvicorn closes the connection
        chunks, size = [], 0
        async for chunk in http.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > 64 * limit:
                break
        if size > limit:  # read to the end so that the client hears the 413
            raise too_big
        return b"".join(chunks)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        arrived = time.perf_counter()
        raw = await read_body(http)
        # Parsing and tokenising run in a worker thread: a 1 MB prompt must not stall the streams.
        plan = await run_in_threadpool(parse_completion, raw, tokenizer, engine.context_length,
                                       limits.max_json_depth)
        return await answer(http, plan, arrived)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: HTTPRequest):
        arrived = time.perf_counter()
        raw = await read_body(http)
        plan = await run_in_threadpool(parse_chat, raw, tokenizer, engine.context_length,
                                       limits.max_json_depth)
        return await answer(http, plan, arrived)

    def logprob_entries(c: _Choice, plan: Plan, upto: int) -> list[dict]:
        """Chat's logprobs content for the choice's tokens [c.lp_sent, upto)."""
        out = []
        for token, (lp, alts) in zip(c.tokens[c.lp_sent:upto],
                                     c.req.token_logprobs[c.lp_sent:upto]):
            text = tokenizer.decode([token])
            out.append({"token": text, "logprob": lp, "bytes": list(text.encode()),
                        "top_logprobs": [{"token": (t := tokenizer.decode([i])), "logprob": v,
                                          "bytes": list(t.encode())} for i, v in alts]})
        return out

    def completion_logprobs(c: _Choice, plan: Plan, start: int, upto: int,
                            offset: int) -> dict:
        """/v1/completions' logprobs object for tokens [start, upto), echo's prompt first."""
        tokens, lps, tops = [], [], []
        if plan.echo and start == 0:
            prompt = c.req.prompt
            tokens += [tokenizer.decode([t]) for t in prompt]
            lps.append(None)
            tops.append(None)
            for lp, alts in c.req.prompt_token_logprobs:
                lps.append(lp)
                tops.append({tokenizer.decode([i]): v for i, v in alts})
        for token, (lp, alts) in zip(c.tokens[start:upto], c.req.token_logprobs[start:upto]):
            tokens.append(tokenizer.decode([token]))
            lps.append(lp)
            tops.append({tokenizer.decode([i]): v for i, v in alts})
        offsets, at = [], offset
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                "text_offset": offsets}

    async def answer(http: HTTPRequest, plan: Plan, arrived: float):
        if plan.model is not None and plan.model != model_name:
            raise APIError(404, f"the model {plan.model!r} does not exist; this server serves "
                                f"{model_name!r}", "model", "model_not_found")
        if engine.started and not engine.alive:
            raise APIError(503, "the engine is not running", None, "engine_stopped")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        deadline = time.monotonic() + limits.request_timeout_s
        choices: list[_Choice] = []
        last: dict[int, float] = {}

        def on_token(req: Request, token: int | None) -> None:  # runs in the engine thread
            if token is not None:
                now = time.perf_counter()
                before = last.get(req.id)
                (metrics.ttft.observe(now - arrived) if before is None
                 else metrics.itl.observe(now - before))
                last[req.id] = now
            loop.call_soon_threadsafe(queue.put_nowait, (req.id, token))

        for p, ids in enumerate(plan.prompts):
            for j in range(plan.n):
                seed = None if plan.seed is None else plan.seed + j
                req = Request(ids, plan.max_tokens, plan.temperature, plan.top_k, plan.top_p,
                              seed=seed, stop_ids=plan.stop_ids, on_token=on_token,
                              logprobs=plan.logprobs,
                              prompt_logprobs=plan.echo and plan.logprobs is not None,
                              deadline=deadline)
                choices.append(_Choice(len(choices), req))
        by_id = {c.req.id: c for c in choices}
        for c in choices:
            if plan.max_tokens == 0 and not (plan.echo and plan.logprobs is not None):
                c.finish = "length"  # nothing to compute
                continue
            try:
                engine.submit(c.req)
            except QueueFull as err:
                for other in choices:
                    engine.cancel(other.req)
                status = 503 if "shutting down" in str(err) else 429
                raise APIError(status, str(err), None, "queue_full" if status == 429 else
                               "shutting_down", {"Retry-After": str(limits.retry_after_s)})
            except ValueError as err:  # e.g. more KV blocks than the pool holds
                for other in choices:
                    engine.cancel(other.req)
                raise BadRequest("max_tokens", str(err)) from None
        hold = max((len(x) - 1 for x in plan.stop), default=0)

        def advance(c: _Choice, token: int | None) -> str:
            """Take one engine event for a choice -> the new text it may send now."""
            if token is not None:
                c.received += 1
                if token not in plan.stop_ids:
                    c.tokens.append(token)
            text, hit = _cut_at_stop(tokenizer.decode(c.tokens), plan.stop)
            if hit:
                engine.cancel(c.req)
            if token is None or hit:
                reason = c.req.finish_reason
                if not hit and reason == "error":
                    raise APIError(500, f"the engine failed on this request: {c.req.error}",
                                   None, "engine_error")
                if not hit and reason == "timeout":
                    raise APIError(504, f"the request ran past the server's "
                                        f"{limits.request_timeout_s:g} s deadline", None,
                                   "timeout")
                c.finish = "stop" if hit or reason == "stop" else "length"
                new = text[len(c.sent):]
                c.sent = text
                return new
            # Hold back text that might be the start of a stop string, or half a character.
            safe = text[:max(len(c.sent), len(text) - hold)]
            while len(safe) > len(c.sent) and safe.endswith("\ufffd"):
                safe = safe[:-1]
            new, c.sent = safe[len(c.sent):], safe
            return new

        async def events():
            """(choice, new text) until every choice has finished; cancels all if abandoned."""
            while any(c.finish is None for c in choices):
                # The engine enforces the deadline; this second guard, a second later, holds
                # even if the engine itself is stuck.
                wait = max(0.0, deadline - time.monotonic()) + 1.0
                try:
                    rid, token = await asyncio.wait_for(queue.get(), timeout=wait)
                except asyncio.TimeoutError:
                    for c in choices:
                        engine.cancel(c.req)
                    raise APIError(504, f"the request ran past the server's "
                                        f"{limits.request_timeout_s:g} s deadline", None,
                                   "timeout") from None
                c = by_id[rid]
                if c.finish is None:
                    yield c, advance(c, token)

        cid = f"{'chatcmpl' if plan.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        route = "chat" if plan.chat else "completions"

        def usage() -> dict:
            n_out = sum(_count_tokens(tokenizer, c) for c in choices)
            n_in = sum(map(len, plan.prompts))
            return {"prompt_tokens": n_in, "completion_tokens": n_out,
                    "total_tokens": n_in + n_out}

        def chunk(c: _Choice, new: str) -> dict:
            upto = c.lp_sent if plan.logprobs is None else (
                len(c.tokens) if c.finish else _tokens_for(tokenizer, c, len(c.sent)))
            if plan.chat:
                delta = {} if c.started else {"role": "assistant"}
                if new or not c.started:
                    delta["content"] = new
                c.started = True
                lp = None if plan.logprobs is None else {
                    "content": logprob_entries(c, plan, upto)}
                choice = {"index": c.index, "delta": delta, "logprobs": lp,
                          "finish_reason": c.finish}
            else:
                lp = None if plan.logprobs is None else completion_logprobs(
                    c, plan, c.lp_sent, upto, len(c.sent) - len(new))
                choice = {"text": new, "index": c.index, "logprobs": lp,
                          "finish_reason": c.finish}
            c.lp_sent = max(c.lp_sent, upto)
            body = {"id": cid, "object": "chat.completion.chunk" if plan.chat
                    else "text_completion", "created": created, "model": model_name,
                    "choices": [choice]}
            if plan.include_usage:
                body["usage"] = None
            return body

        if plan.stream:
            async def sse():
                try:
                    if plan.echo:
                        for c in choices:
                            text = tokenizer.decode(c.req.prompt)
                            yield f"data: {json.dumps(chunk(c, text))}\n\n"
                    for c in choices:
                        if c.finish:  # max_tokens 0
                            yield f"data: {json.dumps(chunk(c, ''))}\n\n"
                    async for c, new in events():
                        if new or c.finish or (plan.chat and not c.started):
                            yield f"data: {json.dumps(chunk(c, new))}\n\n"
                    if plan.include_usage:
                        final = {"id": cid, "object": "chat.completion.chunk" if plan.chat
                                 else "text_completion", "created": created,
                                 "model": model_name, "choices": [], "usage": usage()}
                        yield f"data: {json.dumps(final)}\n\n"
                    yield "data: [DONE]\n\n"
                    metrics.requests.labels(route, "200").inc()
                except APIError as err:  # the headers went out: the error is the last event
                    metrics.requests.labels(route, str(err.status)).inc()
                    body = error_body(err.status, str(err), err.param, err.code)
                    yield f"data: {json.dumps(body)}\n\n"
                finally:
                    for c in choices:  # a no-op when done; frees the rows if the client left
                        engine.cancel(c.req)

            return StreamingResponse(sse(), media_type="text/event-stream")

        # Not streaming: wait, but watch the connection, so that an abandoned request stops.
        async def watch() -> None:
            while not await http.is_disconnected():
                await asyncio.sleep(0.25)
            for c in choices:  # nobody is listening: free the rows and their KV blocks
                engine.cancel(c.req)

        watcher = asyncio.create_task(watch())
        try:
            async for _ in events():
                pass
        except APIError as err:
            metrics.requests.labels(route, str(err.status)).inc()
            raise
        finally:
            watcher.cancel()
            for c in choices:
                engine.cancel(c.req)
        out = []
        for c in choices:
            text = c.sent
            if plan.chat:
                lp = None if plan.logprobs is None else {
                    "content": logprob_entries(c, plan, len(c.tokens))}
                out.append({"index": c.index, "message": {"role": "assistant",
                                                          "content": text},
                            "logprobs": lp, "finish_reason": c.finish})
            else:
                prefix = tokenizer.decode(c.req.prompt) if plan.echo else ""
                upto = _count_tokens(tokenizer, c)
                lp = None if plan.logprobs is None else completion_logprobs(
                    c, plan, 0, upto, 0)
                out.append({"text": prefix + text, "index": c.index, "logprobs": lp,
                            "finish_reason": c.finish})
        metrics.requests.labels(route, "200").inc()
        return {"id": cid, "object": "chat.completion" if plan.chat else "text_completion",
                "created": created, "model": model_name, "choices": out, "usage": usage()}

    return app


def _tokens_for(tokenizer: Tokenizer, c: _Choice, n_chars: int) -> int:
    """How many of the choice's tokens the first n_chars of its text cover."""
    if n_chars >= len(tokenizer.decode(c.tokens)):
        return len(c.tokens)
    k = 0
    while k < len(c.tokens) and len(tokenizer.decode(c.tokens[:k + 1])) <= n_chars:
        k += 1
    return k


def _count_tokens(tokenizer: Tokenizer, c: _Choice) -> int:
    """Completion tokens of a choice: those whose text was returned (a stop string cuts)."""
    return _tokens_for(tokenizer, c, len(c.sent))
