"""Export a companion GPT to a Hugging Face folder (config.json + model.safetensors).

The inverse of companion.hf's loader for LLaMA-style models (RMSNorm, SwiGLU, RoPE; with QK-norm
it is written as Qwen3), so that other servers, `transformers serve` among them, can run the
course's model on the same weights (chapter 11's benchmark). Needs safetensors, not transformers.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .hf import config_from_hf
from .model import GPT

__all__ = ["hf_config", "to_hf", "char_tokenizer_to_hf"]


def hf_config(model: GPT) -> dict[str, Any]:
    """The Hugging Face config.json of a LLaMA-style companion GPT; ValueError for other kinds.

    Example: hf_config(GPT(GPTConfig.llama(...)))["model_type"] -> "llama"
    """
    c = model.config
    wrong = {name: value for name, value, want in [
        ("norm", c.norm, "rmsnorm"), ("mlp", c.mlp, "swiglu"), ("pos", c.pos, "rope"),
        ("logit_softcap", c.logit_softcap, None), ("n_experts", c.n_experts, 0)] if value != want}
    if wrong:
        raise ValueError(f"only LLaMA-style models export (rmsnorm, swiglu, rope, no soft cap, "
                         f"dense MLP); this one has {wrong}")
    kind = "qwen3" if c.qk_norm else "llama"
    rope = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    out = {
        "architectures": ["Qwen3ForCausalLM" if c.qk_norm else "LlamaForCausalLM"],
        "model_type": kind, "vocab_size": c.vocab_size, "hidden_size": c.d_model,
        "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "head_dim": c.d_head, "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.norm_eps, "hidden_act": "silu", "attention_bias": c.bias,
        "tie_word_embeddings": c.tie_embeddings, "rope_parameters": rope,
        "rope_theta": c.rope_theta, "torch_dtype": "float32", "dtype": "float32",
    }
    if kind == "llama":
        out["mlp_bias"] = c.bias
    back = config_from_hf(out)
    keys = ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "n_kv_heads",
            "d_ff", "d_head", "norm_eps", "rope_theta", "rope_scaling", "bias", "tie_embeddings",
            "qk_norm")
    lost = [k for k in keys if getattr(back, k) != getattr(c, k)]
    if lost:  # a setting config.json cannot carry would give another model
        raise ValueError(f"these settings do not survive config.json: {lost}")
    return out


def _hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our parameter names -> Llama's (the inverse of companion.hf's renaming)."""
    out = {}
    for name, t in model.state_dict().items():
        if name.startswith("blocks.") and ".rope." in name:
            continue  # RoPE tables are derived from the config
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # tied: stored once, as the embedding
        new = (name.replace("tok_emb.", "embed_tokens.").replace("blocks.", "layers.")
               .replace(".attn_norm.", ".input_layernorm.")
               .replace(".mlp_norm.", ".post_attention_layernorm.")
               .replace(".attn.", ".self_attn."))
        out[new if new == "lm_head.weight" else "model." + new] = t.detach().contiguous().clone()
    return out


def to_hf(model: GPT, folder: str | os.PathLike) -> Path:
    """Write config.json and model.safetensors for `model` into folder; each file atomically.

    Example: to_hf(model, "out/hf"); companion.hf.load_pretrained("out/hf") gives the same logits.
    """
    from safetensors.torch import save_file  # optional: only exporting needs it

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = hf_config(model)
    state = {k: v.float() for k, v in _hf_state(model).items()}
    text = json.dumps(config, indent=2)
    for name, write in [("model.safetensors", lambda p: save_file(state, p, {"format": "pt"})),
                        ("config.json", lambda p: Path(p).write_text(text))]:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, folder / name)  # a reader never sees half a file
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return folder


def char_tokenizer_to_hf(chars: list[str] | str, folder: str | os.PathLike) -> Path:
    """A character tokenizer (id i is chars[i]) as tokenizer.json for Hugging Face's tokenizers.

    Every character is its own token and decoding joins them without spaces, so that
    AutoTokenizer.from_pretrained(folder).encode(s) equals CharTokenizer(chars).encode(s).
    Needs the `tokenizers` package. Example: char_tokenizer_to_hf(tok.itos, "out/hf")
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = list(chars)
    if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
        raise ValueError("chars must be distinct single characters")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # WordLevel needs an unknown token; a character outside the vocabulary maps to id 0.
    tk = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()  # characters join without spaces
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}))
    return folder
