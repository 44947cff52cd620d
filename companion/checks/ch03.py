"""Self-checks for chapter 3's exercises: a GPT-4-style pre-tokenizer, BPE training by hand,
encoding with special tokens by merge rank, and sliding windows."""
from __future__ import annotations

from collections.abc import Callable, Mapping

import regex
import torch

from ..data import load_text
from ..loader import SlidingWindowDataset
from ..tokenizer import GPT2_PATTERN, BPETokenizer
from ._core import as_tensor, call, fail, passed

__all__ = ["check_3_1", "check_3_2", "check_3_3", "check_3_4", "GPT4_STYLE_PATTERN"]

# GPT-2's pattern with exercise 3.1's two changes: contractions in any case, and digits in groups
# of one to three with no space in front (the space before a number is then a chunk of its own).
GPT4_STYLE_PATTERN = GPT2_PATTERN.replace("'(?:", "'(?i:").replace(r" ?\p{N}++", r"\p{N}{1,3}+")
_PRETOKENIZE_CASES = [
    "Hello world!", "I'll be there, don't wait.", "DON'T SHOUT, I'M HERE, WE'LL SEE",
    "She'S gone, You'Re late", "Year 2024: 1234567 apples", "pi is 3.14159, e is 2.71828",
    "a   b\n\n  c  ", "x²+y² = ½ of ٣٤٥٦", "tab\there 42x7 $1,000,000", "",
    "naïve café 生きるべきか 🙂 ok", "  leading and trailing  ",
]


def check_3_1(pretokenize: Callable[[str], list[str]]) -> None:
    """pretokenize(text) -> GPT-2's chunks, but contractions in any case and digits by 1-3."""
    ex = "3.1"
    ref = regex.compile(GPT4_STYLE_PATTERN)
    gpt2 = regex.compile(GPT2_PATTERN)

    def run(text: str) -> list[str]:
        got = call(ex, pretokenize, text)
        if not isinstance(got, (list, tuple)) or not all(isinstance(c, str) for c in got):
            fail(ex, f"return a list of strings (the chunks), got {type(got).__name__}")
        if "".join(got) != text:
            fail(ex, f"the chunks of {text!r} do not join back to it: {list(got)}. A pre-tokenizer "
                     "only cuts the text; every character must be in exactly one chunk.")
        return list(got)

    if run("Hello world!") != ["Hello", " world", "!"]:
        fail(ex, f"'Hello world!' should give ['Hello', ' world', '!'] as with GPT-2, got "
                 f"{run('Hello world!')}: the space belongs to the word after it.")
    if (g := run("a   b")) != ["a", "  ", " b"]:
        fail(ex, f"'a   b' should give ['a', '  ', ' b'], got {g}: a run of spaces keeps all but "
                 "its last space, which joins the next word (GPT-2's whitespace rules).")
    if (g := run("DON'T")) != ["DON", "'T"]:
        fail(ex, f"\"DON'T\" should give ['DON', \"'T\"], got {g}: contractions must match in "
                 "any case, 'T as well as 't.")
    if (g := run("1234567")) == ["1234567"]:
        fail(ex, "'1234567' came back as one chunk: digits go in groups of at most three, "
                 "['123', '456', '7'].")
    if (g := run("1234567")) == ["1", "234", "567"]:
        fail(ex, f"'1234567' gave {g}: group from the left, as a regex scans, ['123', '456', '7'].")
    if (g := run("in 2024")) != ["in", " ", "202", "4"]:
        hint = (" The space before a number is its own chunk: no optional space in front of the "
                "digits.") if g and g[-2:] != ["202", "4"] or " 202" in g else ""
        fail(ex, f"'in 2024' should give ['in', ' ', '202', '4'], got {g}.{hint}")
    if (g := run("x² ½")) != ref.findall("x² ½"):
        fail(ex, f"'x² ½' should give {ref.findall('x² ½')}, got {g}: ² and ½ are number "
                 "characters too (Unicode category N), not only 0-9.")
    for text in _PRETOKENIZE_CASES:
        if (g := run(text)) != (want := ref.findall(text)):
            same = " (that is GPT-2's split, unchanged)" if g == gpt2.findall(text) else ""
            fail(ex, f"{text!r} should give {want}, got {g}{same}")
    passed(ex, f"GPT-2's split with both changes on {len(_PRETOKENIZE_CASES) + 7} texts: "
               "contractions in any case, digits by three, lossless.")


