"""Serving: a paged KV cache, a continuous-batching engine, and (`serve` extra) an HTTP API.

`python -m companion.serve --checkpoint PATH --port N` starts the OpenAI-compatible server.
Introduced in chapter 11.
"""
from .engine import Engine, QueueFull, Request
from .paged import BlockAllocator, PagedKVCache

__all__ = ["BlockAllocator", "PagedKVCache", "Engine", "QueueFull", "Request"]
