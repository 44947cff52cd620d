"""Self-checks for chapter 6's exercises.

A block's parameter count, GPT-2's checkpoint converted by hand, top-p at its boundary, an
MoE's capacity-limited dispatch, and the GPT's forward from a state dict.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..generate import top_p_filter
from ..hf import from_hf
from ..model import GPT, Block, GPTConfig
from ..moe import MoE, expert_capacity, route
from ._core import as_scalar, as_tensor, call, fail, passed

__all__ = ["check_6_1", "check_6_2", "check_6_3", "check_6_4", "check_6_5"]

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
        # head_dim set wider than d_model / n_heads: q_proj and o_proj are not d x d
        ("head_dim != d_model / n_heads",
         GPTConfig(vocab_size=64, context_length=16, d_model=64, n_layers=2, n_heads=4,
                   head_dim=32, norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)),
        ("Qwen3 style: head_dim, GQA and QK-norm",
         GPTConfig(vocab_size=64, context_length=16, d_model=64, n_layers=2, n_heads=4,
                   n_kv_heads=2, head_dim=32, qk_norm=True, norm="rmsnorm", mlp="swiglu",
                   pos="rope", bias=False)),
        # biases as wide as their layer's output: q_proj's n_heads * d_head, k's and v's
        # n_kv_heads * d_head, o_proj's d_model (Qwen2 keeps biases with GQA)
        ("GQA and a wider head_dim, with biases",
         GPTConfig(**_SMALL, n_kv_heads=2, head_dim=16, bias=True)),
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
        kv, q = cfg.n_kv_heads * cfg.d_head, cfg.n_heads * cfg.d_head
        norms = 2 * (d + b * d if cfg.norm == "layernorm" else d)
        qk_scales = 2 * cfg.d_head if cfg.qk_norm else 0
        hint = ""
        if got == want - norms:
            hint = " You left out the two norms' weights (and LayerNorm's biases)."
        elif q != d and want - got in (2 * (q - d) * d, 2 * (q - d) * d + qk_scales):
            hint = (f" With head_dim={cfg.d_head} and n_heads={cfg.n_heads}, q_proj is d_model x"
                    f" (n_heads * d_head) = {d} x {q} and o_proj {q} x {d}: not d_model x d_model.")
        elif qk_scales and want - got == qk_scales:
            hint = (" With qk_norm, attention also holds two RMSNorm scales of width d_head, one"
                    " for the queries and one for the keys.")
        n_in = 2 if cfg.mlp == "swiglu" else 1
        # q, o; k, v; the MLP's input(s); its output
        linear_biases = 2 * d + 2 * kv + n_in * cfg.d_ff + d
        norm_biases = 2 * d if cfg.norm == "layernorm" else 0
        if hint:
            pass  # handled above
        elif cfg.bias and want - got in (linear_biases, linear_biases + norm_biases):
            hint = (" You left out the biases: every nn.Linear in a GPT-2 block has one, and so"
                    " does LayerNorm.")
        elif cfg.bias and got - want == 4 * d - (q + d + 2 * kv):
            hint = (f" Each bias is as wide as its layer's output: q_proj's is n_heads * d_head ="
                    f" {q}, k_proj's and v_proj's n_kv_heads * d_head = {kv}, o_proj's d_model.")
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
               f"({_block_params(GPTConfig.gpt2()):,} per block), SwiGLU, GQA, no biases, "
               "biases with GQA, and a head_dim wider than d_model / n_heads with QK-norm (Qwen3).")


# --- 6.2: GPT-2's checkpoint into our names -----------------------------------------------------


def _gpt2_checkpoint(model: GPT) -> dict[str, torch.Tensor]:
    """Our GPT-2 weights in Hugging Face's layout: Conv1D (in, out) matrices, q/k/v packed."""
    sd, c = model.state_dict(), model.config
    hf = {"transformer.wte.weight": sd["tok_emb.weight"],
          "transformer.wpe.weight": sd["pos_emb.embedding.weight"],
          "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
    for i in range(c.n_layers):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [b + f"attn.{n}_proj" for n in "qkv"]
        hf[h + "attn.c_attn.weight"] = torch.cat([sd[n + ".weight"] for n in qkv]).t()
        hf[h + "attn.c_attn.bias"] = torch.cat([sd[n + ".bias"] for n in qkv])
        for theirs, ours in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                             ("mlp.c_proj", "mlp.down_proj"), ("ln_1", "attn_norm"),
                             ("ln_2", "mlp_norm")):
            w = sd[b + ours + ".weight"]
            hf[h + theirs + ".weight"] = w.t() if w.ndim == 2 else w
            hf[h + theirs + ".bias"] = sd[b + ours + ".bias"]
    hf["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.clone().contiguous() for k, v in hf.items()}


def _gpt2_hint(got: torch.Tensor, want: torch.Tensor, key: str, ours: dict) -> str:
    """What a tensor that differs from the right one most likely got wrong."""
    if "q_proj" in key or "k_proj" in key or "v_proj" in key:
        if got.shape == want.shape and torch.equal(got, want.t()):
            return (f"{key} is the right block but transposed: Conv1D stores (in, out), nn.Linear "
                    "(out, in).")
        for other in ("q_proj", "k_proj", "v_proj"):
            if other not in key and torch.equal(got, ours[key.replace(key.split(".")[-2],
                                                                      other)]):
                return (f"{key} holds {other}'s values: the packed matrix lists queries, then "
                        "keys, then values.")
        return (f"{key} has the right shape but the wrong values: q, k and v sit one after the "
                "other along the packed matrix's output axis, each d_model wide, not interleaved.")
    if got.ndim == 2 and got.shape == want.t().shape and torch.equal(got, want.t()):
        return (f"{key} is transposed: every GPT-2 matrix is a Conv1D stored (in, out), and "
                "nn.Linear wants (out, in).")
    return f"{key} differs from the companion's conversion."


def check_6_2(convert: Callable[[dict, int, int], dict]) -> None:
    """convert(state_dict, n_layers, d_model) -> our state dict, from GPT-2's Hugging Face names."""
    ex = "6.2"
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=16, d_model=24, n_layers=2, n_heads=4)
    model = GPT(cfg).eval()
    with torch.no_grad():  # biases and norms away from 0 and 1, so a swap shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    ours = model.state_dict()
    got = call(ex, convert, _gpt2_checkpoint(model), cfg.n_layers, cfg.d_model)
    if not isinstance(got, dict):
        fail(ex, f"return a dict of tensors in our names, got {type(got).__name__}")
    missing = sorted(set(ours) - set(got))
    if missing:
        fail(ex, f"{len(missing)} of our tensors are missing, e.g. {missing[:3]}")
    extra = sorted(set(got) - set(ours))
    if extra:
        fail(ex, f"names that our GPT does not have: {extra[:3]}")
    for key, want in ours.items():
        value = as_tensor(ex, got[key], key)
        if value.shape != want.shape and not (value.ndim == 2 and value.shape == want.t().shape):
            fail(ex, f"{key} should be {tuple(want.shape)}, got {tuple(value.shape)}: q, k and v "
                     "are packed side by side along the output axis, so each is one d_model-wide "
                     "slice of it.")
        if not torch.equal(value, want):
            fail(ex, _gpt2_hint(value, want, key, ours))
    fresh = GPT(cfg).eval()
    fresh.load_state_dict(got, strict=True)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        same = torch.allclose(fresh(idx), model(idx), atol=1e-5)
        agrees = torch.allclose(from_hf(_gpt2_checkpoint(model), _hf_config(cfg))(idx),
                                fresh(idx), atol=1e-5)
    if not (same and agrees):
        fail(ex, "the tensors match but the logits do not; is a tensor shared where it should "
                 "not be?")
    passed(ex, f"all {len(ours)} tensors of a {cfg.n_layers}-layer GPT-2 are converted, and the "
               "logits equal the original model's and companion.hf.from_hf's.")


