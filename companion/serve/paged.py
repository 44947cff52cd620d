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
    """Hands out block ids from a free list and takes them back.

    Example: a = BlockAllocator(2); a.allocate() -> 0; a.free([0]); a.num_free -> 2
    """

    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id first
        self._used: set[int] = set()

    @property
    def num_free(self) -> int:
        """Blocks not held by any sequence."""
        return len(self._free)

    def allocate(self) -> int:
        """One free block id; RuntimeError when the pool is exhausted."""
        if not self._free:
            raise RuntimeError(f"out of KV blocks: all {self.num_blocks} are in use")
        block = self._free.pop()
        self._used.add(block)
        return block

    def free(self, blocks: list[int]) -> None:
        """Return blocks to the free list; freeing a block twice is an error."""
        for b in blocks:
            if b not in self._used:
                raise ValueError(f"block {b} is not allocated")
            self._used.remove(b)
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
        """Give a finished sequence's blocks back to the free list."""
        self.allocator.free(self.tables.pop(seq_id))
        del self.lengths[seq_id]

    def _grow(self, seq_id: int, n_tokens: int) -> None:
        """Allocate blocks until the table covers n_tokens tokens."""
        table = self.tables[seq_id]
        while len(table) * self.block_size < n_tokens:
            table.append(self.allocator.allocate())
        self.peak_blocks = max(self.peak_blocks, self.blocks_in_use)

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
