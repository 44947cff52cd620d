"""Hugging Face interop: GPT-2, Llama (2 and 3.x) and Qwen3 checkpoints into companion.model.GPT.

Introduced in chapter 6.

This is the only module that knows Hugging Face's parameter names. transformers itself is imported
only when `load_pretrained` downloads from the Hub; a checkpoint folder on disk needs only
safetensors (or, for pytorch_model.bin, nothing beyond torch).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Mapping

import torch

from .model import GPT, GPTConfig

__all__ = ["config_from_hf", "from_hf", "hub_offline", "hub_unreachable", "load_pretrained"]

# Buffers that some transformers versions keep in GPT-2's state dict: a causal mask, not weights.
_GPT2_IGNORED = (".attn.bias", ".attn.masked_bias")
# Hugging Face activation names -> GPTConfig.mlp; GPT-2 trained with the tanh
# approximation ("gelu_new").
_GPT2_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact",
                     "relu": "relu"}


def _model_type(hf_config: Mapping[str, Any]) -> str:
    """'gpt2', 'llama' or 'qwen3', from the config's model_type."""
    kind = hf_config.get("model_type")
    if kind not in ("gpt2", "llama", "qwen3"):
        raise ValueError("only GPT-2, Llama and Qwen3 checkpoints are supported, got "
                         f"model_type={kind!r}")
    return kind


# Hugging Face rope types we reproduce, and the keys GPTConfig.rope_scaling keeps for each.
_ROPE_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
             "attention_factor", "mscale", "mscale_all_dim", "truncate"),
}


