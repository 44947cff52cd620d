"""companion.sizing and companion.scaling: exact counts, FLOPs, memory against measurement, scaling laws, budgets."""
from __future__ import annotations

import math

import pytest
import torch

from companion.model import GPT, Block, GPTConfig
from companion.scaling import (
    CHINCHILLA_TABLE3, EPOCH, GPT3_TABLE, HOFFMANN, blueprint, budget_flops, chinchilla_optimal,
    deepseek_batch_lr, deepseek_flops_per_token, describe_plan, isoflop, loss, optimal_allocation,
    plan_budget,
)
from companion.sizing import (
    BYTES_PER_PARAM, GPUS, PRESETS, activation_bytes_per_layer, attention_flops_per_token, fits,
    flops_per_token, gpus_needed, gpus_to_hold, inference_memory, logits_bytes, mfu, param_count, preset,
    saved_activation_bytes, training_flops, training_memory, zero_bytes_per_param,
)

# --- parameters --------------------------------------------------------------------------------------

PUBLISHED = {  # totals from the released checkpoints (parameters only, RoPE buffers excluded)
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
    "llama2-7b": 6_738_415_616, "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496, "llama3.2-1b": 1_235_814_400,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_is_exact_for_published_models(name):
    assert param_count(PRESETS[name]) == PUBLISHED[name]


def test_param_count_of_gpt2_small_by_hand():
    """12 layers x (attn 4*768^2 + 4*768 biases + MLP 8*768^2 + 3072 + 768 biases + 2 LayerNorms of 2*768)
    + token 50257*768 + position 1024*768 + final LayerNorm 2*768 = 124,439,808."""
    d = 768
    layer = (4 * d * d + 4 * d) + (8 * d * d + 4 * d + d) + 2 * 2 * d
    assert 12 * layer + 50257 * d + 1024 * d + 2 * d == param_count(PRESETS["gpt2"])


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "llama2-7b", "llama3-8b", "llama3.2-1b", "llama3-70b"])
def test_param_count_matches_gpt_built_on_the_meta_device(name):
    with torch.device("meta"):  # shapes only: no memory, so even 70B builds instantly
        model = GPT(PRESETS[name])
    assert model.num_params() == param_count(PRESETS[name])
    assert model.num_params(non_embedding=True) == param_count(PRESETS[name], non_embedding=True)


@pytest.mark.parametrize("overrides", [dict(bias=False), dict(pos="sinusoidal"), dict(tie_embeddings=False),
                                       dict(n_kv_heads=4, mlp="swiglu", norm="rmsnorm")])
def test_param_count_matches_gpt_for_variants(overrides):
    config = GPTConfig(vocab_size=97, context_length=32, d_model=64, n_layers=2, n_heads=8, **overrides)
    assert param_count(config) == sum(p.numel() for p in GPT(config).parameters())


def test_counts_and_flops_follow_head_dim():
    # Qwen3-0.6B's shape: 16 heads of 128 at d_model 1024, so attention is 2048 wide.
    c = GPTConfig(vocab_size=151936, context_length=40960, d_model=1024, n_layers=28, n_heads=16,
                  n_kv_heads=8, head_dim=128, d_ff=3072, norm="rmsnorm", mlp="swiglu", pos="rope",
                  bias=False, tie_embeddings=True, qk_norm=True)
    with torch.device("meta"):
        model = GPT(c)
    assert param_count(c) == model.num_params() == 596_049_920  # Qwen3-0.6B's published count
    wide = GPTConfig(vocab_size=97, context_length=32, d_model=64, n_layers=2, n_heads=8,
                     head_dim=16)
    narrow = GPTConfig(vocab_size=97, context_length=32, d_model=64, n_layers=2, n_heads=8)
    extra = flops_per_token(wide) - flops_per_token(narrow)
    dn = param_count(wide, non_embedding=True) - param_count(narrow, non_embedding=True)
    assert extra == 3 * (2 * dn + 2 * 2 * 32 * (8 * 16 - 64))


def test_named_swiglu_rules_reproduce_the_published_widths():
    from companion.model import swiglu_width
    assert PRESETS["llama2-7b"].d_ff == swiglu_width(4096, "llama") == 11008
    assert PRESETS["llama3-8b"].d_ff == swiglu_width(4096, "llama3") == 14336
    assert PRESETS["llama3-70b"].d_ff == swiglu_width(8192, "llama3") == 28672
    assert swiglu_width(4096, "cs336") == 10944  # the 64-multiple rule misses LLaMA's 11,008


