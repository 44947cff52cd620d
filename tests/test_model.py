"""Tests for companion.model: config validation, the parameter count, initialisation, forward shapes and the KV cache."""
import math

import pytest
import torch
import torch.nn.functional as F

from companion.attention import KVCache
from companion.model import GPT, MLP, Block, GPTConfig, RMSNorm, SwiGLU, count_params

TINY = dict(vocab_size=50, context_length=16, d_model=32, n_layers=2, n_heads=4)
STYLES = {
    "gpt2": dict(),
    "llama": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, tie_embeddings=False),
    "llama-gqa-tied": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_heads=2),
    "sinusoidal-mqa": dict(pos="sinusoidal", n_kv_heads=1, tie_embeddings=False),
    "layernorm-nobias-swiglu": dict(bias=False, mlp="swiglu", d_ff=48),
    "rmsnorm-gelu-bias": dict(norm="rmsnorm", bias=True, pos="rope"),
    "qwen3-like": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False, n_kv_heads=2,
                       head_dim=12, qk_norm=True),
    "wide-heads-bias": dict(pos="rope", head_dim=16, tie_embeddings=False),
    "llama3-scaled": dict(norm="rmsnorm", mlp="swiglu", pos="rope", bias=False,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8}),
}


def tiny(style: str = "gpt2", seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, **STYLES[style], **kw})).eval()


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, words", [
    (dict(d_model=30, n_heads=4), "divide d_model=30"),
    (dict(n_heads=4, n_kv_heads=3), "n_kv_heads=3"),
    (dict(n_layers=0), "n_layers"),
    (dict(norm="batchnorm"), "norm"),
    (dict(dropout=1.0), "dropout"),
    (dict(pos="rope", d_model=36, n_heads=4), "d_head=9"),
    (dict(pos="sinusoidal", d_model=33, n_heads=1), "d_model=33"),
    (dict(head_dim=0), "head_dim"),
    (dict(pos="rope", head_dim=7), "d_head=7"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "pos='rope'"),
    (dict(pos="rope", rope_scaling={"rope_type": "longrope", "factor": 2.0}), "rope_type"),
    (dict(mlp="swiglu", d_ff_rule="palm"), "d_ff_rule"),
])
def test_bad_config_raises_value_error_naming_the_numbers(bad, words):
    with pytest.raises(ValueError, match=words):
        GPTConfig(**{**TINY, **bad})


def test_config_round_trips_through_a_plain_dict():
    c = GPTConfig(**TINY, n_kv_heads=2, pos="rope")
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({**c.to_dict(), "n_embd": 3})


def test_old_config_dicts_load_unchanged():
    # A checkpoint written before head_dim, qk_norm, rope_scaling and d_ff_rule existed.
    old = {**TINY, "n_kv_heads": 4, "d_ff": 128, "norm": "layernorm", "mlp": "gelu",
           "pos": "learned", "rope_theta": 10000.0, "bias": True, "tie_embeddings": True,
           "dropout": 0.0, "norm_eps": 1e-5}
    c = GPTConfig.from_dict(old)
    assert (c.head_dim, c.qk_norm, c.rope_scaling, c.d_head) == (None, False, None, 8)
    assert GPTConfig.from_dict(c.to_dict()) == c
    torch.manual_seed(0)
    sd = GPT(c).state_dict()
    GPT(GPTConfig.from_dict(old)).load_state_dict(sd, strict=True)


def test_new_fields_round_trip_through_a_plain_dict():
    c = GPTConfig(**{**TINY, **STYLES["qwen3-like"]})
    assert GPTConfig.from_dict(c.to_dict()) == c and c.d_head == 12
    scaled = GPTConfig(**{**TINY, **STYLES["llama3-scaled"]})
    d = scaled.to_dict()
    assert GPTConfig.from_dict(d) == scaled and d["rope_scaling"]["rope_type"] == "llama3"


