"""The model: one `GPTConfig` drives GPT-2 style and LLaMA style transformers.

Introduced in chapter 6.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .attention import KVCache, MultiHeadAttention, linear_many
from .moe import MoE, check_moe
from .positional import (
    LearnedPositionalEmbedding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    check_rope_scaling,
)

__all__ = ["GPTConfig", "RMSNorm", "MLP", "SwiGLU", "Block", "GPT", "count_params", "make_norm",
           "make_mlp", "swiglu_width", "SWIGLU_WIDTH_RULES"]

Norm = Literal["layernorm", "rmsnorm"]
Mlp = Literal["gelu", "gelu_exact", "relu", "relu2", "swiglu"]
Pos = Literal["learned", "sinusoidal", "rope"]

# SwiGLU's hidden width from d_model, each rule named after the source that uses it:
# (multiplier of 8/3*d, multiple to round up to). 8/3 keeps the three matrices at the two-layer
# MLP's 8*d^2 parameters.
SWIGLU_WIDTH_RULES: dict[str, tuple[float | None, int]] = {
    "cs336": (None, 64),      # Stanford CS336's assignment: 8/3*d rounded up to a multiple of 64
    "llama": (None, 256),     # LLaMA 1 and 2 (Meta's code, multiple_of=256): 11,008 at d = 4096
    "llama3": (1.3, 1024),    # Llama 3 (ffn_dim_multiplier=1.3, multiple_of=1024): 14,336 at 4096
}


def swiglu_width(d_model: int, rule: str = "cs336") -> int:
    """SwiGLU's d_ff by a named rule (SWIGLU_WIDTH_RULES).

    Example: swiglu_width(4096, "llama") -> 11008; swiglu_width(4096, "llama3") -> 14336.
    """
    if rule not in SWIGLU_WIDTH_RULES:
        raise ValueError(f"d_ff_rule must be one of {tuple(SWIGLU_WIDTH_RULES)}, got {rule!r}")
    multiplier, multiple = SWIGLU_WIDTH_RULES[rule]
    if rule == "cs336":
        return multiple * math.ceil(8 * d_model / 3 / multiple)
    hidden = int(2 * (4 * d_model) / 3)  # Meta's FeedForward: int() truncates before rounding up
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple * ((hidden + multiple - 1) // multiple)


@dataclass
class GPTConfig:
    """Every architecture choice of a decoder-only transformer, validated on construction.

    `n_kv_heads=None` means n_heads (plain multi-head attention); `d_ff=None` means 4*d_model
    for a two-layer MLP and, for SwiGLU, `swiglu_width(d_model, d_ff_rule)`: by default CS336's
    8/3*d_model rounded up to a multiple of 64 ("llama" and "llama3" give Meta's widths).
    `head_dim=None` means d_model // n_heads; set, it may differ (Qwen3: 128 at d_model 1024 with
    16 heads). `qk_norm` adds an RMSNorm on each head's queries and keys (Qwen3). `rope_scaling`
    is a Hugging Face-style dict, e.g. {"rope_type": "llama3", "factor": 8.0, ...} (see
    positional.scaled_rope_frequencies).
    `mlp`: "gelu" is GPT-2's tanh-approximated GELU, "gelu_exact" the erf form (PyTorch's nn.GELU
    and nanoGPT's), "relu" plain ReLU, "relu2" its square, "swiglu" LLaMA's gated unit.
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
    head_dim: int | None = None
    qk_norm: bool = False
    rope_scaling: dict[str, Any] | None = None
    d_ff_rule: str = "cs336"
    # Mixture of experts (chapter 6, companion.moe): 0 keeps the dense MLP; else each block has
    # n_experts MLPs of width d_ff, moe_top_k of them per token.
    n_experts: int = 0
    moe_top_k: int = 2
    capacity_factor: float | None = 1.25
    moe_aux_weight: float = 0.01
    # Chapter 7's race: logits -> c * tanh(logits / c), bounded in (-c, c) (Gemma 2; the
    # modded-nanogpt speedrun). None leaves them as they are.
    logit_softcap: float | None = None
    # MoE gates: False weights each chosen expert by its router probability p_i(x), as Switch
    # does (Fedus et al. 2021, eq. 2); True renormalises the k kept ones to sum to 1 (Mixtral;
    # Hugging Face's norm_topk_prob). Appended last, so older configs and checkpoints still load.
    moe_norm_topk_prob: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff_rule not in SWIGLU_WIDTH_RULES:
            raise ValueError(f"d_ff_rule must be one of {tuple(SWIGLU_WIDTH_RULES)}, got "
                             f"{self.d_ff_rule!r}")
        if self.d_ff is None:
            self.d_ff = (
                4 * self.d_model
                if self.mlp != "swiglu"
                else swiglu_width(self.d_model, self.d_ff_rule)
            )
        for name in ("n_kv_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        hd = self.head_dim
        if hd is not None and (not isinstance(hd, int) or isinstance(hd, bool) or hd < 1):
            raise ValueError(f"head_dim must be a positive int or None, got {hd!r}")
        if hd is None and self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model} "
                             "(set head_dim to choose the head width yourself)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}")
        choices = {"norm": ("layernorm", "rmsnorm"),
                   "mlp": ("gelu", "gelu_exact", "relu", "relu2", "swiglu"),
                   "pos": ("learned", "sinusoidal", "rope")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"logit_softcap must be > 0 or None, got {self.logit_softcap!r}")
        if self.pos == "sinusoidal" and self.d_model % 2:
            raise ValueError("sinusoidal positions need an even d_model, got "
                             f"d_model={self.d_model}")
        if self.pos == "rope" and self.d_head % 2:
            raise ValueError(f"RoPE needs an even head size, got d_head={self.d_head} "
                             f"(d_model={self.d_model}, n_heads={self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be positive, got {self.rope_theta} and "
                             f"{self.norm_eps}")
        check_moe(self.n_experts, self.moe_top_k, self.capacity_factor, self.moe_aux_weight)
        if not isinstance(self.moe_norm_topk_prob, bool):
            raise ValueError(f"moe_norm_topk_prob must be True or False, got "
                             f"{self.moe_norm_topk_prob!r}")
        if self.rope_scaling is not None:
            if self.pos != "rope":
                raise ValueError(f"rope_scaling needs pos='rope', got pos={self.pos!r}")
            check_rope_scaling(self.rope_scaling)
            self.rope_scaling = dict(self.rope_scaling)  # our own copy: the caller's may change

    @property
    def d_head(self) -> int:
        """Width of one attention head: head_dim if set, else d_model // n_heads."""
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

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
        if d.get("n_experts") and "moe_norm_topk_prob" not in d:
            # saved before the option existed, when the gates were always renormalised: keep the
            # function those weights were trained with
            d = {**d, "moe_norm_topk_prob": True}
        return cls(**d)

    @classmethod
    def gpt2(cls, **overrides: Any) -> GPTConfig:
        """GPT-2 small (124M): LayerNorm, GELU, learned positions, biases, tied embeddings."""
        return cls(**{**dict(vocab_size=50257, context_length=1024, d_model=768, n_layers=12,
                             n_heads=12), **overrides})

    @classmethod
    def llama(cls, **overrides: Any) -> GPTConfig:
        """A LLaMA-style block at GPT-2 small's width.

        RMSNorm, SwiGLU, RoPE, no biases, untied head.
        """
        base = dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False,
                    norm_eps=1e-5)
        return cls(**{**dict(vocab_size=32000, context_length=2048, d_model=768, n_layers=12,
                             n_heads=12), **base, **overrides})


