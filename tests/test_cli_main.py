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