def test_preset_returns_a_copy():
    c = preset("gpt2", dropout=0.1)
    assert c.dropout == 0.1 and PRESETS["gpt2"].dropout == 0.0
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt5")


# --- FLOPs ---------------------------------------------------------------------------------------------


def test_flops_per_token_is_6n_plus_attention():
    """GPT-2 small: matmul weights = 85,056,000 non-embedding + 50257*768 head = 123,653,376;
    6 * that + 6 * 12 layers * 1024 * 768."""
    c = PRESETS["gpt2"]
    n = param_count(c, non_embedding=True) + 50257 * 768
    assert n == 123_653_376
    assert flops_per_token(c) == 6 * n + 6 * 12 * 1024 * 768
    assert flops_per_token(c, training=False) * 3 == flops_per_token(c)
    assert flops_per_token(c, seq_len=1) < flops_per_token(c)


def test_attention_flops_count_scores_and_values_and_halve_for_causal():
    """One layer, T=2, d=1, one head, full window: Q·K^T is 2 MACs per query and A·V another 2, so
    2 matmuls x 2 keys x 2 FLOPs = 8 per token forward; causal (PaLM -> Kaplan/llm.c) halves it."""
    c = GPTConfig(vocab_size=3, context_length=2, d_model=1, n_layers=1, n_heads=1)
    assert attention_flops_per_token(c, causal=False, training=False) == 8
    assert attention_flops_per_token(c, training=False) == 4
    g = PRESETS["gpt2"]
    palm = 12 * 12 * 12 * 64 * 1024  # nanoGPT's estimate_mfu: 12 * L * H * Q * T
    assert attention_flops_per_token(g, causal=False) == palm
    assert attention_flops_per_token(g) == 6 * 12 * 768 * 1024  # llm.c: 6 * L * C * T
    assert flops_per_token(g, causal=False) - flops_per_token(g) == palm / 2


def test_attention_flops_match_a_counted_causal_attention():
    """Count the multiply-adds of a causal attention over T positions: query t meets t + 1 keys, for
    the scores and again for the values: sum_t (t + 1) = T(T+1)/2, close to T^2/2 per head dim."""
    T, d = 64, 16
    macs = sum(2 * (t + 1) * d for t in range(T))  # scores + weighted values, per layer
    c = GPTConfig(vocab_size=3, context_length=T, d_model=d, n_layers=1, n_heads=2)
    assert attention_flops_per_token(c, training=False) * T == pytest.approx(2 * macs, rel=2 / T)


def test_flops_per_token_close_to_6n_for_big_models():
    c = PRESETS["llama2-70b"]
    assert flops_per_token(c, seq_len=4096) / (6 * param_count(c)) == pytest.approx(1.0, abs=0.05)


def test_mfu_round_trip():
    f = flops_per_token(PRESETS["gpt2"])
    tps = 0.5 * 989e12 / f
    assert mfu(tps, f, 989e12) == pytest.approx(0.5)
    assert mfu(8 * tps, f, 989e12, n_gpus=8) == pytest.approx(0.5)
    assert training_flops(70e9, 1.4e12) == pytest.approx(5.88e23)


# --- memory -----------------------------------------------------------------------------------------


