"""The pre-submit check of a batch: a prompt reaches ComfyUI only once it fits this ComfyUI.

:class:`WorkflowChecker` runs :meth:`ComfyClient.check_workflow` (node types installed,
required inputs present, links valid, choices and model files listed in ``/object_info``)
and remembers verdicts per exact workflow, so identical prompts are judged once and no job
ever gets another job's verdict. ``/object_info`` itself is fetched once (the client caches it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from comfyfleet.errors import ComfyError, is_transient


class WorkflowCheckAPI(Protocol):
    """What the pre-submit check needs from ComfyUI."""

    def check_workflow(self, workflow: Mapping[str, Any]) -> None: ...


def _exact_key(workflow: Mapping[str, Any]) -> str:
    """The exact values checked: two workflows share a verdict only when they are equal.

    (A coarser "shape" once let jobs that differed only in a choice value, a sampler or an
    upscale method, share one cached failure: issue 9 item 1.) The check itself is local
    work over ComfyUI's ``/object_info``, which the client fetches once and caches.
    """
    return json.dumps(workflow, sort_keys=True, default=str)


class WorkflowChecker:
    """Checks workflows before they are submitted; thread-safe, verdicts cached."""

    def __init__(self, client: WorkflowCheckAPI) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._checked: dict[str, ComfyError | None] = {}

    def check(self, workflow: Mapping[str, Any]) -> None:
        """Raise the :class:`ComfyValidationError` this workflow earns, or return."""
        key = _exact_key(workflow)
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
