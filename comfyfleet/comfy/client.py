"""ComfyUI client: HTTP for requests, one shared WebSocket for progress, /history for truth.

The one boundary where httpx and websockets errors become comfyfleet errors:

* a connection refused, reset or timed out    -> :class:`ComfyConnectionError` (transient)
* ``POST /prompt`` answering 400 (or 200 with dropped outputs) -> :class:`ComfyValidationError`
  listing every ``node_errors`` entry (node id, class, input, message)
* an ``execution_error``                      -> :class:`ComfyExecutionError`
* an ``execution_interrupted``                -> :class:`ComfyInterrupted`
* no result within the caller's timeout       -> :class:`ComfyTimeout` (transient)
* an input image that is not PNG/JPEG/WebP or too big -> :class:`InputImageError`
* 401/403 from an authenticating gateway in front of ComfyUI -> :class:`ComfyAuthError`

Authentication: ComfyUI on a rented instance is reached through the fleet's gateway, which
wants ``Authorization: Bearer <token>``. With ``token`` the client sends that header on every
HTTP request to ComfyUI and on the ``/ws`` handshake, and on nothing else (an input image
fetched from a URL does not get it). The token is kept out of ``repr``, errors and logs.

Following a prompt to its end (WebSocket events, /history as the truth) is
:mod:`comfyfleet.comfy.tracking`; this module gives it HTTP answers.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from comfyfleet.errors import (
    ComfyAuthError,
    ComfyConnectionError,
    ComfyError,
    ComfyPartialPrompt,
    ComfyTimeout,
    ComfyValidationError,
    NodeError,
)

from .folders import FOLDER_LOADERS, MODEL_INPUT_FOLDERS, http_folder, looks_like_model
from .images import DEFAULT_MAX_IMAGE_BYTES, content_name, display_source, load_image_source
from .template import image_columns
from .tracking import (
    OutputFile,
    PollPolicy,
    ProgressCallback,
    PromptFollower,
    PromptResult,
    parse_outputs,
)
from .ws import EventListener

__all__ = [
    "ComfyClient",
    "OutputFile",
    "PromptResult",
    "UploadedImage",
    "combo_options",
    "parse_outputs",
    "validation_error",
]


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class UploadedImage:
    """A file in ComfyUI's input (or temp/output) directory, as /upload/image named it."""

    name: str
    subfolder: str
    type: str

    @property
    def ref(self) -> str:
        """The value for ``LoadImage.image``: ``subfolder/name`` or ``name``."""
        ref = f"{self.subfolder}/{self.name}" if self.subfolder else self.name
        # LoadImage reads the input dir unless the value carries an annotation.
        return ref if self.type == "input" else f"{ref} [{self.type}]"


# ---------------------------------------------------------------- error translation


def _node_errors(raw: Any) -> list[NodeError]:
    found: list[NodeError] = []
    if not isinstance(raw, Mapping):
        return found
    for node_id, entry in raw.items():
        if not isinstance(entry, Mapping):
            continue
        class_type = str(entry.get("class_type") or "")
        for err in entry.get("errors") or []:
            if not isinstance(err, Mapping):
                continue
            extra = err.get("extra_info") if isinstance(err.get("extra_info"), Mapping) else {}
            input_name = str((extra or {}).get("input_name") or "")
            found.append(
                NodeError(
                    node_id=str(node_id),
                    class_type=class_type,
                    input_name=input_name,
                    message=str(err.get("message") or err.get("type") or "invalid"),
                    details=str(err.get("details") or ""),
                )
            )
    return found


def _validation_hint(errors: list[NodeError], error_type: str) -> str:
    for e in errors:
        folder = MODEL_INPUT_FOLDERS.get((e.class_type, e.input_name))
        if folder and "not in list" in e.message.lower():
            return (
                f"the model file is not in ComfyUI's models/{folder}: pull it there "
                "(comfyfleet warmup) or pick a listed file"
            )
        if e.class_type == "LoadImage" and e.input_name == "image":
            return "upload the image first (ComfyClient.upload_image) and use the name it returns"
        if "does not exist" in e.message:
            return "install the custom nodes that provide this class, or use another workflow"
    if error_type == "prompt_no_outputs":
        return "add an output node (SaveImage, SaveAnimatedWEBP, VHS_VideoCombine, ...)"
    return "fix the listed inputs in the workflow (see ComfyUI's /object_info for valid values)"