def _hf_config(cfg: GPTConfig) -> dict:
    return dict(model_type="gpt2", vocab_size=cfg.vocab_size, n_positions=cfg.context_length,
                n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps)


# --- 6.3: top-p at its boundary ---------------------------------------------------------------


def check_6_3(top_p: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """top_p(logits (B, V), p) -> logits with the tokens outside the nucleus set to -inf."""
    ex = "6.3"

    def kept(logits: torch.Tensor, p: float) -> list[bool]:
        out = as_tensor(ex, call(ex, top_p, logits.clone(), p), "the filtered logits")
        if out.shape != logits.shape:
            fail(ex, f"keep the logits' shape {tuple(logits.shape)}, got {tuple(out.shape)}")
        finite = torch.isfinite(out)
        if not torch.equal(out[finite], logits[finite]):
            fail(ex, "the tokens you keep must keep their logits; only the others become -inf.")
        if (out[~finite] != float("-inf")).any():
            fail(ex, "set the dropped tokens to -inf (not NaN or +inf).")
        return finite.flatten().tolist()

    probs = torch.tensor([[0.5, 0.3, 0.2]])
    pair = torch.tensor([[0.5, 0.3, 0.2], [0.8, 0.1, 0.1]]).log()
    if kept(probs.log(), 0.7) != kept(pair, 0.7)[:3]:
        fail(ex, "the first row's answer changed when a second row was added: filter each row on "
                 "its own, with the softmax over the vocabulary (the last dimension).")
    if kept(probs.log(), 0.7) != [True, True, False]:
        fail(ex, "with probabilities [0.5, 0.3, 0.2] and p = 0.7, keep the first two: 0.5 falls "
                 "short of 0.7, and the token that carries the total past p belongs to the "
                 f"nucleus too. Got kept = {kept(probs.log(), 0.7)}.")
    if kept(probs.log(), 0.3) != [True, False, False]:
        fail(ex, "with p = 0.3 only the likeliest token (0.5) stays: it alone reaches p. The most "
                 "likely token is always kept, however small p is.")
    shuffled = torch.tensor([[0.2, 0.5, 0.3]]).log()
    if kept(shuffled, 0.7) != [False, True, True]:
        fail(ex, "for probabilities [0.2, 0.5, 0.3] (not sorted) and p = 0.7 keep the tokens "
                 "with 0.5 and 0.3, at their own positions: rank by probability, then put the "
                 "decision back in vocabulary order.")
    # the boundary: 0.5 + 0.375 is exactly 0.875 in float32, so the mass before the third token
    # equals p and the nucleus is already full
    exact = torch.tensor([[0.5, 0.375, 0.125]]).log()
    if kept(exact, 0.875) != [True, True, False]:
        fail(ex, "with probabilities [0.5, 0.375, 0.125] and p = 0.875 keep the first two: they "
                 "already hold exactly p, so the third is outside the nucleus. Keep a token "
                 "while the mass before it is < p, not <= p. "
                 f"Got kept = {kept(exact, 0.875)}.")
    if not all(kept(probs.log(), 1.0)):
        fail(ex, "p = 1 keeps every token.")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen) * 2
    for p in (0.1, 0.5, 0.9):
        want = torch.isfinite(top_p_filter(logits, p)).flatten().tolist()
        if kept(logits, p) != want:
            fail(ex, f"on a batch of 4 rows of 50 logits at p = {p} the kept tokens differ from "
                     "companion.generate.top_p_filter; filter each row on its own, with the "
                     "softmax over the vocabulary (the last dimension).")
    passed(ex, "keeps the token that crosses p, not one after the mass reaches p exactly, always "
               "the likeliest one, and works row by row in vocabulary order.")


