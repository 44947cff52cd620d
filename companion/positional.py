"""Where a token sits, three ways (chapter 4).

A learned table, fixed sinusoids, and rotary embeddings (RoPE).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "LearnedPositionalEmbedding",
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "rope_frequencies",
    "rotate_half",
    "apply_rope",
    "apply_rope_complex",
    "RotaryEmbedding",
]


def _positions(
    seq: int | torch.Tensor, start_pos: int, context_length: int, device: torch.device
) -> torch.Tensor:
    """Absolute positions as a LongTensor.

    An int T means start_pos..start_pos+T-1, a tensor is offset by start_pos.
    """
    if start_pos < 0:
        raise ValueError(f"start_pos must be >= 0, got {start_pos}")
    if isinstance(seq, int):
        if seq < 0:
            raise ValueError(f"sequence length must be >= 0, got {seq}")
        pos = torch.arange(start_pos, start_pos + seq, device=device)
    else:
        pos = torch.as_tensor(seq, dtype=torch.long, device=device) + start_pos
        if pos.numel() and int(pos.min()) < 0:
            raise ValueError(f"positions must be >= 0, got {int(pos.min())}")
    # a sequence reaching position p holds p + 1 tokens
    n_tokens = int(pos.max()) + 1 if pos.numel() else 0
    if n_tokens > context_length:
        raise ValueError(f"sequence of {n_tokens} tokens does not fit the context length "
                         f"{context_length}")
    return pos


class LearnedPositionalEmbedding(nn.Module):
    """One trained vector per position, as in GPT-2.

    forward(T) -> (T, d_model), added to the token embeddings.

    Example: LearnedPositionalEmbedding(1024, 768)(5).shape -> (5, 768). Introduced in chapter 4.
    """

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.context_length = context_length
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, seq: int | torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        # A table has no row for position context_length: that, not memory,
        # is the hard length limit.
        pos = _positions(seq, start_pos, self.context_length, self.embedding.weight.device)
        return self.embedding(pos)  # (T,) -> (T, d_model)


def sinusoidal_encoding(context_length: int, d_model: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al.'s fixed table: PE[p, 2i] = sin(p * base^(-2i/d)).

    PE[p, 2i+1] = cos(p * base^(-2i/d)).

    Example: sinusoidal_encoding(1, 4) -> [[0., 1., 0., 1.]]. Introduced in chapter 4.
    """
    if d_model % 2:
        raise ValueError(f"d_model={d_model} must be even: dimensions 2i and 2i+1 share one "
                         "frequency")
    # float64 so that the angles stay exact at large positions; the table is
    # cast to float32 at the end.
    inv_freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    # (T, d/2)
    angles = torch.arange(context_length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    pe = torch.empty(context_length, d_model, dtype=torch.float64)
    pe[:, 0::2] = angles.sin()  # even dimensions
    pe[:, 1::2] = angles.cos()  # odd dimensions
    return pe.float()


class SinusoidalPositionalEncoding(nn.Module):
    """The sinusoidal table as a module with the learned table's interface.

    forward(T) -> (T, d_model).

    Example: SinusoidalPositionalEncoding(8, 4)(1) -> [[0., 1., 0., 1.]]. Introduced in chapter 4.
    """

    def __init__(self, context_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.context_length = context_length
        # Non-persistent: nothing is learned, so the table is rebuilt rather
        # than stored in checkpoints.
        self.register_buffer(
            "pe", sinusoidal_encoding(context_length, d_model, base), persistent=False
        )

    def forward(self, seq: int | torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        # (T, d_model)
        return self.pe[_positions(seq, start_pos, self.context_length, self.pe.device)]


def rope_frequencies(d_head: int, theta: float = 10000.0) -> torch.Tensor:
    """RoPE's rotation speeds theta^(-2i/D) for the D/2 pairs (i, i + D/2), in radians per position.

    Example: rope_frequencies(4, 100.0) -> [1.0, 0.1]. Introduced in chapter 4.
    """
    if d_head % 2:
        raise ValueError(f"d_head={d_head} must be even: RoPE rotates dimensions in pairs")
    # Computed in float32 exactly as Hugging Face does, so chapter 6 matches Llama bit for bit.
    return 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.int64).float() / d_head))


