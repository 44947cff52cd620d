"""Self-checks for chapter 4's exercises.

Token plus position embeddings, the sinusoidal table, RoPE at any position, Llama 3's scaling.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..positional import (RotaryEmbedding, rope_frequencies, rotate_half,
                          scaled_rope_frequencies, sinusoidal_encoding)
from ._core import as_tensor, call, fail, passed

__all__ = ["check_4_1", "check_4_2", "check_4_3", "check_4_4"]


def check_4_1(embed: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    """embed(ids (B, T), tok_table (V, C), pos_table (P, C)) -> (B, T, C) embeddings.

    The result is tok_table[ids] + pos_table[:T].
    """
    ex = "4.1"
    g = torch.Generator().manual_seed(4)
    V, P, C = 11, 6, 4
    tok, pos = torch.randn(V, C, generator=g), torch.randn(P, C, generator=g)
    ids = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    got = as_tensor(ex, call(ex, embed, ids, tok, pos), "embed's result")
    want = tok[ids] + pos[: ids.shape[1]]
    if tuple(got.shape) != tuple(want.shape):
        fail(ex, f"for ids of shape (B=2, T=5) and width C={C} expected shape (2, 5, {C}), got "
                 f"{tuple(got.shape)}")
    if torch.allclose(got, tok[ids]):
        fail(ex, "your result is the token embeddings alone: add the position embedding of each "
                 "column t.")
    if torch.allclose(got, tok[ids] + pos[ids % P]):
        fail(ex, "you looked positions up by token id; the position of ids[b, t] is t, whatever "
                 "the token is.")
    if torch.allclose(got, tok[ids] + pos[: ids.shape[0], None]):
        fail(ex, "you added position b (the batch row) to every token; position is the column "
                 "index t.")
    if not torch.allclose(got, want, atol=1e-6):
        fail(ex, "wrong values: each ids[b, t] should become tok_table[ids[b, t]] + pos_table[t].")
    # T == P is the last length that fits: an off-by-one (T >= P) refuses it.
    full = torch.arange(P)[None] % V  # (1, P)
    try:
        exact = embed(full, tok, pos)
    except NotImplementedError:
        fail(ex, "not implemented yet: replace the `raise NotImplementedError(...)` line with your "
                 "code.")
    except ValueError:
        fail(ex, f"a sequence of exactly {P} tokens fits a {P}-row position table (positions "
                 f"0..{P - 1}); only T > P must raise. Is your test off by one?")
    exact = as_tensor(ex, exact, "embed's result")
    if tuple(exact.shape) != (1, P, C) or not torch.allclose(exact, tok[full] + pos, atol=1e-6):
        fail(ex, f"a sequence of exactly {P} tokens should use all {P} position rows, "
                 "tok_table[ids] + pos_table.")
    one = as_tensor(ex, call(ex, embed, ids[:1, :1], tok, pos), "embed's result")
    if not torch.allclose(one, tok[ids[:1, :1]] + pos[:1], atol=1e-6):
        fail(ex, "a single token (B=1, T=1) should get tok_table[id] + pos_table[0].")
    try:
        embed(torch.zeros(1, P + 1, dtype=torch.long), tok, pos)
    except ValueError:
        pass
    except NotImplementedError:
        fail(ex, "not implemented yet: replace the `raise NotImplementedError(...)` line with your "
                 "code.")
    except Exception as err:  # noqa: BLE001
        fail(ex, "a sequence longer than the position table should raise ValueError, got "
                 f"{type(err).__name__}: {err}")
    else:
        fail(ex, f"a sequence of {P + 1} tokens with a {P}-row position table must raise "
                 "ValueError, not broadcast or slice silently.")
    passed(ex, "batched lookup, positions by column, one token, and a context overflow all behave.")


def check_4_2(sinusoidal: Callable[[int, int], torch.Tensor]) -> None:
    """sinusoidal(context_length, d_model) -> (context_length, d_model) table.

    Sine and cosine at interleaved dims.
    """
    ex = "4.2"
    got = as_tensor(ex, call(ex, sinusoidal, 50, 16), "sinusoidal(50, 16)").float()
    want = sinusoidal_encoding(50, 16)
    if tuple(got.shape) == (16, 50):
        fail(ex, "your table is transposed: rows are positions, columns are dimensions, shape "
                 "(50, 16).")
    if tuple(got.shape) != (50, 16):
        fail(ex, f"sinusoidal(50, 16) should have shape (50, 16), got {tuple(got.shape)}")
    if torch.allclose(got[:, 0::2], want[:, 1::2], atol=1e-4) and torch.allclose(
        got[:, 1::2], want[:, 0::2], atol=1e-4
    ):
        fail(ex, "sine and cosine are swapped: even dimensions 2i hold the sine, odd 2i+1 the "
                 "cosine.")
    if torch.allclose(got[0], torch.zeros(16)):
        fail(ex, "position 0 is all zeros: the odd (cosine) dimensions should be cos(0) = 1.")
    # a common slip: i instead of 2i in the exponent
    freq_i = 10000.0 ** (-torch.arange(8).float() / 16)
    slip = torch.stack([torch.arange(50).float()[:, None] * freq_i] * 2, -1)
    slip = torch.stack((slip[..., 0].sin(), slip[..., 1].cos()), -1).flatten(1)
    if torch.allclose(got, slip, atol=1e-4):
        fail(ex, "the frequencies are 10000^(-i/d); the formula has 10000^(-2i/d) for pair i "
                 "(dimensions 2i, 2i+1).")
    if not torch.allclose(got, want, atol=1e-4):
        bad = (got - want).abs().argmax().item()
        p, d = divmod(bad, 16)
        fail(ex, f"wrong value at position {p}, dimension {d}: expected {want[p, d]:.4f}, got "
                 f"{got[p, d]:.4f}")
    small = as_tensor(ex, call(ex, sinusoidal, 1, 2), "sinusoidal(1, 2)").float()
    if not torch.allclose(small, torch.tensor([[0.0, 1.0]])):
        fail(ex, f"sinusoidal(1, 2) is [[sin 0, cos 0]] = [[0, 1]], got {small.tolist()}")
    passed(ex, "the table matches the formula at 50 positions x 16 dimensions and in the 1 x 2 "
               "case.")


def _rope_want(x: torch.Tensor, theta: float, start_pos: int = 0,
               positions: torch.Tensor | None = None) -> torch.Tensor:
    """The companion's answer for a (T, D) x."""
    T, D = x.shape
    top = start_pos + (T if positions is None else int(positions.max()) + 1)
    return RotaryEmbedding(D, top, theta)(x[None, None], start_pos, positions)[0, 0]