def validation_error(
    answer: Any, *, accepted: bool = False, prompt_id: str = ""
) -> ComfyValidationError:
    """A :class:`ComfyValidationError` from a ``/prompt`` answer (400 body), or with
    ``accepted`` a :class:`ComfyPartialPrompt` (200 with ``node_errors``: ComfyUI queued the
    valid outputs as ``prompt_id`` and dropped the rest)."""
    body = answer if isinstance(answer, Mapping) else {}
    error = body.get("error")
    error_type, message, details = "", "", ""
    if isinstance(error, Mapping):
        error_type = str(error.get("type") or "")
        message = str(error.get("message") or "")
        details = str(error.get("details") or "")
    elif isinstance(error, str):
        message = error
    errors = _node_errors(body.get("node_errors"))
    if not errors and error_type == "invalid_prompt":
        # Prompt-level error: "Cannot execute because node X does not exist." / "Node ID '#3'"
        node_id = details.removeprefix("Node ID '#").rstrip("'") if details else ""
        class_type = ""
        if message.startswith("Cannot execute because node ") and message.endswith(
            " does not exist."
        ):
            class_type = message[len("Cannot execute because node ") : -len(" does not exist.")]
        errors = [NodeError(node_id, class_type, "", message)]
    if accepted:
        return ComfyPartialPrompt(
            f"ComfyUI queued prompt {prompt_id} but dropped the outputs that failed validation",
            prompt_id=prompt_id,
            node_errors=errors,
            hint=_validation_hint(errors, error_type),
        )
    else:
        summary = f"ComfyUI rejected the workflow: {message or 'validation failed'}"
        if details and not errors:
            summary += f" ({details})"
    return ComfyValidationError(
        summary, node_errors=errors, hint=_validation_hint(errors, error_type)
    )


