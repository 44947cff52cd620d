"""companion.utils: the command lines' shared parser turns a usage error into one line."""
from __future__ import annotations

import pytest

from companion import posttrain, train_cli
from companion.serve import cli as serve_cli
from companion.utils import OneLineErrorParser


def test_a_usage_error_is_one_error_line_and_exit_code_2(capsys):
    parser = OneLineErrorParser(prog="x")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n", "two"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "--n" in err


def test_the_three_command_lines_share_it():
    assert posttrain.OneLineErrorParser is train_cli.OneLineErrorParser is \
        serve_cli.OneLineErrorParser is OneLineErrorParser
