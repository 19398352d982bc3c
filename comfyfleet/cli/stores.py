"""Turn ``--store URI`` / ``--store-block NAME`` into an ``ObjectStore``.

Block loading imports Prefect (and the ``blocks`` package) only in that branch, so commands
run with ``--store`` or the default store never pay for it.
"""

from __future__ import annotations

import argparse
import os

from comfyfleet.errors import StoreConfigError
from comfyfleet.store import ObjectStore, open_store

STORE_BLOCK_SLUG = "comfyfleet-store"


def resolve_store(args: argparse.Namespace) -> ObjectStore:
    """The store the command line names (``--store-block`` wins over ``--store``)."""
    block_name = getattr(args, "store_block", None)
    if block_name:
        return load_store_block(block_name)
    return open_store(getattr(args, "store", None))


def load_store_block(name: str) -> ObjectStore:
    """Open the store of the saved ``comfyfleet-store`` block ``name`` (or ``slug/name``)."""
    short = name.removeprefix(f"{STORE_BLOCK_SLUG}/")
    where = os.environ.get("PREFECT_API_URL") or "the local Prefect database (PREFECT_HOME)"
    try:
        from blocks import ComfyfleetStore
    except ImportError as exc:
        raise StoreConfigError(
            f"cannot load store block {short!r}: the 'blocks' package is not importable ({exc})",
            hint="install comfyfleet with its blocks (pip install -e .) or use --store URI",
        ) from exc
    try:
        block = ComfyfleetStore.load(short, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        # Prefect answers a missing block with ValueError("Unable to find block document ...");
        # pydantic's ValidationError (a saved block that no longer validates) is one too.
        if "Unable to find block document" in str(exc):
            raise StoreConfigError(
                f"no {STORE_BLOCK_SLUG} block named {short!r} in {where}",
                hint="list blocks with `prefect block ls`; create one with "
                "ComfyfleetStore(...).save(NAME) after `prefect block register -m blocks`",
            ) from exc
        raise StoreConfigError(
            f"{STORE_BLOCK_SLUG} block {short!r} is invalid: {str(exc).splitlines()[0]}",
            hint="fix it in the Prefect UI or save it again",
        ) from exc
    except Exception as exc:  # the Prefect API itself failed (unreachable, refused, ...)
        raise StoreConfigError(
            f"cannot load {STORE_BLOCK_SLUG} block {short!r} from {where}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            hint="check PREFECT_API_URL and that the Prefect server is running, or use --store URI",
        ) from exc
    if not isinstance(block, ComfyfleetStore):
        raise StoreConfigError(f"{STORE_BLOCK_SLUG} block {short!r} did not load as a store block")
    return block.open()