# --- parameter count from the config alone ----------------------------------------------------


def count_params(config: GPTConfig) -> dict[str, int]:
    """Parameters by part, from the config alone (no weights): the parts sum to "total".

    Introduced in chapter 6.

    Parts: tok_emb, pos_emb, attn, mlp, norm
    (all layers' norms plus the final one; QK-norm's scales count as attn), lm_head (0 when tied).
    "non_embedding" is total minus tok_emb, pos_emb and lm_head: the N of
    scaling laws (Kaplan et al.). "active" (not a part) counts what one token uses: for MoE,
    moe_top_k experts of n_experts (and the router); equal to total when dense.
    Example: count_params(GPTConfig.gpt2())["total"] -> 124439808 (GPT-2 small).
    """
    c = config
    d, b, D = c.d_model, int(c.bias), c.d_head
    qw = c.n_heads * D  # width of Q: d_model unless head_dim is set apart from it
    kv = c.n_kv_heads * D  # width of K and of V: smaller than d_model under GQA
    attn = (d * qw + b * qw) + (qw * d + b * d) + (d * kv + b * kv) * 2  # q, o, then k and v
    attn += 2 * D if c.qk_norm else 0  # QK-norm's two (D,) scales live inside attention
    n_in = 2 if c.mlp == "swiglu" else 1  # SwiGLU has two input projections: gate and up
    mlp = n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d
    # MoE: n_experts such MLPs plus a router; a token runs through moe_top_k of them
    n_mlp, n_active = (c.n_experts, c.moe_top_k) if c.n_experts else (1, 1)
    router = d * c.n_experts
    norm = d + (b * d if c.norm == "layernorm" else 0)  # RMSNorm has a scale, never a shift
    parts = {
        "tok_emb": c.vocab_size * d,
        # sinusoidal and RoPE learn nothing
        "pos_emb": c.context_length * d if c.pos == "learned" else 0,
        "attn": c.n_layers * attn,
        "mlp": c.n_layers * (n_mlp * mlp + router),
        "norm": (2 * c.n_layers + 1) * norm,
        "lm_head": 0 if c.tie_embeddings else c.vocab_size * d,  # tied: the head reuses tok_emb
    }
    total = sum(parts.values())
    return {**parts, "total": total,
            "non_embedding": total - parts["tok_emb"] - parts["pos_emb"] - parts["lm_head"],
            # the weights one token is multiplied by (MoE: only its experts'); total when dense
            "active": total - c.n_layers * (n_mlp - n_active) * mlp}


