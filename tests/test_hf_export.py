"""companion.hf_export: a LLaMA-style GPT written as a Hugging Face folder loads back with the same
logits, in the companion and in transformers."""
from __future__ import annotations

import json

import pytest
import torch

from companion.hf import load_pretrained
from companion.hf_export import hf_config, to_hf
from companion.model import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def llama(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(**{**dict(vocab_size=37, context_length=32, d_model=32, n_layers=2, n_heads=4,
                              n_kv_heads=2, d_ff=48, norm="rmsnorm", mlp="swiglu", pos="rope",
                              bias=False), **kw})
    return GPT(cfg).eval()


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"qk_norm": True},
                                {"rope_theta": 500.0, "n_kv_heads": 4}])
def test_export_round_trips_through_the_companion_loader(tmp_path, kw):
    model = llama(**kw)
    to_hf(model, tmp_path)
    back = load_pretrained(tmp_path)
    x = torch.randint(0, 37, (2, 11))
    assert torch.equal(back(x), model(x))
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": False}, {"qk_norm": True}])
def test_transformers_reads_the_export_with_the_same_logits(tmp_path, kw):
    transformers = pytest.importorskip("transformers")
    model = llama(**kw)
    to_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 37, (2, 11))
    with torch.no_grad():
        assert torch.allclose(hf(x).logits, model(x), atol=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == (
        "qwen3" if kw.get("qk_norm") else "llama")


@pytest.mark.parametrize("kw, match", [({"norm": "layernorm"}, "norm"), ({"pos": "learned"}, "pos"),
                                       ({"logit_softcap": 30.0}, "logit_softcap")])
def test_other_model_kinds_are_refused_naming_the_setting(kw, match):
    with pytest.raises(ValueError, match=match):
        hf_config(llama(**kw))
