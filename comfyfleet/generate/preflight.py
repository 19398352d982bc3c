"""The pre-submit check of a batch: a prompt reaches ComfyUI only once it fits this ComfyUI.

:class:`WorkflowChecker` runs :meth:`ComfyClient.check_workflow` (node types installed,
required inputs present, links valid, choices and model files listed in ``/object_info``)
and remembers verdicts so a batch of similar jobs asks once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from comfyfleet.comfy.folders import looks_like_model
from comfyfleet.errors import ComfyError, is_transient


class WorkflowCheckAPI(Protocol):
    """What the pre-submit check needs from ComfyUI."""

    def check_workflow(self, workflow: Mapping[str, Any]) -> None: ...


def _shape_key(workflow: Mapping[str, Any]) -> str:
    """What makes two workflows need the same ``/object_info`` check: node types, links and
    model files, not prompts, seeds or uploaded image names."""
    shape: dict[str, Any] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            shape[str(node_id)] = repr(node)
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        kept: dict[str, Any] = {}
        for name, value in (inputs or {}).items():
            if isinstance(value, list) or (isinstance(value, str) and looks_like_model(value)):
                kept[str(name)] = value
            else:
                kept[str(name)] = type(value).__name__
        shape[str(node_id)] = [str(node.get("class_type")), kept]
    return json.dumps(shape, sort_keys=True, default=str)


class WorkflowChecker:
    """Checks workflows before they are submitted; thread-safe, verdicts cached."""

    def __init__(self, client: WorkflowCheckAPI) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._checked: dict[str, ComfyError | None] = {}

    def check(self, workflow: Mapping[str, Any]) -> None:
        """Raise the :class:`ComfyValidationError` this workflow earns, or return."""
        key = _shape_key(workflow)
        with self._lock:
            if key in self._checked:
                failure = self._checked[key]
                if failure is not None:
                    raise failure
                return
        try:
            self.client.check_workflow(workflow)
        except ComfyError as exc:
            if not is_transient(exc):
                with self._lock:
                    self._checked[key] = exc
            raise
        with self._lock:
            self._checked[key] = None
