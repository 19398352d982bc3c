"""The ``comfyfleet-store`` block: where the mirror lives, with its credentials.

Either an S3 bucket (``bucket`` + optional ``prefix``, ``endpoint_url``, ``region`` and
credentials) or a local directory (``path``). Secrets are ``SecretStr``: obfuscated in the
UI and in ``repr``, handed to boto3 only inside :meth:`ComfyfleetStore.open`.
"""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, model_validator

from blocks.loading import load
from comfyfleet.store import LocalStore, ObjectStore, S3Store


class ComfyfleetStore(Block):
    """An object store for comfyfleet: an S3-compatible bucket + prefix, or a directory.

    Example:
        ```python
        from blocks import ComfyfleetStore, open_store_block

        ComfyfleetStore(
            bucket="models", endpoint_url="https://<account>.r2.cloudflarestorage.com",
            access_key_id="...", secret_access_key="...",
        ).save("mirror")
        store = open_store_block("mirror")  # load(ComfyfleetStore, "mirror").open()
        ```
    """

    # A validation error must not echo the secrets it was given.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name: ClassVar[str | None] = "Comfyfleet Store"
    _block_type_slug: ClassVar[str | None] = "comfyfleet-store"
    _description: ClassVar[str | None] = (
        "Where comfyfleet mirrors models: an S3-compatible bucket (AWS S3, R2, B2, MinIO, "
        "SeaweedFS) or a local directory."
    )

    bucket: str | None = Field(default=None, description="S3 bucket name (leave empty for path).")
    prefix: str = Field(default="", description="Key prefix inside the bucket.")
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint, e.g. http://127.0.0.1:8333; empty means AWS or AWS_ENDPOINT_URL.",
    )
    region: str | None = Field(default=None, description="Region; empty means the AWS default.")
    access_key_id: str | None = Field(
        default=None, description="Access key id; empty means the AWS environment/credentials."
    )
    secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    session_token: SecretStr | None = Field(default=None, description="Session token (optional).")
    path: str | None = Field(
        default=None, description="A local directory store instead of a bucket."
    )

    @model_validator(mode="after")
    def _bucket_or_path(self) -> ComfyfleetStore:
        if bool(self.bucket) == bool(self.path):
            raise ValueError("set exactly one of 'bucket' (an S3 store) or 'path' (a directory)")
        if self.path and (self.access_key_id or self.secret_access_key or self.endpoint_url):
            raise ValueError("'path' stores take no endpoint or credentials")
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise ValueError("set 'access_key_id' and 'secret_access_key' together, or neither")
        return self

    @property
    def uri(self) -> str:
        """Display URI, never credentials."""
        if self.path:
            return LocalStore(self.path).uri
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def open(self) -> ObjectStore:
        """The store this block describes (raises ``StoreConfigError`` on bad settings)."""
        if self.path:
            return LocalStore(self.path)
        assert self.bucket is not None  # the validator guarantees one of the two
        return S3Store(
            self.bucket,
            self.prefix,
            endpoint_url=self.endpoint_url,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            session_token=self.session_token,
            region=self.region,
        )


def open_store_block(name: str) -> ObjectStore:
    """The store of the saved ``comfyfleet-store`` block ``name`` (or ``slug/name``).

    What every flow's ``store_block`` and the CLI's ``--store-block`` open: loaded through
    :func:`blocks.load`, so a missing block raises ``BlockNotFound`` naming how to save it.
    """
    return load(ComfyfleetStore, name).open()
