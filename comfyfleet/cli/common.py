"""Options and output helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
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