def _rope(hf_config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE's base and GPTConfig.rope_scaling from a Llama or Qwen3 config.

    transformers 5 keeps both in `rope_parameters`; older versions use `rope_theta` and
    `rope_scaling` (whose type was once spelled `type`).
    """
    params = dict(hf_config.get("rope_parameters") or {})
    scaling = {**(hf_config.get("rope_scaling") or {}), **params}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    theta = float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0)))
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial rotary embeddings are not supported, got partial_rotary_factor="
                         f"{scaling['partial_rotary_factor']}")
    if kind == "default":
        return theta, None
    if kind not in _ROPE_KEYS:
        raise ValueError(f"RoPE scaling {kind!r} is not supported; supported: 'default', "
                         f"{', '.join(map(repr, _ROPE_KEYS))}")
    if kind != "linear":
        # Hugging Face falls back to the context length when the original one is not given.
        scaling.setdefault("original_max_position_embeddings", hf_config["max_position_embeddings"])
    kept = {k: scaling[k] for k in _ROPE_KEYS[kind] if scaling.get(k) is not None}
    return theta, {"rope_type": kind, **kept}


def config_from_hf(hf_config: Mapping[str, Any], dropout: float = 0.0) -> GPTConfig:
    """The GPTConfig that reproduces a Hugging Face GPT-2, Llama or Qwen3 config.

    The config comes in dict form, e.g. config.to_dict().
    """
    c = hf_config
    kind = _model_type(c)
    if kind == "gpt2":
        act = c.get("activation_function", "gelu_new")
        if act not in _GPT2_ACTIVATIONS:
            raise ValueError(f"GPT-2 activation {act!r} is not supported; supported: "
                             f"{sorted(_GPT2_ACTIVATIONS)}")
        if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
            raise ValueError("GPT-2 variants with non-standard attention scaling are not supported")
        return GPTConfig(
            vocab_size=c["vocab_size"], context_length=c["n_positions"], d_model=c["n_embd"],
            n_layers=c["n_layer"], n_heads=c["n_head"], d_ff=c.get("n_inner") or 4 * c["n_embd"],
            norm="layernorm", mlp=_GPT2_ACTIVATIONS[act], pos="learned", bias=True,
            tie_embeddings=c.get("tie_word_embeddings", True), dropout=dropout,
            norm_eps=c.get("layer_norm_epsilon", 1e-5))
    if c.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{kind} activation {c['hidden_act']!r} is not supported: SwiGLU uses "
                         "silu")
    # Qwen3's attention_bias covers q, k, v and o only; its MLP never has biases.
    mlp_bias = c.get("mlp_bias", False) if kind == "llama" else False
    if bool(c.get("attention_bias", False)) != bool(mlp_bias):
        raise ValueError("GPTConfig has one bias flag: attention_bias and mlp_bias must agree")
    if kind == "qwen3" and (c.get("use_sliding_window")
                            or "sliding_attention" in (c.get("layer_types") or ())):
        raise ValueError("Qwen3 with sliding-window layers is not supported")
    d, H = c["hidden_size"], c["num_attention_heads"]
    theta, scaling = _rope(c)
    head_dim = c.get("head_dim")
    return GPTConfig(
        vocab_size=c["vocab_size"], context_length=c["max_position_embeddings"], d_model=d,
        n_layers=c["num_hidden_layers"], n_heads=H, n_kv_heads=c.get("num_key_value_heads") or H,
        d_ff=c["intermediate_size"], norm="rmsnorm", mlp="swiglu", pos="rope",
        rope_theta=theta, rope_scaling=scaling, bias=bool(c.get("attention_bias", False)),
        tie_embeddings=c.get("tie_word_embeddings", False), dropout=dropout,
        norm_eps=c.get("rms_norm_eps", 1e-6),
        # None when it is d_model // n_heads, so a Llama 2 config stays as it always was
        head_dim=None if head_dim in (None, d // H) and d % H == 0 else head_dim,
        qk_norm=kind == "qwen3")


def _gpt2_state(sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename GPT-2's tensors.

    Its Conv1D stores weights (in, out), so every matrix is transposed.
    """
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.endswith(_GPT2_IGNORED)}
    d = config.d_model
    out = {"tok_emb.weight": sd.pop("wte.weight"), "pos_emb.embedding.weight": sd.pop("wpe.weight"),
           "norm.weight": sd.pop("ln_f.weight"), "norm.bias": sd.pop("ln_f.bias")}
    for i in range(config.n_layers):
        h, b = f"h.{i}.", f"blocks.{i}."
        # c_attn packs q, k and v side by side: (d, 3d) -> (3d, d), then three (d, d) slices.
        qkv_w, qkv_b = sd.pop(h + "attn.c_attn.weight").t(), sd.pop(h + "attn.c_attn.bias")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[b + f"attn.{name}.weight"] = qkv_w[j * d:(j + 1) * d]
            out[b + f"attn.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
        pairs = {"attn.c_proj": "attn.o_proj", "mlp.c_fc": "mlp.up_proj",
                 "mlp.c_proj": "mlp.down_proj"}
        for theirs, ours in pairs.items():
            out[b + ours + ".weight"] = sd.pop(h + theirs + ".weight").t()
            out[b + ours + ".bias"] = sd.pop(h + theirs + ".bias")
        for theirs, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[b + ours + ".weight"], out[b + ours + ".bias"] = (sd.pop(h + theirs + ".weight"),
                                                                  sd.pop(h + theirs + ".bias"))
    head = sd.pop("lm_head.weight", None)
    out["lm_head.weight"] = out["tok_emb.weight"] if config.tie_embeddings or head is None else head
    if sd:
        raise ValueError(f"unexpected GPT-2 tensors: {sorted(sd)[:5]}")
    return out


def _llama_state(sd: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename Llama's (and Qwen3's) tensors.

    Its q/k/v/o and gate/up/down already have our names and (out, in) layout.
    """
    sd = {
        k.removeprefix("model."): v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")
    }
    out = {"tok_emb.weight": sd.pop("embed_tokens.weight"), "norm.weight": sd.pop("norm.weight")}
    suffixes = [
        f"self_attn.{p}_proj.{w}"
        for p in "qkvo"
        for w in (("weight", "bias") if config.bias else ("weight",))
    ]
    suffixes += [
        f"mlp.{p}_proj.{w}"
        for p in ("gate", "up", "down")
        for w in (("weight", "bias") if config.bias else ("weight",))
    ]
    for i in range(config.n_layers):
        h, b = f"layers.{i}.", f"blocks.{i}."
        for s in suffixes:
            out[b + s.replace("self_attn.", "attn.")] = sd.pop(h + s)
        if config.qk_norm:  # Qwen3: one (D,) RMSNorm scale each for queries and keys
            for n in ("q_norm", "k_norm"):
                out[b + f"attn.{n}.weight"] = sd.pop(h + f"self_attn.{n}.weight")
        out[b + "attn_norm.weight"] = sd.pop(h + "input_layernorm.weight")
        out[b + "mlp_norm.weight"] = sd.pop(h + "post_attention_layernorm.weight")
    head = sd.pop("lm_head.weight", None)
    out["lm_head.weight"] = out["tok_emb.weight"] if config.tie_embeddings or head is None else head
    if sd:
        raise ValueError(f"unexpected {'Qwen3' if config.qk_norm else 'Llama'} tensors: "
                         f"{sorted(sd)[:5]}")
    return out


def from_hf(
    state_dict: Mapping[str, torch.Tensor], hf_config: Mapping[str, Any], dropout: float = 0.0
) -> GPT:
    """A companion GPT (float32, eval mode) with a Hugging Face GPT-2, Llama or Qwen3 state dict.

    Example: from_hf(hf.state_dict(), hf.config.to_dict())(idx) matches
    hf(idx).logits to float32 tolerance.
    """
    config = config_from_hf(hf_config, dropout=dropout)
    rename = _gpt2_state if _model_type(hf_config) == "gpt2" else _llama_state
    try:
        ours = rename(dict(state_dict), config)
    except KeyError as e:
        raise ValueError(f"state dict is missing {e.args[0]!r} for a {hf_config['model_type']} "
                         "model") from None
    model = GPT(config)
    # strict: every parameter must be filled, so a renaming slip fails here
    # rather than as wrong logits.
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return model.eval()


def hub_offline() -> bool:
    """True when COMPANION_OFFLINE or HF_HUB_OFFLINE asks us not to touch the network."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes")
        for v in ("COMPANION_OFFLINE", "HF_HUB_OFFLINE")
    )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hub's host takes a connection within `timeout` s, else one line saying why.

    Checked before a download so that a machine with no network fails at once, not after
    huggingface_hub's five retries with back-off. Example: hub_unreachable() -> None online.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # behind a proxy a direct connection says nothing; let the client try
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or ""
    try:
        socket.create_connection((host, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{host} is unreachable ({type(e).__name__}: {e})"
    return None


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict and config.json of a Hugging Face checkpoint folder (save_pretrained's)."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face checkpoint")
    try:
        hf_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from None
    if not isinstance(hf_config, dict):
        raise ValueError(f"{config_file} holds a {type(hf_config).__name__}, not a JSON object")
    _model_type(hf_config)  # refuse an unsupported model before reading gigabytes of weights
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file() or index.is_file():
        try:
            from safetensors.torch import load_file  # optional: only a folder needs it
        except ImportError as e:
            raise RuntimeError("reading .safetensors needs safetensors: pip install "
                               "safetensors") from e
        # sharded: the index maps each tensor to one of a few files; each file is read once
        files = ([single] if single.is_file() else
                 [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"]
                                                 .values()))])
        state: dict[str, torch.Tensor] = {}
        for f in files:
            try:
                state.update(load_file(str(f)))
            except FileNotFoundError:
                raise FileNotFoundError(f"{f} is listed in {index.name} but missing") from None
            except Exception as e:  # safetensors reports a damaged file as a bare error
                raise ValueError(f"{f} is not a readable safetensors file ({e})") from None
        return state, hf_config
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        try:
            # weights_only: a pickle could run code; a plain dict of tensors needs none
            return torch.load(legacy, map_location="cpu", weights_only=True), hf_config
        except Exception as e:
            raise ValueError(f"{legacy} is not a readable weights-only PyTorch file "
                             f"({e})") from None
    raise FileNotFoundError(f"{folder} has config.json but no weights: expected model.safetensors,"
                            " model.safetensors.index.json or pytorch_model.bin")


def load_pretrained(name_or_path: str | os.PathLike = "gpt2") -> GPT:
    """A GPT-2, Llama or Qwen3 checkpoint as a companion GPT: a local folder, else the Hub.

    A folder in Hugging Face's format (config.json + model.safetensors, as save_pretrained writes
    it) loads offline, without transformers. Any other name is downloaded with transformers;
    RuntimeError at once, in one line, when offline or when the Hub cannot be reached.
    Example: load_pretrained("checkpoints/gpt2")
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        state, hf_config = _read_folder(path)
        return from_hf(state, hf_config)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        # a path that is a file, or that names no folder: not a Hub id either
        raise FileNotFoundError(f"{name!r} is not a checkpoint folder (need config.json and "
                                "model.safetensors in a directory)")
    if hub_offline():
        raise RuntimeError(f"offline (COMPANION_OFFLINE or HF_HUB_OFFLINE is set) and {name!r} "
                           "is no local folder: not downloading from the Hub")
    if reason := hub_unreachable():
        raise RuntimeError(f"{reason}: skipping the download of {name!r}")
    try:
        from transformers import AutoModelForCausalLM  # optional: only the Hub path needs it
    except ImportError as e:
        raise RuntimeError("transformers is not installed: pip install transformers") from e
    hf = AutoModelForCausalLM.from_pretrained(name)
    return from_hf(hf.state_dict(), hf.config.to_dict())
