"""Prefect blocks for comfyfleet: register them with ``prefect block register -m blocks``.

Load a saved one with :func:`load` (``load(ComfyfleetStore, "mirror")``), or open a saved
store with :func:`open_store_block`: every flow and ``--store-block`` does, so a missing
block fails the same way everywhere.
"""

from __future__ import annotations

from blocks.comfyui import ComfyUIEndpoint
from blocks.loading import block_slug, load
from blocks.store import ComfyfleetStore, open_store_block
from blocks.tokens import FalCredentials, SourceTokens
from blocks.vast import VastCredentials

__all__ = [
    "block_slug",
    "load",
    "open_store_block",
    "ComfyUIEndpoint",
    "ComfyfleetStore",
    "FalCredentials",
    "SourceTokens",
    "VastCredentials",
]