def check_4_3(rope: Callable[..., torch.Tensor]) -> None:
    """rope(x (T, D), theta, start_pos=0, positions=None) -> x with its pairs (i, i + D/2) rotated.

    Row t sits at position start_pos + t, or start_pos + positions[t] when positions is given.
    """
    ex = "4.3"
    g = torch.Generator().manual_seed(43)
    T, D = 12, 8
    x = torch.randn(T, D, generator=g)
    got = as_tensor(ex, call(ex, rope, x.clone(), 10000.0), "rope(x)").float()
    want = _rope_want(x, 10000.0)
    if tuple(got.shape) != (T, D):
        fail(ex, f"rope(x) should keep x's shape ({T}, {D}), got {tuple(got.shape)}")
    if torch.allclose(got, x):
        fail(ex, "nothing changed: row t must be rotated by angle t * theta_i in every pair.")
    # The interleaved layout (2i, 2i+1) of the RoFormer paper: right idea, different pairing.
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    inter = torch.empty_like(x)
    inter[:, perm] = _rope_want(x[:, perm], 10000.0)
    if torch.allclose(got, inter, atol=1e-5):
        fail(ex, "you paired dimensions (2i, 2i+1); this course (like Hugging Face Llama) pairs i "
                 "with i + D/2.")
    backwards = RotaryEmbedding(D, T)
    flipped = x * backwards.cos[:T] - rotate_half(x) * backwards.sin[:T]
    if torch.allclose(got, flipped, atol=1e-5):
        fail(ex, "you rotated the wrong way: (a, b) -> (a cos - b sin, b cos + a sin), i.e. x*cos "
                 "+ rotate_half(x)*sin.")
    if not torch.allclose(got[0], x[0], atol=1e-5):
        fail(ex, "row 0 (position 0) must come back unchanged: its angle is 0.")
    if not torch.allclose(got.norm(dim=-1), x.norm(dim=-1), atol=1e-4):
        fail(ex, "a rotation keeps every row's length, but yours changed it; check the cos/sin "
                 "pairing.")
    if not torch.allclose(got, want, atol=1e-5):
        fail(ex, "close, but the angles are off: pair i of row t turns by t * theta ** "
                 "(-2 * i / D).")
    other = as_tensor(ex, call(ex, rope, x.clone(), 100.0), "rope(x, theta=100)").float()
    if not torch.allclose(other, _rope_want(x, 100.0), atol=1e-5):
        fail(ex, "right for theta=10000 but not for theta=100: use the theta argument, don't "
                 "hard-code it.")
    # A KV cache feeds new tokens after `start_pos` cached ones.
    for start in (5, 30, 1):
        shifted = as_tensor(ex, call(ex, rope, x.clone(), 10000.0, start_pos=start),
                            f"rope(x, start_pos={start})").float()
        if torch.allclose(shifted, got, atol=1e-5):
            fail(ex, f"rope(x, start_pos={start}) gave the same as start_pos=0: row t sits at "
                     "position start_pos + t.")
        if torch.allclose(shifted, _rope_want(x, 10000.0, start - 1), atol=1e-5):
            fail(ex, f"with start_pos={start} your rows sit one position early: row 0 is at "
                     f"position {start}, not {start - 1}.")
        if not torch.allclose(shifted, _rope_want(x, 10000.0, start), atol=1e-5):
            fail(ex, f"wrong for start_pos={start}: row t should turn as a token at position "
                     f"{start} + t does.")
    # Packed documents restart their positions at 0.
    packed = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3])
    docs = as_tensor(ex, call(ex, rope, x.clone(), 10000.0, positions=packed.clone()),
                     "rope(x, positions=...)").float()
    if torch.allclose(docs, got, atol=1e-5):
        fail(ex, "rope(x, positions=[0, 1, 2, 3, 4, 0, 1, ...]) ignored positions: row t must "
                 "sit at positions[t].")
    if not torch.allclose(docs, _rope_want(x, 10000.0, 0, packed), atol=1e-5):
        fail(ex, "wrong for explicit positions: row t should turn as a token at position "
                 "positions[t] does.")
    both = as_tensor(ex, call(ex, rope, x.clone(), 10000.0, start_pos=7, positions=packed.clone()),
                     "rope(x, start_pos=7, positions=...)").float()
    if torch.allclose(both, docs, atol=1e-5):
        fail(ex, "with both start_pos=7 and positions, row t sits at start_pos + positions[t]; "
                 "yours ignored start_pos.")
    if not torch.allclose(both, _rope_want(x, 10000.0, 7, packed), atol=1e-5):
        fail(ex, "with both start_pos and positions, row t should sit at start_pos + "
                 "positions[t].")
    passed(ex, "matches the companion's RotaryEmbedding at start offsets and explicit positions, "
               "keeps lengths, honours theta.")


