"""Chapter 6's self-checks pass on correct answers, and fail with a specific hint on the stub and on plausible mistakes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from companion.checks import ExerciseFailed, check_6_1, check_6_2, check_6_3, check_6_4, check_6_5
from checkhelpers import fails_with, passes, stub
from companion.model import count_params


# --- 6.1 block_params ------------------------------------------------------------

def block_params(c, head_width=True, qk=True):
    d, b, kv = c.d_model, int(c.bias), c.n_kv_heads * c.d_head
    q = c.n_heads * c.d_head if head_width else d
    attn = (d * q + b * q) + (q * d + b * d) + 2 * (d * kv + b * kv)
    attn += 2 * c.d_head if c.qk_norm and qk else 0
    n_in = 2 if c.mlp == "swiglu" else 1
    mlp = n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return attn + mlp + 2 * norm


def test_check_6_1_passes_on_a_correct_answer(capsys):
    check_6_1(block_params)
    assert "passed" in capsys.readouterr().out


def test_the_old_reference_solution_undercounts_a_qwen3_style_block():
    # the exercise's reference solution once used d_model x d_model for q_proj and o_proj
    from companion.model import Block, GPTConfig
    c = GPTConfig(vocab_size=64, context_length=16, d_model=64, n_layers=2, n_heads=4,
                  head_dim=32, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)
    assert sum(p.numel() for p in Block(c).parameters()) == block_params(c) == 69_760
    assert block_params(c, head_width=False) == 61_568


def test_check_6_1_passes_on_the_companion_count():
    check_6_1(lambda c: (count_params(c)["attn"] + count_params(c)["mlp"]) // c.n_layers
              + 2 * (count_params(c)["norm"] // (2 * c.n_layers + 1)))


def no_norms(c):
    return block_params(c) - 2 * (c.d_model + (int(c.bias) * c.d_model if c.norm == "layernorm" else 0))


def no_biases(c):
    d, kv = c.d_model, c.n_kv_heads * c.d_head
    n_in = 2 if c.mlp == "swiglu" else 1
    return 2 * d * d + 2 * d * kv + n_in * d * c.d_ff + c.d_ff * d + 2 * d


def gqa_ignored(c):
    d, b = c.d_model, int(c.bias)
    n_in = 2 if c.mlp == "swiglu" else 1
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return 4 * (d * d + b * d) + n_in * (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d + 2 * norm


def two_matrix_swiglu(c):
    d, b = c.d_model, int(c.bias)
    kv = c.n_kv_heads * c.d_head
    norm = d + (b * d if c.norm == "layernorm" else 0)
    return 2 * (d * d + b * d) + 2 * (d * kv + b * kv) + (d * c.d_ff + b * c.d_ff) + c.d_ff * d + b * d + 2 * norm


def model_wide_attention_biases(c):
    """Every attention bias d_model wide: right without GQA and head_dim, wrong with them."""
    d, b = c.d_model, int(c.bias)
    return block_params(c) - b * (c.n_heads * c.d_head + d + 2 * c.n_kv_heads * c.d_head) + 4 * b * d


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (no_norms, "left out the two norms"),
    (model_wide_attention_biases, "as wide as its layer's output"),
    (no_biases, "left out the biases"),
    (gqa_ignored, "grouped-query"),
    (two_matrix_swiglu, "three matrices"),
    (lambda c: float(block_params(c)), "return an int"),
    (lambda c: block_params(c, head_width=False), "not d_model x d_model"),
    (lambda c: block_params(c, head_width=False, qk=False), "not d_model x d_model"),
    (lambda c: block_params(c, qk=False), "QK-norm"),
    (lambda c: block_params(c) + 1, "Exercise 6.1"),
])
def test_check_6_1_rejects_mistakes(wrong, fragment):
    fails_with(check_6_1, wrong, fragment)


# --- 6.2 convert_gpt2 -------------------------------------------------------------


def convert_gpt2(sd, n_layers, d_model, transpose=True, split=None, qkv_order="qkv"):
    """The solution, with switches for the plausible mistakes."""
    t = (lambda w: w.t()) if transpose else (lambda w: w)
    out = {"tok_emb.weight": sd["transformer.wte.weight"],
           "pos_emb.embedding.weight": sd["transformer.wpe.weight"],
           "norm.weight": sd["transformer.ln_f.weight"], "norm.bias": sd["transformer.ln_f.bias"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(n_layers):
        h, b = f"transformer.h.{i}.", f"blocks.{i}."
        w, bias = sd[h + "attn.c_attn.weight"], sd[h + "attn.c_attn.bias"]
        if split == "wrong_axis":
            parts = w.t().chunk(3, dim=1)
        elif split == "interleaved":
            parts = w.t().view(d_model, 3, d_model).unbind(1)
        else:
            parts = t(w).chunk(3, dim=0) if transpose else w.chunk(3, dim=1)
        for name, wp, bp in zip(qkv_order, parts, bias.chunk(3)):
            out[b + f"attn.{name}_proj.weight"], out[b + f"attn.{name}_proj.bias"] = wp, bp
        for theirs, ours in [("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                             ("mlp.c_proj", "mlp.down_proj")]:
            out[b + ours + ".weight"] = t(sd[h + theirs + ".weight"])
            out[b + ours + ".bias"] = sd[h + theirs + ".bias"]
        for theirs, ours in [("ln_1", "attn_norm"), ("ln_2", "mlp_norm")]:
            out[b + ours + ".weight"] = sd[h + theirs + ".weight"]
            out[b + ours + ".bias"] = sd[h + theirs + ".bias"]
    return out


def test_check_6_2_passes_on_a_correct_answer(capsys):
    passes(check_6_2, convert_gpt2, capsys)


def test_check_6_2_solution_matches_a_real_transformers_gpt2():
    transformers = pytest.importorskip("transformers")
    from companion.hf import from_hf

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_positions=16, n_embd=24, n_layer=2, n_head=4)).eval()
    sd = hf.state_dict()
    mine = convert_gpt2(sd, 2, 24)
    theirs = from_hf(sd, hf.config.to_dict()).state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def no_bias_split(sd, n, d):
    out = convert_gpt2(sd, n, d)
    for i in range(n):
        for name in "qkv":
            out[f"blocks.{i}.attn.{name}_proj.bias"] = sd[f"transformer.h.{i}.attn.c_attn.bias"]
    return out


def missing_head(sd, n, d):
    out = convert_gpt2(sd, n, d)
    del out["lm_head.weight"]
    return out


def hf_names(sd, n, d):
    return dict(sd)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda sd, n, d: convert_gpt2(sd, n, d, transpose=False), "transposed"),
    (lambda sd, n, d: convert_gpt2(sd, n, d, split="wrong_axis"), "packed side by side"),
    (lambda sd, n, d: convert_gpt2(sd, n, d, split="interleaved"), "not interleaved"),
    (lambda sd, n, d: convert_gpt2(sd, n, d, qkv_order="kqv"), "queries, then keys"),
    (no_bias_split, "packed side by side"),
    (missing_head, "missing"),
    (hf_names, "missing"),
    (lambda sd, n, d: None, "return a dict"),
])
def test_check_6_2_rejects_mistakes(wrong, fragment):
    fails_with(check_6_2, wrong, fragment)


def only_c_proj_untransposed(sd, n, d):
    out = convert_gpt2(sd, n, d)
    for i in range(n):
        out[f"blocks.{i}.attn.o_proj.weight"] = sd[f"transformer.h.{i}.attn.c_proj.weight"]
    return out


def test_check_6_2_names_a_forgotten_square_transpose():
    fails_with(check_6_2, only_c_proj_untransposed, "o_proj.weight is transposed")


# --- 6.3 top_p -------------------------------------------------------------------


def top_p(logits, p, keep_boundary=True, unsort=True, dim=-1):
    probs, order = logits.softmax(dim=dim).sort(dim=-1, descending=True)
    before = probs.cumsum(-1) - probs
    keep = before < p if keep_boundary else probs.cumsum(-1) < p
    if unsort:
        keep = torch.zeros_like(keep).scatter(-1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))


def test_check_6_3_passes_on_a_correct_answer(capsys):
    passes(check_6_3, top_p, capsys)


def test_check_6_3_passes_on_the_companion_filter(capsys):
    from companion.generate import top_p_filter

    passes(check_6_3, top_p_filter, capsys)


def at_or_below_p(logits, p):  # keeps a token while the mass before it is <= p
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
    keep = (probs.cumsum(-1) - probs) <= p
    keep = torch.zeros_like(keep).scatter_(-1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))


def keeps_at_most_p(logits, p):
    probs, order = logits.softmax(-1).sort(dim=-1, descending=True)
    keep = probs.cumsum(-1) <= p + 1e-6
    return logits.masked_fill(~torch.zeros_like(keep).scatter(-1, order, keep), float("-inf"))


def zeros_instead_of_inf(logits, p):
    out = top_p(logits, p)
    return out.masked_fill(torch.isinf(out), 0.0)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda lg, p: top_p(lg, p, keep_boundary=False), "carries the total past p"),
    (keeps_at_most_p, "carries the total past p"),
    (lambda lg, p: top_p(lg, p, unsort=False), "vocabulary order"),
    (lambda lg, p: top_p(lg, p, dim=0), "each row on its own"),
    (zeros_instead_of_inf, "keep their logits"),
    (lambda lg, p: lg[:, :2], "shape"),
    (at_or_below_p, "not <= p"),
])
def test_check_6_3_rejects_mistakes(wrong, fragment):
    fails_with(check_6_3, wrong, fragment)


# --- 6.4 dispatch_tokens, run_experts ---------------------------------------------------------


def dispatch_tokens(probs, experts, cf, from_one=False, no_factor=False, floor=False,
                    drop_above=False, over_experts=False, detach=False, keep_overflow=False,
                    token_major=False, gates_one=False, no_count=False):
    N, E = probs.shape
    k = experts.shape[1]
    C = (math.floor(cf * N * k / E) if floor else
         math.ceil(N * k / E) if no_factor else math.ceil(cf * N * k / E))
    order = experts.reshape(-1) if token_major else experts.T.reshape(-1)
    mask = F.one_hot(order, E)
    position = mask.cumsum(dim=1 if over_experts else 0) - (0 if from_one else 1)
    keep = mask.bool() & (True if keep_overflow else
                          ~(position > C) if drop_above else position < C)
    slots = F.one_hot(position.clamp(0, C - 1), C).bool() & keep[..., None]
    dispatch = (slots.view(N, k, E, C).any(1) if token_major else
                slots.view(k, N, E, C).any(0))
    combine = (probs.detach() if detach else probs)[..., None] * dispatch
    dropped = 0 if no_count else int(mask.sum() - keep.sum())
    return dispatch, dispatch.float() if gates_one else combine, dropped


def run_experts(x, dispatch, combine, experts, residual=False, weights=None, per_token=False):
    w = {"dispatch": dispatch, "detached": combine.detach()}.get(weights, combine).to(x.dtype)
    if per_token:  # right numbers, but each expert runs on one token at a time
        return sum(w[:, e].sum(-1, keepdim=True) * torch.cat([f(row[None]) for row in x])
                   for e, f in enumerate(experts))
    buffers = torch.einsum("nec,nd->ecd", dispatch.to(x.dtype), x)
    outs = torch.stack([f(b) for f, b in zip(experts, buffers)])
    return torch.einsum("nec,ecd->nd", w, outs) + (x if residual else 0)


def test_check_6_4_passes_on_a_correct_answer(capsys):
    passes(lambda d: check_6_4(d, run_experts), dispatch_tokens, capsys)


def test_check_6_4_fails_on_the_stubs():
    fails_with(lambda d: check_6_4(d, stub), stub, "not implemented")
    fails_with(lambda r: check_6_4(dispatch_tokens, r), stub, "not implemented")


@pytest.mark.parametrize("mistake, fragment", [
    ("from_one", "positions count from 0"),
    ("no_factor", "missing its capacity factor"),
    ("floor", "round up, never down"),
    ("drop_above", "drop when position >= C, not > C"),
    ("over_experts", "over the token axis, not over the experts"),
    ("detach", "combine carries no gradient"),
    ("keep_overflow", "keeps its first C = 8 assignments and drops the rest"),
    ("token_major", "every token's first choice in token order, then"),
    ("gates_one", "gate p_i(x)"),
    ("no_count", "dropped should count the assignments over capacity"),
])
def test_check_6_4_rejects_dispatch_mistakes(mistake, fragment):
    wrong = lambda p, e, c: dispatch_tokens(p, e, c, **{mistake: True})  # noqa: E731
    fails_with(lambda d: check_6_4(d, run_experts), wrong, fragment)


@pytest.mark.parametrize("switch, fragment", [
    (dict(residual=True), "adds the residual x"),
    (dict(weights="dispatch"), "not with dispatch"),
    (dict(weights="detached"), "router gets no gradient through run_experts"),
    (dict(per_token=True), "run each expert once on its whole buffer"),
])
def test_check_6_4_rejects_run_experts_mistakes(switch, fragment):
    wrong = lambda *a: run_experts(*a, **switch)  # noqa: E731
    fails_with(lambda r: check_6_4(dispatch_tokens, r), wrong, fragment)


def test_check_6_4_rejects_a_wrong_return():
    fails_with(lambda d: check_6_4(d, run_experts), lambda *a: dispatch_tokens(*a)[:2],
               "three things")


# --- 6.5 gpt_forward -------------------------------------------------------------------


def gpt_forward(sd, cfg, idx, **switch):
    from companion.checks.ch06 import _forward_reference
    return _forward_reference(sd, cfg, idx, **switch)


def gpt_forward_by_hand(sd, cfg, idx):
    """The exercise's answer, written without the check's reference."""
    B, T = idx.shape
    d, H = cfg.d_model, cfg.n_heads
    x = F.embedding(idx, sd["tok_emb.weight"]) + sd["pos_emb.embedding.weight"][:T]
    for i in range(cfg.n_layers):
        def w(name):
            return sd[f"blocks.{i}.{name}"]
        h = F.layer_norm(x, (d,), w("attn_norm.weight"), w("attn_norm.bias"), cfg.norm_eps)
        q, k, v = (F.linear(h, w(f"attn.{n}_proj.weight"), w(f"attn.{n}_proj.bias"))
                   .view(B, T, H, d // H).transpose(1, 2) for n in "qkv")
        att = (q @ k.transpose(-2, -1)) / (d // H) ** 0.5
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        a = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + F.linear(a, w("attn.o_proj.weight"), w("attn.o_proj.bias"))
        h = F.layer_norm(x, (d,), w("mlp_norm.weight"), w("mlp_norm.bias"), cfg.norm_eps)
        h = F.gelu(F.linear(h, w("mlp.up_proj.weight"), w("mlp.up_proj.bias")), approximate="tanh")
        x = x + F.linear(h, w("mlp.down_proj.weight"), w("mlp.down_proj.bias"))
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], cfg.norm_eps)
    return x @ sd["tok_emb.weight"].T


def test_check_6_5_passes_on_a_correct_answer(capsys):
    passes(check_6_5, gpt_forward_by_hand, capsys)
    passes(check_6_5, gpt_forward, capsys)


def heads_interleaved(sd, cfg, idx):
    """Splits the heads along the wrong axis: (B, T, d) viewed as (B, H, T, d_head)."""
    B, T = idx.shape
    import companion.checks.ch06 as ch
    real = F.scaled_dot_product_attention
    try:
        F.scaled_dot_product_attention = lambda q, k, v, is_causal: real(
            q.reshape(B, T, cfg.n_heads, -1).transpose(1, 2),
            k.reshape(B, T, cfg.n_heads, -1).transpose(1, 2),
            v.reshape(B, T, cfg.n_heads, -1).transpose(1, 2), is_causal=is_causal)
        return ch._forward_reference(sd, cfg, idx)
    finally:
        F.scaled_dot_product_attention = real


def fixed_positions(sd, cfg, idx):
    """Always adds the first 12 position rows, padded: wrong for a shorter input."""
    out = gpt_forward(sd, cfg, torch.cat([idx, idx.new_zeros(idx.shape[0], 12 - idx.shape[1])], 1)
                      if idx.shape[1] < 12 else idx)
    return out[:, :idx.shape[1]] + (0.5 if idx.shape[1] < 12 else 0.0)


@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda sd, c, i: gpt_forward(sd, c, i, causal=False), "causal mask"),
    (lambda sd, c, i: gpt_forward(sd, c, i, final_norm=False), "final LayerNorm"),
    (lambda sd, c, i: gpt_forward(sd, c, i, positions=False), "position embeddings"),
    (lambda sd, c, i: gpt_forward(sd, c, i, pre_norm=False), "post-norm"),
    (lambda sd, c, i: gpt_forward(sd, c, i, tanh=False), "tanh approximation"),
    (lambda sd, c, i: gpt_forward(sd, c, i)[:, -1], "shape"),
    (heads_interleaved, "how the heads are split"),
    (fixed_positions, "cut there"),
])
def test_check_6_5_rejects_mistakes(wrong, fragment):
    fails_with(check_6_5, wrong, fragment)