def test_head_dim_sets_q_k_v_o_widths_apart_from_d_model():
    m = tiny("qwen3-like")
    attn = m.blocks[0].attn
    assert attn.q_proj.weight.shape == (4 * 12, 32) and attn.k_proj.weight.shape == (2 * 12, 32)
    assert attn.o_proj.weight.shape == (32, 4 * 12) and attn.q_norm.weight.shape == (12,)
    assert m.make_caches(1)[0].k.shape == (1, 2, 16, 12)


def test_qk_norm_normalises_each_head_of_q_and_k():
    m = tiny("qwen3-like")
    attn, seen = m.blocks[0].attn, {}
    attn.q_norm.register_forward_hook(lambda mod, i, o: seen.setdefault("q", o))
    m(torch.zeros(1, 5, dtype=torch.long))
    q = seen["q"]  # (B, H, T, D), unit RMS per head with the norm's weight at 1 (eps aside)
    assert q.shape == (1, 4, 5, 12)
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(1, 4, 5), atol=3e-3)
    raw = attn.q_proj(m.blocks[0].attn_norm(m.tok_emb(torch.zeros(1, 5, dtype=torch.long))))
    assert raw.pow(2).mean() < 0.1  # before the norm the queries are far from unit RMS


def test_swiglu_width_rules_are_named_after_their_sources():
    from companion.model import swiglu_width
    assert swiglu_width(4096, "llama") == 11008  # LLaMA 1 and 2
    assert swiglu_width(4096, "llama3") == 14336  # Llama 3 8B
    assert swiglu_width(4096, "cs336") == 10944 and swiglu_width(768, "cs336") == 2048
    assert swiglu_width(1000, "cs336") == 2688 != swiglu_width(1000, "llama") == 2816
    c = GPTConfig(**{**TINY, "d_model": 4096, "n_heads": 32}, mlp="swiglu", d_ff_rule="llama3")
    assert c.d_ff == 14336
    # the default stays CS336's, so existing configs keep their widths
    assert GPTConfig.llama().d_ff == 2048 and GPTConfig(**TINY, mlp="swiglu").d_ff == 128


def test_gpt_rejects_a_non_config():
    with pytest.raises(TypeError):
        GPT(TINY)


# --- parameter count ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_count_params_equals_the_tensors(style):
    m = tiny(style)
    counts = count_params(m.config)
    assert counts["total"] == sum(p.numel() for p in m.parameters()) == m.num_params()
    assert counts["non_embedding"] == m.num_params(non_embedding=True)
    parts = ("tok_emb", "pos_emb", "attn", "mlp", "norm", "lm_head")
    assert sum(counts[k] for k in parts) == counts["total"]
    assert counts["attn"] == sum(p.numel() for b in m.blocks for p in b.attn.parameters())
    assert counts["mlp"] == sum(p.numel() for b in m.blocks for p in b.mlp.parameters())


@pytest.mark.parametrize("cfg", [
    GPTConfig.gpt2(), GPTConfig.gpt2(n_layers=24, d_model=1024, n_heads=16), GPTConfig.llama(),
    GPTConfig.llama(n_kv_heads=4, tie_embeddings=True), GPTConfig.llama(bias=True, norm="layernorm", pos="learned"),
    GPTConfig.gpt2(mlp="swiglu", n_kv_heads=1, pos="sinusoidal"),
])
def test_count_params_equals_a_meta_device_model(cfg):
    with torch.device("meta"):
        m = GPT(cfg)
    assert count_params(cfg)["total"] == m.num_params()
    assert count_params(cfg)["non_embedding"] == m.num_params(non_embedding=True)


def test_gpt2_small_has_124m_parameters():
    # The published figure for GPT-2 small: 124,439,808 with the head tied to the token embedding.
    assert count_params(GPTConfig.gpt2())["total"] == 124_439_808


def test_tied_head_shares_the_embedding_matrix():
    m = tiny("gpt2")
    assert m.lm_head.weight is m.tok_emb.weight
    untied = tiny("llama")
    assert untied.lm_head.weight is not untied.tok_emb.weight
    c = untied.config
    assert untied.num_params() - tiny("llama", tie_embeddings=True).num_params() == c.vocab_size * c.d_model


