"""Prefect blocks for comfyfleet: register them with ``prefect block register -m blocks``."""

from __future__ import annotations

from blocks.comfyui import ComfyUIEndpoint
from blocks.store import ComfyfleetStore
from blocks.tokens import FalCredentials, SourceTokens

__all__ = [
    "ComfyUIEndpoint",
    "ComfyfleetStore",
    "FalCredentials",
    "SourceTokens",
]