def test_korthikanti_formula_hand_worked():
    """s=b=h=a=1: 34 + 5 bytes without recompute, 34 selective, 2 full; a=8, s=2: 34*2 + 5*8*4 = 228."""
    assert activation_bytes_per_layer(1, 1, 1, 1) == 39
    assert activation_bytes_per_layer(1, 1, 1, 1, "selective") == 34
    assert activation_bytes_per_layer(1, 1, 1, 1, "full") == 2
    assert activation_bytes_per_layer(2, 1, 1, 8) == 34 * 2 + 5 * 8 * 2 * 2
    s, b, h, a = 2048, 4, 4096, 32
    assert activation_bytes_per_layer(s, b, h, a) == s * b * h * (34 + 5 * a * s // h)
    with pytest.raises(ValueError, match="recompute"):
        activation_bytes_per_layer(1, 1, 1, 1, "some")


def test_adamw_states_are_16_or_18_bytes_per_param():
    assert {k: sum(v) for k, v in BYTES_PER_PARAM.items()} == {"mixed": 16, "mixed-hf": 18, "fp32": 16}
    est = training_memory(PRESETS["llama2-7b"], recompute="full")
    n = PUBLISHED["llama2-7b"]
    assert est.weights + est.gradients + est.optimizer == 16 * n
    assert training_memory(PRESETS["llama2-7b"], n_shards=8).optimizer == math.ceil(12 * n / 8)


def test_logits_bytes_of_llama32_1b_at_b4_s4096():
    """4 * 4096 * 128,256 fp32 log-probs = 8,405,385,216 bytes (8.4 GB); their gradient doubles it."""
    assert logits_bytes(4, 4096, 128256, grad=False) == 4 * 4096 * 128256 * 4 == 8_405_385_216
    assert logits_bytes(4, 4096, 128256) == 2 * 8_405_385_216
    est = training_memory(PRESETS["llama3.2-1b"], 4, 4096)
    assert est.logits == 2 * 8_405_385_216
    assert est.total == est.states + est.activations + est.logits
    assert training_memory(PRESETS["llama3.2-1b"], 4, 4096, logits=False).logits == 0
    with pytest.raises(ValueError, match="vocab_size"):
        logits_bytes(1, 1, 0)


def test_logits_bytes_match_what_cross_entropy_saves():
    """F.cross_entropy keeps its fp32 log-softmax for the backward, b*s*V*4 bytes, plus the targets
    and a scalar; the logits themselves are not kept."""
    b, s, V = 2, 8, 50
    logits = torch.randn(b * s, V, requires_grad=True)
    y = torch.randint(0, V, (b * s,))
    saved = saved_activation_bytes(lambda z: torch.nn.functional.cross_entropy(z, y), logits)
    assert 0 <= saved - y.nbytes - logits_bytes(b, s, V, grad=False) <= 16


@pytest.mark.parametrize("world", [1, 2, 8, 64])
def test_zero_stages_follow_the_paper(world):
    """ZeRO, mixed-precision Adam (2 + 2 + 12): stage 1 = 4 + 12/W, 2 = 2 + 14/W, 3 = 16/W."""
    assert zero_bytes_per_param(0, world) == 16
    assert zero_bytes_per_param(1, world) == pytest.approx(4 + 12 / world)
    assert zero_bytes_per_param(2, world) == pytest.approx(2 + 14 / world)
    assert zero_bytes_per_param(3, world) == pytest.approx(16 / world)
    n = PUBLISHED["llama2-7b"]
    for stage in (1, 2, 3):
        est = training_memory(PRESETS["llama2-7b"], n_shards=world, zero_stage=stage)
        assert est.states == pytest.approx(zero_bytes_per_param(stage, world) * n, abs=3)


def test_zero_stage_rejects_bad_input():
    with pytest.raises(ValueError, match="stage"):
        zero_bytes_per_param(4, 8)
    with pytest.raises(ValueError, match="world"):
        zero_bytes_per_param(1, 0)


def test_gpus_to_hold_is_a_ceiling():
    """Llama-3-70B's 16-byte states are 1.13 TB: 14.1 H100s, so 15, or 16 at 90% headroom."""
    states = 16 * PUBLISHED["llama3-70b"]
    assert states / GPUS["H100-SXM-80GB"].memory == pytest.approx(14.11, abs=0.01)
    assert gpus_to_hold(states, "H100-SXM-80GB", headroom=1.0) == 15
    assert gpus_to_hold(states, "H100-SXM-80GB") == 16
    assert gpus_to_hold(0, "H100-SXM-80GB") == 1


def test_t4_peak_is_fp16():
    assert GPUS["T4-16GB"].dtype == "fp16" and GPUS["H100-SXM-80GB"].dtype == "bf16"


def test_fits_answers_the_obvious_cases():
    assert fits(PRESETS["gpt2"], "H100-SXM-80GB", batch_size=8)
    assert not fits(PRESETS["llama2-7b"], "H100-SXM-80GB")  # 108 GB of states alone
    assert fits(PRESETS["llama2-7b"], "H100-SXM-80GB", n_shards=8)
    assert gpus_needed(PRESETS["llama2-7b"], "H100-SXM-80GB") == 2
    assert gpus_needed(PRESETS["llama3-70b"], "H100-SXM-80GB") >= 16  # 1.13 TB of states
    with pytest.raises(ValueError, match="unknown GPU"):
        fits(PRESETS["gpt2"], "Voodoo2")


def test_inference_memory_adds_chapter_5_kv_cache():
    c = PRESETS["llama2-70b"]
    assert inference_memory(c, seq_len=4096) - 2 * PUBLISHED["llama2-70b"] == 1_342_177_280  # 1.25 GiB


def _block(dropout: float, dtype: torch.dtype, use_sdpa: bool, s=128, b=4, h=256, a=8):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=10, context_length=s, d_model=h, n_layers=1, n_heads=a, dropout=dropout)
    block = Block(config, use_sdpa=use_sdpa).to(dtype).train()
    return saved_activation_bytes(block, torch.randn(b, s, h, dtype=dtype, requires_grad=True))


