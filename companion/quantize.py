"""Weight-only quantization: int8 absmax per output channel, int4 in groups packed two per byte.

The weights are stored as small integers plus a float scale per row (int8) or per group (int4);
activations stay in float, and each matmul dequantizes as it goes. Introduced in chapter 11.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["absmax_int8", "dequantize_int8", "quantize_int4", "dequantize_int4", "pack_int4",
           "unpack_int4", "QuantLinear", "quantize", "model_bytes", "layer_errors",
           "int4_bits_per_weight"]


# --- int8: one scale per output channel ------------------------------------------------------


def absmax_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) floats -> int8 codes in [-127, 127] and one scale per row, max|row| / 127.

    Example: absmax_int8(torch.tensor([[0.5, -1.0]])) -> (tensor([[64, -127]]), tensor([[1/127]]))
    """
    if w.ndim != 2:
        raise ValueError(f"expected a (out, in) weight matrix, got shape {tuple(w.shape)}")
    scale = w.abs().amax(dim=1, keepdim=True).float() / 127  # (out, 1): row max -> 127
    scale = scale.clamp(min=1e-12)  # an all-zero row would divide by zero; its codes are 0 anyway
    q = torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8)  # symmetric: -128 unused
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Codes times their row's scale: the float matrix the int8 codes stand for."""
    return q.float() * scale


