"""companion.quantize: int8 absmax per row, int4 groups packed two per byte, a working model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from companion.generate import generate
from companion.model import GPT, GPTConfig
from companion.quantize import (QuantLinear, absmax_int8, dequantize_int4, dequantize_int8,
                                layer_errors, model_bytes, pack_int4, quantize, quantize_int4,
                                unpack_int4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = GPTConfig(vocab_size=17, context_length=16, d_model=64, n_layers=2, n_heads=4,
                norm="rmsnorm", mlp="swiglu", pos="rope", bias=False)


def test_absmax_int8_hand_worked():
    """Row [0.5, -1.0]: scale 1/127, codes round(0.5 * 127) = 64 and -127."""
    q, scale = absmax_int8(torch.tensor([[0.5, -1.0]]))
    assert q.dtype == torch.int8 and q.tolist() == [[64, -127]]
    assert torch.allclose(scale, torch.tensor([[1 / 127]]))


def test_int8_round_trip_error_is_at_most_half_a_step():
    w = torch.randn(32, 48)
    q, scale = absmax_int8(w)
    assert (w - dequantize_int8(q, scale)).abs().le(scale / 2 + 1e-7).all()
    assert q.abs().max() == 127  # each row's largest value uses the full range


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_int8_matches_torch_per_channel_quantization():
    """Reference: torch's symmetric per-channel observer and quantize_per_channel in [-127, 127]."""
    obs_mod = pytest.importorskip("torch.ao.quantization.observer")
    w = torch.randn(24, 40) * torch.linspace(0.1, 3, 24)[:, None]
    obs = obs_mod.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, quant_min=-127,
                                           quant_max=127, qscheme=torch.per_channel_symmetric)
    obs(w)
    scales, zero_points = obs.calculate_qparams()
    ref = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
    q, scale = absmax_int8(w)
    assert torch.allclose(scale.squeeze(1), scales.float(), rtol=1e-6)
    assert (q.int() - ref.int_repr().int()).abs().max() <= 1  # ties may round either way
    assert (q.int() == ref.int_repr().int()).float().mean() > 0.999


@pytest.mark.parametrize("codes", [[0, 15], [1, 2, 3, 4], list(range(16))])
def test_pack_int4_round_trip(codes):
    t = torch.tensor(codes)
    packed = pack_int4(t)
    assert packed.dtype == torch.uint8 and packed.numel() == len(codes) // 2
    assert unpack_int4(packed).tolist() == codes


def test_pack_int4_hand_worked():
    """Low nibble first: codes (1, 2) -> 1 + 2 * 16 = 33."""
    assert pack_int4(torch.tensor([1, 2])).tolist() == [33]


def test_int4_groups_error_bounded_by_group_scale():
    w = torch.randn(8, 64)
    packed, scale = quantize_int4(w, group_size=16)
    assert packed.shape == (8, 32) and scale.shape == (8, 4)
    err = (w - dequantize_int4(packed, scale, 16)).view(8, 4, 16).abs()
    assert (err <= scale[..., None] / 2 + 1e-6).all()


def test_int4_rejects_group_size_that_does_not_divide():
    with pytest.raises(ValueError, match="group_size=24"):
        quantize_int4(torch.randn(4, 64), group_size=24)


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_matches_dequantized_float_linear(bits):
    lin = nn.Linear(64, 10)
    ql = QuantLinear.from_linear(lin, bits=bits, group_size=32)
    x = torch.randn(3, 5, 64)
    ref = x @ ql.dequantized().T + lin.bias
    assert torch.allclose(ql(x), ref, atol=1e-5)


@pytest.mark.parametrize("bits, ratio", [(8, 0.3), (4, 0.2)])
def test_quantized_model_generates_and_is_smaller(bits, ratio):
    torch.manual_seed(0)
    model = GPT(CFG)
    qmodel = quantize(model, bits=bits, group_size=32)
    assert not any(isinstance(m, nn.Linear) for n, m in qmodel.named_modules() if "blocks" in n)
    blocks = lambda m: sum(model_bytes(b) for b in m.blocks)  # noqa: E731
    assert blocks(qmodel) < ratio * blocks(model)
    out = generate(qmodel, torch.tensor([[1, 2, 3]]), 8, temperature=0)
    assert out.shape == (1, 11)
    x = torch.randint(0, 17, (2, 12))
    assert (qmodel(x) - model(x)).abs().max() < (0.05 if bits == 8 else 0.3)
    # the original is untouched
    assert isinstance(model.blocks[0].attn.q_proj, nn.Linear)


def test_layer_errors_int4_worse_than_int8():
    torch.manual_seed(0)
    model = GPT(CFG)
    e8 = layer_errors(model, quantize(model, 8))
    e4 = layer_errors(model, quantize(model, 4, group_size=32))
    assert e8.keys() == e4.keys() and len(e8) == 2 * 7
    assert all(e4[k] > e8[k] for k in e8)
    assert max(e8.values()) < 0.02


def test_outlier_column_inflates_absmax_error():
    """One large input channel sets every row's scale, so the other weights lose resolution."""
    torch.manual_seed(0)
    w = torch.randn(64, 64)
    spiky = w.clone()
    spiky[:, 3] *= 50
    def err(m):
        q, s = absmax_int8(m)
        mask = torch.ones_like(m, dtype=torch.bool)
        mask[:, 3] = False
        return (m - dequantize_int8(q, s))[mask].abs().mean()
    assert err(spiky) > 10 * err(w)


def test_model_bytes_counts_tied_weights_once():
    model = GPT(GPTConfig(vocab_size=10, context_length=8, d_model=16, n_layers=1, n_heads=2))
    assert model_bytes(model) == 4 * model.num_params()
    assert model_bytes(nn.Linear(4, 2, bias=False)) == 32


def test_quantize_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        quantize(GPT(CFG), bits=3)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(64, 32), (128, 96)])
def test_packed_kernel_path_agrees_with_the_reference_path(bits, shape):
    """The kernels read the same codes and scales; they differ only by bfloat16 activations and
    scales (8 significant bits: relative error about 2^-8 per value)."""
    torch.manual_seed(0)
    lin = nn.Linear(*shape)
    ref = QuantLinear.from_linear(lin, bits=bits, group_size=32)
    fast = QuantLinear.from_linear(lin, bits=bits, group_size=32).use_kernel()
    x = torch.randn(3, 5, shape[0])
    want, got = ref(x), fast(x)
    assert got.shape == want.shape and got.dtype == torch.float32 and fast.kernel
    rel = (got - want).norm() / want.norm()
    assert rel < 1e-2
    assert not torch.equal(got, want)  # the kernel really ran: bfloat16 leaves a trace


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_model_keeps_its_loss(bits):
    torch.manual_seed(0)
    model = GPT(CFG).eval()
    ref, fast = quantize(model, bits=bits), quantize(model, bits=bits, kernel=True)
    assert all(m.kernel for m in fast.modules() if isinstance(m, QuantLinear))
    x = torch.randint(0, 17, (2, 12))
    assert (fast(x) - ref(x)).abs().max() < 0.05
    assert generate(fast, torch.tensor([[1, 2, 3]]), 8, temperature=0).shape == (1, 11)


def test_int4_kernel_refuses_a_layer_it_cannot_pack_with_a_clear_error():
    layer = QuantLinear.from_linear(nn.Linear(64, 10), bits=4, group_size=32)
    with pytest.raises(ValueError, match="int4 kernel refuses this layer.*10 x 64"):
        layer.use_kernel()
