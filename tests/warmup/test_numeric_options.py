"""Every numeric option of every command refuses nan and inf (issue 9 item 12: ``--target-s
nan`` used to run and report "0.0 s of nan s")."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from comfyfleet.cli import build_parser, main


def _numeric_options(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """(subcommand path, flag, type name) of every option parsed as a number."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _numeric_options(sub, (*prefix, name))
        elif action.option_strings and action.type is not None:
            kind = getattr(action.type, "__name__", "")
            if kind in ("float", "int"):
                yield prefix, action.option_strings[-1], kind


NUMERIC = sorted(_numeric_options(build_parser()))
FLOATS = [(cmd, flag) for cmd, flag, kind in NUMERIC if kind == "float"]


def test_the_commands_have_float_options_to_check() -> None:
    assert (("warmup",), "--target-s") in FLOATS and len(FLOATS) >= 5


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize(
    ("command", "flag"), FLOATS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v
)
def test_float_options_refuse_nan_and_inf(
    command: tuple[str, ...], flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert flag in err and "finite number" in err, err


@pytest.mark.parametrize(("command", "flag", "kind"), NUMERIC, ids=lambda v: str(v))
def test_int_and_float_options_refuse_nan(
    command: tuple[str, ...], flag: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*command, f"{flag}=nan"]) == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e999"])
def test_the_shared_validators_refuse_nan_and_inf(value: str) -> None:
    from comfyfleet.cli import common

    for check in (common.non_negative_float, common.positive_float):
        with pytest.raises(argparse.ArgumentTypeError, match="finite number"):
            check(value)
    assert common.positive_float("2.5") == 2.5 and common.non_negative_float("0") == 0.0
