"""The ``comfyfleet-comfyui`` block: where a ComfyUI server listens, and the bearer token of
the gateway in front of it (a rented instance's ComfyUI is never reachable without one)."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator


class ComfyUIEndpoint(Block):
    """A ComfyUI server's base URL, e.g. ``http://127.0.0.1:8188``, and the token its
    gateway wants (``Authorization: Bearer``), if any. The token is a ``SecretStr``: hidden
    in the UI and ``repr``, read only inside the task that talks to ComfyUI."""

    _block_type_name: ClassVar[str | None] = "Comfyfleet ComfyUI Endpoint"
    _block_type_slug: ClassVar[str | None] = "comfyfleet-comfyui"
    _description: ClassVar[str | None] = "Base URL of a ComfyUI server that comfyfleet drives."

    url: str = Field(description="Base URL, e.g. http://127.0.0.1:8188 (no trailing path).")
    token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the gateway in front of this ComfyUI (comfyfleet "
        "gateway); empty for a ComfyUI reached without one.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"ComfyUI url {value!r} must be http(s)://host:port")
        return value.strip().rstrip("/")
