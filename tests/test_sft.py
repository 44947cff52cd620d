"""companion.sft: the shipped base, the chat template's round trip, resizing, masked loss,
padding against packing, and the gradient-accumulation normalisation."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from companion.data import load_text
from companion.model import GPT, GPTConfig
from companion.checkpoint import CheckpointError, FORMAT_VERSION, save_checkpoint
from companion.evaluate import (
    choice_logps,
    cloze_items,
    greedy_exact_match,
    multiple_choice_accuracy,
)
from companion.sft import (
    ChatTokenizer,
    encode_chat,
    finetune,
    load_base,
    load_chat_model,
    masked_loss,
    pack,
    pad_batch,
    parse_chat,
    render_chat,
    reply,
    resize_vocab,
    save_chat_model,
)
from companion.tokenizer import BPETokenizer, CharTokenizer

BASE = CharTokenizer("abcdefghijklmnopqrstuvwxyz ,.!?'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
CHAT = [{"role": "user", "content": "who is it?"}, {"role": "assistant", "content": "ROMEO"}]


def test_shipped_base_loads_with_its_provenance():
    model, tok, info = load_base()
    assert tok.vocab_size == model.config.vocab_size == 65
    assert model.num_params() == info["parameters"] and info["final_val_loss"] < 2.0
    assert "companion.train --preset shakespeare-char-cpu" in info["command"]


@pytest.mark.parametrize("messages", [CHAT, CHAT[:1], [], [{"role": "user", "content": ""}] * 2])
def test_template_round_trips(messages):
    tok = ChatTokenizer(BASE)
    text = render_chat(messages)
    assert parse_chat(text) == messages
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_new_ids():
    tok = ChatTokenizer(BASE)
    assert tok.vocab_size == BASE.vocab_size + 3
    assert tok.encode("<|user|>a<|end|>") == [
        BASE.vocab_size,
        *BASE.encode("a"),
        BASE.vocab_size + 2,
    ]


def test_chat_tokenizer_wraps_byte_level_bpe_and_decodes_split_characters():
    """GPT-2's BPE as the base: specials follow its 50,257 ids, and a character that BPE spells
    with two tokens (an emoji, here) decodes whole, not as two replacement characters."""
    gpt2 = BPETokenizer.from_tiktoken("gpt2")
    tok = ChatTokenizer(gpt2)
    assert tok.special_ids["<|user|>"] == gpt2.vocab_size == 50257
    messages = [{"role": "user", "content": "café 🎭?"}, {"role": "assistant", "content": "JULIET"}]
    text = render_chat(messages)
    ids = tok.encode(text)
    body = ids[1:ids.index(tok.special_ids["<|end|>"])]
    assert len(body) > len("café 🎭?") - 2  # several base tokens, some spanning bytes
    assert tok.decode(ids) == text and parse_chat(tok.decode(ids)) == messages
    ids, mask = encode_chat(tok, messages)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "JULIET<|end|>"


def test_chat_tokenizer_refuses_specials_the_base_already_has():
    with pytest.raises(ValueError, match="already in the base"):
        ChatTokenizer(CharTokenizer("ab"), ("a", "<|end|>"))
    with pytest.raises(ValueError, match="already in the base"):
        ChatTokenizer(BPETokenizer.from_tiktoken("gpt2"), ("<|endoftext|>",))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ChatTokenizer(BASE).decode([BASE.vocab_size + 3])


def test_template_rejects_bad_messages():
    with pytest.raises(ValueError, match="role"):
        render_chat([{"role": "system", "content": "x"}])
    with pytest.raises(ValueError, match="special token"):
        render_chat([{"role": "user", "content": "<|end|>"}])
    with pytest.raises(ValueError, match="not a rendered chat"):
        parse_chat("<|user|>unfinished")


def test_mask_covers_the_answer_and_its_end_token_only():
    tok = ChatTokenizer(BASE)
    ids, mask = encode_chat(tok, CHAT)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "ROMEO<|end|>"


def test_resize_keeps_old_logits_and_starts_new_rows_at_the_mean():
    torch.manual_seed(0)
    for tie in (True, False):
        model = GPT(
            GPTConfig(
                vocab_size=10,
                context_length=8,
                d_model=16,
                n_layers=1,
                n_heads=2,
                tie_embeddings=tie,
            )
        )
        idx = torch.randint(0, 10, (1, 6))
        before = model(idx)
        resize_vocab(model, 13)
        after = model(idx)
        assert after.shape == (1, 6, 13) and model.config.vocab_size == 13
        assert torch.allclose(after[..., :10], before, atol=1e-6)
        assert torch.allclose(model.tok_emb.weight[12], model.tok_emb.weight[:10].mean(0))
        assert (model.lm_head.weight is model.tok_emb.weight) == tie


def test_masked_loss_hand_worked():
    """Uniform logits over 4 tokens: each counted position costs log 4; the others add nothing."""
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 100.0  # a confident wrong guess, hidden by the mask
    loss = masked_loss(logits, torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1, 1]]))
    assert math.isclose(loss.item(), math.log(4), rel_tol=1e-6)
    with pytest.raises(ValueError, match="no tokens"):
        masked_loss(logits, torch.tensor([[0, 1, 2]]), torch.zeros(1, 3))


def test_accumulation_needs_the_global_token_count():
    """Two micro-batches with 1 and 5 answer tokens: dividing by the total (6) gives the full
    gradient; the mean of per-micro-batch means weighs the lone token five times as much."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=7, context_length=6, d_model=8, n_layers=1, n_heads=2))
    x, y = torch.randint(0, 7, (2, 6)), torch.randint(0, 7, (2, 6))
    m = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1]])

    def grads(losses):
        model.zero_grad()
        sum(losses).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = grads([masked_loss(model(x), y, m)])
    right = grads(
        [masked_loss(model(x[i : i + 1]), y[i : i + 1], m[i : i + 1], n_tokens=6) for i in range(2)]
    )
    wrong = grads(
        [masked_loss(model(x[i : i + 1]), y[i : i + 1], m[i : i + 1]) / 2 for i in range(2)]
    )
    assert torch.allclose(full, right, atol=1e-6)
    assert not torch.allclose(full, wrong, atol=1e-3)


