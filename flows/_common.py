"""What every flow module needs the same way: retry rule, store, tokens, artifact keys, throttle.

Kept here so the flows stay thin and agree with each other: the same transient-only retry
condition, the same ``store``/``store_block`` rule, the same token fallback, the same
artifact-key slugs and the same progress throttle (at most every 2 % or 15 s).
"""

from __future__ import annotations

import re
import time
from typing import Any

from comfyfleet.errors import is_transient
from comfyfleet.sources import Tokens
from comfyfleet.store import ObjectStore, open_store

PROGRESS_EVERY_PCT = 2.0
PROGRESS_EVERY_S = 15.0


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry only what :func:`comfyfleet.errors.is_transient` allows."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the failure we are asked to judge
        return is_transient(exc)
    return False


def open_flow_store(store: str | None, store_block: str | None) -> ObjectStore:
    """The store a flow names: a ``comfyfleet-store`` block, else a URI (else the default)."""
    if store_block:
        from blocks import open_store_block

        return open_store_block(store_block)
    return open_store(store)


def load_tokens(tokens_block: str | None) -> Tokens:
    """Source tokens from a ``comfyfleet-source-tokens`` block, else from the environment."""
    if not tokens_block:
        return Tokens.from_env()
    from blocks import SourceTokens, load

    block = load(SourceTokens, tokens_block)
    return block.tokens()


def artifact_key(prefix: str, name: str, *, fallback: str = "") -> str:
    """``prefix-<slug of name>`` as Prefect accepts keys (lowercase, dashes, 100 chars).

    A name with nothing left to slug gives ``prefix-<fallback>``, or ``prefix`` alone.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or fallback
    return f"{prefix}-{slug}"[:100] if slug else prefix


class ProgressThrottle:
    """Lets a progress update through at most every ``PROGRESS_EVERY_PCT`` points or
    ``PROGRESS_EVERY_S`` seconds; a forced (final) one always passes. Not thread-safe:
    callers hold their own lock."""

    def __init__(self, last_pct: float = -100.0, last_t: float = 0.0) -> None:
        self.last_pct = last_pct
        self.last_t = last_t

    def due(self, pct: float, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and (
            pct - self.last_pct < PROGRESS_EVERY_PCT and now - self.last_t < PROGRESS_EVERY_S
        ):
            return False
        self.last_pct, self.last_t = pct, now
        return True
