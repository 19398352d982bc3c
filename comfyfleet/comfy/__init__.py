"""ComfyUI integration: the client, input images, workflow builders and user templates."""

from __future__ import annotations

from .client import (
    ComfyClient,
    OutputFile,
    PromptResult,
    UploadedImage,
    parse_outputs,
    validation_error,
)
from .images import content_name, load_image_source, sniff_image
from .ws import ProgressEvent

__all__ = [
    "ComfyClient",
    "OutputFile",
    "ProgressEvent",
    "PromptResult",
    "UploadedImage",
    "content_name",
    "load_image_source",
    "parse_outputs",
    "sniff_image",
    "validation_error",
]