def chat_example(tok, line, who):
    return encode_chat(tok, [{"role": "user", "content": line},
                             {"role": "assistant", "content": who}])


def test_padding_and_packing_hold_the_same_answer_tokens():
    tok = ChatTokenizer(BASE)
    examples = [
        chat_example(tok, line, who)
        for line, who in [
            ("a short line", "ROMEO"),
            ("a much longer line, this one", "ISABELLA"),
            ("hi there", "LEONTES"),
        ]
    ]
    _, yp, mp = pad_batch(examples, 0)
    xk, yk, mk = pack(examples, 64)
    assert xk.shape[1] == 64 and len(xk) < len(examples)
    assert sorted(yp[mp.bool()].tolist()) == sorted(yk[mk.bool()].tolist())
    with pytest.raises(ValueError, match="exceeds"):
        pack(examples, 10)


def test_greedy_exact_match_is_exact_match_of_greedy_decoding():
    """A model that always predicts token 0 never ends its answer; an oracle always does."""
    tok = ChatTokenizer(CharTokenizer("ab"))

    class Zero(torch.nn.Module):
        training = False

        def forward(self, x):
            out = torch.zeros(*x.shape, tok.vocab_size)
            out[..., 0] = 1.0
            return out

    model = Zero()
    pairs = [("ab", "a"), ("ba", "b")]
    examples = [chat_example(tok, *p) for p in pairs]
    assert greedy_exact_match(model, examples).tolist() == [0.0, 0.0]  # <|end|> never predicted
    _, y, _ = pad_batch(examples, 0)
    model.forward = lambda x: torch.nn.functional.one_hot(y, tok.vocab_size).float()  # an oracle
    assert greedy_exact_match(model, examples).tolist() == [1.0, 1.0]


def _tiny_chat(vocab: int) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab, context_length=32, d_model=32, n_layers=1,
                         n_heads=2, d_ff=64)).eval()


