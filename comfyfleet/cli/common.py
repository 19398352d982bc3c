"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def add_catalog_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="PATH",
        help="catalog file (repeatable); replaces the built-in catalog, pass both to combine",
    )


def add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--store",
        metavar="URI",
        help="s3://bucket/prefix or file:///path or a plain path "
        "(default: $COMFYFLEET_STORE, else ~/.comfyfleet/store)",
    )
    group.add_argument("--store-block", metavar="NAME", help="a saved comfyfleet-store block")


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _number(kind: type[int] | type[float], *, minimum: float, inclusive: bool) -> Any:
    """An argparse ``type`` that parses ``kind`` and refuses values below ``minimum``, and
    ``nan``/``inf`` (which ``float()`` accepts and every comparison would let through)."""
    relation = ">=" if inclusive else ">"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):  # nan compares false with everything: check first
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


non_negative_int = _number(int, minimum=0, inclusive=True)
positive_int = _number(int, minimum=1, inclusive=True)
non_negative_float = _number(float, minimum=0, inclusive=True)
positive_float = _number(float, minimum=0, inclusive=False)
