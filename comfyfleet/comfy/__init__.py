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
from .template import image_columns, load_workflow_file, placeholders, render
from .workflows import (
    BUILTIN_WORKFLOWS,
    LoraSpec,
    ModelRef,
    WorkflowSpec,
    apply_loras,
    build_workflow,
    parse_loras,
)
from .ws import ProgressEvent

__all__ = [
    "BUILTIN_WORKFLOWS",
    "ComfyClient",
    "LoraSpec",
    "ModelRef",
    "OutputFile",
    "ProgressEvent",
    "PromptResult",
    "UploadedImage",
    "WorkflowSpec",
    "apply_loras",
    "build_workflow",
    "content_name",
    "image_columns",
    "load_image_source",
    "load_workflow_file",
    "parse_loras",
    "parse_outputs",
    "placeholders",
    "render",
    "sniff_image",
    "validation_error",
]
