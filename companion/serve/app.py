"""The HTTP API: GET /health and an OpenAI-compatible POST /v1/completions, streaming or not.

FastAPI (on Starlette) parses requests and streams server-sent events; uvicorn runs it. The engine
steps in one background thread; each request waits on an asyncio queue the engine feeds.
Install with `pip install "llm-course-companion[serve]"`. Chapter 11.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse

from ..tokenizer import Tokenizer
from .engine import Engine, Request

__all__ = ["BadRequest", "parse_completion", "build_app"]

MAX_TOKENS_DEFAULT = 16


class BadRequest(ValueError):
    """A request the API refuses with 400; `param` names the offending field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(message)
        self.param = param


def _error(param: str | None, message: str, status: int = 400) -> JSONResponse:
    # OpenAI's error shape: {"error": {"message", "type", "param", "code"}}
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param,
                      "code": None}}
    return JSONResponse(body, status_code=status)


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(name, f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise BadRequest(name, f"{name} must lie in [{lo}, {hi}], got {value}")
    return float(value)


def parse_completion(raw: bytes, tokenizer: Tokenizer, context_length: int) -> dict[str, Any]:
    """Validate a /v1/completions body -> settings; BadRequest names the first bad field."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(None, f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadRequest(None, f"the body must be a JSON object, got {type(body).__name__}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt", f"prompt must be a non-empty string, got {prompt!r}"[:200])
    try:
        ids = tokenizer.encode(prompt)
    except ValueError as err:
        raise BadRequest("prompt", f"prompt cannot be encoded: {err}") from None
    if len(ids) >= context_length:
        raise BadRequest("prompt", f"prompt is {len(ids)} tokens; the context holds "
                                   f"{context_length}, so at most {context_length - 1} fit")
    max_tokens = body.get("max_tokens", MAX_TOKENS_DEFAULT)
    room = context_length - len(ids)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("max_tokens", f"max_tokens must be an integer, got {max_tokens!r}")
    if not 0 <= max_tokens <= room:
        raise BadRequest("max_tokens", f"max_tokens must lie in [0, {room}] for this "
                                       f"{len(ids)}-token prompt (context {context_length}), "
                                       f"got {max_tokens}")
    temperature = _number(body, "temperature", 1.0, 0.0, 100.0)
    top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
    top_k = body.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise BadRequest("top_k", f"top_k must be an integer >= 1, got {top_k!r}")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop", f"stop must be a string or up to 4 strings, got {stop!r}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream", f"stream must be true or false, got {stream!r}")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest("seed", f"seed must be an integer, got {seed!r}")
    return dict(ids=ids, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                top_p=None if top_p >= 1.0 else top_p, stop=stop or [], stream=stream, seed=seed)


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


def build_app(engine: Engine, tokenizer: Tokenizer, model_name: str = "companion-gpt") -> FastAPI:
    """The FastAPI app in front of `engine`, whose loop starts and stops with the app."""
    thread = threading.Thread(target=engine.run_forever, daemon=True, name="engine")

    async def lifespan(app: FastAPI):
        thread.start()
        yield
        engine.shutdown()
        thread.join(timeout=10)

    app = FastAPI(title="companion LLM server", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "running": len(engine.running),
                "waiting": len(engine.waiting), "context_length": engine.context_length}

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        try:
            s = parse_completion(await http.body(), tokenizer, engine.context_length)
        except BadRequest as err:
            return _error(err.param, str(err))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def on_token(req: Request, token: int | None) -> None:  # runs in the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, token)

        req = Request(s["ids"], s["max_tokens"], s["temperature"], s["top_k"], s["top_p"],
                      seed=s["seed"], on_token=on_token)
        if s["max_tokens"] == 0:
            req.finish_reason = "length"
            queue.put_nowait(None)
        else:
            engine.submit(req)
        cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created,
                    "model": model_name,
                    "choices": [{"text": text, "index": 0, "logprobs": None,
                                 "finish_reason": finish}]}

        async def tokens():
            """Yield (new text, finish_reason or None) until the request ends or hits a stop."""
            sent = ""
            hold = max((len(x) - 1 for x in s["stop"]), default=0)
            while True:
                token = await queue.get()
                text, hit = _cut_at_stop(tokenizer.decode(list(req.output)), s["stop"])
                if hit:
                    engine.cancel(req)
                if token is None or hit:
                    stopped = hit or req.finish_reason == "stop"
                    yield text[len(sent):], "stop" if stopped else "length"
                    return
                # Hold back text that might be the start of a stop string.
                safe = text[:max(len(sent), len(text) - hold)]
                yield safe[len(sent):], None
                sent = safe

        if s["stream"]:
            async def events():
                try:
                    async for new, finish in tokens():
                        if new or finish:
                            yield f"data: {json.dumps(chunk(new, finish))}\n\n"
                    yield "data: [DONE]\n\n"
                finally:
                    engine.cancel(req)  # a no-op when done; frees the slot if the client left

            return StreamingResponse(events(), media_type="text/event-stream")

        text, finish = "", "length"
        async for new, fin in tokens():
            text, finish = text + new, fin or finish
        body = chunk(text, finish)
        n_out = len(tokenizer.encode(text)) if text else 0  # what was returned, not what ran
        body["usage"] = {"prompt_tokens": len(s["ids"]), "completion_tokens": n_out,
                         "total_tokens": len(s["ids"]) + n_out}
        return body

    return app
