"""ComfyUI integration, everything comfyfleet knows about ComfyUI in one package.

- ``client``: the HTTP/WebSocket client (``ComfyClient``; bearer token for a gateway).
- ``tracking``: following a prompt to its outputs (events, history polling, failures).
- ``process``: starting and supervising a ComfyUI process, ``wait_ready``, ``ComfyProbe``.
- ``folders``: the one list of model folders, extensions and legacy names.
- ``workflows`` / ``template``: built-in workflow builders and user API-format templates.
- ``images`` / ``ws``: input images for ``/upload/image``; the WebSocket event listener.
"""

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