# --- the pieces of a block -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centring or bias.

    Introduced in chapter 6.

    Example: RMSNorm(2)(torch.tensor([[3., 4.]])) -> [[0.8485, 1.1314]] (rms = sqrt(12.5))
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean of squares in float32 even for bf16 inputs, as Hugging Face Llama does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(config: GPTConfig) -> nn.Module:
    """The config's norm: LayerNorm (GPT-2) or RMSNorm (LLaMA). Introduced in chapter 6."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


# The tanh form is what GPT-2 was trained with, so checkpoints need it; on an AVX2 CPU it costs
# about as much as the matmul beside it, the erf form a third of that, ReLU almost
# nothing (bench_train.py).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": lambda h: F.gelu(h, approximate="tanh"),
    "gelu_exact": F.gelu,
    "relu": F.relu,
    # relu(h)²: Primer's activation (So et al. 2021), the modded-nanogpt speedrun's choice
    "relu2": lambda h: F.relu(h).square(),
}


def soft_cap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(logits / cap): smooth clipping into (-cap, cap); None: unchanged.

    Example: soft_cap(torch.tensor([100.0]), 30.0) -> tensor([29.85])
    """
    return logits if cap is None else cap * torch.tanh(logits / cap)


class MLP(nn.Module):
    """GPT-2's feed-forward: up to d_ff, an activation, back down. Introduced in chapter 6.

    activation: "gelu" (tanh form, as GPT-2 used), "gelu_exact" (erf form), "relu" or "relu2".
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, d) -> (B, T, d_ff) -> (B, T, d)
        return self.down_proj(ACTIVATIONS[self.activation](self.up_proj(x)))


class SwiGLU(nn.Module):
    """LLaMA's feed-forward: down(silu(gate(x)) * up(x)), a gated linear unit.

    Introduced in chapter 6.
    """

    def __init__(self, d_model: int, d_ff: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.up_proj = nn.Linear(d_model, d_ff, bias=bias)
        self.down_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The gate decides, per hidden unit, how much of the up-projection passes.
        gate, up = linear_many(x, (self.gate_proj, self.up_proj))  # see FUSE_PROJECTIONS
        return self.down_proj(F.silu(gate) * up)


def make_mlp(config: GPTConfig) -> nn.Module:
    """The config's feed-forward: a two-layer MLP (GELU or ReLU) or SwiGLU.

    Introduced in chapter 6.
    With n_experts > 0, an MoE of such MLPs (companion.moe).
    """
    c = config
    if c.n_experts:
        dense = dataclasses.replace(c, n_experts=0)
        return MoE(c.d_model, c.n_experts, c.moe_top_k, c.capacity_factor,
                   lambda: make_mlp(dense), norm_topk_prob=c.moe_norm_topk_prob)
    if c.mlp == "swiglu":
        return SwiGLU(c.d_model, c.d_ff, bias=c.bias)
    return MLP(c.d_model, c.d_ff, bias=c.bias, activation=c.mlp)


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    Introduced in chapter 6.

    Example: Block(GPTConfig(d_model=64, n_heads=4))(torch.randn(1, 5, 64)).shape -> (1, 5, 64)
    """

    def __init__(self, config: GPTConfig, use_sdpa: bool = True):
        super().__init__()
        c = config
        # Each block owns its rotary tables (non-persistent buffers), so a pipeline stage of
        # blocks is self-contained.
        rope = (
            RotaryEmbedding(c.d_head, c.context_length, c.rope_theta, c.rope_scaling)
            if c.pos == "rope" else None
        )
        self.attn_norm = make_norm(c)
        qk = dict(q_norm=RMSNorm(c.d_head, c.norm_eps),
                  k_norm=RMSNorm(c.d_head, c.norm_eps)) if c.qk_norm else {}
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.n_kv_heads, dropout=c.dropout,
                                       bias=c.bias, rope=rope, use_sdpa=use_sdpa,
                                       head_dim=c.head_dim, **qk)
        self.mlp_norm = make_norm(c)
        self.mlp = make_mlp(c)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # Pre-norm: each sublayer reads a normalised copy and adds its answer to the residual
        # stream, which itself is never normalised on the way through, so gradients
        # reach early layers unscaled.
        x = x + self.drop(self.attn(self.attn_norm(x), cache))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# --- the model ---------------------------------------------------------------------------------