def _rope_angles(positions: torch.Tensor, d_head: int, theta: float) -> torch.Tensor:
    """Angle m * theta_i for every position m and pair i.

    (T,) -> (T, D/2), in float32 like Hugging Face.
    """
    inv_freq = rope_frequencies(d_head, theta).to(positions.device)
    return positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Map each pair (x_i, x_{i+D/2}) to (-x_{i+D/2}, x_i): a 90-degree turn in every pair's plane.

    Example: rotate_half(torch.tensor([1., 2., 3., 4.])) ->
    [-3., -4., 1., 2.]. Introduced in chapter 4.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (..., D) -> 2 x (..., D/2)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate every pair by its angle.

    x * cos + rotate_half(x) * sin, cos and sin (T, D) broadcast over (B, H).

    Example: apply_rope(torch.tensor([1., 0.]), torch.zeros(2), torch.ones(2)) ->
    [0., 1.]. Introduced in chapter 4.
    """
    # Per pair: (a, b) -> (a cos - b sin, b cos + a sin), the 2-D rotation matrix
    # written without a matrix.
    return x * cos + rotate_half(x) * sin


def apply_rope_complex(x: torch.Tensor, start_pos: int = 0, theta: float = 10000.0) -> torch.Tensor:
    """RoPE as complex numbers: pair (x_i, x_{i+D/2}) is z = x_i + j x_{i+D/2}.

    Position m maps z to z e^{j m theta_i}.

    Example: apply_rope_complex(x, start_pos=5) equals
    RotaryEmbedding(D, 64)(x, start_pos=5). Introduced in chapter 4.
    """
    T, D = x.shape[-2], x.shape[-1]
    # (T, D/2)
    angles = _rope_angles(torch.arange(start_pos, start_pos + T, device=x.device), D, theta)
    # view_as_complex has no half-precision kernels, so bf16/fp16 go through float32 and come back.
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    # the rotate-half pairing (i, i + D/2), not Meta's interleaved (2i, 2i+1)
    x1, x2 = work.chunk(2, dim=-1)
    # (..., T, D/2, 2) -> (..., T, D/2) complex
    z = torch.view_as_complex(torch.stack((x1, x2), dim=-1))
    # cos/sin come from the same float32 angles as RotaryEmbedding's buffers, so
    # the two forms agree exactly.
    rot = torch.complex(angles.cos(), angles.sin()).to(z.dtype)  # (T, D/2), |rot| = 1
    out = torch.view_as_real(z * rot)  # (..., T, D/2, 2): real parts, then imaginary parts
    return out.transpose(-1, -2).flatten(-2).to(x.dtype)  # (..., T, 2, D/2) -> (..., T, D)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for queries and keys of shape (B, H, T, D).

    In Hugging Face Llama's rotate-half layout.

    Position m rotates pair (i, i + D/2) by m * theta^(-2i/D), so q·k depends only
    on the offset between them.
    Example: RotaryEmbedding(64, 1024)(q, start_pos=0) has q's shape. Introduced in chapter 4.
    """

    def __init__(self, d_head: int, context_length: int, theta: float = 10000.0):
        super().__init__()
        self.d_head, self.context_length, self.theta = d_head, context_length, theta
        # (T, D/2); checks d_head is even
        angles = _rope_angles(torch.arange(context_length), d_head, theta)
        # Each angle appears twice: once for dimension i, once for its partner i + D/2.
        angles = torch.cat((angles, angles), dim=-1)  # (T, D)
        # Non-persistent: derived from (d_head, theta), so checkpoints
        # neither store nor demand them.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        T, D = x.shape[-2], x.shape[-1]
        if D != self.d_head:
            raise ValueError(f"last dimension {D} does not match d_head={self.d_head}")
        if start_pos < 0:
            raise ValueError(f"start_pos must be >= 0, got {start_pos}")
        # positions start_pos..start_pos+T-1 need start_pos + T rows
        if start_pos + T > self.context_length:
            raise ValueError(f"sequence of {start_pos + T} tokens (start_pos={start_pos} + T={T}) "
                             f"does not fit the context length {self.context_length}")
        # With a KV cache only the new tokens arrive, at positions start_pos.. rather than 0..
        cos = self.cos[start_pos : start_pos + T].to(x.dtype)  # (T, D), broadcast over (B, H)
        sin = self.sin[start_pos : start_pos + T].to(x.dtype)
        return apply_rope(x, cos, sin)  # (B, H, T, D)
