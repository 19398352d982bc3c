"""The command front: exit codes and behaviour shared by every command."""

from __future__ import annotations

import subprocess
import sys

from comfyfleet.cli import main


def test_closed_stdout_is_not_a_traceback() -> None:
    # `comfyfleet catalog list --json | head -1`: the reader goes away early.
    proc = subprocess.run(
        f"{sys.executable} -m comfyfleet catalog list --json | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_bad_input_is_one_error_line_a_hint_and_exit_2(capsys) -> None:  # type: ignore[no-untyped-def]
    code = main(["store", "check", "--store", "gopher://x"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: unknown store scheme 'gopher'")
    assert lines[1].startswith("hint: ")


def test_numeric_options_refuse_nonsense_before_doing_anything(capsys) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (["warmup", "--comfy-root", "/nonexistent", "--boot-timeout", "-2"], "must be > 0"),
        (["warmup", "--comfy-root", "/nonexistent", "--wait-lock", "-3"], "must be >= 0"),
        (["warmup", "--comfy-root", "/nonexistent", "--vram-gb", "abc"], "expected a number"),
        (["generate", "j.csv", "--comfy-url", "http://x", "--retries", "-1"], "must be >= 0"),
        (["generate", "j.csv", "--comfy-url", "http://x", "--queue-depth", "0"], "must be >= 1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def _leaf_commands() -> list[tuple[str, object]]:
    import argparse

    from comfyfleet.cli import build_parser

    found: list[tuple[str, object]] = []

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found.append((" ".join(path), parser))
        for action in subs:
            for name, child in action.choices.items():
                walk(child, (*path, name))

    walk(build_parser(), ())
    return found


def test_every_command_takes_json() -> None:
    """The README says every command takes --json (issue 9 item 17: validate and render
    did not)."""
    leaves = _leaf_commands()
    assert {"catalog validate", "render onstart", "render dockerfile"} <= {n for n, _ in leaves}
    missing = [
        name
        for name, parser in leaves
        if not any("--json" in a.option_strings for a in parser._actions)  # type: ignore[attr-defined]
    ]
    # `gateway` is a server that runs until stopped: it has no result document to print.
    assert missing == ["gateway"]
