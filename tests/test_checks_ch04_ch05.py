"""Chapter 5's check 5.3 (sharing K/V heads) passes on both idioms and fails with a specific hint on the stub
and plausible mistakes; the other chapter 4 and 5 checks are tested in test_checks_ch04.py and test_checks_ch05.py."""
from __future__ import annotations

import pytest

from companion.attention import repeat_kv
from companion.checks import check_5_3
from checkhelpers import stub, fails_with, passes


# --- 5.3 repeat KV heads ----------------------------------------------------------

@pytest.mark.parametrize("wrong, fragment", [
    (stub, "not implemented"),
    (lambda x, n: x.repeat(1, n, 1, 1), "tiled"),
    (lambda x, n: x, "expected shape"),
])
def test_check_5_3_catches_mistakes(wrong, fragment):
    fails_with(check_5_3, wrong, fragment)


def test_check_5_3_passes_on_both_idioms(capsys):
    passes(check_5_3, repeat_kv, capsys)
    passes(check_5_3, lambda x, n: x.repeat_interleave(n, dim=1), capsys)