# --- int4: one scale per group of group_size inputs, two codes per byte ---------------------


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes (..., 2n) in [0, 15] -> uint8 (..., n): even index low nibble, odd high.

    Example: pack_int4(torch.tensor([1, 2])) -> tensor([33], dtype=torch.uint8)  (1 + 2 * 16)
    """
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even number of codes, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_int4: uint8 (..., n) -> codes (..., 2n) in [0, 15], as uint8."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)  # interleave back: lo0, hi0, lo1, hi1, ...


def quantize_int4(w: torch.Tensor, group_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) -> packed uint8 (out, in / 2) and scales (out, in / group_size), max|group| / 7.

    Codes are round(w / scale) in [-8, 7], stored shifted by 8 so that they fit a nibble.
    Example: quantize_int4(torch.ones(1, 2), group_size=2) -> (tensor([[255]]), tensor([[1/7]]))
    """
    out_f, in_f = w.shape
    if group_size < 2 or group_size % 2 or in_f % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide in={in_f}")
    g = w.float().view(out_f, in_f // group_size, group_size)  # (out, G, g)
    scale = (g.abs().amax(dim=-1) / 7).clamp(min=1e-12)  # (out, G)
    q = torch.round(g / scale[..., None]).clamp(-8, 7) + 8  # [-8, 7] -> [0, 15]
    return pack_int4(q.view(out_f, in_f)), scale


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Packed codes and group scales -> the (out, in) float matrix they stand for."""
    q = unpack_int4(packed).float() - 8  # (out, in)
    out_f, in_f = q.shape
    return (q.view(out_f, in_f // group_size, group_size) * scale[..., None]).view(out_f, in_f)


# --- the layer -------------------------------------------------------------------------------


_KERNELS = {8: "_weight_int8pack_mm", 4: "_weight_int4pack_mm_for_cpu"}


class QuantLinear(nn.Module):
    """A Linear with int8 (per-row scale) or packed int4 (group scale) weights; float activations.

    Two paths: the from-scratch one (the default) dequantizes in the call, as chapter 11 builds
    it; use_kernel() switches to PyTorch's packed CPU kernels, which read the integers directly
    and take bfloat16 activations (their float32 path is a slow scalar loop).
    Example: QuantLinear.from_linear(nn.Linear(64, 8), bits=4)(torch.randn(2, 64)).shape -> (2, 8)
    """

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int,
                 bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        self.kernel = False
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def use_kernel(self) -> QuantLinear:
        """Compute with torch.ops.aten's packed int8 / int4 CPU kernel; ValueError if it cannot.

        int8 reuses the codes, with the scales in bfloat16. int4 repacks the codes into the
        kernel's own layout and keeps it beside the reference codes (both count in model_bytes).
        """
        op = _KERNELS[self.bits]
        if not hasattr(torch.ops.aten, op) or self.qweight.device.type != "cpu":
            raise ValueError(f"torch.ops.aten.{op} is not available for this layer "
                             f"(torch {torch.__version__}, device {self.qweight.device})")
        if self.bits == 8:
            self.register_buffer("kscale", self.scale.view(-1).to(torch.bfloat16))
        else:
            codes = unpack_int4(self.qweight).to(torch.int32)  # (out, in) in [0, 15]
            try:
                packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            except RuntimeError as err:
                raise ValueError(f"the int4 kernel refuses this layer ({self.out_features} x "
                                 f"{self.in_features}, group_size {self.group_size}): {err}")
            # The kernel computes (code - 8) * scale + zero per group; symmetric codes: zero 0.
            sz = torch.stack([self.scale, torch.zeros_like(self.scale)], dim=-1)  # (out, G, 2)
            self.register_buffer("kweight", packed)
            self.register_buffer("kscale", sz.transpose(0, 1).contiguous().to(torch.bfloat16))
        self.kernel = True
        return self

    def _kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, in)
        if self.bits == 8:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.kscale)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.kweight, self.group_size,
                                                           self.kscale)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int = 32) -> QuantLinear:
        """Quantize one nn.Linear; its float weight is not kept."""
        layer = cls(linear.in_features, linear.out_features, bits, group_size, linear.bias)
        w = linear.weight.detach()
        if bits == 8:
            q, scale = absmax_int8(w)
        elif bits == 4:
            q, scale = quantize_int4(w, group_size)
        else:
            raise ValueError(f"bits must be 8 or 4, got {bits}")
        layer.register_buffer("qweight", q)
        layer.register_buffer("scale", scale)
        return layer

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer computes with, (out, in)."""
        if self.bits == 8:
            return dequantize_int8(self.qweight, self.scale)
        return dequantize_int4(self.qweight, self.scale, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel:
            return self._kernel_forward(x)
        if self.bits == 8:
            # The row scale commutes with the matmul: multiply the integer result, not the weight.
            y = (x @ self.qweight.to(x.dtype).T) * self.scale.to(x.dtype).T  # (..., out)
            return y if self.bias is None else y + self.bias
        # int4: unpack and scale inside the call; the float matrix lives only for this matmul.
        w = dequantize_int4(self.qweight, self.scale, self.group_size).to(x.dtype)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        k = ", kernel=True" if self.kernel else ""
        return f"{self.in_features}, {self.out_features}, bits={self.bits}{g}{k}"


def quantize(model: nn.Module, bits: int = 8, group_size: int = 32,
             skip: tuple[str, ...] = ("lm_head",), kernel: bool = False) -> nn.Module:
    """A copy of `model` with every nn.Linear (except names ending in `skip`) made a QuantLinear.

    The head is skipped by default: when tied it is the embedding matrix, which stays float.
    kernel=True computes with PyTorch's packed CPU kernels (QuantLinear.use_kernel).
    Example: quantize(GPT(cfg), bits=4) generates like GPT(cfg), its blocks ~6x smaller.
    """
    if bits not in (8, 4):
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    qmodel = copy.deepcopy(model).eval()
    linears = [(name, m) for name, m in qmodel.named_modules()
               if isinstance(m, nn.Linear) and not name.endswith(skip)]
    if bits == 4:
        bad = [f"{name} ({m.in_features})" for name, m in linears if m.in_features % group_size]
        if bad or group_size < 2 or group_size % 2:
            raise ValueError(f"group_size={group_size} must be even and divide the input features "
                             f"of every layer; it does not divide {bad[:3]}")
    for name, m in linears:
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        layer = QuantLinear.from_linear(m, bits, group_size)
        setattr(parent, child, layer.use_kernel() if kernel else layer)
    return qmodel


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and persistent buffer, shared tensors counted once.

    Example: model_bytes(nn.Linear(4, 2, bias=False)) -> 32 (8 float32 values)
    """
    seen: dict[int, int] = {}
    tensors = list(model.parameters()) + [b for _, b in model.named_buffers()]
    non_persistent = {id(b) for mod in model.modules() for n, b in mod._buffers.items()
                      if b is not None and n in mod._non_persistent_buffers_set}
    for t in tensors:
        if id(t) not in non_persistent:  # RoPE tables are derived, not stored
            seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def layer_errors(model: nn.Module, qmodel: nn.Module) -> dict[str, float]:
    """Relative error ||W - W_q|| / ||W|| of every quantized layer, by module name."""
    floats = dict(model.named_modules())
    out = {}
    for name, m in qmodel.named_modules():
        if isinstance(m, QuantLinear):
            w = floats[name].weight.detach().float()
            out[name] = float((w - m.dequantized()).norm() / w.norm().clamp(min=1e-12))
    return out


def int4_bits_per_weight(group_size: int, scale_bits: int = 32) -> float:
    """Storage per weight: 4 bits of code plus one scale shared by group_size weights."""
    return 4 + scale_bits / group_size if group_size > 0 else math.inf
