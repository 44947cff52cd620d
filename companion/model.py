"""The model: one `GPTConfig` drives GPT-2 style and LLaMA style transformers. Introduced in chapter 6."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["GPTConfig"]

Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "swiglu"]
Pos = Literal["learned", "sinusoidal", "rope"]


@dataclass
class GPTConfig:
    """Every architecture choice of a decoder-only transformer, validated on construction.

    `n_kv_heads=None` means n_heads (plain multi-head attention); `d_ff=None` means 4*d_model
    for a GELU MLP and 8/3*d_model rounded up to a multiple of 64 for SwiGLU (LLaMA's rule).
    """

    vocab_size: int = 50257
    context_length: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    d_ff: int | None = None
    norm: Norm = "layernorm"
    mlp: Mlp = "gelu"
    pos: Pos = "learned"
    rope_theta: float = 10000.0
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model if self.mlp == "gelu" else 64 * math.ceil(8 * self.d_model / 3 / 64)
        for name in ("n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        choices = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"), "pos": ("learned", "sinusoidal", "rope")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pos == "rope" and self.d_head % 2:
            raise ValueError(f"RoPE needs an even head size, got d_head={self.d_head} (d_model={self.d_model}, n_heads={self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be positive, got {self.rope_theta} and {self.norm_eps}")

    @property
    def d_head(self) -> int:
        """Width of one attention head: d_model // n_heads."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, safe to store in a `weights_only` checkpoint."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Inverse of `to_dict`; unknown keys are an error rather than silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {unknown}")
        return cls(**d)

    @classmethod
    def gpt2(cls, **overrides: Any) -> GPTConfig:
        """GPT-2 small (124M): LayerNorm, GELU, learned positions, biases, tied embeddings."""
        return cls(**{**dict(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12), **overrides})

    @classmethod
    def llama(cls, **overrides: Any) -> GPTConfig:
        """A LLaMA-style block at GPT-2 small's width: RMSNorm, SwiGLU, RoPE, no biases, untied head."""
        base = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False, norm_eps=1e-5)
        return cls(**{**dict(vocab_size=32000, context_length=2048, d_model=768, n_layers=12, n_heads=12), **base, **overrides})
