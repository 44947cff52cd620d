"""Mixed precision for chapter 7's loop: which 16-bit type a device gets, autocast, loss scaling.

bf16 keeps fp32's 8 exponent bits (range to about 3e38) and drops mantissa; fp16 has 5 exponent
bits (largest 65504, smallest normal 6e-5), so small gradients underflow to zero unless the loss
is first multiplied by a large scale: `torch.amp.GradScaler`. Introduced in chapter 7.

    choose_dtype(torch.device("cpu"))  # -> "float32"
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["DTYPES", "choose_dtype", "autocast", "make_scaler"]

DTYPES = ("auto", "float32", "bfloat16", "float16")


def choose_dtype(device: torch.device | str, requested: str = "auto") -> str:
    """The compute dtype a run uses: `requested` itself, or under "auto" by device capability.

    CUDA of compute capability 8.0 or more (A100, H100, RTX 30xx/40xx) has bf16 tensor cores:
    "bfloat16". Older CUDA GPUs (a T4 is 7.5, a V100 7.0) have fp16 ones only: "float16", with
    loss scaling. Anything else (CPU, MPS) trains in "float32".
    Example: choose_dtype("cuda") on a T4 -> "float16".
    """
    if requested not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {requested!r}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type != "cuda":
        return "float32"
    major, _ = torch.cuda.get_device_capability(device)
    return "bfloat16" if major >= 8 else "float16"


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast to a resolved 16-bit dtype (matmuls in 16 bits, reductions in fp32), or nothing.

    Example: with autocast(torch.device("cpu"), "bfloat16"): logits = model(x)
    """
    if dtype in ("bfloat16", "float16"):
        return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))
    return contextlib.nullcontext()


def make_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler:
    """A GradScaler that is on only for fp16 (bf16 and fp32 have the range and need none).

    It multiplies the loss by 2**16 at first, halves the scale and skips the step when a gradient
    is inf or NaN, and doubles it after 2000 clean steps. Example: make_scaler(dev, "float16").
    """
    return torch.amp.GradScaler(device.type, enabled=dtype == "float16")
