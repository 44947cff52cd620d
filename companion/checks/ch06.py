"""Self-checks for chapter 6's exercises.

A block's parameter count, GPT-2's checkpoint converted by hand, top-p at its boundary, an
MoE router with its load-balancing loss, and the GPT's forward from a state dict.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..generate import top_p_filter
from ..hf import from_hf
from ..model import GPT, Block, GPTConfig
from ..moe import load_balancing_loss, route
from ._core import as_tensor, call, fail, passed

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
               f"({_block_params(GPTConfig.gpt2()):,} per block), SwiGLU, GQA, no biases, and "
               "a head_dim wider than d_model / n_heads with QK-norm (Qwen3).")


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


# --- 6.4: an MoE router and its load-balancing loss ----------------------------------------------


def check_6_4(route_tokens: Callable[[torch.Tensor, int, bool], tuple]) -> None:
    """route_tokens(logits (N, E), k, renormalise) -> (gates (N, k), experts (N, k), aux loss)."""
    ex = "6.4"
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4, generator=gen) * 2

    def run(lg: torch.Tensor, k: int, renormalise: bool) -> tuple[torch.Tensor, ...]:
        out = call(ex, route_tokens, lg, k, renormalise)
        if not isinstance(out, tuple) or len(out) != 3:
            fail(ex, "return three things: (gates, experts, aux_loss)")
        return tuple(as_tensor(ex, v, w) for v, w in zip(out, ("gates", "experts", "aux")))

    gates, experts, aux = run(logits.clone(), 2, False)
    probs, want_gates, want_experts = route(logits, 2)
    if gates.shape != (32, 2) or experts.shape != (32, 2):
        fail(ex, f"gates and experts should both be (N, k) = (32, 2), got {tuple(gates.shape)} "
                 f"and {tuple(experts.shape)}")
    if not torch.equal(experts.sort(-1).values, want_experts.sort(-1).values):
        fail(ex, "each token should go to the k experts with the highest router probability.")

    def in_expert_order(g: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return g.detach().gather(-1, e.argsort(-1)).float()

    g = in_expert_order(gates, experts)
    renormed = in_expert_order(route(logits, 2, True)[1], want_experts)
    if torch.allclose(g, renormed, atol=1e-5):
        fail(ex, "with renormalise=False the gates are the router's probabilities p_i(x) "
                 "themselves, as in the Switch Transformer; renormalise only when asked.")
    if not torch.allclose(g, in_expert_order(want_gates, want_experts), atol=1e-5):
        fail(ex, "the gates should be the chosen experts' softmax probabilities (over all E "
                 "experts).")
    g2, e2, _ = run(logits.clone(), 2, True)
    if not torch.allclose(in_expert_order(g2, e2), renormed, atol=1e-5):
        fail(ex, "with renormalise=True divide the k kept probabilities by their sum, so that "
                 "each token's gates sum to 1 (Mixtral).")
    # The LM loss reaches the router only through the gates' values (top-k picks are not
    # differentiable), so the gates must keep their graph back to the logits.
    for k in (1, 2):
        lg = logits.clone().requires_grad_(True)
        gk = run(lg, k, False)[0]
        if not gk.requires_grad:
            fail(ex, "the gates carry no gradient: the language-model loss reaches the router "
                     "only through them. Did you take them from a detached copy of the "
                     "probabilities, or with .item() / torch.no_grad()?")
        (gk * torch.arange(1.0, k + 1)).sum().backward()
        if lg.grad is None or lg.grad.abs().sum() == 0:
            fail(ex, f"at k = {k} the gates send no gradient back to the router logits.")
    want_aux = load_balancing_loss(probs, want_experts)
    aux_v = float(aux.reshape(-1)[0]) if aux.numel() == 1 else float("nan")
    if aux.numel() != 1:
        fail(ex, f"the aux loss is one number, got a tensor of shape {tuple(aux.shape)}")
    if abs(aux_v - want_aux.item() / 4) < 1e-4:
        fail(ex, "the aux loss is missing its factor N (the number of experts): it should be 1 "
                 "when the load is perfectly balanced.")
    if (abs(aux_v - 4 * (probs.mean(0) ** 2).sum().item()) < 1e-4
            and abs(aux_v - want_aux.item()) > 1e-4):
        fail(ex, "f_i is the share of routing choices that went to expert i (a count), not the "
                 "mean probability.")
    if abs(aux_v - want_aux.item()) > 1e-4:
        fail(ex, f"aux loss {aux_v:.4f}, expected {want_aux.item():.4f}: N times the sum over "
                 "experts of (share of choices) x (mean router probability).")
    uniform = run(torch.zeros(8, 4), 1, False)
    # all-equal logits: topk picks expert 0 for everyone, P is uniform, so N * 1 * 1/4 = 1
    if abs(float(uniform[2]) - 1.0) > 1e-5:
        fail(ex, "with uniform router probabilities the aux loss should be exactly 1.")
    logits_g = logits.clone().requires_grad_(True)
    aux_g = run(logits_g, 2, False)[2]
    if not aux_g.requires_grad:
        fail(ex, "the aux loss must stay a tensor with a gradient to the router logits (through "
                 "the mean probabilities); did you call .item() or detach it?")
    passed(ex, "top-k experts with Switch's gates p_i(x) (or renormalised, Mixtral's), gates that "
               f"carry the router's gradient, and the balancing loss ({want_aux.item():.3f} "
               "here, 1 when balanced).")


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