def test_chat_model_round_trips_with_its_tokenizer(tmp_path):
    tok = ChatTokenizer(BASE)
    model = _tiny_chat(tok.vocab_size)
    path = save_chat_model(tmp_path / "chat.pt", model, tok, {"stage": "test"})
    back, back_tok, info = load_chat_model(path)
    assert info == {"stage": "test"} and back_tok.vocab_size == tok.vocab_size
    assert back_tok.encode("<|user|>hi<|end|>") == tok.encode("<|user|>hi<|end|>")
    x = torch.tensor([tok.encode("<|user|>hi<|end|><|assistant|>")])
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert reply(back, back_tok, [{"role": "user", "content": "hi"}]) == reply(
        model, tok, [{"role": "user", "content": "hi"}])


def test_load_chat_model_refuses_a_checkpoint_without_a_chat_tokenizer(tmp_path):
    path = save_checkpoint(tmp_path / "plain.pt", {"format_version": FORMAT_VERSION,
                                                   "model": {}, "step": 0})
    with pytest.raises(CheckpointError, match="no chat model"):
        load_chat_model(path)
    with pytest.raises(FileNotFoundError):
        load_chat_model(tmp_path / "missing.pt")


def test_reply_refuses_a_chat_that_fills_the_context():
    tok = ChatTokenizer(BASE)
    model = _tiny_chat(tok.vocab_size)
    with pytest.raises(ValueError, match="no room"):
        reply(model, tok, [{"role": "user", "content": "x" * 40}])


def test_finetune_mixes_plain_rows_and_learns():
    tok = ChatTokenizer(BASE)
    model = _tiny_chat(tok.vocab_size)
    data = pad_batch([chat_example(tok, "abc", "cba"), chat_example(tok, "de", "ed")], 0)
    plain = torch.tensor(BASE.encode("some plain text to mix in, " * 10))
    losses = finetune(model, data, steps=30, lr=1e-2, batch=4, plain=plain, plain_rows=2)
    assert len(losses) == 30 and losses[-1] < losses[0]


def test_cloze_items_hold_the_true_ending_at_the_answer_index():
    text = load_text("tinyshakespeare")[:20000]
    items = cloze_items(text, n=20, seed=1)
    lines = {ln.strip() for ln in text.split("\n")}
    assert len(items) == 20
    for context, endings, answer in items:
        assert len(endings) == 4 and context + endings[answer] in lines
        assert context.endswith(" ") and len(set(endings)) >= 2
    with pytest.raises(ValueError, match="usable lines"):
        cloze_items("short\nlines\n", n=3)


def test_ending_logps_match_a_hand_computed_sum_and_ranking():
    model, tok, _ = load_base()
    context, endings = "ROMEO:\nBut soft, what ", ["light", "xqzj!"]
    ids = tok.encode(context + endings[0])
    with torch.no_grad():
        logp = model(torch.tensor([ids[:-1]])).log_softmax(-1)[0]
    n = len(tok.encode(context))
    want = sum(logp[t - 1, ids[t]].item() for t in range(n, len(ids)))
    got = choice_logps(model, tok, context, endings)
    assert math.isclose(got[0].item(), want, rel_tol=1e-5) and got[0] > got[1]
    items = [(context, endings, 0), (context, endings[::-1], 1)]
    assert multiple_choice_accuracy(model, tok, items) == 1.0


def test_sft_runs_on_a_gpt2_checkpoint_folder_with_gpt2s_tokenizer(tmp_path):
    """Chapter 10's GPT-2 path offline: a random GPT-2 saved by transformers, loaded from its
    folder, resized for the specials; the old ids' logits stay transformers', and SFT learns."""
    transformers = pytest.importorskip("transformers")
    from companion.hf import load_pretrained

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    ).eval()
    hf.save_pretrained(tmp_path)
    tok = ChatTokenizer(BPETokenizer.from_tiktoken("gpt2"))
    model = resize_vocab(load_pretrained(tmp_path), tok.vocab_size)
    ids, mask = encode_chat(tok, CHAT)
    x = torch.tensor([ids[:-1]])
    plain = torch.tensor([tok.base.encode("But, sirs, be sudden in the execution")])
    with torch.no_grad():  # transformers' model knows no specials: compare on plain text
        torch.testing.assert_close(model(plain)[..., :50257], hf(plain).logits, rtol=1e-4,
                                   atol=1e-4)
    y, m = torch.tensor([ids[1:]]), torch.tensor([mask[1:]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = masked_loss(model(x), y, m)
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 1.0