class GPT(nn.Module):
    """Decoder-only transformer: tok_emb (+ pos_emb) -> blocks -> norm -> lm_head.

    Introduced in chapter 6.

    model(idx) maps token ids (B, T) to next-token logits (B, T, vocab_size); the loss
    lives in the training loop.
    model(idx, caches=model.make_caches(B)) decodes incrementally: idx holds only the
    tokens after those cached.
    Example: GPT(GPTConfig(vocab_size=10, context_length=8, d_model=16, n_layers=1, n_heads=2))(
        torch.zeros(1, 3, dtype=torch.long)).shape -> (1, 3, 10)
    """

    def __init__(self, config: GPTConfig, *, use_sdpa: bool = True):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb: nn.Module | None = None  # RoPE acts inside attention, so it adds nothing here
        if c.pos == "learned":
            self.pos_emb = LearnedPositionalEmbedding(c.context_length, c.d_model)
        elif c.pos == "sinusoidal":
            self.pos_emb = SinusoidalPositionalEncoding(c.context_length, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c, use_sdpa=use_sdpa) for _ in range(c.n_layers))
        self.norm = make_norm(c)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            # One matrix both reads tokens in and scores them out (Press & Wolf):
            # vocab_size * d_model fewer parameters.
            self.lm_head.weight = self.tok_emb.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit norms.

        Residual outputs 0.02/sqrt(2 n_layers).
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # Each block adds two outputs to the residual stream; shrinking them keeps its variance from
        # growing with depth (GPT-2 paper, section 2.3).
        std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.o_proj.weight, mean=0.0, std=std)
            for mlp in block.mlp.modules():  # the dense MLP, or each of an MoE's experts
                if isinstance(mlp, (MLP, SwiGLU)):
                    nn.init.normal_(mlp.down_proj.weight, mean=0.0, std=std)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted from the tensors (shared ones once).

        non_embedding drops tok_emb, pos_emb, lm_head: each tensor once, by identity, so a head
        tied by hand (or untied) counts as it really is, whatever the config says.
        """
        if not non_embedding:
            return sum(p.numel() for p in self.parameters())  # yields a tied matrix once
        embeddings = [self.tok_emb.weight, self.lm_head.weight]
        if isinstance(self.pos_emb, LearnedPositionalEmbedding):
            embeddings.append(self.pos_emb.embedding.weight)
        skip = {id(t) for t in embeddings}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def make_caches(self, batch_size: int, max_len: int | None = None,
                    dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None) -> list[KVCache]:
        """One empty KVCache per block; defaults: the full context, the model's dtype and device."""
        c = self.config
        max_len = c.context_length if max_len is None else max_len
        if max_len > c.context_length:
            raise ValueError(f"max_len={max_len} exceeds the context length {c.context_length}")
        weight = self.tok_emb.weight
        dtype = weight.dtype if dtype is None else dtype
        device = weight.device if device is None else device
        return [
            KVCache(batch_size, max_len, c.n_kv_heads, c.d_head, dtype=dtype, device=device)
            for _ in self.blocks
        ]

    def forward(self, idx: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab_size).

        With caches, idx continues the cached tokens.
        """
        c = self.config
        if idx.ndim != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"idx must be integer token ids of shape (B, T), got {idx.dtype} "
                             f"{tuple(idx.shape)}")
        if caches is not None and len(caches) != len(self.blocks):
            raise ValueError(f"need one cache per layer: got {len(caches)} caches for "
                             f"{len(self.blocks)} layers")
        B, T = idx.shape
        # tokens already cached: idx's first absolute position
        start = caches[0].pos if caches else 0
        if start + T > c.context_length:
            raise ValueError(f"{start + T} tokens (cached {start} + new {T}) exceed the context "
                             f"length {c.context_length}")
        if caches is not None and start + T > caches[0].max_len:
            raise ValueError(f"{start + T} tokens (cached {start} + new {T}) overflow the cache's "
                             f"max_len {caches[0].max_len}")
        x = self.tok_emb(idx)  # (B, T) -> (B, T, d)
        if self.pos_emb is not None:
            x = x + self.pos_emb(T, start_pos=start)  # (T, d) broadcast over the batch
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            # the residual stream, (B, T, d) throughout
            x = block(x, None if caches is None else caches[i])
        return self.head(x)  # (B, T, d) -> (B, T, vocab_size)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stream's last step: final norm, lm_head, and the optional logit soft cap."""
        return soft_cap(self.lm_head(self.norm(x)), self.config.logit_softcap)