class ComfyClient:
    """Talks to one ComfyUI server. Thread-safe: many threads may submit and wait at once.

    ``poll_interval`` is how often /history is polled while the WebSocket is down;
    ``idle_poll`` how long a prompt may be silent before /history is checked anyway;
    ``reconnect_timeout`` how long ComfyUI may stay unreachable during a wait before
    :class:`ComfyConnectionError` is raised; ``token`` the bearer token of the gateway in
    front of ComfyUI (see the module docstring), never shown.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        poll_interval: float = 1.0,
        idle_poll: float = 15.0,
        reconnect_timeout: float = 30.0,
        token: str | SecretStr | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            base = "http://" + base
        self.base_url = base
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.max_image_bytes = max_image_bytes
        self.poll_interval = poll_interval
        self.idle_poll = idle_poll
        self.reconnect_timeout = reconnect_timeout
        self._own_http = http is None
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        # Per request, never as the httpx client's default: the same client fetches input
        # images from other hosts, which must not see the token.
        self._auth: dict[str, str] = {"Authorization": f"Bearer {secret}"} if secret else {}
        ws_base = "ws" + base[len("http") :]
        self._listener = EventListener(
            f"{ws_base}/ws?clientId={quote(self.client_id)}",
            open_timeout=min(timeout, 10.0),
            headers=self._auth,
        )
        self._lock = threading.Lock()
        self._object_info: dict[str, Any] | None = None
        self._late: set[str] = set()
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the WebSocket and (if we made it) the HTTP client."""
        self._closed = True
        self._listener.close()
        if self._own_http:
            self._http.close()

    def __enter__(self) -> ComfyClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        auth = ", token=***" if self._auth else ""
        return f"ComfyClient({self.base_url!r}, client_id={self.client_id!r}{auth})"

    @property
    def authenticated(self) -> bool:
        """Whether requests carry a bearer token."""
        return bool(self._auth)

    # ------------------------------------------------------------ HTTP boundary

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        url = self.base_url + path
        if self._auth:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), **self._auth}
        try:
            response = self._http.request(
                method, url, timeout=timeout if timeout is not None else self.timeout, **kwargs
            )
        except httpx.TimeoutException as exc:
            raise ComfyConnectionError(
                f"ComfyUI at {self.base_url} did not answer {method} {_path_only(path)} "
                f"in time ({type(exc).__name__})",
                hint="ComfyUI may be busy loading models or stuck; check its log",
            ) from exc
        except httpx.HTTPError as exc:
            raise ComfyConnectionError(
                f"cannot reach ComfyUI at {self.base_url}: {type(exc).__name__}: {exc}",
                hint="is ComfyUI running and listening there? check --comfy-url",
            ) from exc
        if response.status_code in (502, 503, 504):
            raise ComfyConnectionError(
                f"ComfyUI at {self.base_url} answered HTTP {response.status_code} to "
                f"{method} {_path_only(path)}",
                hint="a proxy in front of ComfyUI cannot reach it; retry shortly",
            )
        if response.status_code in (401, 403):
            raise _auth_error(self.base_url, response.status_code, bool(self._auth))
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyError(
                f"ComfyUI answered HTTP {response.status_code} to {method} {_path_only(path)}: "
                f"{response.text[:200].strip()}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyError(
                f"ComfyUI answered {method} {_path_only(path)} with something that is not JSON"
            ) from exc

    def _listener_started(self) -> EventListener:
        if self._closed:
            raise ComfyError("this ComfyClient is closed")
        self._listener.start()
        return self._listener

    # ------------------------------------------------------------ server facts

    def system_stats(self) -> dict[str, Any]:
        """``GET /system_stats``: versions, RAM, and per device ``vram_total``/``vram_free``."""
        stats = self._json("GET", "/system_stats")
        return dict(stats) if isinstance(stats, Mapping) else {}

    def wait_ready(
        self,
        timeout: float = 300.0,
        interval: float = 1.0,
        *,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """Poll ``/system_stats`` until ComfyUI answers; returns the stats.

        Raises :class:`ComfyTimeout` naming the last failure when it does not answer in time,
        or once ``stop`` is set (checked between polls: whoever waits no longer needs it).
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if stop is not None and stop.is_set():
                raise ComfyTimeout(
                    f"stopped waiting for ComfyUI at {self.base_url} ({last})",
                    hint="nothing to do: it was no longer needed",
                )
            remaining = deadline - time.monotonic()
            try:
                return self._system_stats_once(min(max(remaining, 0.1), 10.0))
            except ComfyAuthError:
                raise  # a refused token is refused again: no point waiting
            except ComfyError as exc:
                last = exc.message
            if time.monotonic() + interval > deadline:
                raise ComfyTimeout(
                    f"ComfyUI at {self.base_url} was not ready within {timeout:g} s ({last})",
                    hint="check that ComfyUI started (its log) and listens on this address",
                )
            if stop is None:
                time.sleep(interval)
            else:
                stop.wait(interval)

    def _system_stats_once(self, timeout: float) -> dict[str, Any]:
        stats = self._json("GET", "/system_stats", timeout=timeout)
        return dict(stats) if isinstance(stats, Mapping) else {}

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (every node class) or ``/object_info/<class>`` ({} if unknown)."""
        path = "/object_info" if node_class is None else f"/object_info/{quote(node_class)}"
        info = self._json("GET", path)
        info = dict(info) if isinstance(info, Mapping) else {}
        if node_class is None:
            with self._lock:
                self._object_info = info
        return info

    def _node_catalog(self) -> dict[str, Any]:
        with self._lock:
            cached = self._object_info
        return cached if cached is not None else self.object_info()

    def list_models(self, folder: str) -> list[str]:
        """Model files ComfyUI lists for a folder key (``checkpoints``, ``loras``, ...).

        Legacy names (``unet``, ``clip``) are mapped; folders the HTTP route does not know are
        read from the loader node's choices in ``/object_info``.
        """
        key = http_folder(folder)
        response = self._request("GET", f"/models/{quote(key)}")
        if response.status_code == 200:
            try:
                names = response.json()
            except ValueError as exc:
                raise ComfyError(f"ComfyUI's /models/{key} answer is not JSON") from exc
            return [str(n) for n in names] if isinstance(names, list) else []
        loader = FOLDER_LOADERS.get(key)
        if response.status_code == 404 and loader is not None:
            info = self.object_info(loader[0]).get(loader[0])
            if isinstance(info, Mapping):
                return combo_options(_input_spec(info, loader[1])) or []
        raise ComfyError(
            f"ComfyUI does not know the model folder '{folder}' (HTTP {response.status_code})",
            hint="GET /models lists the folder keys this ComfyUI has",
        )

    def refresh_models(
        self, *, expect: Mapping[str, Iterable[str]] | None = None, timeout: float = 10.0
    ) -> None:
        """Make ComfyUI re-scan its model folders and forget our cached ``/object_info``.

        ComfyUI re-lists a folder when its mtime changed, on the next request that reads it,
        so re-reading ``/object_info`` is the refresh. With ``expect`` (folder -> file names)
        wait until every file is listed, or raise :class:`ComfyError` naming the missing ones.
        """
        with self._lock:
            self._object_info = None
        self.object_info()
        if not expect:
            return
        deadline = time.monotonic() + timeout
        while True:
            missing = [
                f"{folder}/{name}"
                for folder, names in expect.items()
                for name in names
                if name not in set(self.list_models(folder))
            ]
            if not missing:
                with self._lock:
                    self._object_info = None
                return
            if time.monotonic() >= deadline:
                raise ComfyError(
                    f"ComfyUI does not list {', '.join(missing)} after {timeout:g} s",
                    hint="check that the files are under ComfyUI's models dir or an "
                    "extra_model_paths.yaml entry",
                )
            time.sleep(0.2)

    # ------------------------------------------------------------ input images

    def upload_image(self, source: str | Path | bytes, *, overwrite: bool = False) -> UploadedImage:
        """Upload an image (URL, path or bytes) to ComfyUI's input dir; returns its name.

        The name is the content hash, so the same image is stored once: ComfyUI reuses an
        existing file with identical bytes. Non-images and oversize files raise
        :class:`InputImageError` before anything is sent.
        """
        data, mime, ext = load_image_source(
            source, max_bytes=self.max_image_bytes, http=self._http, timeout=self.timeout
        )
        name = content_name(data, ext)
        response = self._request(
            "POST",
            "/upload/image",
            files={"image": (name, data, mime)},
            data={"type": "input", "subfolder": "", "overwrite": "true" if overwrite else "false"},
        )
        if response.status_code != 200:
            raise ComfyError(
                f"ComfyUI refused the upload of {display_source(source)} as {name}: "
                f"HTTP {response.status_code} {response.text[:200].strip()}",
                hint="check ComfyUI's --max-upload-size and its input directory permissions",
            )
        try:
            answer = response.json()
            return UploadedImage(
                name=str(answer["name"]),
                subfolder=str(answer.get("subfolder") or ""),
                type=str(answer.get("type") or "input"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ComfyError(
                f"ComfyUI's /upload/image answer has no name: {response.text[:200]}"
            ) from exc

    def upload_images(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of a job's values with every image column uploaded and replaced by the
        ``LoadImage`` name ComfyUI returned (see :func:`template.image_columns`)."""
        out = dict(values)
        for column in image_columns(values):
            out[column] = self.upload_image(str(values[column])).ref
        return out

    # ------------------------------------------------------------ workflows

    def check_workflow(self, workflow: Mapping[str, Any]) -> None:
        """Check a workflow against ``/object_info`` before submitting it.

        Catches what would otherwise fail late or vaguely: node types that are not installed,
        required inputs that are missing, links to nodes that are not there, and choices
        (model files above all) that this ComfyUI does not list. Raises
        :class:`ComfyValidationError` listing every problem. Uploaded images are left to
        ComfyUI's own check (the cached node list predates the upload).
        """
        if not isinstance(workflow, Mapping) or not workflow:
            raise ComfyValidationError(
                "the workflow is empty or not an API-format dict of nodes",
                hint="export it from ComfyUI with 'Save (API Format)'",
            )
        catalog = self._node_catalog()
        problems: list[NodeError] = []
        for node_id, node in workflow.items():
            nid = str(node_id)
            if not isinstance(node, Mapping) or "class_type" not in node:
                problems.append(NodeError(nid, "", "", "node has no class_type"))
                continue
            class_type = str(node["class_type"])
            info = catalog.get(class_type)
            if not isinstance(info, Mapping):
                problems.append(
                    NodeError(nid, class_type, "", "node type is not installed in this ComfyUI")
                )
                continue
            inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
            problems.extend(_check_node(nid, class_type, info, inputs or {}, workflow))
        if problems:
            raise ComfyValidationError(
                f"the workflow does not fit the ComfyUI at {self.base_url}",
                node_errors=problems,
                hint=_check_hint(problems),
            )

    def submit(self, workflow: Mapping[str, Any], *, front: bool = False) -> str:
        """Queue a workflow; returns its prompt id.

        The WebSocket is connected first (ComfyUI does not buffer events) and the prompt id is
        chosen here, so no event can arrive before we listen for it.
        """
        listener = self._listener_started()
        prompt_id = str(uuid.uuid4())
        listener.watch(prompt_id)
        body: dict[str, Any] = {
            "prompt": workflow,
            "client_id": self.client_id,
            "prompt_id": prompt_id,
        }
        if front:
            body["front"] = True
        # Socket down now: ComfyUI would drop this prompt's events, so its waiter must poll.
        blind = not listener.connected
        try:
            response = self._request("POST", "/prompt", json=body)
        except BaseException:
            listener.unwatch(prompt_id)
            raise
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 400:
            listener.unwatch(prompt_id)
            raise validation_error(answer)
        if response.status_code != 200 or not isinstance(answer, Mapping):
            listener.unwatch(prompt_id)
            raise ComfyError(
                f"ComfyUI answered HTTP {response.status_code} to POST /prompt: "
                f"{response.text[:200].strip()}",
                hint="a 500 usually means the request body was not valid JSON",
            )
        queued_id = str(answer.get("prompt_id") or prompt_id)
        if queued_id != prompt_id:
            # An older ComfyUI ignored our id: events before now may be lost.
            listener.unwatch(prompt_id)
            listener.watch(queued_id)
            blind = True
        if blind:
            with self._lock:
                self._late.add(queued_id)
        if answer.get("node_errors"):
            # Partially valid: ComfyUI silently drops the invalid outputs. Not what was asked:
            # cancel it; the caller collects what it may have written (settle()).
            self._cancel(queued_id)
            listener.unwatch(queued_id)
            raise validation_error(answer, accepted=True, prompt_id=queued_id)
        return queued_id

    def _cancel(self, prompt_id: str) -> None:
        with contextlib.suppress(ComfyError):
            self._request("POST", "/queue", json={"delete": [prompt_id]})
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    def settle(self, prompt_id: str, *, timeout: float = 30.0) -> list[OutputFile]:
        """The files a cancelled prompt wrote before it stopped ([] when it never ran).

        Waits until the prompt has left the queue (the interrupt takes effect between nodes),
        then reads its history entry. Raises :class:`ComfyTimeout` when it is still queued.
        """
        deadline = time.monotonic() + timeout
        while prompt_id in self._queued_ids():
            if time.monotonic() >= deadline:
                raise ComfyTimeout(
                    f"cancelled prompt {prompt_id} is still in ComfyUI's queue after {timeout:g} s",
                    hint="interrupt it (POST /interrupt) or wait for it to finish",
                )
            time.sleep(min(self.poll_interval, 0.2))
        entry = self._history_entry(prompt_id)
        outputs = entry.get("outputs") if entry is not None else None
        return parse_outputs(outputs) if isinstance(outputs, Mapping) else []

    def run(
        self,
        workflow: Mapping[str, Any],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PromptResult:
        """Submit a workflow and wait for its result."""
        return self.wait(self.submit(workflow), timeout=timeout, on_progress=on_progress)

    def wait(
        self,
        prompt_id: str,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> PromptResult:
        """Wait until a prompt finished; returns its outputs or raises what went wrong.

        Safe to call from many threads for different prompt ids; ``on_progress`` runs on the
        calling thread.
        """
        listener = self._listener_started()
        with self._lock:
            late = prompt_id in self._late
        registered = listener.is_watched(prompt_id)
        follower = PromptFollower(
            prompt_id,
            events=listener.watch(prompt_id),
            connected=lambda: listener.connected,
            generation=listener.generation,
            history=self._history_entry,
            queued_ids=self._queued_ids,
            history_quiet=self._history_quiet,
            # Not submitted through this client (or id changed): its events may not reach us.
            foreign=late or not registered,
            policy=PollPolicy(self.poll_interval, self.idle_poll, self.reconnect_timeout),
            timeout=timeout,
            on_progress=on_progress,
        )
        try:
            return follower.run()
        finally:
            listener.unwatch(prompt_id)
            with self._lock:
                self._late.discard(prompt_id)

    def _queued_ids(self) -> set[str]:
        answer = self._json("GET", "/queue")
        ids: set[str] = set()
        if isinstance(answer, Mapping):
            for key in ("queue_running", "queue_pending"):
                for item in answer.get(key) or []:
                    if isinstance(item, list | tuple) and len(item) > 1:
                        ids.add(str(item[1]))
        return ids

    def _history_entry(self, prompt_id: str) -> dict[str, Any] | None:
        answer = self._json("GET", f"/history/{quote(prompt_id)}")
        if isinstance(answer, Mapping):
            entry = answer.get(prompt_id)
            if isinstance(entry, Mapping):
                return dict(entry)
        return None

    def _history_quiet(self, prompt_id: str) -> dict[str, Any] | None:
        try:
            return self._history_entry(prompt_id)
        except ComfyError:
            return None  # the WebSocket already told us everything needed

    # ------------------------------------------------------------ outputs

    def fetch_output(self, f: OutputFile) -> bytes:
        """The bytes of an output file (``GET /view``)."""
        response = self._request("GET", "/view", params=_view_params(f))
        _check_view(response.status_code, f)
        return response.content

    def download_output(self, f: OutputFile, dest: str | Path) -> int:
        """Stream an output file to ``dest`` (via ``dest.part`` and an atomic rename)."""
        target = Path(dest)
        part = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            with self._http.stream(
                "GET",
                self.base_url + "/view",
                params=_view_params(f),
                headers=self._auth,
                timeout=self.timeout,
            ) as response:
                if response.status_code in (401, 403):
                    raise _auth_error(self.base_url, response.status_code, bool(self._auth))
                _check_view(response.status_code, f)
                with part.open("wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(part, target)
        except httpx.HTTPError as exc:
            raise ComfyConnectionError(
                f"download of output {f.ref} from ComfyUI at {self.base_url} failed: "
                f"{type(exc).__name__}"
            ) from exc
        finally:
            part.unlink(missing_ok=True)
        return size

    # ------------------------------------------------------------ queue control

    def queue_remaining(self) -> int:
        """Prompts pending plus running (``GET /prompt``)."""
        answer = self._json("GET", "/prompt")
        try:
            return int(answer["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ComfyError("ComfyUI's GET /prompt answer has no queue_remaining") from exc

    def queue(self) -> dict[str, Any]:
        """``GET /queue``: ``queue_running`` and ``queue_pending`` 5-element items."""
        answer = self._json("GET", "/queue")
        return dict(answer) if isinstance(answer, Mapping) else {}

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is ``prompt_id``, when given)."""
        body = {"prompt_id": prompt_id} if prompt_id else {}
        self._expect_ok("POST", "/interrupt", json=body)

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        """Remove pending prompts from the queue (running ones need :meth:`interrupt`)."""
        self._expect_ok("POST", "/queue", json={"delete": list(prompt_ids)})

    def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask ComfyUI to unload models and/or free cached memory between prompts."""
        self._expect_ok(
            "POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory}
        )

    def _expect_ok(self, method: str, path: str, **kwargs: Any) -> None:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyError(
                f"ComfyUI answered HTTP {response.status_code} to {method} {path}: "
                f"{response.text[:200].strip()}"
            )


# ---------------------------------------------------------------- helpers


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]


def _auth_error(base_url: str, status: int, sent: bool) -> ComfyAuthError:
    if sent:
        return ComfyAuthError(
            f"the gateway at {base_url} refused the bearer token (HTTP {status})",
            hint="the token is wrong or was rotated: pass the fleet's current gateway token",
        )
    return ComfyAuthError(
        f"ComfyUI at {base_url} wants authentication (HTTP {status}) and no token was given",
        hint="it is behind the fleet's gateway: pass its token (--comfy-token-env, or "
        "token_env/token_file in an endpoints file)",
    )


def _view_params(f: OutputFile) -> dict[str, str]:
    return {"filename": f.filename, "subfolder": f.subfolder, "type": f.type}


def _check_view(status: int, f: OutputFile) -> None:
    if status == 200:
        return
    if status == 404:
        raise ComfyError(
            f"ComfyUI has no {f.type} file {f.ref} (HTTP 404 from /view)",
            hint="it was deleted, or ComfyUI restarted and wiped its temp dir",
        )
    raise ComfyError(
        f"ComfyUI refused /view for {f.type} file {f.ref} (HTTP {status})",
        hint="the name or subfolder is not valid for /view (no '..', no leading '/')",
    )


def _input_spec(info: Mapping[str, Any], name: str) -> Any:
    inputs = info.get("input")
    if not isinstance(inputs, Mapping):
        return None
    for section in ("required", "optional"):
        part = inputs.get(section)
        if isinstance(part, Mapping) and name in part:
            return part[name]
    return None


def combo_options(spec: Any) -> list[str] | None:
    """The choices of a combo input spec (V1 ``[[...], {...}]`` or V3 ``["COMBO", {options}]``)."""
    if not isinstance(spec, list | tuple) or not spec:
        return None
    head = spec[0]
    if isinstance(head, list | tuple):
        return [str(v) for v in head]
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
        options = spec[1].get("options")
        if isinstance(options, list | tuple):
            return [str(v) for v in options]
    return None


def _spec_options(spec: Any) -> Mapping[str, Any]:
    if isinstance(spec, list | tuple) and len(spec) > 1 and isinstance(spec[1], Mapping):
        return spec[1]
    return {}


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _number_problem(spec: Any, value: Any) -> str:
    """What ComfyUI's validation would say about an INT/FLOAT input value ('' if fine):
    the conversion (``int(x)``/``float(x)``) and the ``min``/``max`` of the spec."""
    if not isinstance(spec, list | tuple) or not spec or spec[0] not in ("INT", "FLOAT"):
        return ""
    kind = str(spec[0])
    try:
        number = int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError):
        return f"Failed to convert an input value to a {kind} value: {value!r}"
    options = _spec_options(spec)
    low, high = options.get("min"), options.get("max")
    if isinstance(low, int | float) and number < low:
        return f"Value {number} smaller than min of {low}"
    if isinstance(high, int | float) and number > high:
        return f"Value {number} bigger than max of {high}"
    return ""


def _check_node(
    node_id: str,
    class_type: str,
    info: Mapping[str, Any],
    inputs: Mapping[str, Any],
    workflow: Mapping[str, Any],
) -> list[NodeError]:
    problems: list[NodeError] = []
    sections = info.get("input") if isinstance(info.get("input"), Mapping) else {}
    required = (sections or {}).get("required") or {}
    optional = (sections or {}).get("optional") or {}
    for name in required:
        if name not in inputs:
            problems.append(NodeError(node_id, class_type, name, "required input is missing"))
    for name, value in inputs.items():
        spec = required.get(name, optional.get(name))
        if _is_link(value):
            if str(value[0]) not in workflow:
                problems.append(
                    NodeError(
                        node_id,
                        class_type,
                        name,
                        f"links to node {value[0]}, which is not in the workflow",
                    )
                )
            continue
        number_problem = _number_problem(spec, value)
        if number_problem:
            problems.append(NodeError(node_id, class_type, name, number_problem))
            continue
        options = combo_options(spec)
        if options is None or isinstance(value, Mapping):
            continue
        if _spec_options(spec).get("image_upload") or _spec_options(spec).get("video_upload"):
            continue  # uploaded files: ComfyUI checks them itself at submit time
        if str(value) in options:
            continue
        folder = MODEL_INPUT_FOLDERS.get((class_type, name))
        if folder or looks_like_model(str(value)):
            where = f"models/{folder}" if folder else "its model folders"
            problems.append(
                NodeError(
                    node_id,
                    class_type,
                    name,
                    f"model file '{value}' is not in ComfyUI's {where}",
                    f"{len(options)} file(s) listed" if options else "none listed",
                )
            )
        else:
            shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
            problems.append(
                NodeError(node_id, class_type, name, f"'{value}' is not a valid choice", shown)
            )
    return problems


def _check_hint(problems: list[NodeError]) -> str:
    if any("not installed" in p.message for p in problems):
        return (
            "install the custom nodes that provide the missing classes "
            "(VHS_* = ComfyUI-VideoHelperSuite, ADE_* = ComfyUI-AnimateDiff-Evolved, "
            "CogVideo* = ComfyUI-CogVideoXWrapper), or pick another workflow"
        )
    if any("model file" in p.message for p in problems):
        return (
            "pull the model into ComfyUI's models dir (comfyfleet warmup), then "
            "refresh_models(); or name a file ComfyUI lists"
        )
    return "fix the listed inputs (ComfyUI's /object_info shows the valid values)"
