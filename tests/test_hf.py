"""Tests for companion.hf: random small transformers GPT-2 and Llama models give the same logits once converted."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402

from companion.hf import config_from_hf, from_hf, hub_offline, load_pretrained  # noqa: E402
from companion.model import count_params  # noqa: E402

V, T = 97, 24


def gpt2(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, n_positions=32, n_embd=48, n_layer=3, n_head=4, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(GPT2Config(**{**cfg, **kw})).eval()


def llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
               num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(LlamaConfig(**{**cfg, **kw})).eval()


def randomise_norms(hf: torch.nn.Module) -> None:
    """HF initialises norms to 1 and biases to 0: perturb them so a swapped or dropped tensor shows."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def same_logits(hf: torch.nn.Module, atol: float = 1e-4) -> None:
    randomise_norms(hf)
    ours = from_hf(hf.state_dict(), hf.config.to_dict())
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = hf(idx).logits, ours(idx)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=atol), (got - want).abs().max()
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    assert count_params(ours.config)["total"] == ours.num_params()


def test_gpt2_logits_match():
    same_logits(gpt2())


def test_gpt2_untied_head_logits_match():
    same_logits(gpt2(tie_word_embeddings=False))


def test_gpt2_with_custom_inner_width_logits_match():
    same_logits(gpt2(n_inner=80))


@pytest.mark.parametrize("act, mlp", [("gelu", "gelu_exact"), ("relu", "relu"), ("gelu_pytorch_tanh", "gelu")])
def test_gpt2_other_activations_logits_match(act, mlp):
    hf = gpt2(activation_function=act)
    assert config_from_hf(hf.config.to_dict()).mlp == mlp
    same_logits(hf)


@pytest.mark.parametrize("kv", [8, 2, 1], ids=["mha", "gqa", "mqa"])
def test_llama_logits_match(kv):
    same_logits(llama(num_key_value_heads=kv))


def test_llama_tied_head_and_theta_logits_match():
    same_logits(llama(tie_word_embeddings=True, rope_theta=500000.0))


def test_llama_with_biases_logits_match():
    same_logits(llama(attention_bias=True, mlp_bias=True))


def test_converted_model_decodes_with_cache_like_hf():
    hf = llama()
    ours = from_hf(hf.state_dict(), hf.config.to_dict())
    idx = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(2))
    caches = ours.make_caches(1)
    with torch.no_grad():
        parts = [ours(idx[:, :4], caches=caches)] + [ours(idx[:, t:t + 1], caches=caches) for t in range(4, 10)]
        assert torch.allclose(torch.cat(parts, 1), hf(idx).logits, atol=1e-4)


def test_config_mapping_gpt2():
    c = config_from_hf(gpt2().config.to_dict())
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff, c.context_length) == (48, 3, 4, 192, 32)
    assert (c.norm, c.mlp, c.pos, c.bias, c.tie_embeddings) == ("layernorm", "gelu", "learned", True, True)


def test_config_mapping_llama():
    c = config_from_hf(llama().config.to_dict())
    assert (c.n_kv_heads, c.d_ff, c.norm, c.mlp, c.pos, c.bias) == (2, 96, "rmsnorm", "swiglu", "rope", False)
    assert c.norm_eps == 1e-6 and c.rope_theta == 10000.0


def test_older_rope_theta_key_is_read():
    d = {**llama().config.to_dict(), "rope_theta": 1234.0}
    d.pop("rope_parameters")
    assert config_from_hf(d).rope_theta == 1234.0


@pytest.mark.parametrize("change, words", [
    (dict(model_type="bert"), "model_type"),
    (dict(activation_function="silu"), "activation"),
])
def test_unsupported_gpt2_configs_raise(change, words):
    with pytest.raises(ValueError, match=words):
        config_from_hf({**gpt2().config.to_dict(), **change})


def test_unsupported_llama_configs_raise():
    d = llama().config.to_dict()
    with pytest.raises(ValueError, match="silu"):
        config_from_hf({**d, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="agree"):
        config_from_hf({**d, "attention_bias": True})
    with pytest.raises(ValueError, match="dynamic"):
        config_from_hf({**d, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                 "rope_theta": 1e4}})
    with pytest.raises(ValueError, match="partial"):
        config_from_hf({**d, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                                 "partial_rotary_factor": 0.5}})


def test_missing_or_extra_tensors_raise():
    hf = gpt2()
    sd = hf.state_dict()
    with pytest.raises(ValueError, match="missing"):
        from_hf({k: v for k, v in sd.items() if "h.1.ln_2" not in k}, hf.config.to_dict())
    with pytest.raises(ValueError, match="unexpected"):
        from_hf({**sd, "transformer.h.9.ln_1.weight": torch.ones(48)}, hf.config.to_dict())


def test_load_pretrained_refuses_offline(monkeypatch):
    monkeypatch.setenv("COMPANION_OFFLINE", "1")
    assert hub_offline()
    with pytest.raises(RuntimeError, match="offline"):
        load_pretrained("gpt2")


# --- Llama 3.x (scaled RoPE) and Qwen3 (QK-norm, head_dim) ---------------------------------

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8}


