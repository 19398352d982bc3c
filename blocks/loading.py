"""``load(BlockType, name)``: the one way comfyfleet loads a saved block.

Every flow and every ``--store-block`` goes through it, so a missing, invalid or unreachable
block fails the same way everywhere: a :class:`comfyfleet.errors.BlockNotFound` (or
``ConfigError``) that names the block, its type and how to save it, never Prefect's raw
``ValueError``.
"""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block

from comfyfleet.config import env
from comfyfleet.errors import BlockNotFound, ConfigError

B = TypeVar("B", bound=Block)


def block_slug(block_type: type[Block]) -> str:
    """The block type's slug (``comfyfleet-store``...), as ``prefect block ls`` shows it."""
    return str(block_type.get_block_type_slug())


def _where() -> str:
    return env("PREFECT_API_URL") or "the local Prefect database (PREFECT_HOME)"


def load(block_type: type[B], name: str) -> B:
    """The saved block ``name`` (or ``slug/name``) of ``block_type``.

    Raises :class:`BlockNotFound` when no such block is saved, ``ConfigError`` when it is
    saved but no longer validates or when the Prefect API cannot be reached.
    """
    slug = block_slug(block_type)
    short = name.removeprefix(f"{slug}/")
    try:
        block = block_type.load(short, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        # Prefect answers a missing block with ValueError("Unable to find block document ...");
        # pydantic's ValidationError (a saved block that no longer validates) is one too.
        if "Unable to find block document" in str(exc):
            raise BlockNotFound(
                f"no {slug} block named {short!r} in {_where()}",
                hint=f"save one with {block_type.__name__}(...).save({short!r}) after "
                "`prefect block register -m blocks` (or in the Prefect UI); "
                "`prefect block ls` lists the saved ones",
            ) from exc
        raise ConfigError(
            f"{slug} block {short!r} is invalid: {str(exc).splitlines()[0]}",
            hint="fix it in the Prefect UI or save it again",
        ) from exc
    except Exception as exc:  # the Prefect API itself failed (unreachable, refused, ...)
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(
            f"cannot load {slug} block {short!r} from {_where()}: {type(exc).__name__}: {first}",
            hint="check PREFECT_API_URL and that the Prefect server is running",
        ) from exc
    if not isinstance(block, block_type):
        raise ConfigError(f"{slug} block {short!r} did not load as a {block_type.__name__}")
    return block
