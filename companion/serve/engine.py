"""Continuous batching over a paged KV cache: requests join and leave the batch between steps.

Each step is one batched forward over a token budget: one token for every decoding row first, so
that new prompts never stall them, then chunks of the prompts being read (chunked prefill). The
KV pool is a memory budget in blocks, smaller than max_batch full contexts: a request is admitted
on the blocks its prompt needs now, grows a block at a time, and when the pool runs dry the
newest row is preempted, its blocks freed, and recomputed later from its tokens. Full prompt
blocks go into a prefix cache that later prompts share. Policy "static" admits a new batch only
once the whole previous batch has finished, reserves each row's whole context as a padded batch
does, and keeps finished rows computing meanwhile. The loop is supervised: an error in a step
fails that step's requests and the loop goes on. Chapter 11.
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


@dataclass(eq=False)  # a request is itself: compared by identity, as list.remove() expects
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
    computed: int = 0  # tokens whose keys and values are in the cache
    preemptions: int = 0  # times its blocks were taken back and its tokens recomputed

    def __post_init__(self) -> None:
        seed = self.seed if self.seed is not None else self.id
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def tokens(self) -> list[int]:
        """Everything the model has read or will read next: prompt, output, static padding."""
        return self.prompt + self.output + self.padding


class Engine:
    """Serve many requests with one model: a paged KV cache and (continuous or static) batching.

    The pool holds num_blocks blocks (or kv_budget_bytes of them; default half of max_batch full
    contexts); a step reads at most max_step_tokens tokens; prefix_cache shares prompt blocks.
    Example: Engine(model).generate([[1, 2], [3]], max_new_tokens=5) -> two lists of 5 token ids
    """

    def __init__(self, model: nn.Module, max_batch: int = 8, block_size: int = 16,
                 num_blocks: int | None = None, policy: str = "continuous",
                 max_waiting: int | None = None, max_step_tokens: int = 256,
                 kv_budget_bytes: int | None = None, prefix_cache: bool = True):
        if max_waiting is not None and max_waiting < 0:
            raise ValueError(f"max_waiting must be >= 0 or None, got {max_waiting}")
        if policy not in ("continuous", "static"):
            raise ValueError(f"policy must be 'continuous' or 'static', got {policy!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if max_step_tokens <= max_batch:
            raise ValueError(f"max_step_tokens must exceed max_batch ({max_batch}), so that a "
                             f"step has room to read prompts too; got {max_step_tokens}")
        if num_blocks is not None and kv_budget_bytes is not None:
            raise ValueError("give num_blocks or kv_budget_bytes, not both")
        self.model = model.eval()
        self.context_length = model.config.context_length
        self.max_batch, self.policy, self.max_step_tokens = max_batch, policy, max_step_tokens
        per_seq = math.ceil(self.context_length / block_size)
        if kv_budget_bytes is not None:  # a memory budget, in whole blocks
            probe = PagedKVCache.for_model(model, block_size, 1)
            num_blocks = kv_budget_bytes // probe.bytes_per_block
            if num_blocks < 1:
                raise ValueError(f"kv_budget_bytes={kv_budget_bytes} is less than one block "
                                 f"({probe.bytes_per_block} bytes)")
        elif num_blocks is None:
            # Static batching preallocates every row's context. Paging needs less: half of that
            # (and at least one full context); preemption covers the rare moment it runs out.
            num_blocks = (max_batch * per_seq if policy == "static"
                          else max(per_seq, math.ceil(max_batch * per_seq / 2)))
        self.cache = PagedKVCache.for_model(model, block_size, num_blocks)
        self.prefix_cache = prefix_cache
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # admitted, in admission order: reading or decoding
        self.zombies: set[int] = set()  # static policy: finished rows still in the padded batch
        self.reserved = 0  # static policy: blocks booked for whole contexts
        self.steps = self.preemptions = 0
        self.peak_rows = 0  # most rows in one step
        self.max_waiting = max_waiting  # None: an unbounded queue
        self.errors = 0  # requests failed by an error inside the engine
        self.last_error: str | None = None
        self.step_started: float | None = None  # time.monotonic() while a step runs, else None
        self.heartbeat = time.monotonic()  # the loop's last sign of life
        self.started = self.alive = False
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
        """Blocks a request holds at most: its whole context when static, else its full length."""
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
        if self.policy == "static":
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

    def _admit(self) -> None:
        """Move waiting requests into the batch while rows and blocks allow, first come first."""
        cache = self.cache
        with self._lock:
            if self.policy == "static" and self.running:
                return
            while self.waiting and len(self.running) < self.max_batch:
                r = self.waiting[0]
                if self.policy == "static":  # a padded batch books every row's whole context
                    if self.reserved + self._need(r) > cache.allocator.num_blocks:
                        return
                    self.reserved += self._need(r)
                cache.add_sequence(r.id)
                tokens, lookups = r.tokens, 0
                if self.prefix_cache and not r.prompt_logprobs:  # echo scores every prompt token
                    # The last token is always read again: its logits give the next token.
                    lookups = (len(tokens) - 1) // cache.block_size
                    cache.match_prefix(r.id, tokens, lookups, count=False)
                r.computed = cache.lengths[r.id]
                # Admit on the blocks the request needs now, its tokens, not its maximum length,
                # and keep one spare block per running row so that they can grow this step.
                need = cache.blocks_to_grow(r.id, len(tokens))
                if (self.policy == "continuous"
                        and need + len(self.running) > cache.allocator.num_free):
                    cache.free_sequence(r.id)
                    return
                cache.prefix_queries += lookups
                cache.prefix_hits += r.computed // cache.block_size
                self.waiting.pop(0)
                self.running.append(r)

    def _preempt(self, victim: Request) -> None:
        """Take a row's blocks back; it waits at the head of the queue to be recomputed."""
        self.cache.free_sequence(victim.id)  # its full blocks stay cached: recompute finds them
        victim.computed = 0
        victim.preemptions += 1
        self.preemptions += 1
        self.running.remove(victim)
        with self._lock:
            self.waiting.insert(0, victim)

    def _schedule(self) -> list[tuple[Request, int]]:
        """This step's (row, tokens to read): every decoding row first, then prompt chunks.

        A decoding row that needs a block when none is free preempts the newest other row (or,
        being the newest, itself). A row reading its prompt takes what the budget and the free
        blocks allow, and waits otherwise.
        """
        cache = self.cache
        budget = self.max_step_tokens
        # A static zombie stops at the context's end; a live row never gets there.
        decoding = [r for r in self.running if r.computed == len(r.tokens) - 1
                    and len(r.tokens) <= self.context_length]
        reading = [r for r in self.running if r.computed < len(r.tokens) - 1]
        plan: list[tuple[Request, int]] = []
        for r in decoding:
            if r not in self.running:
                continue  # preempted by an older row this step
            while cache.blocks_to_grow(r.id, r.computed + 1) > cache.allocator.num_free:
                scheduled = {id(q) for q, _ in plan}
                others = [q for q in self.running if q is not r and id(q) not in scheduled]
                self._preempt(others[-1] if others else r)
                if r not in self.running:
                    break
            else:
                cache.grow(r.id, r.computed + 1)
                plan.append((r, 1))
                budget -= 1
        for r in reading:
            if r not in self.running or budget <= 0:
                continue
            room = (len(cache.tables[r.id]) + cache.allocator.num_free) * cache.block_size
            n = min(len(r.tokens) - r.computed, budget, room - r.computed)
            if n > 0:
                cache.grow(r.id, r.computed + n)
                plan.append((r, n))
                budget -= n
        return plan

    def _sample(self, r: Request, logits: torch.Tensor) -> int:
        token = int(sample_next(logits[None], r.temperature, r.top_k, r.top_p, r.generator))
        if r.logprobs is not None:  # the model's own distribution, before temperature
            r.token_logprobs.append(_scored(torch.log_softmax(logits.float(), -1), token,
                                            r.logprobs))
        return token

    @torch.no_grad()
    def _forward(self, plan: list[tuple[Request, int]]) -> list[torch.Tensor]:
        """Read each row's next n tokens in one batched forward -> per row, logits (n or 1, V).

        The tokens of all rows are packed into one sequence for the linear layers; attention
        unpacks them into a padded (rows, T_max) batch, each row reading its own keys through its
        block table, masked to its own positions.
        """
        m, cache, dev, bs = self.model, self.cache, self.cache.k.device, self.cache.block_size
        counts = [n for _, n in plan]
        N, T = len(plan), max(counts)
        tokens, pos, where, blocks, heads = [], [], [], [], []
        for i, (r, n) in enumerate(plan):
            table, span = cache.tables[r.id], range(r.computed, r.computed + n)
            tokens += r.tokens[r.computed:r.computed + n]
            pos += span
            where += range(i * T, i * T + n)  # its place in the padded (N * T) batch
            blocks += [table[p // bs] for p in span]
            # The head only where logits are used: the last token, or all of an echo's prompt.
            echo = r.prompt_logprobs and r.computed < len(r.prompt) - 1
            heads += range(len(pos) - (n if echo else 1), len(pos))
        M = len(tokens)
        pos_t = torch.tensor(pos, device=dev)  # (M,) each token's own position
        blocks_t, offsets_t = torch.tensor(blocks, device=dev), pos_t % bs
        where_t = torch.tensor(where, device=dev)
        width = max(len(cache.tables[r.id]) for r, _ in plan)
        # Short tables are padded with block 0: the mask hides those keys.
        tables = torch.tensor([cache.tables[r.id] + [0] * (width - len(cache.tables[r.id]))
                               for r, _ in plan], device=dev)  # (N, width)
        qpos = torch.zeros(N * T, dtype=torch.long, device=dev)  # padded queries sit at 0
        qpos[where_t] = pos_t
        # Query (n, t) sees keys 0..qpos[n, t] of its own row; padding and the future are hidden.
        mask = torch.arange(width * bs, device=dev) <= qpos.view(N, 1, T, 1)  # (N, 1, T, S)
        x = m.tok_emb(torch.tensor(tokens, device=dev))[None]  # (1, M, d): packed, no padding
        if m.pos_emb is not None:
            x = x + m.pos_emb(pos_t)[None]  # each token at its own position
        rope = m.blocks[0].attn.rope
        if rope is not None:  # every block's tables are the same: look them up once
            cos = rope.cos[pos_t].to(x.dtype)[:, None, :]  # (M, 1, D)
            sin = rope.sin[pos_t].to(x.dtype)[:, None, :]
        for layer, block in enumerate(m.blocks):
            a = block.attn
            h = block.attn_norm(x)[0]  # (M, d)
            q = a.q_proj(h).view(M, a.n_heads, a.d_head)
            k = a.k_proj(h).view(M, a.n_kv_heads, a.d_head)
            v = a.v_proj(h).view(M, a.n_kv_heads, a.d_head)
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            if a.rope is not None:
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            cache.write_step(layer, blocks_t, offsets_t, k, v)  # (M, H_kv, D) into their slots
            keys = cache.k[layer][tables]  # (N, width, H_kv, bs, D) through the block tables
            values = cache.v[layer][tables]
            keys = keys.permute(0, 2, 1, 3, 4).flatten(2, 3)  # (N, H_kv, S, D)
            values = values.permute(0, 2, 1, 3, 4).flatten(2, 3)
            rep = a.n_heads // a.n_kv_heads
            keys, values = repeat_kv(keys, rep), repeat_kv(values, rep)
            if M == N * T:  # nothing padded (every row reads one token, say): no scatter
                qp = q
            else:
                qp = q.new_zeros(N * T, a.n_heads, a.d_head)
                qp[where_t] = q
            qp = qp.view(N, T, a.n_heads, a.d_head).transpose(1, 2)  # (N, H, T, D)
            y = F.scaled_dot_product_attention(qp, keys, values, attn_mask=mask)  # (N, H, T, D)
            y = y.transpose(1, 2).reshape(N * T, a.n_heads * a.d_head)
            if M != N * T:
                y = y[where_t]  # packed again: (M, H * D)
            x = x + a.o_proj(y[None])
            x = x + block.mlp(block.mlp_norm(x))
        logits = m.head(x[0, heads])  # (rows of logits, V): one head call for the step
        out, start = [], 0
        for r, n in plan:
            echo = r.prompt_logprobs and r.computed < len(r.prompt) - 1
            used = n if echo else 1
            out.append(logits[start:start + used])
            start += used
        return out

    def _read(self, r: Request, n: int, logits: torch.Tensor) -> int:
        """Account for a row's n tokens read; sample its next token if they reached the end."""
        end = r.computed + n
        if r.prompt_logprobs and len(r.prompt_token_logprobs) < len(r.prompt) - 1:
            first = end - len(logits)  # logits at position p score token p + 1 of the prompt
            lps = torch.log_softmax(logits.float(), -1)
            for p in range(max(first, len(r.prompt_token_logprobs)), min(end, len(r.prompt) - 1)):
                r.prompt_token_logprobs.append(_scored(lps[p - first], r.prompt[p + 1],
                                                       r.logprobs or 0))
        r.computed = end
        self.cache.lengths[r.id] = end
        if self.prefix_cache:
            self.cache.register_prefix(r.id, r.tokens)
        if end < len(r.tokens):
            return 0
        if r.done:  # a static zombie: computed and thrown away, never part of the output
            r.padding.append(int(logits[-1].argmax()))
            return 0
        if r.max_new_tokens == 0:
            self._finish(r, "length")
            return 0
        try:  # a sampling error fails this request alone
            self._emit(r, self._sample(r, logits[-1]))
            return 1
        except Exception as err:
            self._fail(r, err)
            return 0

    def step(self) -> int:
        """Admit, then read one token per decoding row and chunks of prompts; tokens emitted.

        Supervised: an exception fails the requests of this step (finish_reason "error", their
        blocks freed) and returns 0, so that the loop, and every later request, goes on.
        """
        self.step_started = time.monotonic()
        try:
            return self._step()
        except Exception as err:
            traceback.print_exc()
            for r in list(self.running):
                self._fail(r, err)
                self._release(r)
            return 0
        finally:
            self.step_started = None

    def _step(self) -> int:
        now = time.monotonic()
        for r in list(self.running):
            if r.cancelled and not r.done:
                self._finish(r, "cancelled")
            elif r.deadline is not None and now > r.deadline and not r.done:
                self._finish(r, "timeout")
        for r in list(self.running):  # retire: static keeps the finished rows until all are done
            if r.done and (self.policy == "continuous" or all(o.done for o in self.running)):
                self._release(r)
            elif r.done:
                self.zombies.add(r.id)
        self._expire_waiting()
        self._admit()
        plan = self._schedule()
        while not plan and self.running and self.policy == "continuous":
            self._preempt(self.running[-1])  # prompts half read and no block free: make room
            plan = self._schedule()
        emitted = 0
        if plan:
            self.peak_rows = max(self.peak_rows, len(plan))
            for (r, n), logits in zip(plan, self._forward(plan)):
                emitted += self._read(r, n, logits)
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