def qwen3(seed: int = 0, **kw) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=24,
               max_position_embeddings=32, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return Qwen3ForCausalLM(Qwen3Config(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("rope", [
    LLAMA3_ROPE,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
], ids=["llama3", "linear", "yarn"])
def test_llama_with_scaled_rope_logits_match(rope):
    # positions up to 24 run far past the original 8, where scaling changes every slow pair
    hf = llama(rope_parameters={**rope, "rope_theta": 500000.0}, tie_word_embeddings=True)
    c = config_from_hf(hf.config.to_dict())
    assert c.rope_scaling["rope_type"] == rope["rope_type"] and c.rope_theta == 500000.0
    same_logits(hf)


def test_llama3_scaling_matters_to_the_logits():
    hf = llama(rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0})
    d = hf.config.to_dict()
    plain = from_hf(hf.state_dict(), {**d, "rope_parameters": {"rope_type": "default",
                                                               "rope_theta": 500000.0}})
    idx = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert not torch.allclose(plain(idx), hf(idx).logits, atol=1e-3)


def test_older_rope_scaling_key_is_read():
    d = {**llama().config.to_dict(), "rope_theta": 5e5,
         "rope_scaling": {"type": "llama3", **{k: v for k, v in LLAMA3_ROPE.items()
                                                if k != "rope_type"}}}
    d.pop("rope_parameters")
    c = config_from_hf(d)
    assert c.rope_theta == 5e5 and c.rope_scaling == LLAMA3_ROPE


def test_llama_with_head_dim_apart_from_hidden_size_logits_match():
    hf = llama(head_dim=12)  # 8 heads of 12 at hidden size 64
    assert config_from_hf(hf.config.to_dict()).d_head == 12
    same_logits(hf)


@pytest.mark.parametrize("kw", [dict(), dict(tie_word_embeddings=True),
                                dict(num_key_value_heads=4, head_dim=16),
                                dict(num_key_value_heads=1, rope_theta=1e6)],
                         ids=["gqa-untied", "tied", "mha-head16", "mqa-theta"])
def test_qwen3_logits_match(kw):
    hf = qwen3(**kw)
    c = config_from_hf(hf.config.to_dict())
    assert c.qk_norm and c.d_head == hf.config.head_dim
    same_logits(hf)


def test_qwen3_decodes_with_cache_like_hf():
    hf = qwen3()
    randomise_norms(hf)
    ours = from_hf(hf.state_dict(), hf.config.to_dict())
    idx = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(2))
    caches = ours.make_caches(1)
    with torch.no_grad():
        parts = [ours(idx[:, :4], caches=caches)]
        parts += [ours(idx[:, t:t + 1], caches=caches) for t in range(4, 10)]
        assert torch.allclose(torch.cat(parts, 1), hf(idx).logits, atol=1e-4)


def test_unsupported_qwen3_configs_raise():
    d = qwen3().config.to_dict()
    with pytest.raises(ValueError, match="agree"):
        config_from_hf({**d, "attention_bias": True})
    with pytest.raises(ValueError, match="sliding"):
        config_from_hf({**d, "use_sliding_window": True})
    sd = qwen3().state_dict()
    with pytest.raises(ValueError, match="missing"):
        from_hf({k: v for k, v in sd.items() if "layers.0.self_attn.q_norm" not in k}, d)


# --- load_pretrained(folder): a checkpoint saved by transformers, loaded offline -----------------

def saved(hf: torch.nn.Module, folder, **kw):
    randomise_norms(hf)
    hf.save_pretrained(folder, **kw)
    return hf


@pytest.mark.parametrize("make", [gpt2, lambda: gpt2(tie_word_embeddings=False), llama, qwen3],
                         ids=["gpt2", "gpt2-untied", "llama", "qwen3"])
def test_load_pretrained_folder_matches_transformers_and_generates(make, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_OFFLINE", "1")  # a folder never needs the network
    from companion.generate import generate

    hf = saved(make(), tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = load_pretrained(tmp_path)
    idx = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(ours(idx), hf(idx).logits, atol=1e-4)
        out = generate(ours, idx[:1, :5], 8, temperature=0)
        # greedy: each new token is transformers' own argmax after the tokens before it
        assert torch.equal(out[0, 5:], hf(out).logits[0, 4:-1].argmax(-1))


def test_load_pretrained_reads_sharded_safetensors(tmp_path):
    hf = saved(llama(), tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    idx = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(load_pretrained(str(tmp_path))(idx), hf(idx).logits, atol=1e-4)


def test_load_pretrained_reads_a_weights_only_pytorch_bin(tmp_path):
    hf = gpt2()
    randomise_norms(hf)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    idx = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(load_pretrained(tmp_path)(idx), hf(idx).logits, atol=1e-4)


def test_load_pretrained_folder_errors_are_plain(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    gpt2().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type='bert'"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pretrained(tmp_path)


def test_load_pretrained_folder_refuses_a_pickle_that_is_not_just_tensors(tmp_path):
    gpt2().config.save_pretrained(tmp_path)
    torch.save({"weights": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights-only"):
        load_pretrained(tmp_path)


def test_load_pretrained_fails_fast_in_one_line_when_the_hub_is_unreachable(monkeypatch):
    import time

    for v in ("COMPANION_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
              "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # loopback, a closed port
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"127.0.0.1 is unreachable.*skipping the "
                                           r"download of 'gpt2'") as info:
        load_pretrained("gpt2")
    assert time.perf_counter() - start < 5 and "\n" not in str(info.value)
