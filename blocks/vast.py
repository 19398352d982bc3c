"""The vast.ai credentials block: the API key the fleet commands and flows rent with."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator


class VastCredentials(Block):
    """A vast.ai API key (``SecretStr``: hidden in the UI and in ``repr``) and, for a test
    or proxy server, the API server URL."""

    # A validation error must not echo the key it was given.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str | None] = "Comfyfleet vast.ai Credentials"
    _block_type_slug: ClassVar[str | None] = "comfyfleet-vast"
    _description: ClassVar[str | None] = "vast.ai API key (the VAST_API_KEY value)."

    api_key: SecretStr = Field(description="vast.ai API key (cloud.vast.ai/manage-keys).")
    url: str | None = Field(
        default=None,
        description="API server; empty means $VAST_URL, else https://console.vast.ai.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        value = (value or "").strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value or None