def test_non_embedding_count_follows_actual_sharing_not_the_flag():
    tied_by_hand = tiny("llama")  # config says untied
    tied_by_hand.lm_head.weight = tied_by_hand.tok_emb.weight
    want = tiny("llama").num_params(non_embedding=True)
    assert tied_by_hand.num_params(non_embedding=True) == want
    untied_by_hand = tiny("gpt2")  # config says tied
    untied_by_hand.lm_head.weight = torch.nn.Parameter(untied_by_hand.tok_emb.weight.clone())
    want = tiny("gpt2").num_params(non_embedding=True)
    assert untied_by_hand.num_params(non_embedding=True) == want


# --- initialisation ----------------------------------------------------------------------------


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=256, context_length=64, d_model=256, n_layers=8, n_heads=4)
    m = GPT(c)
    residual = torch.cat([torch.cat([b.attn.o_proj.weight.flatten(), b.mlp.down_proj.weight.flatten()]) for b in m.blocks])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.02)
    assert m.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.all(m.blocks[0].attn.q_proj.bias == 0)
    assert torch.all(m.norm.weight == 1)


# --- pieces ------------------------------------------------------------------------------------


def test_rmsnorm_by_hand():
    # rms of (3, 4) is sqrt((9 + 16) / 2) = sqrt(12.5)
    y = RMSNorm(2, eps=0.0)(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(y, torch.tensor([[3.0, 4.0]]) / math.sqrt(12.5))


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16)
    n = RMSNorm(16, eps=1e-6)
    n.weight.data = torch.randn(16)
    ref = torch.nn.functional.rms_norm(x, (16,), n.weight, eps=1e-6)
    assert torch.allclose(n(x), ref, atol=1e-6)


def test_swiglu_is_silu_gate_times_up():
    torch.manual_seed(0)
    f = SwiGLU(8, 12)
    x = torch.randn(2, 8)
    ref = (F.silu(x @ f.gate_proj.weight.T) * (x @ f.up_proj.weight.T)) @ f.down_proj.weight.T
    assert torch.allclose(f(x), ref, atol=1e-6)


