"""Prefect blocks for comfyfleet: register them with ``prefect block register -m blocks``.

Load a saved one with :func:`load` (``load(ComfyfleetStore, "mirror")``): every flow and
``--store-block`` does, so a missing block fails the same way everywhere.
"""

from __future__ import annotations

from blocks.comfyui import ComfyUIEndpoint
from blocks.loading import block_slug, load
from blocks.store import ComfyfleetStore
from blocks.tokens import FalCredentials, SourceTokens
from blocks.vast import VastCredentials

__all__ = [
    "block_slug",
    "load",
    "ComfyUIEndpoint",
    "ComfyfleetStore",
    "FalCredentials",
    "SourceTokens",
    "VastCredentials",
]