# --- 6.4: capacity-limited dispatch (Switch Transformer) -----------------------------------------


def _dispatch_reference(experts: torch.Tensor, n_experts: int, capacity_factor: float
                        ) -> tuple[int, dict[tuple[int, int], int], int]:
    """(capacity, {(token, expert): slot}, dropped) by a plain loop over the assignments.

    First choices of every token in token order, then second choices, and so on; an expert keeps
    the first C that reach it.
    """
    N, k = experts.shape
    C = expert_capacity(N, n_experts, k, capacity_factor)
    fill, slot, dropped = [0] * n_experts, {}, 0
    for rank in range(k):
        for n in range(N):
            e = int(experts[n, rank])
            if fill[e] < C:
                slot[n, e] = fill[e]
                fill[e] += 1
            else:
                dropped += 1
    return C, slot, dropped


def _check_dispatch(ex: str, dispatch_tokens: Callable, logits: torch.Tensor, k: int, cf: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the learner's dispatch on softmax(logits)'s top-k; compare with the loop above."""
    if not logits.requires_grad:
        logits = logits.clone().requires_grad_(True)
    probs, _, chosen = route(logits, k)
    N, E = probs.shape
    C, slot, n_drop = _dispatch_reference(chosen, E, cf)
    out = call(ex, dispatch_tokens, probs, chosen.clone(), cf)
    if not isinstance(out, tuple) or len(out) != 3:
        fail(ex, "return three things: (dispatch (N, E, C), combine (N, E, C), dropped)")
    got = as_tensor(ex, out[0], "dispatch")
    combine = as_tensor(ex, out[1], "combine")
    dropped = as_scalar(ex, out[2], "dropped")
    case = f"N = {N} tokens, E = {E} experts, k = {k}, capacity_factor = {cf}"
    if got.dim() != 3 or tuple(got.shape[:2]) != (N, E):
        fail(ex, f"dispatch should be (N, E, C) = ({N}, {E}, {C}) for {case}; got "
                 f"{tuple(got.shape)}")
    if got.shape[2] != C:
        exact = cf * N * k / E
        if got.shape[2] == math.floor(exact):
            fail(ex, f"C = ceil(capacity_factor * N * k / E) = ceil({exact}) = {C} for {case}: "
                     f"round up, never down (got {got.shape[2]}).")
        if got.shape[2] == math.ceil(N * k / E):
            fail(ex, f"the capacity is missing its capacity factor: ceil({cf} * {N} * {k} / {E})"
                     f" = {C}, got {got.shape[2]} for {case}.")
        fail(ex, f"C should be ceil(capacity_factor * N * k / E) = {C} for {case}; the "
                 f"dispatch's last axis has {got.shape[2]} slots.")
    d = got.detach()
    if not bool(((d == 0) | (d == 1)).all()):
        fail(ex, "dispatch holds 0 or 1 (or False/True): whether a token sits in a slot.")
    d = d.bool()
    want = torch.zeros(N, E, C, dtype=torch.bool)
    for (n, e), s in slot.items():
        want[n, e, s] = True
    chose = torch.zeros(N, E, dtype=torch.bool).scatter_(1, chosen, True)
    if (d.any(-1) & ~chose).any():
        n, e = (d.any(-1) & ~chose).nonzero()[0].tolist()
        fail(ex, f"token {n} sits in expert {e}'s buffer but did not choose it ({case}).")
    if (d.sum(-1) > 1).any():
        fail(ex, "a token takes at most one slot in an expert's buffer.")
    load = torch.bincount(chosen.reshape(-1), minlength=E)
    over = int((load > C).sum())
    if (d.sum(0) > 1).any():
        e, s = (d.sum(0) > 1).nonzero()[0].tolist()
        if not d[:, :, 1:].any():
            fail(ex, f"every token sits in slot 0 (expert {e} holds {int(d[:, e, 0].sum())} "
                     "there): a token's position counts the tokens before it (in token order) "
                     "that chose the same expert, so the running sum runs over the token axis, "
                     "not over the experts.")
        if int(d.sum()) == len(slot) + over:
            fail(ex, f"slot {s} of expert {e} holds two tokens: an expert keeps positions 0 to "
                     "C - 1, so the token at position C is the first one dropped (drop when "
                     "position >= C, not > C).")
        fail(ex, f"slot {s} of expert {e} holds {int(d[:, e, s].sum())} tokens: an expert "
                 f"keeps its first C = {C} assignments and drops the rest ({case}).")
    both = d.any(-1) & want.any(-1)
    shift = d.float().argmax(-1) - want.float().argmax(-1)
    if both.any() and bool((shift[both] == 1).all()):
        fail(ex, "every kept token sits one slot too far: positions count from 0, so the first "
                 "token an expert receives takes slot 0 (a running count minus one).")
    if not torch.equal(d.any(-1), want.any(-1)):
        n, e = (d.any(-1) != want.any(-1)).nonzero()[0].tolist()
        kept = "kept" if d[n, e].any() else "dropped"
        fail(ex, f"token {n} was {kept} by expert {e} but should be "
                 f"{'dropped' if kept == 'kept' else 'kept'} ({case}): an expert keeps the first "
                 f"C = {C} assignments in priority order (every token's first choice in token "
                 "order, then every token's second choice, ...).")
    if not torch.equal(d, want):
        n, e = (d != want).any(-1).nonzero()[0].tolist()
        fail(ex, f"token {n} sits in slot {int(d[n, e].float().argmax())} of expert {e}, "
                 f"expected {int(want[n, e].float().argmax())} ({case}): slots fill in priority "
                 "order, from 0.")
    if round(dropped) != n_drop:
        fail(ex, f"dropped should count the assignments over capacity: {n_drop} for {case}, "
                 f"got {dropped:g}.")
    if tuple(combine.shape) != (N, E, C):
        fail(ex, f"combine should have the dispatch's shape (N, E, C) = ({N}, {E}, {C}), got "
                 f"{tuple(combine.shape)}")
    want_c = probs.detach()[..., None] * want
    c = combine.detach().float()
    if torch.allclose(c, want.float()) and not torch.allclose(c, want_c):
        fail(ex, "combine holds each kept token's gate p_i(x) in its slot (as Switch weights an "
                 "expert's output), not 1.")
    if not torch.allclose(c, want_c, atol=1e-6):
        fail(ex, "combine should hold the router probability p_e(x_n) at token n's kept slot "
                 "of expert e, and 0 everywhere else (dropped assignments included).")
    if not combine.requires_grad:
        fail(ex, "combine carries no gradient: the language-model loss reaches the router only "
                 "through these weights. Did you multiply by probs.detach(), or build it under "
                 "torch.no_grad()?")
    weights = torch.linspace(0.5, 1.5, combine.numel()).view_as(combine)
    # retain_graph: run_experts' check backpropagates through this combine once more
    grad = torch.autograd.grad((combine * weights).sum(), logits, retain_graph=True,
                               allow_unused=True)[0]
    if grad is None or not grad.abs().sum() > 0:
        fail(ex, "combine sends no gradient back to the router's logits.")
    return probs, chosen, d, combine


def check_6_4(dispatch_tokens: Callable[[torch.Tensor, torch.Tensor, float], tuple],
              run_experts: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list],
                                    torch.Tensor]) -> None:
    """dispatch_tokens(probs, experts, c) -> (dispatch, combine, dropped); run_experts -> (N, d).

    dispatch and combine are (N, E, C) with C = ceil(c * N * k / E); checked against a plain
    loop over the assignments, and run_experts against companion.moe.MoE while training.
    """
    ex = "6.4"
    gen = torch.Generator().manual_seed(0)
    # expert 0 favoured so that it overflows; 7.5 -> C = 8 tells the ceiling and the factor apart
    skew = torch.tensor([1.5, 0.0, 0.0, -1.0])
    _check_dispatch(ex, dispatch_tokens, torch.randn(24, 4, generator=gen) + skew, 1, 1.25)
    # at least five tokens for expert 0 at C = 4; two tokens tie at probabilities (0.5, 0.5)
    tied = torch.tensor([[3.0, 0.0]] * 5 + [[0.0, 3.0]] * 1 + [[0.0, 0.0]] * 2)
    _check_dispatch(ex, dispatch_tokens, tied, 1, 1.0)
    _check_dispatch(ex, dispatch_tokens, torch.randn(21, 4, generator=gen) * 2 + skew, 2, 1.0)
    _check_dispatch(ex, dispatch_tokens, torch.randn(16, 4, generator=gen), 2, 2.0)
    # The experts on their buffers, against the companion's MoE (training: capacity applies).
    d_model, E, k, cf = 8, 4, 2, 1.0
    with torch.random.fork_rng():  # seeded weights, the learner's global RNG left as it was
        torch.manual_seed(0)
        moe = MoE(d_model, E, k, cf, lambda: torch.nn.Sequential(
            torch.nn.Linear(d_model, 16), torch.nn.GELU(), torch.nn.Linear(16, d_model))).train()
    with torch.no_grad():  # a lopsided router, so that some assignments go over capacity
        moe.router.weight[0] += 2.0
    x = torch.randn(20, d_model, generator=gen)
    want = moe(x[None])[0].detach()
    _, _, dispatch, combine = _check_dispatch(ex, dispatch_tokens, moe.router(x), k, cf)
    C = dispatch.shape[-1]
    calls: list[tuple[int, ...]] = []

    def spy(expert: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(buf: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(buf.shape))
            return expert(buf)
        return run

    moe.zero_grad()
    out = call(ex, run_experts, x.clone(), dispatch.clone(), combine, [spy(e) for e in moe.experts])
    out = as_tensor(ex, out, "run_experts' output")
    if tuple(out.shape) != tuple(x.shape):
        fail(ex, f"run_experts should return (N, d) = {tuple(x.shape)}, got {tuple(out.shape)}")
    if calls != [(C, d_model)] * E:
        seen = ", ".join(map(str, calls[:3])) + (", ..." if len(calls) > 3 else "")
        fail(ex, f"run each expert once on its whole buffer of C = {C} slots, shape ({C}, "
                 f"{d_model}), empty slots included (a fixed shape is the point of a capacity); "
                 f"the experts were called {len(calls)} times, on {seen}.")
    if torch.allclose(out.detach(), want + x, atol=1e-5):
        fail(ex, "return the experts' weighted outputs only: the block adds the residual x "
                 "itself, so a dropped token's output here is 0.")
    with torch.no_grad():  # the same mixture with every gate 1
        ungated = torch.zeros_like(x)
        for n, e in dispatch.any(-1).nonzero().tolist():
            ungated[n] += moe.experts[e](x[n])
    if torch.allclose(out.detach(), ungated, atol=1e-5):
        fail(ex, "each expert's output is weighted by the token's gate p_i(x): sum the outputs "
                 "back with combine, not with dispatch.")
    if not torch.allclose(out.detach(), want, atol=1e-5):
        fail(ex, "run_experts differs from companion.moe.MoE in training: gather each expert's "
                 "buffer with dispatch, run the expert, and sum its outputs back to the tokens "
                 "weighted by combine.")
    if not out.requires_grad:
        fail(ex, "run_experts' output carries no gradient.")
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    if moe.router.weight.grad is None or not moe.router.weight.grad.abs().sum() > 0:
        fail(ex, "the router gets no gradient through run_experts: weight the outputs by "
                 "combine itself, not by a detached copy or by dispatch.")
    passed(ex, f"positions by a running count in token order, drops at position >= C, gates p_i(x)"
               f" that carry the router's gradient, and experts on ({C}, {d_model}) buffers that "
               f"match companion.moe.MoE ({moe.dropped} assignments dropped there).")


# --- 6.5: the GPT's forward from a state dict ---------------------------------------------------


def _forward_reference(sd: dict[str, torch.Tensor], cfg: GPTConfig, idx: torch.Tensor, *,
                       causal: bool = True, final_norm: bool = True, positions: bool = True,
                       pre_norm: bool = True, tanh: bool = True) -> torch.Tensor:
    """A GPT-2 forward in functional ops; the switches turn on one plausible mistake each."""
    import torch.nn.functional as F

    B, T = idx.shape
    d, H, eps = cfg.d_model, cfg.n_heads, cfg.norm_eps
    x = sd["tok_emb.weight"][idx]
    if positions:
        x = x + sd["pos_emb.embedding.weight"][:T]
    for i in range(cfg.n_layers):
        w = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}

        def norm(h: torch.Tensor, name: str) -> torch.Tensor:
            return F.layer_norm(h, (d,), w[name + ".weight"], w[name + ".bias"], eps)

        h = norm(x, "attn_norm") if pre_norm else x
        q, k, v = (F.linear(h, w[f"attn.{n}_proj.weight"], w[f"attn.{n}_proj.bias"])
                   .view(B, T, H, -1).transpose(1, 2) for n in "qkv")
        a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        x = x + F.linear(a.transpose(1, 2).reshape(B, T, -1), w["attn.o_proj.weight"],
                         w["attn.o_proj.bias"])
        x = x if pre_norm else norm(x, "attn_norm")
        h = norm(x, "mlp_norm") if pre_norm else x
        h = F.gelu(F.linear(h, w["mlp.up_proj.weight"], w["mlp.up_proj.bias"]),
                   approximate="tanh" if tanh else "none")
        x = x + F.linear(h, w["mlp.down_proj.weight"], w["mlp.down_proj.bias"])
        x = x if pre_norm else norm(x, "mlp_norm")
    if final_norm:
        x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return x @ sd["tok_emb.weight"].T


def check_6_5(gpt_forward: Callable[[dict, GPTConfig, torch.Tensor], torch.Tensor]) -> None:
    """gpt_forward(state_dict, config, idx (B, T)) -> logits (B, T, V), as companion GPT's."""
    ex = "6.5"
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, context_length=16, d_model=32, n_layers=2, n_heads=4)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:  # away from 0 and 1: a lost one shows
                p.add_(0.2 * torch.randn_like(p))
            else:  # larger than at init, so that GELU's two forms differ visibly
                p.normal_(0.0, 0.2)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    idx = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(idx)
        got = as_tensor(ex, call(ex, gpt_forward, sd, cfg, idx), "the logits")
    if got.shape != want.shape:
        fail(ex, f"return logits of shape (B, T, vocab_size) = {tuple(want.shape)}, got "
                 f"{tuple(got.shape)}")
    got = got.detach().float()
    if torch.allclose(got, want, atol=1e-4):
        # the same function on a prefix: the causal mask keeps the first positions unchanged
        short = as_tensor(ex, call(ex, gpt_forward, sd, cfg, idx[:, :5]), "the logits")
        if not torch.allclose(short.detach().float(), want[:, :5], atol=1e-4):
            fail(ex, "the logits of the first 5 tokens change when the sequence is cut there: "
                 "take the positions from the input's own length.")
        passed(ex, f"your forward from {len(sd)} tensors gives companion GPT's logits for a "
                   f"{cfg.n_layers}-layer GPT-2 (largest difference "
                   f"{(got - want).abs().max():.1e}).")
        return
    mistakes = {
        "causal": "each position attends to later ones too: attention needs the causal mask",
        "final_norm": "the final LayerNorm (norm.weight, norm.bias) before the head is missing",
        "positions": "the learned position embeddings (pos_emb.embedding.weight) are missing",
        "pre_norm": ("the norms sit on the residual stream (post-norm); GPT-2's block normalises "
                     "a copy for each sublayer and adds the sublayer's output to the stream"),
        "tanh": "GPT-2's GELU is the tanh approximation (approximate='tanh'), not the erf form",
    }
    with torch.no_grad():
        for switch, message in mistakes.items():
            if torch.allclose(got, _forward_reference(sd, cfg, idx, **{switch: False}),
                              atol=1e-4):
                fail(ex, f"the logits match a GPT with one thing different: {message}.")
    fail(ex, f"the logits differ from companion GPT's (largest gap "
             f"{(got - want).abs().max():.3g}): check the order embed, blocks (norm, attention, "
             "add; norm, MLP, add), final norm, tied head, and how the heads are split.")
