"""The pre-submit check of a batch: a prompt reaches ComfyUI only once it fits this ComfyUI.

:class:`WorkflowChecker` refuses a workflow, with every problem listed, when

1. a model file it loads is not in ComfyUI's folders (``GET /models/<folder>``), naming the
   catalog id to mirror and pull (``comfyfleet mirror --only ID``): ComfyUI must never be
   left to fail late, and a custom node (CogVideoXWrapper) must never download weights
   behind the mirror's back;
2. :meth:`ComfyClient.check_workflow` finds node types not installed, required inputs
   missing, links to nowhere, or choices ``/object_info`` does not offer.

Verdicts are remembered per exact workflow, so identical prompts are judged once and no job
ever gets another job's verdict (issue 9 item 1). ``/object_info`` is fetched once (the client
caches it); folder listings once per batch, and again when a file seems missing (it may have
been pulled meanwhile, like a LoRA).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from comfyfleet.comfy.folders import MODEL_INPUT_FOLDERS, http_folder
from comfyfleet.errors import ComfyError, ComfyValidationError, NodeError, is_transient

# Wrapper nodes that load a Hugging Face repo folder from models/<folder>/<repo name>
# (and download it there when it is missing): (node class, input) -> folder.
REPO_INPUT_FOLDERS: dict[tuple[str, str], str] = {
    ("DownloadAndLoadCogVideoModel", "model"): "CogVideo",
}


class WorkflowCheckAPI(Protocol):
    """What the pre-submit check needs from ComfyUI."""

    def check_workflow(self, workflow: Mapping[str, Any]) -> None: ...
    def list_models(self, folder: str) -> list[str]: ...
    def refresh_models(self) -> None: ...


def _exact_key(workflow: Mapping[str, Any]) -> str:
    """The exact values checked: two workflows share a verdict only when they are equal.

    (A coarser "shape" once let jobs that differed only in a choice value, a sampler or an
    upscale method, share one cached failure.)
    """
    return json.dumps(workflow, sort_keys=True, default=str)


def model_inputs(workflow: Mapping[str, Any]) -> list[tuple[NodeError, str, str]]:
    """Every model a workflow loads: (where, folder, file); a repo folder ends with ``/``."""
    found: list[tuple[NodeError, str, str]] = []
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            continue
        class_type = str(node.get("class_type") or "")
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or not value:
                continue
            where = NodeError(str(node_id), class_type, str(name), "")
            folder = MODEL_INPUT_FOLDERS.get((class_type, str(name)))
            if folder is not None:
                found.append((where, http_folder(folder), value))
            repo_folder = REPO_INPUT_FOLDERS.get((class_type, str(name)))
            if repo_folder is not None:
                found.append((where, repo_folder, value.rstrip("/").rsplit("/", 1)[-1] + "/"))
    return found


class WorkflowChecker:
    """Checks workflows before they are submitted; thread-safe, verdicts cached.

    ``catalog_files`` maps ``<folder>/<file>`` (ComfyUI's folder key) to the catalog id that
    provides it, so a missing file's error says what to mirror.
    """

    def __init__(
        self, client: WorkflowCheckAPI, *, catalog_files: Mapping[str, str] | None = None
    ) -> None:
        self.client = client
        self.catalog_files = dict(catalog_files or {})
        self._lock = threading.Lock()
        self._checked: dict[str, ComfyError | None] = {}
        self._listed: dict[str, set[str]] = {}

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
            self._check_model_files(workflow)
            self._check_nodes(workflow)
        except ComfyError as exc:
            if not is_transient(exc):
                with self._lock:
                    self._checked[key] = exc
            raise
        with self._lock:
            self._checked[key] = None

    def _check_nodes(self, workflow: Mapping[str, Any]) -> None:
        try:
            self.client.check_workflow(workflow)
        except ComfyValidationError as exc:
            if not any(e.message.startswith("model file") for e in exc.node_errors):
                raise
            # The folders list every model file, so the client's /object_info is older than
            # a file placed since: read it again once.
            self.client.refresh_models()
            self.client.check_workflow(workflow)

    # ------------------------------------------------------------ model files

    def _check_model_files(self, workflow: Mapping[str, Any]) -> None:
        missing: list[NodeError] = []
        ids: list[str] = []
        for where, folder, file in model_inputs(workflow):
            absent = self._missing(folder, file)
            if not absent:
                continue
            wanted = sorted({i for f in absent for i in self._catalog_ids(folder, f)})
            ids += [i for i in wanted if i not in ids]
            if file.endswith("/"):
                what = f"model folder '{file}' ({len(absent)} file(s) missing)"
            else:
                what = f"model file '{file}'"
            missing.append(
                NodeError(
                    where.node_id,
                    where.class_type,
                    where.input_name,
                    f"{what} is not in ComfyUI's models/{folder}",
                    f"catalog id {', '.join(wanted)}" if wanted else "not in the catalog",
                )
            )
        if not missing:
            return
        if ids:
            hint = (
                f"mirror it into the store (comfyfleet mirror --only {' --only '.join(ids)}) "
                "and pull it onto this ComfyUI (comfyfleet warmup), or name a file it lists"
            )
        else:
            hint = (
                "add the file to a catalog (a user catalog, or comfyfleet lora add), mirror and "
                "pull it (comfyfleet warmup), or name a file ComfyUI lists"
            )
        raise ComfyValidationError(
            "the workflow needs model files this ComfyUI does not have",
            node_errors=missing,
            hint=hint,
        )

    def _missing(self, folder: str, file: str) -> list[str]:
        """What of ``file`` ComfyUI does not list in ``folder`` ([] = all there). For a repo
        folder: the catalog's files under it, or (unknown to the catalog) any file at all."""
        expected = [file]
        if file.endswith("/"):
            prefix = f"{folder}/"
            expected = [
                key[len(prefix) :] for key in self.catalog_files if key.startswith(prefix + file)
            ]
        missing: list[str] = []
        for fresh in (False, True):
            names = self._listing(folder, fresh=fresh)
            if names is None:
                return []  # ComfyUI cannot list the folder: its own check decides
            if expected:
                missing = [f for f in expected if f not in names]
            else:
                missing = [] if any(n.startswith(file) for n in names) else [file]
            if not missing:
                return []
        return missing

    def _listing(self, folder: str, *, fresh: bool) -> set[str] | None:
        with self._lock:
            cached = self._listed.get(folder)
        if cached is not None and not fresh:
            return cached
        try:
            names = set(self.client.list_models(folder))
        except ComfyError as exc:
            if is_transient(exc):
                raise
            return None
        with self._lock:
            self._listed[folder] = names
        return names

    def _catalog_ids(self, folder: str, file: str) -> list[str]:
        found = self.catalog_files.get(f"{folder}/{file}")
        return [found] if found else []


def catalog_files(models: Iterable[Any]) -> dict[str, str]:
    """``<folder key>/<file>`` -> catalog id, for :class:`WorkflowChecker` (catalog models
    with ``id``, ``folder`` and ``file``)."""
    return {f"{http_folder(m.folder)}/{m.file}": m.id for m in models}