@pytest.mark.parametrize("dtype, value_bytes", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_measured_activations_match_korthikanti_without_dropout(dtype, value_bytes):
    """Written-out attention, no dropout: the formula's 16 s*b*h values plus a*s^2*b softmax output.
    What the formula leaves out is small: LayerNorm means and rstds, and the (s, s) causal mask."""
    measured = _block(0.0, dtype, use_sdpa=False)
    assert measured == pytest.approx(activation_bytes_per_layer(128, 4, 256, 8, value_bytes=value_bytes,
                                                                dropout=False), rel=0.01)


def test_measured_activations_with_dropout_keep_masks_at_value_width_on_cpu():
    """Korthikanti's 34 + 5as/h counts 1-byte dropout masks (CUDA keeps bool masks). CPU autograd keeps
    each mask in the value dtype, 2 bytes in bf16: the formula with mask_bytes=2 matches within 1%,
    and the published one (1-byte masks) is about 10% short here."""
    measured = _block(0.1, torch.bfloat16, use_sdpa=False)
    assert measured == pytest.approx(activation_bytes_per_layer(128, 4, 256, 8, mask_bytes=2), rel=0.01)
    assert 1.05 < measured / activation_bytes_per_layer(128, 4, 256, 8) < 1.15


def test_fused_attention_drops_the_quadratic_term():
    """SDPA's fused CPU kernel saves only its output and log-sum-exp: the a*s^2*b term disappears,
    leaving the selective-recomputation estimate (16 s*b*h values without dropout)."""
    measured = _block(0.0, torch.float32, use_sdpa=True)
    linear = activation_bytes_per_layer(128, 4, 256, 8, "selective", value_bytes=4, dropout=False)
    assert measured == pytest.approx(linear, rel=0.01)


def test_saved_activation_bytes_excludes_parameters_and_counts_storage_once():
    lin = torch.nn.Linear(4, 4)
    assert saved_activation_bytes(lin, torch.randn(2, 4)) == 32  # the input, for the weight's gradient
    with torch.no_grad():
        assert saved_activation_bytes(lin, torch.randn(2, 4)) == 0  # no graph, nothing kept
    x = torch.randn(3, 5, requires_grad=True)
    assert saved_activation_bytes(lambda t: (t * t) * t, x) == 2 * 60  # x once, x*x once


# --- scaling laws -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, flops, tokens", CHINCHILLA_TABLE3)
def test_twenty_tokens_per_param_reproduces_chinchilla_table3_within_10_percent(n, flops, tokens):
    n_opt, d_opt = chinchilla_optimal(flops)
    assert d_opt == pytest.approx(tokens, rel=0.10)
    assert n_opt == pytest.approx(n, rel=0.10)


def test_fitted_approach3_constants_do_not_reproduce_table3():
    """Hoffmann's rounded Approach 3 constants put 5.76e23 FLOPs into ~32B params and ~3T tokens."""
    n, d = optimal_allocation(HOFFMANN, 5.76e23)
    assert n < 0.6 * 67e9 and d > 1.8 * 1.5e12


def test_epoch_refit_gives_about_twenty_tokens_per_param():
    for c in (1e20, 1e22, 5.76e23, 1e25):
        n, d = optimal_allocation(EPOCH, c)
        assert 14 < d / n < 26
        assert 6 * n * d == pytest.approx(c)


def test_optimal_allocation_is_the_minimum_of_the_isoflop_curve():
    import numpy as np
    for fit in (HOFFMANN, EPOCH):
        n_opt, _ = optimal_allocation(fit, 1e21)
        grid = np.geomspace(n_opt / 10, n_opt * 10, 2001)
        assert grid[np.argmin(isoflop(fit, 1e21, grid))] == pytest.approx(n_opt, rel=0.01)


def test_loss_at_chinchilla_is_about_1_94():
    assert loss(HOFFMANN, 70e9, 1.4e12) == pytest.approx(1.94, abs=0.02)


# --- budgets and the blueprint ---------------------------------------------------------------------------


def test_one_million_dollars_buys_chinchilla():
    """$1M / $2.5 = 400,000 H100-hours * 3600 s * 989e12 * 0.4 = 5.70e23 FLOPs: Chinchilla's budget."""
    plan = plan_budget(1e6, "H100-SXM-80GB", mfu=0.4)
    assert plan.flops == pytest.approx(5.7e23, rel=0.01)
    assert plan.n_params == pytest.approx(70e9, rel=0.05)
    assert plan.gpu_hours == 400_000


def test_one_hundred_dollars_buys_more_than_fifty_million():
    plan = plan_budget(100)
    assert 0.6e9 < plan.n_params < 0.8e9
    assert plan_budget(100, tokens_per_param=3800).n_params == pytest.approx(50e6, rel=0.05)
    with pytest.raises(ValueError, match="mfu"):
        budget_flops(100, 2.5, 989e12, 1.5)


def test_describe_plan_states_the_price_the_plan_used():
    """A price passed to plan_budget is the one describe_plan prints, not the GPU's listed one."""
    assert "at $2.5/h on H100" in describe_plan(plan_budget(1e6))
    text = describe_plan(plan_budget(1e6, usd_per_hour=3.0))
    assert "at $3/h on H100" in text and "$2.5/h" not in text


def test_wall_time_scales_with_gpus():
    assert plan_budget(1e4, n_gpus=8).wall_hours * 8 == pytest.approx(plan_budget(1e4).wall_hours)


@pytest.mark.parametrize("target", [5e6, 125e6, 1.3e9, 7e9, 70e9])
def test_blueprint_hits_its_size_and_rules(target):
    bp = blueprint(target, vocab_size=65 if target < 1e7 else 32000)
    c = bp.config
    assert bp.n_params == pytest.approx(target, rel=0.12)
    assert c.d_head in (32, 64, 128)
    assert c.n_kv_heads == (8 if target >= 1e9 else c.n_heads)
    assert c.d_ff % 256 == 0 and 2.6 < c.d_ff / c.d_model < 2.9
    assert bp.batch_tokens % c.context_length == 0 and 100 <= bp.warmup_steps <= 2000
    assert bp.flops == pytest.approx(flops_per_token(c) * bp.n_tokens)
    assert bp.cost == pytest.approx(bp.gpu_hours * GPUS["H100-SXM-80GB"].usd_per_hour)


@pytest.mark.parametrize("target", [5e6, 125e6, 350e6, 760e6, 1.3e9, 2.7e9, 6.7e9, 13e9, 70e9,
                                    175e9])
def test_blueprint_shape_follows_its_stated_rules(target):
    """The rules chapter 8 states: head 32 below d 384, 64 up to 2048, 128 above, on the final
    width; d/L near 64 below 1B and 128 above, off only by what whole heads force."""
    c = blueprint(target, vocab_size=65 if target < 1e7 else 32000).config
    d = c.d_model
    assert c.d_head == (32 if d < 384 else 64 if d <= 2048 else 128)
    assert d % (c.d_head * (8 if target >= 1e9 else 1)) == 0
    aim = 64 if target < 1e9 else 128
    assert 0.6 * aim < d / c.n_layers < 1.15 * aim


def test_blueprint_at_1_3b_keeps_head_64_at_width_2048():
    c = blueprint(1.3e9).config
    assert (c.d_model, c.d_head) == (2048, 64)


def test_blueprint_lr_falls_and_batch_grows_with_size():
    small, big = blueprint(125e6), blueprint(70e9)
    assert big.lr < small.lr and big.batch_tokens > small.batch_tokens
    assert GPT3_TABLE["175B"][-1] < GPT3_TABLE["Small"][-1]  # GPT-3 did the same


def test_deepseek_compute_is_72_l_d2_plus_6_l_d_s():
    """M = 72 L d^2 + 6 L d s per token; L=2, d=3, s=5: 72*2*9 + 6*2*3*5 = 1296 + 180 = 1476."""
    assert deepseek_flops_per_token(2, 3, 5) == 1476
    batch, lr = deepseek_batch_lr(1e20)
    assert batch == pytest.approx(0.2920 * 1e20**0.3271) and lr == pytest.approx(0.3118 * 1e20**-0.125)
    bp = blueprint(1.3e9)
    c = bp.config
    b_opt, lr = deepseek_batch_lr(deepseek_flops_per_token(c.n_layers, c.d_model, c.context_length) * bp.n_tokens)
    assert bp.lr == pytest.approx(lr)
    assert 0.5 < bp.batch_tokens / b_opt < 2  # whole sequences, a power of two
    with pytest.raises(ValueError, match="flops"):
        deepseek_batch_lr(0)


def test_blueprint_rejects_sizes_the_vocabulary_cannot_fit():
    with pytest.raises(ValueError, match="vocab"):
        blueprint(1e6, vocab_size=128256)
