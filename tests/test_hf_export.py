"""companion.hf_export: a LLaMA-style GPT written as a Hugging Face folder loads back with the same
logits, in the companion and in transformers."""
from __future__ import annotations

import json

import pytest
import torch

from companion.hf import load_pretrained
from companion.hf_export import hf_config, to_hf
from companion.model import GPT, GPTConfig

pytest.importorskip("safetensors")
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


def test_char_tokenizer_export_encodes_and_decodes_like_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    from companion.hf_export import char_tokenizer_to_hf
    from companion.tokenizer import CharTokenizer

    ours = CharTokenizer.from_text("ROMEO:\nO, she doth teach the torches to burn bright!")
    char_tokenizer_to_hf(ours.itos, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "O ROMEO,\n  teach the torches!"
    ids = theirs.encode(text)
    assert ids == ours.encode(text) and theirs.decode(ids) == text
    with pytest.raises(ValueError, match="distinct single characters"):
        char_tokenizer_to_hf(["a", "a"], tmp_path)


def test_transformers_serve_writes_what_our_server_writes(tmp_path):
    """The peer of chapter 11's benchmark, on the same weights: greedy text must agree."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from companion.checkpoint import save_checkpoint
    from companion.hf_export import char_tokenizer_to_hf
    from companion.serve.client import ServerProcess, complete, free_port

    beside = Path(sys.executable).parent / "transformers"
    cli = shutil.which("transformers") or (str(beside) if beside.is_file() else None)
    if cli is None:
        pytest.skip("transformers serve is not installed")
    pytest.importorskip("fastapi")
    chars = "".join(sorted(set("abcdefghijklmnopqrstuvwxyz ,.\n")))
    model = llama(vocab_size=len(chars))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # varied greedy text
    to_hf(model, tmp_path / "hf")
    char_tokenizer_to_hf(chars, tmp_path / "hf")
    save_checkpoint(tmp_path / "ckpt.pt", {
        "format_version": 1, "model": model.state_dict(), "step": 0,
        "model_config": model.config.to_dict(), "tokenizer": {"kind": "char", "chars": chars}})
    port = free_port()
    peer = subprocess.Popen([cli, "serve", "--continuous-batching", "--host", "127.0.0.1",
                             "--port", str(port), str(tmp_path / "hf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: up, dead, or out of time
            assert peer.poll() is None and time.monotonic() < deadline, "peer did not start"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        body = dict(prompt="to be, or", max_tokens=12, temperature=0)
        theirs = complete(f"http://127.0.0.1:{port}", model=str(tmp_path / "hf"), **body)
        with ServerProcess(tmp_path / "ckpt.pt") as server:
            ours = complete(server.url, **body)
        assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
        assert len(ours["choices"][0]["text"]) == 12
    finally:
        peer.terminate()
        try:
            peer.wait(timeout=20)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