def test_gelu_mlp_uses_the_tanh_gelu():
    torch.manual_seed(0)
    f = MLP(8, 32)
    x = torch.randn(2, 8)
    h = f.up_proj(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    assert torch.allclose(f(x), f.down_proj(tanh_gelu), atol=1e-6)


@pytest.mark.parametrize("activation, fn", [("gelu_exact", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
                                            ("relu", lambda h: h.clamp(min=0))])
def test_mlp_other_activations(activation, fn):
    torch.manual_seed(0)
    f = MLP(8, 32, activation=activation)
    x = torch.randn(2, 8)
    assert torch.allclose(f(x), f.down_proj(fn(f.up_proj(x))), atol=1e-6)
    assert GPTConfig(**TINY, mlp=activation).d_ff == 4 * TINY["d_model"]
    with pytest.raises(ValueError, match="activation"):
        MLP(8, 32, activation="tanh")


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    b = Block(GPTConfig(**TINY)).eval()
    x = torch.randn(2, 5, 32)
    h = x + b.attn(b.attn_norm(x))
    assert torch.allclose(b(x), h + b.mlp(b.mlp_norm(h)), atol=1e-6)


# --- forward -----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_forward_returns_logits_of_shape_b_t_v(style):
    m = tiny(style)
    out = m(torch.randint(0, 50, (3, 7)))
    assert out.shape == (3, 7, 50)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("style", STYLES)
def test_forward_is_causal(style):
    # Changing a later token must not change the logits at earlier positions.
    m = tiny(style)
    x = torch.randint(0, 50, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 50
    assert torch.allclose(m(x)[:, :6], m(y)[:, :6], atol=1e-6)
    assert not torch.allclose(m(x)[:, 6:], m(y)[:, 6:], atol=1e-4)


def test_sdpa_and_written_out_attention_agree():
    a, b = tiny("llama-gqa-tied"), GPT(tiny("llama-gqa-tied").config, use_sdpa=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (2, 12))
    assert torch.allclose(a(x), b(x), atol=1e-5)


def test_context_overflow_raises_with_both_numbers():
    m = tiny("gpt2")
    with pytest.raises(ValueError, match=r"17.*16"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_bad_idx_raises():
    m = tiny("gpt2")
    with pytest.raises(ValueError, match="shape"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(1, 5))


def test_loss_at_init_is_near_log_vocab():
    # With small init every token is about equally likely: cross-entropy ~ ln(vocab_size).
    m = tiny("gpt2", vocab_size=1000)
    x, targets = torch.randint(0, 1000, (2, 4, 16))  # targets unrelated to inputs: a tied head favours the input
    loss = F.cross_entropy(m(x).flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(1000)) < 0.1


def test_gradients_reach_every_parameter():
    m = tiny("llama").train()
    x = torch.randint(0, 50, (2, 8))
    F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


# --- KV cache ----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_cached_decoding_matches_full_forward(style):
    m = tiny(style)
    x = torch.randint(0, 50, (2, 12))
    full = m(x)
    caches = m.make_caches(2)
    assert len(caches) == m.config.n_layers and all(isinstance(c, KVCache) for c in caches)
    parts = [m(x[:, :5], caches=caches)] + [m(x[:, t:t + 1], caches=caches) for t in range(5, 12)]
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)
    assert caches[0].pos == 12


def test_full_cache_raises_with_both_numbers():
    m = tiny("llama")
    caches = m.make_caches(1, max_len=8)
    m(torch.zeros(1, 6, dtype=torch.long), caches=caches)
    with pytest.raises(ValueError, match=r"9.*8"):
        m(torch.zeros(1, 3, dtype=torch.long), caches=caches)
    full = m.make_caches(1)
    m(torch.zeros(1, 16, dtype=torch.long), caches=full)
    with pytest.raises(ValueError, match=r"17.*16"):
        m(torch.zeros(1, 1, dtype=torch.long), caches=full)


def test_make_caches_checks_its_arguments():
    m = tiny("gpt2")
    with pytest.raises(ValueError, match="32.*16"):
        m.make_caches(1, max_len=32)
    with pytest.raises(ValueError, match="one cache per layer"):
        m(torch.zeros(1, 2, dtype=torch.long), caches=m.make_caches(1)[:1])
    assert m.make_caches(1, dtype=torch.float64)[0].k.dtype == torch.float64


def test_pipeline_names_exist():
    # Chapter 9 splits the model into stages by these names.
    m = tiny("gpt2")
    assert isinstance(m.blocks, torch.nn.ModuleList) and len(m.blocks) == 2
    for name in ("tok_emb", "pos_emb", "norm", "lm_head"):
        assert hasattr(m, name)
    x = torch.randint(0, 50, (1, 6))
    h = m.tok_emb(x) + m.pos_emb(6)
    for b in m.blocks:
        h = b(h)
    assert torch.allclose(m.lm_head(m.norm(h)), m(x), atol=1e-6)


def test_relu2_is_relu_squared_and_softcap_bounds_the_logits():
    """The speedrun's two model levers (chapter 7): relu² activation and logit soft-capping."""
    torch.manual_seed(0)
    kw = dict(vocab_size=32, context_length=8, d_model=16, n_layers=1, n_heads=2)
    model = GPT(GPTConfig(**kw, mlp="relu2"))
    h = torch.randn(5, 16)
    mlp = model.blocks[0].mlp
    want = mlp.down_proj(torch.relu(mlp.up_proj(h)) ** 2)
    torch.testing.assert_close(mlp(h), want)
    plain = GPT(GPTConfig(**kw))
    capped = GPT(GPTConfig(**kw, logit_softcap=2.0))
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.lm_head.weight.mul_(50)  # tied: large logits
        capped.lm_head.weight.mul_(50)
        x = torch.randint(0, 32, (2, 8))
        raw, out = plain(x), capped(x)
    assert raw.abs().max() > 4 and out.abs().max() <= 2.0
    torch.testing.assert_close(out, 2.0 * torch.tanh(raw / 2.0))
    with pytest.raises(ValueError, match="logit_softcap"):
        GPTConfig(**kw, logit_softcap=0.0)
