"""Credential blocks for the remote services comfyfleet talks to.

Every secret is a ``SecretStr`` (obfuscated in the UI and in ``repr``); the plain value is
read only where a request is made.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr

from comfyfleet.sources.base import Tokens


def _plain(secret: SecretStr | None) -> str | None:
    return (secret.get_secret_value().strip() or None) if secret is not None else None


class SourceTokens(Block):
    """API tokens for the model sources: Hugging Face (gated repos) and CivitAI."""

    # A validation error must not echo the secrets it was given.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str | None] = "Comfyfleet Source Tokens"
    _block_type_slug: ClassVar[str | None] = "comfyfleet-source-tokens"
    _description: ClassVar[str | None] = "Hugging Face and CivitAI tokens for comfyfleet mirror."

    hf_token: SecretStr | None = Field(
        default=None, description="Hugging Face token (read access; accept gated terms first)."
    )
    civitai_token: SecretStr | None = Field(default=None, description="CivitAI API token.")

    def tokens(self) -> Tokens:
        """The library's token holder (its ``repr`` shows only whether each is set)."""
        return Tokens(hf=_plain(self.hf_token), civitai=_plain(self.civitai_token))


class FalCredentials(Block):
    """The fal.ai API key used when video generation runs on fal.ai."""

    # A validation error must not echo the secrets it was given.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str | None] = "Comfyfleet fal.ai Credentials"
    _block_type_slug: ClassVar[str | None] = "comfyfleet-fal-credentials"
    _description: ClassVar[str | None] = "fal.ai API key (the FAL_KEY value)."

    key: SecretStr = Field(description="fal.ai key, 'key_id:key_secret'.")