def check_4_4(llama3_frequencies: Callable[..., torch.Tensor]) -> None:
    """llama3_frequencies(inv_freq (D/2,), factor, low, high, original_context) -> (D/2,) speeds."""
    ex = "4.4"
    cases = [(128, 500_000.0, 8.0, 1.0, 4.0, 8192), (64, 10_000.0, 4.0, 2.0, 8.0, 2048)]

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.allclose(a, b.double(), rtol=1e-4)

    for n, (d, theta, factor, low, high, L) in enumerate(cases):
        inv = rope_frequencies(d, theta)
        config = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                  "high_freq_factor": high, "original_max_position_embeddings": L}
        want = scaled_rope_frequencies(d, theta, config)[0]
        args = f"(factor={factor:g}, low_freq_factor={low:g}, high_freq_factor={high:g}, " \
               f"original_context={L})"
        got = as_tensor(ex, call(ex, llama3_frequencies, inv.clone(), factor, low, high, L),
                        "llama3_frequencies' result").double()
        if tuple(got.shape) != (d // 2,):
            fail(ex, f"for {d // 2} pairs expected shape ({d // 2},), got {tuple(got.shape)}")
        if n and not torch.allclose(got, want.double(), rtol=1e-4):
            fail(ex, f"right for Llama 3.1's numbers but wrong for {args}: use the arguments, "
                     "don't hard-code them.")
        if close(got, inv):
            fail(ex, "nothing changed: the slow pairs must be divided by factor.")
        if close(got, inv * factor):
            fail(ex, "your speeds went up: scaling to a longer context divides speeds by factor.")
        if close(got, inv / factor):
            fail(ex, "you slowed every pair: that is position interpolation. Pairs with "
                     "wavelengths shorter than L / high_freq_factor keep their speed.")
        wavelength = 2 * torch.pi / inv
        short, long = wavelength < L / high, wavelength > L / low
        mid = ~short & ~long
        if not close(got[short], inv[short]):
            why = (", but you divided them by factor: are the two zones swapped?"
                   if close(got[short], inv[short] / factor) else ".")
            fail(ex, f"the fast pairs (wavelength < L / high_freq_factor = {L / high:g}) must keep "
                     f"their speed{why}")
        if not close(got[long], inv[long] / factor):
            fail(ex, f"the slow pairs (wavelength > L / low_freq_factor = {L / low:g}) must be "
                     "divided by factor.")
        if close(got[mid], inv[mid]) or close(got[mid], inv[mid] / factor):
            fail(ex, "the pairs between the two edges must blend the kept and the divided speed, "
                     "not take one of them.")
        turns = L / wavelength[mid]
        keep = (turns - low) / (high - low)
        if close(got[mid], keep * inv[mid] / factor + (1 - keep) * inv[mid]):
            fail(ex, "the blend runs the wrong way: next to the short edge a pair should be "
                     "almost kept, next to the long edge almost divided.")
        if not close(got, want):
            bad = int((got - want.double()).abs().argmax())
            fail(ex, f"wrong speed for pair {bad} with {args}: expected {float(want[bad]):.6g}, "
                     f"got {float(got[bad]):.6g}. The blend's weight is linear in L / wavelength.")
    passed(ex, "matches the companion's llama3 scaling for Llama 3.1's numbers and another set; "
               "fast pairs kept, slow divided, the middle blended.")
