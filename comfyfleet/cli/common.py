"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from comfyfleet.units import parse_number


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
    """An argparse ``type`` that parses ``kind`` and refuses ``nan``/``inf`` and values below
    ``minimum`` (the one check: ``comfyfleet.units.parse_number``)."""

    def parse(text: str) -> int | float:
        try:
            return parse_number(text, kind, minimum=minimum, inclusive=inclusive)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


non_negative_int = _number(int, minimum=0, inclusive=True)
positive_int = _number(int, minimum=1, inclusive=True)
non_negative_float = _number(float, minimum=0, inclusive=True)
positive_float = _number(float, minimum=0, inclusive=False)
