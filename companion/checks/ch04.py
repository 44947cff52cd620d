"""Self-checks for chapter 4's exercises.

Token plus position embeddings, the sinusoidal table, RoPE.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..positional import RotaryEmbedding, rotate_half, sinusoidal_encoding
from ._core import as_tensor, call, fail, passed

__all__ = ["check_4_1", "check_4_2", "check_4_3"]


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


def check_4_3(rope: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """rope(x (T, D), theta) -> x with row t's pairs (i, i + D/2) turned by t * theta^(-2i/D)."""
    ex = "4.3"
    g = torch.Generator().manual_seed(43)
    T, D = 12, 8
    x = torch.randn(T, D, generator=g)
    got = as_tensor(ex, call(ex, rope, x.clone(), 10000.0), "rope(x)").float()
    want = RotaryEmbedding(D, T)(x[None, None])[0, 0]
    if tuple(got.shape) != (T, D):
        fail(ex, f"rope(x) should keep x's shape ({T}, {D}), got {tuple(got.shape)}")
    if torch.allclose(got, x):
        fail(ex, "nothing changed: row t must be rotated by angle t * theta_i in every pair.")
    # The interleaved layout (2i, 2i+1) of the RoFormer paper: right idea, different pairing.
    perm = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    inter = torch.empty_like(x)
    inter[:, perm] = RotaryEmbedding(D, T)(x[:, perm][None, None])[0, 0]
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
    if not torch.allclose(
        other, RotaryEmbedding(D, T, theta=100.0)(x[None, None])[0, 0], atol=1e-5
    ):
        fail(ex, "right for theta=10000 but not for theta=100: use the theta argument, don't "
                 "hard-code it.")
    passed(ex, "matches the companion's RotaryEmbedding, keeps lengths, leaves position 0 alone, "
               "honours theta.")
