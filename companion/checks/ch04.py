"""Self-checks for chapter 4's exercises.

Token plus position embeddings, the sinusoidal table, interleaved RoPE and the q/k weight
permutation to the rotate-half layout, and YaRN's scaling as the paper defines it.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..positional import rope_frequencies, scaled_rope_frequencies, sinusoidal_encoding
from ._core import as_scalar, as_tensor, call, fail, passed

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


def _interleaved(x: torch.Tensor, theta: float, start_pos: int = 0,
                 backwards: bool = False, pairing: str = "interleaved") -> torch.Tensor:
    """RoPE on (T, D) with pairs (2i, 2i+1) (or a classic slip, for diagnosis)."""
    T, D = x.shape
    pos = torch.arange(start_pos, start_pos + T, dtype=torch.float64)
    angles = pos[:, None] * theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    cos, sin = angles.cos(), (-1 if backwards else 1) * angles.sin()
    first, second = (slice(0, D, 2), slice(1, D, 2)) if pairing == "interleaved" else (
        slice(0, D // 2), slice(D // 2, D))
    a, b = x.double()[:, first], x.double()[:, second]
    out = torch.empty(T, D, dtype=torch.float64)
    out[:, first], out[:, second] = a * cos - b * sin, b * cos + a * sin
    return out


def _rotate_half_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """The companion's rotate-half RoPE on (T, D), in float64."""
    return _interleaved(x, theta, pairing="half")


def check_4_3(rope_interleaved: Callable[..., torch.Tensor],
              permute_qk: Callable[[torch.Tensor, int], torch.Tensor]) -> None:
    """rope_interleaved(x (T, D), theta, start_pos) rotates pairs (2i, 2i+1).

    permute_qk(w (H*D, d_model), n_heads) reorders each head's rows so that rotate-half RoPE on
    x @ w'.T scores exactly as interleaved RoPE on x @ w.T.
    """
    ex = "4.3"
    g = torch.Generator().manual_seed(43)
    T, D = 12, 8
    x = torch.randn(T, D, generator=g, dtype=torch.float64)

    def rotated(theta: float = 10000.0, start: int = 0) -> torch.Tensor:
        got = call(ex, rope_interleaved, x.clone(), theta, start)
        got = as_tensor(ex, got, f"rope_interleaved(x, {theta:g}, {start})").double()
        if tuple(got.shape) != (T, D):
            fail(ex, f"rope_interleaved(x) should keep x's shape ({T}, {D}), got "
                     f"{tuple(got.shape)}")
        return got

    got = rotated()
    if torch.allclose(got, x, atol=1e-5):
        fail(ex, "nothing changed: row t must be rotated by angle t * theta_i in every pair.")
    if torch.allclose(got, _interleaved(x, 1e4, pairing="half"), atol=1e-5):
        fail(ex, "that is the rotate-half layout of the chapter (pairs i, i + D/2); here pair i is "
                 "the neighbours (2i, 2i + 1), as in the RoFormer paper and Meta's Llama code.")
    if torch.allclose(got, _interleaved(x, 1e4, backwards=True), atol=1e-5):
        fail(ex, "you rotated the wrong way: (a, b) -> (a cos - b sin, b cos + a sin).")
    if not torch.allclose(got[0], x[0], atol=1e-5):
        fail(ex, "row 0 (position 0) must come back unchanged: its angle is 0.")
    if not torch.allclose(got, _interleaved(x, 1e4), atol=1e-5):
        fail(ex, "close, but the angles are off: pair i (dimensions 2i, 2i+1) of row t turns by "
                 "t * theta ** (-2 * i / D).")
    if not torch.allclose(rotated(100.0), _interleaved(x, 100.0), atol=1e-5):
        fail(ex, "right for theta=10000 but not for theta=100: use the theta argument.")
    if not torch.allclose(rotated(10000.0, 7), _interleaved(x, 1e4, 7), atol=1e-5):
        fail(ex, "right from position 0 but not with start_pos=7: row t sits at position "
                 "start_pos + t.")

    # The weights: Meta's interleaved q projection, converted for rotate-half RoPE.
    H, d_model = 3, 10
    w = torch.randn(H * D, d_model, generator=g, dtype=torch.float64)
    xs = torch.randn(T, d_model, generator=g, dtype=torch.float64)
    got_w = as_tensor(ex, call(ex, permute_qk, w.clone(), H), "permute_qk(w, 3)").double()
    if tuple(got_w.shape) != tuple(w.shape):
        fail(ex, f"permute_qk must keep the weight's shape {tuple(w.shape)}, got "
                 f"{tuple(got_w.shape)}")
    if torch.equal(got_w, w):
        fail(ex, "the weight came back unchanged: its rows must be reordered.")
    if not torch.equal(got_w.sort(0).values, w.sort(0).values):
        fail(ex, "permute_qk must only reorder the rows of w, not change them.")
    # Head h of the converted weight must hold rows 2i of head h first, then rows 2i + 1.
    per_head = torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))
    want_w = w.view(H, D, d_model)[:, per_head].reshape(H * D, d_model)
    whole = torch.cat((torch.arange(0, H * D, 2), torch.arange(1, H * D, 2)))
    if torch.equal(got_w, w[whole]):
        fail(ex, "you reordered all H*D rows at once; the pairs live inside each head, so "
                 "reorder the D rows of every head separately (view the weight as "
                 "(H, D, d_model)).")
    inverse = torch.empty_like(per_head)
    inverse[per_head] = torch.arange(D)
    if torch.equal(got_w, w.view(H, D, d_model)[:, inverse].reshape(H * D, d_model)):
        fail(ex, "the rows moved the other way: in each head, rows 0, 2, 4, ... (every pair's "
                 "first coordinate) must come first, then rows 1, 3, 5, ....")
    if not torch.equal(got_w, want_w):
        fail(ex, "not the right order: after conversion, head h's row i is its old row 2i and "
                 "row D/2 + i its old row 2i + 1.")
    # What the conversion is for: the same attention scores, head by head.
    for h in range(H):
        q_meta = _interleaved(xs @ w[h * D:(h + 1) * D].T, 1e4)
        q_hf = _rotate_half_rope(xs @ got_w[h * D:(h + 1) * D].T, 1e4)
        if not torch.allclose(q_meta @ q_meta.T, q_hf @ q_hf.T, atol=1e-8):
            fail(ex, f"head {h}: the converted weight does not give the same scores.")
    passed(ex, "interleaved RoPE at any theta and start position, and a q/k weight converted to "
               "the rotate-half layout that gives the same scores in every head.")


