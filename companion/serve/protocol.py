"""OpenAI's request bodies, validated: /v1/completions and /v1/chat/completions -> a Plan.

Every refusal is a BadRequest naming the field, and every error an APIError that the app answers
in OpenAI's shape. Pure functions (no web framework), run in a worker thread. Chapter 11.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer import Tokenizer

__all__ = ["APIError", "BadRequest", "Limits", "Plan", "error_body", "load_json",
           "parse_completion", "chat_prompt", "parse_chat"]

MAX_TOKENS_DEFAULT = 16  # OpenAI's default for /v1/completions
MIN_TEMPERATURE = 1e-3  # t > 0 below it is refused: 1e-300 became 0 in float32 and broke sampling
SEED_RANGE = (-(2**63), 2**63 - 1)  # what torch.Generator.manual_seed takes as a signed 64-bit int
MAX_CHOICES = 16  # prompts x n in one request
MAX_LOGPROBS = 5  # OpenAI's limit for /v1/completions; chat's top_logprobs goes to 20
CHAT_END = "<|end|>"
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "n", "stream",
           "stream_options", "stop", "seed", "user", "presence_penalty", "frequency_penalty",
           "logit_bias", "logprobs"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "top_logprobs"}


@dataclass
class Limits:
    """What the server refuses or gives up on: body size, JSON depth, deadline, a stalled loop."""

    max_body_bytes: int = 1 << 20  # 413 above it
    max_json_depth: int = 32  # 400 above it (a body nested 100,000 deep once gave a 500)
    request_timeout_s: float = 600.0  # a request still running after it is dropped: 504
    stall_s: float = 30.0  # /health says "stalled" when one step runs longer
    retry_after_s: int = 1  # the Retry-After of a 429


class APIError(Exception):
    """An error answered in OpenAI's shape {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers


class BadRequest(APIError):
    """A request the API refuses with 400; `param` names the offending field."""

    def __init__(self, param: str | None, message: str):
        super().__init__(400, message, param)


