"""companion.lora: identity at the start, exact counts, merge keeps the logits, peft agrees."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from companion.lora import LoRALinear, apply_lora, lora_parameters, merge_lora, trainable_params
from companion.model import GPT, GPTConfig

CFG = GPTConfig(
    vocab_size=13,
    context_length=8,
    d_model=16,
    n_layers=2,
    n_heads=2,
    norm="rmsnorm",
    mlp="swiglu",
    pos="rope",
    bias=False,
)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG)


def randomise_b(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)


IDX = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(1))


def test_adapted_model_starts_as_the_base_model():
    model = tiny()
    before = model(IDX)
    after = apply_lora(model, rank=4, alpha=8)(IDX)
    assert torch.equal(before, after)


@pytest.mark.parametrize("rank", [1, 2, 8])
def test_trainable_params_are_exactly_r_times_in_plus_out(rank):
    model = apply_lora(tiny(), rank=rank, alpha=2 * rank, targets=("q_proj", "v_proj", "o_proj"))
    shapes = [(b.attn.q_proj.base, b.attn.v_proj.base, b.attn.o_proj.base) for b in model.blocks]
    want = sum(rank * (m.in_features + m.out_features) for trio in shapes for m in trio)
    assert trainable_params(model) == want == sum(p.numel() for p in lora_parameters(model))


def test_only_adapters_get_gradients():
    model = apply_lora(tiny(), rank=2, alpha=4)
    model(IDX).sum().backward()
    named = dict(model.named_parameters())
    assert all(p.grad is None for n, p in named.items() if "lora_" not in n)
    assert all(p.grad is not None for n, p in named.items() if "lora_" in n)


def test_update_is_scaled_by_alpha_over_rank():
    """With x = e_0, A = ones and B = ones, the update is scaling * rank in every output: alpha."""
    layer = LoRALinear(nn.Linear(4, 3, bias=False), rank=2, alpha=6.0)
    with torch.no_grad():
        layer.base.weight.zero_()
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(1.0)
    out = layer(torch.tensor([[1.0, 0, 0, 0]]))
    assert torch.allclose(out, torch.full((1, 3), 6.0))


def test_rslora_scales_by_alpha_over_sqrt_rank():
    assert LoRALinear(nn.Linear(8, 8), rank=4, alpha=6.0, rslora=True).scaling == 3.0
    assert LoRALinear(nn.Linear(8, 8), rank=4, alpha=6.0).scaling == 1.5


def test_merge_gives_the_same_logits_and_plain_linears():
    model = apply_lora(tiny(), rank=4, alpha=8)
    randomise_b(model)
    before = model(IDX)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(model(IDX), before, atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 3), rank=5, alpha=1)
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(tiny(), rank=2, alpha=2, targets=("nope",))
    with pytest.raises(ValueError, match="no LoRA"):
        merge_lora(tiny())


@pytest.mark.parametrize("rank, alpha, rslora", [(4, 16, False), (4, 6, False), (4, 6, True),
                                                 (2, 3, True)])
def test_matches_peft_with_the_same_base_and_adapter_weights(rank, alpha, rslora):
    """alpha not tied to 2r, and rsLoRA's alpha / sqrt(r) against peft's use_rslora."""
    peft = pytest.importorskip("peft")
    base = tiny()
    ours = apply_lora(copy.deepcopy(base), rank=rank, alpha=alpha, rslora=rslora)
    randomise_b(ours)
    config = peft.LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
        use_rslora=rslora,
    )
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    n = 0
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                target = theirs.base_model.model.get_submodule(name)
                target.lora_A["default"].weight.copy_(module.lora_A)
                target.lora_B["default"].weight.copy_(module.lora_B)
                n += 1
    assert n == 2 * CFG.n_layers
    assert torch.allclose(theirs(IDX), ours(IDX), atol=1e-6)
    assert trainable_params(theirs) == trainable_params(ours)
