"""Turn ``--store URI`` / ``--store-block NAME`` into an ``ObjectStore``.

Block loading imports Prefect (and the ``blocks`` package) only in that branch, so commands
run with ``--store`` or the default store never pay for it.
"""

from __future__ import annotations

import argparse

from comfyfleet.errors import StoreConfigError
from comfyfleet.store import ObjectStore, open_store


def resolve_store(args: argparse.Namespace) -> ObjectStore:
    """The store the command line names (``--store-block`` wins over ``--store``)."""
    block_name = getattr(args, "store_block", None)
    if block_name:
        return load_store_block(block_name)
    return open_store(getattr(args, "store", None))


def load_store_block(name: str) -> ObjectStore:
    """Open the store of the saved ``comfyfleet-store`` block ``name`` (or ``slug/name``)."""
    try:
        from blocks import open_store_block
    except ImportError as exc:
        raise StoreConfigError(
            f"cannot load store block {name!r}: the 'blocks' package is not importable ({exc})",
            hint="install comfyfleet with its blocks (pip install -e .) or use --store URI",
        ) from exc
    return open_store_block(name)
