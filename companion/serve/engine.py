"""Continuous batching over a paged KV cache: requests join and leave the batch between steps.

Each step admits waiting requests (prefill, one by one), then decodes one token for every running
sequence in a single batched forward. Policy "static" admits a new batch only once the whole
previous batch has finished, and keeps finished rows computing meanwhile, as a padded batch does.
Chapter 11.
"""
from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import repeat_kv
from ..generate import check_sampling, sample_next
from ..positional import apply_rope
from .paged import PagedKVCache

__all__ = ["Request", "Engine"]

_ids = itertools.count()


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
    id: int = field(default_factory=lambda: next(_ids))
    output: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "length", "stop" or "cancelled"
    cancelled: bool = False

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
                 num_blocks: int | None = None, policy: str = "continuous"):
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

    def _release(self, r: Request) -> None:
        self.cache.free_sequence(r.id)
        self.reserved -= self._need(r)
        self.zombies.discard(r.id)
        self.running.remove(r)

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
        return int(sample_next(logits[None], r.temperature, r.top_k, r.top_p, r.generator))

    @torch.no_grad()
    def _prefill(self, r: Request) -> None:
        """Read the prompt with contiguous caches, copy its keys and values into blocks."""
        idx = torch.tensor([r.prompt], device=self.cache.k.device)
        caches = self.model.make_caches(1, max_len=len(r.prompt))
        logits = self.model(idx, caches=caches)[0, -1]
        self.cache.add_sequence(r.id)
        self.cache.write_prefill(r.id, [c.k[0] for c in caches], [c.v[0] for c in caches])
        self.running.append(r)
        if r.max_new_tokens == 0:
            self._finish(r, "length")
        else:
            self._emit(r, self._sample(r, logits))

    @torch.no_grad()
    def _decode(self, rows: list[Request]) -> torch.Tensor:
        """One token for each row in one batched forward over the paged cache -> logits (N, V)."""
        m, ids = self.model, [r.id for r in rows]
        last = [r.output[-1] for r in rows]
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
        """Admit, prefill, decode one token per running row, retire the finished; tokens emitted."""
        emitted = 0
        for r in list(self.running):
            if r.cancelled and not r.done:
                self._finish(r, "cancelled")
        for r in self._admit():
            if r.cancelled:
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
        live = [r for r in self.running
                if len(r.prompt) + len(r.output) < self.context_length and r.output]
        if live:
            logits = self._decode(live)
            for r, row in zip(live, logits):
                if not r.done:
                    self._emit(r, self._sample(r, row))
                    emitted += 1
                else:  # a static zombie: computed, thrown away, but it still grows
                    r.output.append(int(row.argmax()))
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
        while True:
            with self._lock:
                while not self.has_work and not self._stop:
                    self._lock.wait(timeout=1.0)
                if self._stop:
                    return
            self.step()

    def shutdown(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