def _yarn_paper(inv_freq: torch.Tensor, factor: float, L: int, alpha: float = 1.0,
                beta: float = 32.0, ramp: bool = True, swap: bool = False) -> torch.Tensor:
    """YaRN's speeds as the paper defines them (or a classic slip)."""
    turns = L * inv_freq.double() / (2 * math.pi)  # r = L / lambda
    gamma = ((turns - alpha) / (beta - alpha)).clamp(0, 1) if ramp else (turns > beta).double()
    if swap:
        gamma = 1 - gamma
    return (1 - gamma) * inv_freq.double() / factor + gamma * inv_freq.double()


def check_4_4(yarn_frequencies: Callable[..., tuple]) -> None:
    """yarn_frequencies(inv_freq (D/2,), factor, original_context, alpha, beta) -> (speeds, mscale).

    As in Peng et al. (2024): gamma(r) = clamp((r - alpha) / (beta - alpha), 0, 1) with
    r = L / lambda, speeds (1 - gamma) theta / s + gamma theta, and cos/sin scaled by
    0.1 ln s + 1.
    """
    ex = "4.4"
    cases = [(128, 500_000.0, 8.0, 8192, 1.0, 32.0), (64, 10_000.0, 4.0, 2048, 2.0, 16.0)]
    for n, (d, theta, factor, L, alpha, beta) in enumerate(cases):
        inv = rope_frequencies(d, theta)
        result = call(ex, yarn_frequencies, inv.clone(), factor, L, alpha, beta)
        if not isinstance(result, tuple) or len(result) != 2:
            fail(ex, "return two things: the (D/2,) speeds and the factor on cos and sin.")
        got = as_tensor(ex, result[0], "the speeds").double()
        mscale = as_scalar(ex, result[1], "the cos/sin factor")
        if tuple(got.shape) != (d // 2,):
            fail(ex, f"for {d // 2} pairs expected speeds of shape ({d // 2},), got "
                     f"{tuple(got.shape)}")
        want = _yarn_paper(inv, factor, L, alpha, beta)

        def close(other: torch.Tensor) -> bool:
            return torch.allclose(got, other, rtol=1e-4)

        if close(inv.double()):
            fail(ex, "no speed changed: pairs with fewer than alpha turns in the original context "
                     "must be divided by the factor.")
        if close(inv.double() / factor):
            fail(ex, "every speed was divided by the factor (position interpolation); pairs with "
                     "more than beta turns keep their speed.")
        if close(_yarn_paper(inv, factor, L, alpha, beta, swap=True)):
            fail(ex, "the ramp is the wrong way round: fast pairs (many turns) keep their speed, "
                     "slow pairs (few turns) are divided by the factor.")
        hf = scaled_rope_frequencies(d, theta, {"rope_type": "yarn", "factor": factor,
                                                "original_max_position_embeddings": L,
                                                "beta_fast": beta, "beta_slow": alpha})[0]
        if close(hf.double()):
            fail(ex, "that is the authors' code (and the chapter's build): a ramp over the pair "
                     "index with rounded edges. The paper's ramp is linear in the number of turns "
                     "r = L / lambda itself.")
        wavelength_slip = _yarn_paper(inv * 2 * math.pi, factor, L, alpha, beta) / (2 * math.pi)
        if close(wavelength_slip):
            fail(ex, "a pair's wavelength is 2 pi / theta tokens, so its turns in L tokens are "
                     "L theta / (2 pi), not L theta.")
        if not close(want):
            if n:
                fail(ex, f"right for the first case but not for factor={factor:g}, L={L}, "
                         f"alpha={alpha:g}, beta={beta:g}: use every argument.")
            fail(ex, "fast and slow pairs are right but the blend in between is not: gamma = "
                     "(r - alpha) / (beta - alpha), clamped to [0, 1].")
        right = 0.1 * math.log(factor) + 1
        if abs(mscale - 1.0) < 1e-9:
            fail(ex, "the factor on cos and sin is missing: YaRN scales both by 0.1 ln s + 1.")
        if abs(mscale - right ** 2) < 1e-6:
            fail(ex, "(0.1 ln s + 1)^2 is what the attention logits get; cos and sin, which "
                     "scale q and k each, get 0.1 ln s + 1.")
        if abs(mscale - right) > 1e-6:
            fail(ex, f"the cos/sin factor for s={factor:g} is 0.1 ln s + 1 = {right:.4f} "
                     f"(natural log), got {mscale:.4f}")
    passed(ex, "the paper's ramp in turns, the kept and interpolated ends, and the cos/sin factor "
               "0.1 ln s + 1, for Llama 3's shape and a second configuration.")