def error_body(status: int, message: str, param: str | None = None,
                code: str | None = None) -> dict:
    kind = ("server_error" if status >= 500 else
            "rate_limit_error" if status == 429 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass
class Plan:
    """A validated request: token-id prompts and how to sample from them."""

    prompts: list[list[int]]
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_ids: tuple[int, ...] = ()
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    echo: bool = False
    seed: int | None = None
    chat: bool = False
    model: str | None = None


def load_json(raw: bytes, max_depth: int = 32) -> dict[str, Any]:
    """Bytes -> a JSON object; BadRequest for bad JSON, a non-object or nesting over max_depth."""
    try:
        body = json.loads(raw)
    except RecursionError:  # json's parser recurses per level
        raise BadRequest(None, f"the body nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as err:  # ValueError: bad JSON, or a 5000-digit int
        raise BadRequest(None, f"the body is not valid JSON: {str(err)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest(None, f"the body must be a JSON object, got {type(body).__name__}")
    stack = [(body, 1)]
    while stack:  # iterative, so that depth itself cannot overflow the check
        obj, depth = stack.pop()
        if depth > max_depth:
            raise BadRequest(None, f"the body nests deeper than {max_depth} levels")
        children = obj.values() if isinstance(obj, dict) else obj
        stack += [(c, depth + 1) for c in children if isinstance(c, (dict, list))]
    return body


def _number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(name, f"{name} must be a number, got {value!r}"[:200])
    if not lo <= value <= hi:
        raise BadRequest(name, f"{name} must lie in [{lo}, {hi}], got {value}")
    return float(value)


def _int(body: dict, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(name, f"{name} must be an integer in [{lo}, {hi}], got {value!r}"[:200])
    return value


def _refuse_unsupported(body: dict, allowed: set[str]) -> None:
    """An option this server does not implement is a 400 naming it, never silently ignored."""
    for name in body:
        if name not in allowed:
            raise BadRequest(name, f"{name!r} is not supported by this server"[:200])
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise BadRequest(name, f"{name} is not supported by this server; only 0 is accepted")
    if body.get("logit_bias") not in (None, {}):
        raise BadRequest("logit_bias", "logit_bias is not supported by this server")
    if body.get("suffix") is not None:
        raise BadRequest("suffix", "suffix (insertion) is not supported by this server")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise BadRequest("user", f"user must be a string, got {user!r}"[:200])


def _sampling(body: dict, plan: Plan, room: int, default_max: int) -> None:
    """Fill plan's shared options from the body; `room` is what the longest prompt leaves."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model", f"model must be a string, got {model!r}"[:200])
    plan.model = model
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    value = body.get(name)
    if value is None:
        value = min(default_max, room)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= room:
        raise BadRequest(name, f"{name} must be an integer in [0, {room}] for this prompt "
                               f"(the context leaves {room} tokens), got {value!r}"[:240])
    plan.max_tokens = value
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    if 0 < temperature < MIN_TEMPERATURE:
        raise BadRequest("temperature", f"temperature must be 0 (greedy) or lie in "
                                        f"[{MIN_TEMPERATURE}, 2], got {temperature}")
    plan.temperature = temperature
    top_p = body.get("top_p")
    if top_p is not None:
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:
            raise BadRequest("top_p", "top_p must lie in (0, 1]; use temperature 0 for greedy")
    plan.top_p = None if top_p is None or top_p >= 1.0 else top_p
    plan.top_k = _int(body, "top_k", None, 1, 2**31)
    plan.seed = _int(body, "seed", None, *SEED_RANGE)
    plan.n = _int(body, "n", 1, 1, MAX_CHOICES)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop", f"stop must be a string or up to 4 strings, got {stop!r}"[:200])
    plan.stop = stop or []
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream", f"stream must be true or false, got {stream!r}"[:200])
    plan.stream = stream
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise BadRequest("stream_options", "stream_options is only allowed with stream: true")
        if not isinstance(options, dict) or set(options) - {"include_usage"} or \
                not isinstance(options.get("include_usage", False), bool):
            raise BadRequest("stream_options", "stream_options takes only include_usage "
                                               f"(true or false), got {options!r}"[:200])
        plan.include_usage = options.get("include_usage", False)


def _encode(tokenizer: Tokenizer, text: str, param: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except ValueError as err:
        raise BadRequest(param, f"{param} cannot be encoded: {err}"[:240]) from None


def _check_prompt(ids: list[int], param: str, vocab_size: int, context_length: int) -> None:
    if not ids:
        raise BadRequest(param, f"{param} must hold at least one token")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
        raise BadRequest(param, f"{param}: token ids must be integers in [0, {vocab_size})")
    if len(ids) >= context_length:
        raise BadRequest(param, f"{param} is {len(ids)} tokens; the context holds "
                                f"{context_length}, so at most {context_length - 1} fit")


def parse_completion(raw: bytes | dict, tokenizer: Tokenizer, context_length: int,
                     max_depth: int = 32) -> Plan:
    """Validate a /v1/completions body -> Plan; BadRequest names the first bad field.

    Example: parse_completion(b'{"prompt": "Hi", "max_tokens": 4}', tok, 64).max_tokens -> 4
    """
    body = raw if isinstance(raw, dict) else load_json(raw, max_depth)
    _refuse_unsupported(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    # The four forms OpenAI takes: a string, strings, token ids, lists of token ids.
    if isinstance(prompt, str):
        forms = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        forms = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        forms = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt):
        forms = prompt
    else:
        raise BadRequest("prompt", "prompt must be a non-empty string, list of strings, list of "
                                   f"token ids or list of lists of token ids, got {prompt!r}"[:240])
    prompts = []
    for i, p in enumerate(forms):
        param = "prompt" if len(forms) == 1 else f"prompt[{i}]"
        ids = _encode(tokenizer, p, param) if isinstance(p, str) else p
        _check_prompt(ids, param, tokenizer.vocab_size, context_length)
        prompts.append(list(ids))
    plan = Plan(prompts=prompts, max_tokens=0)
    _sampling(body, plan, context_length - max(map(len, prompts)), MAX_TOKENS_DEFAULT)
    if len(prompts) * plan.n > MAX_CHOICES:
        raise BadRequest("n", f"{len(prompts)} prompts x n={plan.n} exceeds {MAX_CHOICES} "
                              "choices per request")
    best_of = body.get("best_of")
    if best_of is not None and best_of != plan.n:
        raise BadRequest("best_of", f"best_of is not supported beyond best_of = n ({plan.n}), "
                                    f"got {best_of!r}"[:200])
    plan.logprobs = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest("echo", f"echo must be true or false, got {echo!r}"[:200])
    if echo and plan.stream and plan.logprobs is not None:
        raise BadRequest("echo", "echo with logprobs is not supported when streaming")
    plan.echo = echo
    return plan


def chat_prompt(messages: Any, tokenizer: Tokenizer) -> list[int]:
    """Chat messages -> the prompt's ids: chapter 10's template, then <|assistant|>.

    Example: chat_prompt([{"role": "user", "content": "hi"}], tok) encodes
    '<|user|>hi<|end|><|assistant|>'.
    """
    from ..sft import SPECIAL_TOKENS, render_chat

    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "messages must be a non-empty list of {role, content}")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}]", f"messages[{i}] must be an object, got {m!r}"[:200])
        role, content = m.get("role"), m.get("content")
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages[{i}].role", "this model knows the roles 'user' and "
                                                    f"'assistant' only, got {role!r}"[:200])
        if isinstance(content, list):  # content parts: text only
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise BadRequest(f"messages[{i}].content", "only text content parts are "
                                                           "supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content",
                             f"content must be a string, got {content!r}"[:200])
        if any(s in content for s in SPECIAL_TOKENS):
            raise BadRequest(f"messages[{i}].content",
                             "content may not contain the chat template's special tokens")
        if set(m) - {"role", "content"}:
            extra = sorted(set(m) - {"role", "content"})[0]
            raise BadRequest(f"messages[{i}].{extra}", f"{extra!r} is not supported")
        clean.append({"role": role, "content": content})
    return _encode(tokenizer, render_chat(clean) + "<|assistant|>", "messages")


def parse_chat(raw: bytes | dict, tokenizer: Tokenizer, context_length: int,
               max_depth: int = 32) -> Plan:
    """Validate a /v1/chat/completions body -> Plan that stops at <|end|>.

    A role token ends the answer too: inside a message's content it would make the reply one that
    the template (and this API) refuses when the client sends the conversation back.
    """
    body = raw if isinstance(raw, dict) else load_json(raw, max_depth)
    _refuse_unsupported(body, CHAT_FIELDS)
    end = getattr(tokenizer, "special_ids", {}).get(CHAT_END)
    if end is None:
        raise BadRequest("messages", "this model has no chat template: it is a base model; "
                                     "use /v1/completions")
    ids = chat_prompt(body.get("messages"), tokenizer)
    _check_prompt(ids, "messages", tokenizer.vocab_size, context_length)
    specials = tuple(getattr(tokenizer, "special_ids", {}).values())
    plan = Plan(prompts=[ids], max_tokens=0, stop_ids=(end, *(i for i in specials if i != end)),
                chat=True)
    _sampling(body, plan, context_length - len(ids), context_length)
    logprobs = body.get("logprobs", False)
    if not isinstance(logprobs, bool):
        raise BadRequest("logprobs", f"logprobs must be true or false, got {logprobs!r}"[:200])
    top = _int(body, "top_logprobs", None, 0, 20)
    if top is not None and not logprobs:
        raise BadRequest("top_logprobs", "top_logprobs needs logprobs: true")
    plan.logprobs = (top or 0) if logprobs else None
    return plan
