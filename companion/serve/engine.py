"""Continuous batching over a paged KV cache: requests join and leave the batch between steps.

Each step admits waiting requests (prefill, one by one), then decodes one token for every running
sequence in a single batched forward. Policy "static" admits a new batch only once the whole
previous batch has finished, and keeps finished rows computing meanwhile, as a padded batch does.
The loop is supervised: an error in a step fails that step's requests and the loop goes on.
Chapter 11.
"""
from __future__ import annotations

import itertools
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import repeat_kv
from ..generate import check_sampling, sample_next
from ..positional import apply_rope
from .paged import PagedKVCache

__all__ = ["Request", "Engine", "QueueFull"]

_ids = itertools.count()


class QueueFull(RuntimeError):
    """submit() refused a request: the waiting queue is at its bound (a server answers 429)."""


@dataclass
class Request:
    """One generation request and what became of it."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    on_token: Callable[[Request, int | None], None] | None = None  # None marks the end
    logprobs: int | None = None  # record each token's log-probability and this many alternatives
    prompt_logprobs: bool = False  # also score the prompt's own tokens (the API's echo)
    deadline: float | None = None  # time.monotonic() after which the engine drops the request
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    # Per output token: (its log-probability, [(id, log-probability)] of the top alternatives).
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    prompt_token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(
        default_factory=list)  # for prompt[1:]
    finish_reason: str | None = None  # "length", "stop", "cancelled", "timeout" or "error"
    error: str | None = None  # what went wrong, when finish_reason is "error"
    cancelled: bool = False
    padding: list[int] = field(default_factory=list)  # static policy: tokens computed after done

    def __post_init__(self) -> None:
        seed = self.seed if self.seed is not None else self.id
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class Engine:
    """Serve many requests with one model: a paged KV cache and (continuous or static) batching.

    Example: Engine(model).generate([[1, 2], [3]], max_new_tokens=5) -> two lists of 5 token ids
    """

    def __init__(self, model: nn.Module, max_batch: int = 8, block_size: int = 16,
                 num_blocks: int | None = None, policy: str = "continuous",
                 max_waiting: int | None = None):
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0 or None, got {max_waiting}")
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.model = model.eval()
        self.context_length = model.config.context_length
        self.max_batch, self.policy = max_batch, policy
        per_seq = math.ceil(self.context_length / block_size)
        # Default: blocks for a full batch at full length: admission never waits on memory.
        num_blocks = max_batch * per_seq if num_blocks is None else num_blocks
        self.cache = PagedKVCache.for_model(model, block_size, num_blocks)
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.zombies: set[int] = set()  # static policy: finished rows still in the padded batch
        self.reserved = 0  # blocks promised to running requests, so a step never runs out
        self.steps = 0
        self.max_waiting = max_waiting  # None: an unbounded queue
        self.errors = 0  # requests failed by an error inside the engine
        self.last_error: str | None = None
        self.step_started: float | None = None  # time.monotonic() while a step runs, else None
        self.heartbeat = time.monotonic()  # the loop's last sign of life
        self.started = self.alive = False
        self._admitting: list[Request] = []  # admitted this step, not yet running
        self._lock = threading.Condition()
        self._stop = False

    # --- the queue -------------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        """Queue a request (thread-safe); ValueError when it cannot fit the context."""
        n = len(request.prompt) + request.max_new_tokens
        if not request.prompt:
            raise ValueError("prompt must hold at least one token")
        if request.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {request.max_new_tokens}")
        if n > self.context_length:
            raise ValueError(f"prompt {len(request.prompt)} + max_new_tokens "
                             f"{request.max_new_tokens} = {n} exceeds the context "
                             f"{self.context_length}")
        if self._need(request) > self.cache.allocator.num_blocks:
            raise ValueError(f"request needs {self._need(request)} KV blocks; the pool has "
                             f"{self.cache.allocator.num_blocks}")
        check_sampling(request.temperature, request.top_k, request.top_p)
        with self._lock:
            if self._stop:
                raise QueueFull("the engine is shutting down")
            if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
                raise QueueFull(f"the queue is full: {len(self.waiting)} requests are waiting")
            self.waiting.append(request)
            self._lock.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Ask the engine to drop a request at its next step (thread-safe)."""
        request.cancelled = True

    def _need(self, r: Request) -> int:
        # Static batching preallocates the whole context for every row; paging books what it asks.
        n = self.context_length if self.policy == "static" else len(r.prompt) + r.max_new_tokens
        return self.cache.blocks_for(n)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step --------------------------------------------------------------------------

    def _finish(self, r: Request, reason: str) -> None:
        r.finish_reason = reason
        if r.on_token is not None:
            r.on_token(r, None)

    def _emit(self, r: Request, token: int) -> None:
        """Record a token for a live request and finish it on a stop id or at its length."""
        r.output.append(token)
        if r.on_token is not None:
            r.on_token(r, token)
        if token in r.stop_ids:
            self._finish(r, "stop")
        elif len(r.output) >= r.max_new_tokens:
            self._finish(r, "length")

    def _fail(self, r: Request, err: BaseException) -> None:
        """Finish one request with an error: the client gets a 500, the engine goes on."""
        if r.done:
            return
        self.errors += 1
        r.error = self.last_error = f"{type(err).__name__}: {err}"
        if not r.done:
            self._finish(r, "error")

    def _release(self, r: Request) -> None:
        if r.id in self.cache.tables:  # a request that failed in its prefill may hold none
            self.cache.free_sequence(r.id)
        self.reserved -= self._need(r)
        self.zombies.discard(r.id)
        self.running.remove(r)

    def _expire_waiting(self) -> None:
        """Drop queued requests that were cancelled or ran past their deadline, before admission."""
        now = time.monotonic()
        with self._lock:
            gone = [r for r in self.waiting
                    if r.cancelled or (r.deadline is not None and now > r.deadline)]
            self.waiting = [r for r in self.waiting if r not in gone]
        for r in gone:
            self._finish(r, "cancelled" if r.cancelled else "timeout")

    def _admit(self) -> list[Request]:
        with self._lock:
            if self.policy == "static" and self.running:
                return []
            new = []
            while self.waiting and len(self.running) + len(new) < self.max_batch:
                r = self.waiting[0]
                if self.reserved + self._need(r) > self.cache.allocator.num_blocks:
                    break  # wait for memory: first come, first served
                self.waiting.pop(0)
                self.reserved += self._need(r)
                new.append(r)
            return new

    def _sample(self, r: Request, logits: torch.Tensor) -> int:
        token = int(sample_next(logits[None], r.temperature, r.top_k, r.top_p, r.generator))
        if r.logprobs is not None:  # the model's own distribution, before temperature
            r.token_logprobs.append(_scored(torch.log_softmax(logits.float(), -1), token,
                                            r.logprobs))
        return token

    @torch.no_grad()
    def _prefill(self, r: Request) -> None:
        """Read the prompt with contiguous caches, copy its keys and values into blocks."""
        idx = torch.tensor([r.prompt], device=self.cache.k.device)
        caches = self.model.make_caches(1, max_len=len(r.prompt))
        all_logits = self.model(idx, caches=caches)[0]  # (T, V)
        logits = all_logits[-1]
        if r.prompt_logprobs:  # token t+1 of the prompt scored by the logits at t
            lps = torch.log_softmax(all_logits[:-1].float(), -1)
            r.prompt_token_logprobs = [_scored(lp, t, r.logprobs or 0)
                                       for lp, t in zip(lps, r.prompt[1:])]
        self.cache.add_sequence(r.id)
        self.cache.write_prefill(r.id, [c.k[0] for c in caches], [c.v[0] for c in caches])
        self._admitting.remove(r)
        self.running.append(r)
        if r.max_new_tokens == 0:
            self._finish(r, "length")
        else:
            try:  # a sampling error fails this request alone
                self._emit(r, self._sample(r, logits))
            except Exception as err:
                self._fail(r, err)

    @torch.no_grad()
    def _decode(self, rows: list[Request]) -> torch.Tensor:
        """One token for each row in one batched forward over the paged cache -> logits (N, V)."""
        m, ids = self.model, [r.id for r in rows]
        last = [(r.padding or r.output)[-1] for r in rows]
        dev = self.cache.k.device
        positions = torch.tensor([self.cache.lengths[i] for i in ids], device=dev)  # (N,)
        blocks, offsets = self.cache.reserve_step(ids)
        x = m.tok_emb(torch.tensor(last, device=dev)[:, None])  # (N, 1, d)
        if m.pos_emb is not None:
            x = x + m.pos_emb(positions)[:, None]  # each row at its own position
        S = max(len(self.cache.tables[i]) for i in ids) * self.cache.block_size
        # Row n sees keys 0..positions[n]; the padding after them gets no weight.
        mask = (torch.arange(S, device=dev)[None, :] <= positions[:, None])[:, None, None, :]
        for layer, block in enumerate(m.blocks):
            a = block.attn
            h = block.attn_norm(x)
            N = h.shape[0]
            q = a.q_proj(h).view(N, 1, a.n_heads, a.d_head).transpose(1, 2)  # (N, H, 1, D)
            k = a.k_proj(h).view(N, 1, a.n_kv_heads, a.d_head).transpose(1, 2)  # (N, H_kv, 1, D)
            v = a.v_proj(h).view(N, 1, a.n_kv_heads, a.d_head).transpose(1, 2)
            if a.rope is not None:
                cos = a.rope.cos[positions].to(q.dtype)[:, None, None, :]  # (N, 1, 1, D)
                sin = a.rope.sin[positions].to(q.dtype)[:, None, None, :]
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            self.cache.write_step(layer, blocks, offsets, k[:, :, 0], v[:, :, 0])
            keys, values = self.cache.gather(layer, ids)  # (N, H_kv, S, D)
            rep = a.n_heads // a.n_kv_heads
            keys, values = repeat_kv(keys, rep), repeat_kv(values, rep)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (N, H, 1, D)
            x = x + a.o_proj(y.transpose(1, 2).reshape(N, 1, a.n_heads * a.d_head))
            x = x + block.mlp(block.mlp_norm(x))
        return m.head(x)[:, 0]  # (N, V): final norm, head, soft cap

    def step(self) -> int:
        """Admit, prefill, decode one token per running row, retire the finished; tokens emitted.

        Supervised: an exception fails the requests of this step (finish_reason "error", their
        blocks freed) and returns 0, so that the loop, and every later request, goes on.
        """
        self.step_started = time.monotonic()
        try:
            return self._step()
        except Exception as err:
            traceback.print_exc()
            for r in self.running + self._admitting:
                self._fail(r, err)
            for r in self._admitting:
                self.reserved -= self._need(r)
                if r.id in self.cache.tables:
                    self.cache.free_sequence(r.id)
            self._admitting = []
            for r in list(self.running):
                self._release(r)
            return 0
        finally:
            self.step_started = None

    def _step(self) -> int:
        emitted = 0
        now = time.monotonic()
        for r in list(self.running):
            if r.cancelled and not r.done:
                self._finish(r, "cancelled")
            elif r.deadline is not None and now > r.deadline and not r.done:
                self._finish(r, "timeout")
        self._expire_waiting()
        self._admitting = self._admit()
        for r in list(self._admitting):
            if r.cancelled:
                self._admitting.remove(r)
                self.reserved -= self._need(r)
                self._finish(r, "cancelled")
                continue
            self._prefill(r)
            emitted += 1
        for r in list(self.running):  # retire: static keeps the finished rows until all are done
            if r.done and (self.policy == "continuous" or all(o.done for o in self.running)):
                self._release(r)
            elif r.done:
                self.zombies.add(r.id)
        live = [r for r in self.running if r.output
                and len(r.prompt) + len(r.output) + len(r.padding) < self.context_length]
        if live:
            logits = self._decode(live)
            for r, row in zip(live, logits):
                if not r.done:
                    try:  # a sampling error fails this request alone
                        self._emit(r, self._sample(r, row))
                        emitted += 1
                    except Exception as err:
                        self._fail(r, err)
                else:  # a static zombie: computed and thrown away, never part of the output
                    r.padding.append(int(row.argmax()))
        if self.policy == "continuous":  # free finished rows now, not a step later
            for r in [r for r in self.running if r.done]:
                self._release(r)
        self.steps += 1
        return emitted

    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int],
                 temperature: float = 0.0, seed: int = 0) -> list[list[int]]:
        """Run prompts to completion and return each one's new tokens (greedy by default)."""
        many = isinstance(max_new_tokens, list)
        lengths = max_new_tokens if many else [max_new_tokens] * len(prompts)
        reqs = [self.submit(Request(list(p), n, temperature, seed=seed + i))
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        while self.has_work:
            self.step()
        return [r.output[:r.max_new_tokens] for r in reqs]

    # --- background loop for the server ---------------------------------------------------

    def run_forever(self) -> None:
        """Step while there is work; sleep on the condition when idle; return after shutdown()."""
        self.started = self.alive = True
        try:
            while True:
                with self._lock:
                    while not self.has_work and not self._stop:
                        self.heartbeat = time.monotonic()
                        self._lock.wait(timeout=1.0)
                    if self._stop and not self.has_work:  # drain: finish what was accepted
                        return
                self.heartbeat = time.monotonic()
                self.step()
        finally:
            self.alive = False

    def shutdown(self) -> None:
        """Refuse new requests; run_forever returns once the accepted ones are done."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()

    def health(self, stall_s: float = 30.0) -> dict:
        """The loop's real state: ok, stalled (a step running over stall_s), stopping or dead."""
        now = time.monotonic()
        started = self.step_started
        busy = 0.0 if started is None else now - started
        if self.started and not self.alive:
            state = "stopped" if self._stop else "dead"
        elif self._stop:
            state = "stopping"
        elif busy > stall_s or (self.started and now - self.heartbeat > stall_s + 1.0):
            state = "stalled"
        else:
            state = "ok"
        return {"state": state, "running": len(self.running), "waiting": len(self.waiting),
                "kv_blocks_used": self.cache.blocks_in_use,
                "kv_blocks_total": self.cache.allocator.num_blocks, "steps": self.steps,
                "errors": self.errors, "last_error": self.last_error,
                "step_running_s": round(busy, 3)}


def _scored(logprobs: torch.Tensor, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """A token's log-probability and the k most likely (id, log-probability) pairs."""
    top = logprobs.topk(min(k, logprobs.shape[-1])) if k > 0 else None
    alts = [] if top is None else [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
    return float(logprobs[token]), alts
