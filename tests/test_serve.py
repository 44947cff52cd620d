"""The real server in a subprocess on a free loopback port, spoken to over HTTP (urllib)."""
from __future__ import annotations

import json
import signal
import string
import subprocess
import sys
import urllib.request

import pytest
import torch

from companion.checkpoint import save_checkpoint
from companion.model import GPT, GPTConfig
from companion.serve.client import ServerProcess, complete, load_test, post, stream

CHARS = "".join(sorted(set(string.ascii_letters + " \n.,!?")))


def write_checkpoint(path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=len(CHARS), context_length=64, d_model=32, n_layers=2, n_heads=4,
                    pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    model = GPT(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # varied greedy text rather than one repeated character
    save_checkpoint(path, {"format_version": 1, "model": model.state_dict(), "step": 0,
                           "model_config": cfg.to_dict(),
                           "tokenizer": {"kind": "char", "chars": CHARS}})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "ckpt.pt"
    write_checkpoint(path)
    with ServerProcess(path, "--max-batch", "8") as s:
        yield s


GOOD = {"prompt": "Hello", "max_tokens": 8, "temperature": 0}


def test_health(server):
    with urllib.request.urlopen(f"{server.url}/health", timeout=10) as r:
        body = json.loads(r.read())
    assert r.status == 200 and body["status"] == "ok" and body["context_length"] == 64


def test_completion_has_the_openai_shape(server):
    body = complete(server.url, **GOOD)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    choice = body["choices"][0]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert len(choice["text"]) == 8 and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


def test_greedy_is_deterministic_and_streaming_agrees(server):
    texts = {complete(server.url, **GOOD)["choices"][0]["text"] for _ in range(3)}
    assert len(texts) == 1
    events = list(stream(server.url, **GOOD))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == texts.pop()
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_sampling_repeats_for_a_seed(server):
    a, b = (complete(server.url, prompt="Hi", max_tokens=12, temperature=1.0, seed=3,
                     top_k=10, top_p=0.9) for _ in range(2))
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stop_string_ends_the_text(server):
    full = complete(server.url, **{**GOOD, "max_tokens": 20})["choices"][0]["text"]
    stop = full[5:7]
    cut = complete(server.url, **{**GOOD, "max_tokens": 20, "stop": [stop]})["choices"][0]
    assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"max_tokens": 3}, "prompt"),
    ({"prompt": 3}, "prompt"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"prompt": "hi", "temperature": "hot"}, "temperature"),
    ({"prompt": "a" * 64}, "prompt"),
    ({"prompt": "caf\u00e9"}, "prompt"),
    ({"prompt": "hi", "top_k": 0}, "top_k"),
    ({"prompt": "hi", "stream": "yes"}, "stream"),
])
def test_bad_request_is_400_naming_the_field_and_the_server_keeps_serving(server, body, param):
    status, answer = post(f"{server.url}/v1/completions", body)
    assert status == 400
    assert answer["error"]["param"] == param and answer["error"]["message"]
    assert complete(server.url, **GOOD)["choices"][0]["finish_reason"] == "length"


def test_sixteen_concurrent_clients_are_all_answered(server):
    prompts = [f"Hello {c}" for c in string.ascii_letters[:32]]
    report = load_test(server.url, prompts, max_tokens=16, clients=16)
    assert report["requests"] == 32 and report["tokens"] == 32 * 16
    assert 0 < report["p50_s"] <= report["p95_s"] and report["tokens_per_s"] > 0
    print(report)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "companion.serve", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, fragment", [
    (["--checkpoint", "no/such/ckpt.pt"], "no checkpoint"),
    (["--checkpoint", "x.pt", "--quantize", "3"], "--quantize"),
])
def test_cli_errors_are_one_line_exit_2(args, fragment):
    done = run_cli(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0]


def test_quantized_server_answers(tmp_path):
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path)
    with ServerProcess(path, "--quantize", "4", "--group-size", "16") as s:
        body = complete(s.url, **GOOD)
    assert body["model"] == "ckpt-int4" and len(body["choices"][0]["text"]) == 8


