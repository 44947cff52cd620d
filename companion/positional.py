"""Where a token sits, three ways (chapter 4).

A learned table, fixed sinusoids, and rotary embeddings (RoPE).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

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
    "ROPE_SCALING_TYPES",
    "check_rope_scaling",
    "scaled_rope_frequencies",
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
    # a sequence reaching position p holds p + 1 tokens; for an int T that is known without
    # reading the tensor back (which would also break a torch.compile graph in two)
    if isinstance(seq, int):
        n_tokens = start_pos + seq if seq else 0
    else:
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


# --- RoPE scaling: a model trained at L positions, run at factor * L -----------------------------

# Hugging Face's rope_type names; "ntk" (static NTK-aware) is ours: HF only ships its dynamic form.
ROPE_SCALING_TYPES = ("linear", "ntk", "yarn", "llama3")
_ROPE_SCALING_KEYS = {
    "linear": {"factor"},
    "ntk": {"factor"},
    "yarn": {"factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "attention_factor", "mscale", "mscale_all_dim", "truncate"},
    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
}


def check_rope_scaling(scaling: Mapping[str, Any] | None) -> None:
    """Raise ValueError unless scaling is None or a known HF-style rope_scaling dict.

    Example: check_rope_scaling({"rope_type": "linear", "factor": 4.0}) passes.
    """
    if scaling is None:
        return
    if not isinstance(scaling, Mapping):
        raise ValueError(f"rope_scaling must be a dict or None, got {type(scaling).__name__}")
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope_scaling's rope_type must be one of {ROPE_SCALING_TYPES}, got "
                         f"{kind!r}")
    unknown = sorted(set(scaling) - _ROPE_SCALING_KEYS[kind] - {"rope_type"})
    if unknown:
        raise ValueError(f"unknown keys for rope_type {kind!r}: {unknown}")
    factor = scaling.get("factor")
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
        raise ValueError(f"rope_scaling factor must be a number >= 1, got {factor!r}")
    if kind == "llama3":
        missing = sorted(_ROPE_SCALING_KEYS["llama3"] - set(scaling))
        if missing:
            raise ValueError(f"llama3 rope_scaling needs {missing}")
        if not 0 < scaling["low_freq_factor"] < scaling["high_freq_factor"]:
            raise ValueError("llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor, "
                             f"got {scaling['low_freq_factor']} and {scaling['high_freq_factor']}")


def scaled_rope_frequencies(
    d_head: int, theta: float = 10000.0, scaling: Mapping[str, Any] | None = None,
    context_length: int | None = None,
) -> tuple[torch.Tensor, float]:
    """RoPE's (D/2,) rotation speeds after scaling, and the factor that multiplies cos and sin.

    "linear" (position interpolation, Chen et al. 2023) divides every speed by factor; "ntk"
    (NTK-aware, bloc97 2023) raises the base to theta * factor^(D/(D-2)), slowing low frequencies
    most; "yarn" (Peng et al. 2023) interpolates only wavelengths beyond the original context,
    ramping between the two, and scales attention by 0.1 ln(factor) + 1; "llama3" (Meta's Llama
    3.1) divides long wavelengths by factor, keeps short ones, and blends those in between.
    Example: scaled_rope_frequencies(4, 100.0, {"rope_type": "linear", "factor": 2.0})
    -> ([0.5, 0.05], 1.0).
    """
    check_rope_scaling(scaling)
    if scaling is None:
        return rope_frequencies(d_head, theta), 1.0
    kind, factor = scaling["rope_type"], float(scaling["factor"])
    if kind == "ntk":
        # The highest frequency keeps its speed, the lowest slows by exactly `factor`.
        return rope_frequencies(d_head, theta * factor ** (d_head / (d_head - 2))), 1.0
    inv_freq = rope_frequencies(d_head, theta)
    if kind == "linear":
        return inv_freq / factor, 1.0  # position m is treated as m / factor
    original = scaling.get("original_max_position_embeddings", context_length)
    if original is None:
        raise ValueError(f"{kind} rope_scaling needs original_max_position_embeddings")
    if kind == "llama3":
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        # Wavelengths longer than original/low are stretched, shorter than original/high kept.
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < original / high) * ~(wavelen > original / low)
        return torch.where(medium, blended, scaled), 1.0
    # YaRN, written as Hugging Face does so the speeds match it bit for bit.
    mscale, mscale_all = scaling.get("mscale"), scaling.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        attention = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
                     if mscale and mscale_all else get_mscale(factor))
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        # the pair index whose wavelength fits `rotations` times into the original context
        return d_head * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d_head - 1)
    hi = hi + 0.001 if lo == hi else hi
    ramp = ((torch.arange(d_head // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, d_head, 2).float() / d_head)
    extrapolate = 1 - ramp  # 1 for fast pairs (kept), 0 for slow ones (interpolated)
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, float(attention)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for queries and keys of shape (B, H, T, D).

    In Hugging Face Llama's rotate-half layout.

    Position m rotates pair (i, i + D/2) by m * theta^(-2i/D), so q·k depends only
    on the offset between them. `scaling` is an HF-style rope_scaling dict (see
    scaled_rope_frequencies). forward's `positions` gives each token its own position (packed
    documents restart at 0), shape (T,) or (B, T), offset by start_pos.
    Example: RotaryEmbedding(64, 1024)(q, start_pos=0) has q's shape. Introduced in chapter 4.
    """

    def __init__(self, d_head: int, context_length: int, theta: float = 10000.0,
                 scaling: Mapping[str, Any] | None = None):
        super().__init__()
        self.d_head, self.context_length, self.theta = d_head, context_length, theta
        self.scaling = None if scaling is None else dict(scaling)
        inv_freq, attention = scaled_rope_frequencies(d_head, theta, scaling, context_length)
        # (T, D/2); checks d_head is even
        angles = torch.arange(context_length).float()[:, None] * inv_freq[None, :]
        # Each angle appears twice: once for dimension i, once for its partner i + D/2.
        angles = torch.cat((angles, angles), dim=-1)  # (T, D)
        # Non-persistent: derived from (d_head, theta), so checkpoints
        # neither store nor demand them. YaRN's attention factor scales both, as HF does.
        self.register_buffer("cos", angles.cos() * attention, persistent=False)
        self.register_buffer("sin", angles.sin() * attention, persistent=False)

    def forward(self, x: torch.Tensor, start_pos: int = 0,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        T, D = x.shape[-2], x.shape[-1]
        if D != self.d_head:
            raise ValueError(f"last dimension {D} does not match d_head={self.d_head}")
        if start_pos < 0:
            raise ValueError(f"start_pos must be >= 0, got {start_pos}")
        if positions is not None:
            pos = torch.as_tensor(positions, device=self.cos.device)
            if pos.shape[-1] != T or pos.ndim not in (1, 2) or pos.is_floating_point():
                raise ValueError(f"positions must be integers of shape (T={T},) or (B, T={T}), "
                                 f"got {pos.dtype} {tuple(pos.shape)}")
            pos = pos.long() + start_pos
            if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= self.context_length):
                raise ValueError(f"positions must lie in [0, {self.context_length}), got "
                                 f"{int(pos.min())}..{int(pos.max())}")
            cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)  # (T, D) or (B, T, D)
            if pos.ndim == 2:  # one row of positions per sequence: broadcast over the heads
                cos, sin = cos[:, None], sin[:, None]
            return apply_rope(x, cos, sin)
        # positions start_pos..start_pos+T-1 need start_pos + T rows
        if start_pos + T > self.context_length:
            raise ValueError(f"sequence of {start_pos + T} tokens (start_pos={start_pos} + T={T}) "
                             f"does not fit the context length {self.context_length}")
        # With a KV cache only the new tokens arrive, at positions start_pos.. rather than 0..
        cos = self.cos[start_pos : start_pos + T].to(x.dtype)  # (T, D), broadcast over (B, H)
        sin = self.sin[start_pos : start_pos + T].to(x.dtype)
        return apply_rope(x, cos, sin)  # (B, H, T, D)
