"""The ``comfyfleet`` command: a thin front over the library.

Each command group lives in its own module with a ``register(subparsers)`` function; the
library raises ``ComfyfleetError`` and this module turns it into one clear message and a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from comfyfleet import __version__
from comfyfleet.errors import ComfyfleetError, ConfigError


def build_parser() -> argparse.ArgumentParser:
    from comfyfleet.cli import (
        catalog_cmd,
        gateway_cmd,
        generate_cmd,
        instances_cmd,
        lora_cmd,
        mirror_cmd,
        render_cmd,
        store_cmd,
        warmup_cmd,
    )

    parser = argparse.ArgumentParser(
        prog="comfyfleet",
        description="Mirror models to your bucket, warm up GPU instances, batch-drive ComfyUI.",
    )
    parser.add_argument("--version", action="version", version=f"comfyfleet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        catalog_cmd,
        store_cmd,
        mirror_cmd,
        lora_cmd,
        generate_cmd,
        warmup_cmd,
        render_cmd,
        instances_cmd,
        gateway_cmd,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2), --help and --version (exit 0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code: int = args.func(args)
    except ComfyfleetError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (`comfyfleet ... | head`): not an error of ours. Point stdout
        # at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
