"""A paged KV cache: fixed-size blocks from one pool, a free list, and a block table per sequence.

A sequence holds only the blocks its tokens fill, so memory follows the real lengths instead of
max-length preallocation (the idea of vLLM's PagedAttention, Kwon et al. 2023). Chapter 11.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BlockAllocator", "PagedKVCache"]


class BlockAllocator:
    """Hands out block ids from a free list, counts who holds each, and takes them back.

    A block may be shared (a prefix two prompts have in common): share() adds a holder, free()
    drops one, and the block returns to the pool only when its count reaches 0. A block that a
    prefix cache still names is parked as *evictable* instead: reusable at once, but found again
    by the next prompt that starts the same way, until allocate() runs out and recycles it.
    Example: a = BlockAllocator(2); a.allocate() -> 0; a.free([0]); a.num_free -> 2
    """

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id first
        self.refs: dict[int, int] = {}  # held block -> number of holders
        self.evictable: dict[int, None] = {}  # unheld but cached blocks, least recently used first
        self.on_evict = None  # called with a cached block's id when it is recycled

    @property
    def num_free(self) -> int:
        """Blocks no sequence holds: the free list plus the evictable cached blocks."""
        return len(self._free) + len(self.evictable)

    def allocate(self) -> int:
        """One free block id, else the oldest evictable one; RuntimeError when none is left."""
        if self._free:
            block = self._free.pop()
        elif self.evictable:
            block = next(iter(self.evictable))  # least recently used
            del self.evictable[block]
            if self.on_evict is not None:
                self.on_evict(block)
        else:
            raise RuntimeError(f"out of KV blocks: all {self.num_blocks} are in use")
        self.refs[block] = 1
        return block

    def share(self, block: int) -> None:
        """One more holder for a block (held, or evictable and revived)."""
        if block in self.evictable:
            del self.evictable[block]
            self.refs[block] = 0
        if block not in self.refs:
            raise ValueError(f"block {block} is neither allocated nor cached")
        self.refs[block] += 1

    def free(self, blocks: list[int], cached: set[int] | frozenset[int] = frozenset()) -> None:
        """Drop one holder of each block; at 0 it is free again, or evictable if in `cached`."""
        for b in blocks:
            if b not in self.refs:
                raise ValueError(f"block {b} is not allocated")
            self.refs[b] -= 1
            if self.refs[b] == 0:
                del self.refs[b]
                if b in cached:
                    self.evictable[b] = None
                else:
                    self._free.append(b)


class PagedKVCache:
    """Keys and values of every layer in one pool of (num_blocks, H_kv, block_size, D) blocks.

    Token p of a sequence lives in block table[p // block_size] at offset p % block_size.
    Example: PagedKVCache(2, 1, 4, block_size=16, num_blocks=8).add_sequence(0)
    """

    def __init__(self, n_layers: int, n_kv_heads: int, d_head: int, block_size: int = 16,
                 num_blocks: int = 64, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        shape = (n_layers, num_blocks, n_kv_heads, block_size, d_head)  # (L, N_blocks, H_kv, bs, D)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.tables: dict[int, list[int]] = {}
        self.lengths: dict[int, int] = {}
        self.peak_blocks = 0
        # The prefix cache: the exact tokens 0..end of a full block -> the block that holds their
        # keys and values. Keyed by the whole prefix, not the block alone, because a key depends
        # on every token before it.
        self.prefix: dict[tuple[int, ...], int] = {}
        self.block_key: dict[int, tuple[int, ...]] = {}
        self.prefix_queries = self.prefix_hits = 0  # full prompt blocks looked up, and found
        self.named: dict[int, int] = {}  # sequence -> its first blocks already in the cache
        self.allocator.on_evict = self._forget

    @classmethod
    def for_model(cls, model: nn.Module, block_size: int = 16,
                  num_blocks: int = 64) -> PagedKVCache:
        """A pool shaped for a companion GPT, in its dtype and on its device."""
        c, w = model.config, model.tok_emb.weight
        return cls(c.n_layers, c.n_kv_heads, c.d_head, block_size, num_blocks, w.dtype, w.device)

    @property
    def bytes_per_block(self) -> int:
        """Bytes one block holds across all layers, keys and values."""
        per = self.k[:, 0].numel() * self.k.element_size()
        return 2 * per

    @property
    def blocks_in_use(self) -> int:
        return self.allocator.num_blocks - self.allocator.num_free

    def blocks_for(self, n_tokens: int) -> int:
        """Blocks that n_tokens fill: ceil(n / block_size)."""
        return math.ceil(n_tokens / self.block_size)

    def add_sequence(self, seq_id: int) -> None:
        """Start an empty block table for a new sequence."""
        if seq_id in self.tables:
            raise ValueError(f"sequence {seq_id} already has a block table")
        self.tables[seq_id], self.lengths[seq_id] = [], 0

    def free_sequence(self, seq_id: int) -> None:
        """Drop a sequence's hold on its blocks: unshared ones go back to the pool."""
        self.allocator.free(self.tables.pop(seq_id), cached=self.block_key.keys())
        del self.lengths[seq_id]
        self.named.pop(seq_id, None)

    def blocks_to_grow(self, seq_id: int, n_tokens: int) -> int:
        """New blocks the sequence needs to hold n_tokens tokens."""
        return max(0, self.blocks_for(n_tokens) - len(self.tables[seq_id]))

    def _grow(self, seq_id: int, n_tokens: int) -> None:
        """Allocate blocks until the table covers n_tokens tokens."""
        table = self.tables[seq_id]
        while len(table) * self.block_size < n_tokens:
            table.append(self.allocator.allocate())
        self.peak_blocks = max(self.peak_blocks, self.blocks_in_use)

    grow = _grow

    # --- the prefix cache ----------------------------------------------------------------------

    def match_prefix(self, seq_id: int, tokens: list[int], max_blocks: int,
                     count: bool = True) -> int:
        """Share the cached blocks that begin `tokens` (at most max_blocks); tokens now held.

        Example: after a 32-token prompt was read with block_size 16, the same prompt matches
        its first block (the last token is always recomputed, for its logits): 16.
        """
        if self.lengths[seq_id] or self.tables[seq_id]:
            raise ValueError(f"sequence {seq_id} already holds tokens")
        bs, table = self.block_size, self.tables[seq_id]
        n_full = min(len(tokens) // bs, max_blocks)
        for i in range(n_full):
            block = self.prefix.get(tuple(tokens[:(i + 1) * bs]))
            if block is None:
                break
            self.allocator.share(block)
            table.append(block)
        if count:  # the hit rate: blocks looked up and found (count=False for a trial lookup)
            self.prefix_queries += n_full
            self.prefix_hits += len(table)
        self.lengths[seq_id] = len(table) * bs
        self.peak_blocks = max(self.peak_blocks, self.blocks_in_use)
        return self.lengths[seq_id]

    def register_prefix(self, seq_id: int, tokens: list[int]) -> None:
        """Name the sequence's full blocks by the tokens they end, so later prompts can share them.

        tokens are the sequence's tokens so far; only blocks whose keys are all written count.
        """
        bs, table = self.block_size, self.tables[seq_id]
        n_full = min(self.lengths[seq_id], len(tokens)) // bs
        for i in range(self.named.get(seq_id, 0), n_full):  # only blocks filled since last time
            block = table[i]
            if block in self.block_key:
                continue
            key = tuple(tokens[:(i + 1) * bs])
            if key not in self.prefix:  # another sequence may have cached the same prefix
                self.prefix[key], self.block_key[block] = block, key
        self.named[seq_id] = n_full

    def _forget(self, block: int) -> None:
        """The allocator recycled a cached block: its prefix is no longer held."""
        del self.prefix[self.block_key.pop(block)]

    @property
    def prefix_hit_rate(self) -> float:
        """Share of the full prompt blocks looked up that the prefix cache already held."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def slots(self, seq_id: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, offset) of the sequence's tokens start..start+n-1, which its table covers."""
        return self._slots(seq_id, start, n)

    def _slots(self, seq_id: int, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        table = torch.tensor(self.tables[seq_id], device=self.k.device)
        pos = torch.arange(start, start + n, device=self.k.device)
        return table[pos // self.block_size], pos % self.block_size

    def write_prefill(self, seq_id: int, ks: list[torch.Tensor], vs: list[torch.Tensor]) -> None:
        """Store a whole prompt: per layer, keys and values (H_kv, T, D)."""
        T = ks[0].shape[1]
        start = self.lengths[seq_id]
        self._grow(seq_id, start + T)
        blocks, offsets = self._slots(seq_id, start, T)
        for layer, (k, v) in enumerate(zip(ks, vs)):
            self.k[layer, blocks, :, offsets] = k.transpose(0, 1)  # (T, H_kv, D) into T slots
            self.v[layer, blocks, :, offsets] = v.transpose(0, 1)
        self.lengths[seq_id] = start + T

    def reserve_step(self, seq_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Make room for one more token in each sequence; return (block, offset) per sequence."""
        blocks, offsets = [], []
        for s in seq_ids:
            pos = self.lengths[s]
            self._grow(s, pos + 1)
            blocks.append(self.tables[s][pos // self.block_size])
            offsets.append(pos % self.block_size)
            self.lengths[s] = pos + 1
        dev = self.k.device
        return torch.tensor(blocks, device=dev), torch.tensor(offsets, device=dev)

    def write_step(self, layer: int, blocks: torch.Tensor, offsets: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one token per sequence: k, v of shape (N, H_kv, D) at the reserved slots."""
        self.k[layer, blocks, :, offsets] = k
        self.v[layer, blocks, :, offsets] = v

    def gather(self, layer: int, seq_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence's keys and values, padded: (N, H_kv, S_max, D) each."""
        width = max(len(self.tables[s]) for s in seq_ids)
        # Pad short tables with block 0: the padded keys are masked out by the caller.
        rows = [self.tables[s] + [0] * (width - len(self.tables[s])) for s in seq_ids]
        table = torch.tensor(rows, device=self.k.device)  # (N, width)
        N, L = table.shape[0], width * self.block_size
        k = self.k[layer][table]  # (N, width, H_kv, bs, D)
        v = self.v[layer][table]
        H, D = k.shape[2], k.shape[4]
        k = k.permute(0, 2, 1, 3, 4).reshape(N, H, L, D)  # (N, H_kv, width * bs, D)
        v = v.permute(0, 2, 1, 3, 4).reshape(N, H, L, D)
        return k, v
