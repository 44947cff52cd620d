"""Self-checks for chapter 6's exercises.

A block's parameter count, RMSNorm, SwiGLU, tied embeddings.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..model import GPT, Block, GPTConfig, RMSNorm
from ._core import as_tensor, call, fail, passed

__all__ = ["check_6_1", "check_6_2", "check_6_3", "check_6_4"]

_SMALL = dict(vocab_size=64, context_length=16, d_model=48, n_layers=2, n_heads=6)


def _block_params(config: GPTConfig) -> int:
    return sum(p.numel() for p in Block(config).parameters())


def check_6_1(block_params: Callable[[GPTConfig], int]) -> None:
    """block_params(config) -> parameters in one transformer block (attention, MLP, two norms).

    From the config alone.
    """
    ex = "6.1"
    cases = [
        ("GPT-2 style", GPTConfig(**_SMALL)),
        ("GPT-2 small", GPTConfig.gpt2()),
        ("LLaMA style", GPTConfig(**_SMALL, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)),
        ("LLaMA style with GQA",
         GPTConfig(**_SMALL, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_heads=2)),
        ("LayerNorm without biases", GPTConfig(**_SMALL, bias=False, d_ff=100)),
    ]
    for name, cfg in cases:
        got = call(ex, block_params, cfg)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = int(got.item())
        if not isinstance(got, int) or isinstance(got, bool):
            fail(ex, f"return an int, got {type(got).__name__}")
        want = _block_params(cfg)
        if got == want:
            continue
        d, b = cfg.d_model, int(cfg.bias)
        kv = cfg.n_kv_heads * cfg.d_head
        norms = 2 * (d + b * d if cfg.norm == "layernorm" else d)
        hint = ""
        if got == want - norms:
            hint = " You left out the two norms' weights (and LayerNorm's biases)."
        n_in = 2 if cfg.mlp == "swiglu" else 1
        # q, o; k, v; the MLP's input(s); its output
        linear_biases = 2 * d + 2 * kv + n_in * cfg.d_ff + d
        norm_biases = 2 * d if cfg.norm == "layernorm" else 0
        if got == want - norms:
            pass  # handled above
        elif cfg.bias and want - got in (linear_biases, linear_biases + norm_biases):
            hint = (" You left out the biases: every nn.Linear in a GPT-2 block has one, and so"
                    " does LayerNorm.")
        elif cfg.n_kv_heads != cfg.n_heads and got - want == 2 * (d - kv) * (d + b):
            hint = (" With grouped-query attention, k_proj and v_proj are d_model x"
                    " (n_kv_heads * d_head), not d_model x d_model.")
        elif cfg.mlp == "swiglu" and want - got == d * cfg.d_ff + b * cfg.d_ff:
            hint = " SwiGLU has three matrices (gate, up, down), not two."
        elif cfg.norm == "rmsnorm" and got - want == 2 * d:
            hint = " RMSNorm has a scale but no bias."
        fail(ex, f"{name} (d_model={d}, d_ff={cfg.d_ff}, n_heads={cfg.n_heads}, "
                 f"n_kv_heads={cfg.n_kv_heads}, bias={cfg.bias}): expected {want:,} parameters, "
                 f"got {got:,}.{hint}")
    passed(ex, f"matches the tensors for {len(cases)} configs, including GPT-2 small "
               f"({_block_params(GPTConfig.gpt2()):,} per block), SwiGLU, GQA and no biases.")


def check_6_2(rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> None:
    """rms_norm(x, weight, eps) -> x / sqrt(mean(x^2 over the last dim) + eps) * weight."""
    ex = "6.2"
    x = torch.tensor([[3.0, 4.0]])
    got = as_tensor(ex, call(ex, rms_norm, x.clone(), torch.ones(2), 0.0), "rms_norm's output")
    want = x / (12.5 ** 0.5)
    if got.shape != x.shape:
        fail(ex, f"the output must have the input's shape {tuple(x.shape)}, got {tuple(got.shape)}")
    if torch.allclose(got.float(), x / 5.0, atol=1e-4):
        fail(ex, "you divided by the Euclidean norm sqrt(sum(x^2)); RMSNorm divides by the root "
                 "*mean* square.")
    if torch.allclose(got.float(), F.layer_norm(x, (2,)), atol=1e-3):
        fail(ex, "that is LayerNorm: RMSNorm does not subtract the mean.")
    if torch.allclose(got.float(), torch.ones(1, 2), atol=1e-4):
        fail(ex, "every value came out as 1: take the mean over the last dimension (the features), "
                 "not over the tokens.")
    if not torch.allclose(got.float(), want, atol=1e-5):
        fail(ex, f"for x = [[3, 4]], weight = 1, eps = 0 expected {want.tolist()} "
                 f"(rms = sqrt(12.5)), got {got.tolist()}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g) * 3 + 1
    w = torch.randn(16, generator=g)
    ref = RMSNorm(16, eps=1e-2)
    ref.weight.data = w.clone()
    got = as_tensor(ex, call(ex, rms_norm, x.clone(), w.clone(), 1e-2), "rms_norm's output").float()
    if got.shape != x.shape:
        fail(ex, f"for x of shape {tuple(x.shape)} the output must keep that shape, got "
                 f"{tuple(got.shape)}")
    no_weight = ref(x) / w
    if torch.allclose(got, no_weight, atol=1e-4):
        fail(ex, "multiply by `weight` at the end: it is RMSNorm's learned per-feature scale.")
    if torch.allclose(got, x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * w, atol=1e-5):
        fail(ex, "eps is missing: add it to the mean square before the square root.")
    if torch.allclose(got, x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-2) * w, atol=1e-5):
        fail(ex, "eps goes inside the square root: sqrt(mean(x^2) + eps), as in LLaMA.")
    other = x / (x.pow(2).mean(dim=1, keepdim=True) + 1e-2).sqrt() * w
    if torch.allclose(got, other, atol=1e-4):
        fail(ex, "take the mean over the last dimension (the features), not over the tokens.")
    if not torch.allclose(got, ref(x).detach(), atol=1e-5):
        fail(ex, "right on [[3, 4]] but different from companion.model.RMSNorm on a (2, 5, 16) "
                 "batch with eps = 0.01.")
    passed(ex, "matches the hand-worked case and companion.model.RMSNorm on a batch, weight and "
               "eps included.")


def check_6_3(swiglu: Callable[..., torch.Tensor]) -> None:
    """swiglu(x, w_gate, w_up, w_down) -> (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T.

    Weights as nn.Linear stores them.
    """
    ex = "6.3"
    g = torch.Generator().manual_seed(0)
    d, f = 6, 10
    x = torch.randn(2, 3, d, generator=g)
    wg, wu, wd = (torch.randn(f, d, generator=g), torch.randn(f, d, generator=g),
                  torch.randn(d, f, generator=g))
    got = as_tensor(
        ex, call(ex, swiglu, x.clone(), wg.clone(), wu.clone(), wd.clone()), "swiglu's output"
    ).float()
    if got.shape != x.shape:
        fail(ex, f"the output must have the input's shape {tuple(x.shape)}, got {tuple(got.shape)}")
    gate, up = x @ wg.T, x @ wu.T
    want = (F.silu(gate) * up) @ wd.T
    wrong = {
        "the gate and the up projection are swapped: silu goes on x @ w_gate.T":
            (F.silu(up) * gate) @ wd.T,
        "use SiLU (x * sigmoid(x)) on the gate, not GELU": (F.gelu(gate) * up) @ wd.T,
        "use SiLU (x * sigmoid(x)), not a bare sigmoid: the gate is silu(gate) = gate * "
        "sigmoid(gate)":
            (torch.sigmoid(gate) * up) @ wd.T,
        "the up projection is missing: multiply silu(gate) by x @ w_up.T before projecting down":
            F.silu(gate) @ wd.T,
    }
    for hint, value in wrong.items():
        if torch.allclose(got, value, atol=1e-4):
            fail(ex, hint + ".")
    if not torch.allclose(got, want, atol=1e-4):
        fail(ex, "the output differs from (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T; weights "
                 "are (out, in), as nn.Linear stores them.")
    passed(ex, "equals silu(gate) * up, projected down, on a (2, 3, 6) batch with d_ff = 10.")


def check_6_4(tie_embeddings: Callable[[GPT], GPT]) -> None:
    """tie_embeddings(model) -> the same model with lm_head sharing tok_emb's weight matrix."""
    ex = "6.4"
    torch.manual_seed(0)
    cfg = GPTConfig(**_SMALL, tie_embeddings=False)
    model = GPT(cfg)
    before = model.num_params()
    got = call(ex, tie_embeddings, model)
    if not isinstance(got, GPT):
        fail(
            ex,
            f"return the model, got {type(got).__name__}"
            + (": did you forget `return model`?" if got is None else ""),
        )
    if got.lm_head.weight is not got.tok_emb.weight:
        same = torch.equal(got.lm_head.weight.detach(), got.tok_emb.weight.detach())
        fail(ex, "lm_head.weight and tok_emb.weight are still two tensors" + (
            " with equal values: a copy is not a tie, training would move them apart. Assign the "
            "Parameter itself."
            if same else ". Make lm_head.weight the very same nn.Parameter as tok_emb.weight."))
    saved = cfg.vocab_size * cfg.d_model
    if got.num_params() != before - saved:
        fail(ex, f"tying should save vocab_size * d_model = {saved:,} parameters: {before:,} -> "
                 f"{before - saved:,}, got {got.num_params():,}")
    x = torch.randint(0, cfg.vocab_size, (2, 8))
    loss = F.cross_entropy(got(x).flatten(0, 1), x.flatten())
    loss.backward()
    if got.tok_emb.weight.grad is None:
        fail(ex, "the shared matrix received no gradient.")
    passed(ex, f"one shared matrix, {saved:,} parameters saved, and the loss trains it from both "
               "ends.")