def check_3_2(train_bpe: Callable[[str, int, list[str]], dict]) -> None:
    """train_bpe(text, num_merges, specials) -> {pair: new id}, the companion's merges, in order."""
    ex = "3.2"

    def run(text: str, n: int, specials: list[str] | None = None) -> dict:
        got = call(ex, train_bpe, text, n, list(specials or []))
        if not isinstance(got, Mapping):
            fail(ex, f"return a dict of (id, id) -> new id, got {type(got).__name__}")
        return {tuple(int(i) for i in p): int(v) for p, v in got.items()}

    got = run("aaabdaaabac", 3)
    want = {(97, 97): 256, (256, 97): 257, (257, 98): 258}
    if got and min(got.values()) != 256:
        fail(ex, f"new ids start at 256, right after the 256 byte values; yours start at "
                 f"{min(got.values())}")
    if (97, 97) in got and (256, 97) not in got:
        fail(ex, f"for 'aaabdaaabac' expected {want}, got {got}. After each merge, count the pairs "
                 "again on the merged chunks: the second merge (256, 97) contains the new token.")
    if got != want:
        fail(ex, f"for 'aaabdaaabac' and 3 merges expected {want}, got {got}")
    if (g := run("ab cd", 1)) != {(97, 98): 256}:
        fail(ex, f"in 'ab cd' every pair occurs once; a tie goes to the pair seen first, (97, 98). "
                 f"Got {g}")
    if (g := run("ab", 5)) != {(97, 98): 256}:
        fail(ex, f"'ab' has one pair, so training stops after one merge; got {g}")
    text = load_text("tinyshakespeare")[:3_000]
    got, want = run(text, 40), BPETokenizer.train(text, 256 + 40).merges
    if any(p[1] == 32 for p in got):
        fail(ex, "a merge ends in a space, such as (101, 32) for 'e ': pairs must not cross chunk "
                 "boundaries. Cut the text with GPT2_PATTERN first and merge inside each chunk.")
    if got != want:
        mine, theirs = sorted(got, key=got.get), sorted(want, key=want.get)
        pairs = enumerate(zip(mine, theirs))
        k = next((i for i, (a, b) in pairs if a != b), min(len(mine), len(theirs)))
        fail(ex, f"on 3,000 characters of Shakespeare, 40 merges: your merge {k} is "
                 f"{mine[k] if k < len(mine) else None}, the companion's "
                 f"{theirs[k] if k < len(theirs) else None}")
    eot = "<|endoftext|>"
    docs = eot.join(["<|a|> <|b|>"] * 3 + [text[:1_000]] + ["||<< <|endoftext|"] * 3)
    got = run(docs, 30, [eot])
    want = BPETokenizer.train(docs, 256 + 30 + 1, special_tokens=[eot]).merges
    if got != want:  # plain text passed above, so the specials are what went wrong
        fail(ex, f"on documents joined by {eot}, your 30 merges differ from the companion's. "
                 "Cut the special tokens out of the text before pre-tokenizing: their characters "
                 "must never take part in a merge.")
    passed(ex, "the textbook case, ties, early stop, 40 merges on Shakespeare and 30 around "
               "special tokens, identical to BPETokenizer.train.")


def check_3_3(encode: Callable[[str, dict, dict], list[int]]) -> None:
    """encode(text, merges, specials) -> ids: specials as one id, chunks merged by lowest rank."""
    ex = "3.3"
    eot = "<|endoftext|>"
    corpus = load_text("tinyshakespeare")[:20_000]
    tok = BPETokenizer.train(corpus, 256 + 200 + 1, special_tokens=[eot])

    def run(text: str) -> list[int]:
        got = call(ex, encode, text, dict(tok.merges), dict(tok.special_tokens))
        if not isinstance(got, (list, tuple)):
            fail(ex, f"return a list of ids, got {type(got).__name__}")
        return [int(i) for i in got]

    if (g := run("")) != []:
        fail(ex, f"empty text has no ids, got {g}")
    word = "Before the"
    if (g := run(word)) != (want := tok.encode(word)):
        fail(ex, f"{word!r} should be {want}, got {g}. Merge the pair of lowest rank (smallest new "
                 "id) first, and repeat until no pair present has a merge.")
    word = "know'st thou"  # GPT2_PATTERN cuts 'know', "'s", 't', ' thou'
    if (g := run(word)) != (want := tok.encode(word)):
        fail(ex, f"{word!r} should be {want}, got {g}. Cut the text into GPT2_PATTERN chunks "
                 "first: merges never cross a chunk boundary, here between 's and t.")
    if (g := run(f"a{eot}b")) != (want := tok.encode(f"a{eot}b", allowed_special="all")):
        hint = (" The special token must become its one id, "
                f"{tok.special_tokens[eot]}, not bytes.") if len(g) > 3 else ""
        fail(ex, f"'a{eot}b' should be {want}, got {g}.{hint}")
    # Two specials, one a prefix of the other, listed shortest first: the longer must win
    specials = {eot: tok.special_tokens[eot], "<|a|>": 1000, "<|a|>x": 1001}
    got = call(ex, encode, "<|a|>x<|a|>y", dict(tok.merges), specials)
    if not isinstance(got, (list, tuple)):
        fail(ex, f"return a list of ids, got {type(got).__name__}")
    if (g := [int(i) for i in got]) != (want := [1001, 1000, *tok.encode("y")]):
        fail(ex, f"with specials '<|a|>' (1000) and '<|a|>x' (1001), '<|a|>x<|a|>y' should be "
                 f"{want}, got {g}. Where two specials start at the same place the longer one "
                 "wins: try them longest first.")
    for text in (corpus[5_000:5_600], f"end{eot}{eot}start  many   spaces\n\n", "naïve 生き 🙂 42"):
        if (g := run(text)) != (want := tok.encode(text, allowed_special="all")):
            k = next((i for i, (a, b) in enumerate(zip(g, want)) if a != b), min(len(g), len(want)))
            fail(ex, f"on {text[:40]!r}... your ids differ from the companion's at position {k}: "
                     f"{g[k:k + 4]} vs {want[k:k + 4]}")
    passed(ex, "identical ids to BPETokenizer.encode(allowed_special='all') on words, specials "
               "(the longer of two overlapping ones first), "
               "Shakespeare, whitespace and Unicode.")