def write_chat_checkpoint(path, seed: int = 1) -> None:
    """Chapter 10's contract: a chat tokenizer over the characters, three special tokens."""
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=len(CHARS) + 3, context_length=64, d_model=32, n_layers=2,
                    n_heads=4, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    model = GPT(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
        model.lm_head.weight[len(CHARS):] = 0  # it writes characters rather than specials
    tokenizer = {"kind": "chat", "base": {"kind": "char", "chars": CHARS},
                 "specials": ["<|user|>", "<|assistant|>", "<|end|>"]}
    save_checkpoint(path, {"format_version": 1, "model": model.state_dict(), "step": 0,
                           "model_config": cfg.to_dict(), "tokenizer": tokenizer})


def test_the_official_openai_client(tmp_path):
    openai = pytest.importorskip("openai")
    path = tmp_path / "chat.pt"
    write_chat_checkpoint(path)
    with ServerProcess(path) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0,
                               timeout=60)
        model = client.models.list().data[0].id
        assert model == "chat"
        done = client.completions.create(model=model, prompt="Hello", max_tokens=8,
                                         temperature=0, logprobs=2)
        text = done.choices[0].text
        assert len(text) == 8 and done.usage.completion_tokens == 8
        assert len(done.choices[0].logprobs.top_logprobs[0]) == 2
        pieces = list(client.completions.create(model=model, prompt="Hello", max_tokens=8,
                                                temperature=0, stream=True,
                                                stream_options={"include_usage": True}))
        assert "".join(p.choices[0].text for p in pieces if p.choices) == text
        assert pieces[-1].usage.completion_tokens == 8
        messages = [{"role": "user", "content": "Who speaks?"}]
        chat = client.chat.completions.create(model=model, messages=messages, max_tokens=6,
                                              temperature=0, n=2)
        assert [c.index for c in chat.choices] == [0, 1]
        answer = chat.choices[0].message
        assert answer.role == "assistant" and answer.content
        assert answer.content == chat.choices[1].message.content
        deltas = list(client.chat.completions.create(model=model, messages=messages,
                                                     max_tokens=6, temperature=0, stream=True))
        assert "".join(d.choices[0].delta.content or "" for d in deltas) == answer.content
        assert deltas[-1].choices[0].finish_reason == chat.choices[0].finish_reason
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=model, max_tokens=4, messages=[
                {"role": "system", "content": "Be brief."}, *messages])
        assert err.value.body["param"] == "messages[0].role"
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=model, prompt="Hi", temperature=1e-300)
        assert err.value.body["param"] == "temperature"
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=model, prompt="Hi", presence_penalty=1.0)
        assert err.value.body["param"] == "presence_penalty"
        with pytest.raises(openai.NotFoundError) as err:
            client.completions.create(model="gpt-4", prompt="Hi")
        assert err.value.body["code"] == "model_not_found"


def test_sigterm_drains_the_open_stream_and_exits_0(tmp_path):
    path = tmp_path / "long.pt"
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=len(CHARS), context_length=512, d_model=32, n_layers=2,
                    n_heads=4, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    save_checkpoint(path, {"format_version": 1, "model": GPT(cfg).state_dict(), "step": 0,
                           "model_config": cfg.to_dict(),
                           "tokenizer": {"kind": "char", "chars": CHARS}})
    with ServerProcess(path) as s:
        events = stream(s.url, prompt="Hi", max_tokens=500, temperature=0)
        first = next(events)  # the stream is open and running
        s.proc.send_signal(signal.SIGTERM)
        rest = list(events)
        assert s.proc.wait(timeout=60) == 0
        out = s.proc.stdout.read().decode()
    assert rest[-1] == "[DONE]" and rest[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(e["choices"][0]["text"] for e in [first, *rest[:-1]])
    assert len(text) == 500 and "drained and stopped" in out
