"""What chapter 7's loop logs: the device's peak FLOP/s, tokens/s and MFU, log.csv and log.json.

    peak_flops(torch.device("cpu"))  # -> None: MFU is only reported where the peak is known
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["peak_flops", "throughput", "write_logs"]


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak FLOP/s of `device` from companion.sizing.GPUS; None where unknown (CPU).

    Example: on an "NVIDIA H100 80GB HBM3", 989e12.
    """
    if device.type != "cuda":
        return None
    from ..sizing import GPUS  # only on a GPU

    name = torch.cuda.get_device_name(device)
    words = name.replace("-", " ").split()  # "NVIDIA A100-SXM4-80GB" -> [..., "A100", ...]
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    if "PCIe" in words:  # a PCIe H100 peaks lower than the SXM one the table holds
        return None
    for key, gpu in GPUS.items():
        family = next(w for w in key.split("-") if any(c.isdigit() for c in w))  # "H100", "4090"
        # the A100 comes in 40 and 80 GB: match the memory too
        if family in words and (family != "A100" or (gib > 60) == ("80GB" in key)):
            return gpu.peak_flops
    return None


def throughput(model: nn.Module, cfg: Any, tokens: int, seconds: float,
                peak: float | None, n_devices: int) -> tuple[float, float | None]:
    """Tokens per second of training, and MFU where the model is a GPT and the peak is known."""
    tok_s = tokens / max(seconds, 1e-9)
    config = getattr(model, "config", None)
    if peak is None or not hasattr(config, "n_layers"):
        return tok_s, None
    from ..sizing import flops_per_token, mfu

    return tok_s, mfu(tok_s, flops_per_token(config, cfg.context_length), peak, n_devices)


def write_logs(out: Path, history: dict[str, list]) -> None:
    """log.json holds the whole history.

    log.csv one row per step (with its gradient norm), with val_loss, tokens/s and MFU where an
    evaluation ran.
    """
    (out / "log.json").write_text(json.dumps(history) + "\n")
    n_eval = len(history["eval_step"])
    rates = zip(history.get("tokens_per_s", [None] * n_eval), history.get("mfu", [None] * n_eval))
    val = {s: (t, v, *("" if r is None else f"{r:.4g}" for r in rate))
           for s, t, v, rate in zip(history["eval_step"], history["eval_train"],
                                    history["eval_val"], rates)}
    norms = history.get("grad_norm", [])
    with open(out / "log.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "lr", "train_loss", "eval_train_loss", "val_loss", "grad_norm",
                    "tokens_per_s", "mfu"])
        blank = ("", "", "", "")
        if 0 in val:
            w.writerow([0, "", "", *val[0][:2], "", *val[0][2:]])
        for i, (lr, loss) in enumerate(zip(history["lr"], history["train_loss"]), start=1):
            t, v, *rate = val.get(i, blank)
            norm = f"{norms[i - 1]:.4g}" if i <= len(norms) else ""
            w.writerow([i, f"{lr:.6g}", f"{loss:.6f}", t, v, norm, *(rate or ("", ""))])