def check_3_4(
    sliding_windows: Callable[[list[int], int, int], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """sliding_windows(ids, T, stride) -> (x, y): int64 (n, T), window k at k * stride."""
    ex = "3.4"

    def run(ids: list[int], t: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
        got = call(ex, sliding_windows, list(ids), t, stride)
        if not (isinstance(got, tuple) and len(got) == 2):
            fail(ex, "return a pair (x, y) of tensors")
        return as_tensor(ex, got[0], "x"), as_tensor(ex, got[1], "y")

    ids = list(range(10))
    x, y = run(ids, 4, 2)
    want_x = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])
    if x.dtype != torch.long or y.dtype != torch.long:
        fail(ex, f"x and y should be int64 token ids (embedding lookups need them), got {x.dtype} "
                 f"and {y.dtype}")
    if x.shape[1:] != (4,) or y.shape != x.shape:
        fail(ex, f"x and y should both have shape (n_windows, 4) for context_length=4, got "
                 f"{tuple(x.shape)} and {tuple(y.shape)}")
    if torch.equal(y, x):
        fail(ex, "y equals x: the target is the input shifted one token to the right.")
    if x.shape[0] > 3:
        fail(ex, f"for 10 ids, T=4, stride 2 expect 3 windows (starts 0, 2, 4), got {x.shape[0]}: "
                 "a window whose target runs past the end must be left out.")
    if not torch.equal(x, want_x) or not torch.equal(y, want_x + 1):
        fail(ex, f"for ids 0..9, T=4, stride 2 expected x = {want_x.tolist()} and y = x + 1, got "
                 f"x = {x.tolist()}, y = {y.tolist()}")
    # The boundary: with 9 ids, T=4, stride 4, the window at 4 needs ids 4..8, and 8 is the last.
    x, _ = run(list(range(9)), 4, 4)
    if x.shape[0] == 1:
        fail(ex, "you dropped the last window: for 9 ids, T=4, stride 4 the window starting at 4 "
                 "still fits (its target ends at id 8, the last one).")
    if x.shape[0] != 2:
        fail(ex, f"for 9 ids, T=4, stride 4 expect 2 windows (starts 0 and 4), got {x.shape[0]}")
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 50, (101,), generator=g).tolist()
    for t, stride in ((8, 8), (8, 3), (4, 4), (5, 20)):
        x, y = run(data, t, stride)
        ref = SlidingWindowDataset(data, t, stride)
        rx = torch.stack([ref[i][0] for i in range(len(ref))])
        ry = torch.stack([ref[i][1] for i in range(len(ref))])
        if x.shape != rx.shape or not torch.equal(x, rx) or not torch.equal(y, ry):
            fail(ex, f"on 101 random ids with T={t}, stride={stride} expected {tuple(rx.shape)} "
                     f"windows matching SlidingWindowDataset, got {tuple(x.shape)}")
    try:
        sliding_windows(list(range(4)), 4, 1)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001
        fail(ex, f"4 ids cannot fill one window of T=4 plus its target: raise ValueError, not "
                 f"{type(err).__name__}")
    else:
        fail(ex, "4 ids cannot fill one window of T=4 plus its shifted target: raise ValueError.")
    passed(ex, "the hand-worked case, the boundary window, and SlidingWindowDataset at three "
               "strides; too-short input is rejected.")
