"""The part of ComfyUI a batch uses, as a protocol (``ComfyClient`` is the real one; tests
may pass a double)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from comfyfleet.comfy.client import UploadedImage
    from comfyfleet.comfy.tracking import OutputFile, PromptResult


class ComfyBatchAPI(Protocol):
    """The part of :class:`comfyfleet.comfy.client.ComfyClient` a batch uses."""

    base_url: str

    def system_stats(self) -> dict[str, Any]: ...
    def list_models(self, folder: str) -> list[str]: ...
    def refresh_models(
        self, *, expect: Mapping[str, Iterable[str]] | None = None, timeout: float = 10.0
    ) -> None: ...
    def upload_image(
        self, source: str | Path | bytes, *, overwrite: bool = False
    ) -> UploadedImage: ...
    def check_workflow(self, workflow: Mapping[str, Any]) -> None: ...
    def submit(self, workflow: Mapping[str, Any], *, front: bool = False) -> str: ...
    def wait(
        self, prompt_id: str, *, timeout: float | None = None, on_progress: Any = None
    ) -> PromptResult: ...
    def fetch_output(self, f: OutputFile) -> bytes: ...
    def delete_queued(self, prompt_ids: Iterable[str]) -> None: ...
    def interrupt(self, prompt_id: str | None = None) -> None: ...
