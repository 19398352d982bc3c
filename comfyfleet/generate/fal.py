"""fal.ai's queue API: submit a request, poll its status, fetch the result, cancel.

Wire facts (fal docs "Queue API" / "Inference API", docs.fal.ai/model-endpoints/queue):

* ``POST {base}/{model_id}`` with the JSON input; ``Authorization: Key $FAL_KEY``. The answer
  carries ``request_id``, ``status_url``, ``response_url``, ``cancel_url`` (and
  ``status: IN_QUEUE``, ``queue_position``). The status/result/cancel URLs use only the
  owner/app part of the model id, so they are taken from the answer, never built.
* ``GET {status_url}?logs=1``: 202 with ``status`` ``IN_QUEUE`` (+ ``queue_position``) or
  ``IN_PROGRESS`` (+ ``logs``), 200 with ``COMPLETED`` (+ ``logs``, ``metrics``).
* ``GET {response_url}``: the model's output, or the model's own error status and body.
* ``PUT {cancel_url}``: 202 ``CANCELLATION_REQUESTED``, 400 ``ALREADY_COMPLETED``.
* Errors: model errors are ``{"detail": [{"loc", "msg", "type", ...}]}`` (422 for input
  validation); request errors are ``{"detail": "<text>", "error_type": "..."}`` with the
  ``X-Fal-Error-Type`` header (503/504 runner and timeout failures).

Translation: 401/403 -> ``FalError`` naming FAL_KEY; 422 -> ``FalError`` listing every
``loc: msg``; 429/5xx/connection errors -> retried with backoff (``Retry-After`` honoured),
then ``FalUnavailable``. The key only ever goes to the queue host (never to the file CDN a
result links to) and never appears in errors, logs or reprs.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from comfyfleet.config import env
from comfyfleet.errors import FalError, FalUnavailable
from comfyfleet.sources.http import parse_retry_after
from comfyfleet.units import format_bytes

DEFAULT_QUEUE_URL = "https://queue.fal.run"
FAL_KEY_ENV = "FAL_KEY"
FAL_QUEUE_URL_ENV = "FAL_QUEUE_URL"

# Which fal app stands in for which local video workflow, and how a job's values map to it.
DEFAULT_APPS: Mapping[str, str] = {
    "wan_i2v": "fal-ai/wan-i2v",
    "svd_i2v": "fal-ai/stable-video",
}
_KEY_HINT = (
    "set FAL_KEY to a key from https://fal.ai/dashboard/keys (or pass --no-fal to turn the "
    "fallback off)"
)


@dataclass(frozen=True)
class FalSettings:
    """How to reach fal.ai. ``key`` defaults to ``$FAL_KEY``, ``base_url`` to ``$FAL_QUEUE_URL``
    or https://queue.fal.run. Polling starts at ``poll_interval_s`` and grows to ``poll_max_s``;
    a request still unfinished after ``timeout_s`` is cancelled. HTTP calls time out after
    ``request_timeout_s``; 429/5xx are retried ``max_retries`` times (backoff ``backoff_s``·2^n,
    Retry-After honoured). A result file larger than ``max_download_bytes`` is refused."""

    key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    apps: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_APPS))
    poll_interval_s: float = 0.5
    poll_max_s: float = 5.0
    timeout_s: float = 900.0
    request_timeout_s: float = 30.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_download_bytes: int = 512 * 1024 * 1024

    def resolved_key(self) -> str | None:
        return self.key or env(FAL_KEY_ENV) or None

    def resolved_base(self) -> str:
        return (self.base_url or env(FAL_QUEUE_URL_ENV) or DEFAULT_QUEUE_URL).rstrip("/")


@dataclass(frozen=True)
class FalRequest:
    """A submitted request: its id and the URLs fal answered with."""

    app: str
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str
    queue_position: int | None = None


@dataclass(frozen=True)
class FalStatus:
    status: str  # IN_QUEUE | IN_PROGRESS | COMPLETED
    queue_position: int | None = None
    logs: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FalFile:
    """A file a fal result links to (``{"url", "content_type", "file_name", "file_size"}``)."""

    url: str
    content_type: str = ""
    file_name: str = ""
    file_size: int | None = None


class FalClient:
    """A small synchronous client for fal's queue API (thread-safe: httpx.Client is)."""

    def __init__(
        self,
        settings: FalSettings | None = None,
        *,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or FalSettings()
        self._key = self.settings.resolved_key()
        self.base_url = self.settings.resolved_base()
        self._queue_host = urlsplit(self.base_url).netloc
        self._own_http = http is None
        self._http = http or httpx.Client(
            timeout=httpx.Timeout(self.settings.request_timeout_s), follow_redirects=True
        )
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"FalClient(base_url={self.base_url!r}, key={'set' if self._key else 'unset'})"

    @property
    def has_key(self) -> bool:
        return bool(self._key)

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> FalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ queue operations

    def submit(self, app: str, payload: Mapping[str, Any]) -> FalRequest:
        """Queue ``payload`` for ``app`` (e.g. ``fal-ai/wan-i2v``)."""
        if not self._key:
            raise FalError(f"fal.ai app {app}: no API key", hint=_KEY_HINT)
        url = f"{self.base_url}/{app.strip('/')}"
        response = self._request("POST", url, app=app, what="submit", json=dict(payload))
        body = _json(response, app, "submit")
        try:
            return FalRequest(
                app=app,
                request_id=str(body["request_id"]),
                status_url=str(body["status_url"]),
                response_url=str(body["response_url"]),
                cancel_url=str(body["cancel_url"]),
                queue_position=_int_or_none(body.get("queue_position")),
            )
        except KeyError as exc:
            raise FalError(
                f"fal.ai app {app}: submit answer lacks {exc.args[0]!r}",
                hint=f"check that {self.base_url} is fal's queue endpoint (FAL_QUEUE_URL)",
            ) from None

    def status(self, request: FalRequest, *, logs: bool = True) -> FalStatus:
        response = self._request(
            "GET",
            request.status_url,
            app=request.app,
            what="status",
            params={"logs": "1"} if logs else None,
        )
        body = _json(response, request.app, "status")
        state = str(body.get("status", ""))
        if state not in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED"):
            raise FalError(
                f"fal.ai request {request.request_id} ({request.app}): status {state!r}",
                hint="the request was cancelled or failed on fal's side; see fal's dashboard",
            )
        raw_logs = body.get("logs") or []
        lines = tuple(
            str(entry.get("message", "")) if isinstance(entry, Mapping) else str(entry)
            for entry in raw_logs
        )
        metrics = body.get("metrics") if isinstance(body.get("metrics"), Mapping) else {}
        return FalStatus(
            status=state,
            queue_position=_int_or_none(body.get("queue_position")),
            logs=lines,
            metrics=metrics or {},
        )

    def result(self, request: FalRequest) -> dict[str, Any]:
        """The model's output (the request must be COMPLETED)."""
        response = self._request("GET", request.response_url, app=request.app, what="result")
        return _json(response, request.app, "result")

    def cancel(self, request: FalRequest) -> str:
        """Ask fal to cancel; returns ``CANCELLATION_REQUESTED`` or ``ALREADY_COMPLETED``."""
        response = self._request(
            "PUT", request.cancel_url, app=request.app, what="cancel", accept=(400, 404)
        )
        try:
            data = response.json()
        except ValueError:
            data = {}
        return str(data.get("status", response.status_code)) if isinstance(data, dict) else ""

    def run(
        self,
        app: str,
        payload: Mapping[str, Any],
        *,
        timeout_s: float | None = None,
        on_status: Callable[[FalStatus], None] | None = None,
    ) -> tuple[FalRequest, dict[str, Any]]:
        """Submit, poll until COMPLETED, fetch the result. Cancels on timeout."""
        request = self.submit(app, payload)
        deadline = time.monotonic() + (timeout_s or self.settings.timeout_s)
        interval = self.settings.poll_interval_s
        while True:
            state = self.status(request)
            if on_status is not None:
                on_status(state)
            if state.status == "COMPLETED":
                return request, self.result(request)
            if time.monotonic() >= deadline:
                outcome = self.cancel(request)
                raise FalUnavailable(
                    f"fal.ai request {request.request_id} ({app}) still {state.status} after "
                    f"{timeout_s or self.settings.timeout_s:.0f} s; cancel: {outcome}",
                    hint="fal's queue is busy; raise the fal timeout or retry later",
                )
            self._sleep(interval)
            interval = min(interval * 1.5, self.settings.poll_max_s)

    def download(self, file: FalFile, *, max_bytes: int | None = None) -> bytes:
        """Fetch a result file (no key sent: it lives on fal's CDN), refusing oversize ones."""
        cap = max_bytes if max_bytes is not None else self.settings.max_download_bytes
        where = file.url.split("?", 1)[0]
        if file.file_size is not None and file.file_size > cap:
            raise FalError(
                f"fal.ai result {where} is {format_bytes(file.file_size)}, over the "
                f"{format_bytes(cap)} cap",
                hint="raise FalSettings.max_download_bytes if this is expected",
            )
        attempt = 0
        while True:
            try:
                with self._http.stream("GET", file.url, headers=self._headers(file.url)) as resp:
                    if resp.status_code == 429 or resp.status_code >= 500:
                        raise _Retry(resp.status_code, _retry_after(resp))
                    if resp.status_code != 200:
                        raise FalError(
                            f"fal.ai result {where}: HTTP {resp.status_code}",
                            hint="the result link expired (fal keeps results for a limited "
                            "time); rerun the job",
                        )
                    declared = _int_or_none(resp.headers.get("content-length"))
                    if declared is not None and declared > cap:
                        raise FalError(
                            f"fal.ai result {where} is {format_bytes(declared)}, over the "
                            f"{format_bytes(cap)} cap",
                            hint="raise FalSettings.max_download_bytes if this is expected",
                        )
                    chunks: list[bytes] = []
                    total = 0
                    for chunk in resp.iter_bytes():
                        total += len(chunk)
                        if total > cap:
                            raise FalError(
                                f"fal.ai result {where} exceeds the {format_bytes(cap)} cap",
                                hint="raise FalSettings.max_download_bytes if this is expected",
                            )
                        chunks.append(chunk)
                    data = b"".join(chunks)
                    if declared is not None and len(data) != declared:
                        raise _Retry(0, None)
                    return data
            except (_Retry, httpx.TransportError) as exc:
                attempt += 1
                if attempt > self.settings.max_retries:
                    raise FalUnavailable(
                        f"fal.ai result {where}: download failed after {attempt} attempts "
                        f"({_describe(exc)})",
                        hint="fal's file CDN is unreachable; retry later",
                    ) from None
                self._sleep(
                    self._backoff(attempt, exc.retry_after if isinstance(exc, _Retry) else None)
                )

    # ------------------------------------------------------------ HTTP plumbing

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._key and urlsplit(url).netloc == self._queue_host:
            headers["Authorization"] = f"Key {self._key}"
        return headers

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 60.0)
        return float(min(self.settings.backoff_s * 2 ** (attempt - 1), 30.0))

    def _request(
        self,
        method: str,
        url: str,
        *,
        app: str,
        what: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        accept: tuple[int, ...] = (),
    ) -> httpx.Response:
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = self._http.request(
                    method, url, json=json, params=params, headers=self._headers(url)
                )
            except httpx.TransportError as exc:
                failure = _describe(exc)
            else:
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if response.status_code != 429 and response.status_code < 500:
                    raise _translate(response, app, what)
                failure = f"HTTP {response.status_code}{_detail_suffix(response)}"
                retry_after = _retry_after(response)
            attempt += 1
            if attempt > self.settings.max_retries:
                raise FalUnavailable(
                    f"fal.ai {what} for {app} failed after {attempt} attempts: {failure}",
                    hint="fal.ai is unreachable or overloaded; retry later, or check "
                    f"FAL_QUEUE_URL ({self.base_url})",
                )
            self._sleep(self._backoff(attempt, retry_after))


class _Retry(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(f"HTTP {status}" if status else "short read")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    return parse_retry_after(response.headers.get("retry-after"))


def _json(response: httpx.Response, app: str, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise FalError(
            f"fal.ai {what} for {app}: answer is not JSON (HTTP {response.status_code})",
            hint="check FAL_QUEUE_URL points at fal's queue API",
        ) from None
    if not isinstance(data, dict):
        raise FalError(
            f"fal.ai {what} for {app}: expected a JSON object, got {type(data).__name__}"
        )
    return data


def detail_lines(body: Any) -> list[str]:
    """fal's error ``detail`` as readable lines: ``loc: msg`` per model error, or the text."""
    if not isinstance(body, Mapping):
        return []
    detail = body.get("detail")
    if isinstance(detail, str):
        return [detail]
    lines: list[str] = []
    if isinstance(detail, list):
        for item in detail:
            if not isinstance(item, Mapping):
                lines.append(str(item))
                continue
            loc = item.get("loc") or []
            where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else ""
            msg = str(item.get("msg", "")).strip()
            kind = str(item.get("type", "")).strip()
            text = f"{where}: {msg}" if where else msg
            lines.append(f"{text} [{kind}]" if kind else text)
    return lines


def _detail_suffix(response: httpx.Response) -> str:
    try:
        lines = detail_lines(response.json())
    except ValueError:
        lines = []
    error_type = response.headers.get("x-fal-error-type")
    text = "; ".join(lines)
    if error_type and error_type not in text:
        text = f"{text} ({error_type})" if text else error_type
    return f": {text}" if text else ""


def _translate(response: httpx.Response, app: str, what: str) -> FalError:
    status = response.status_code
    suffix = _detail_suffix(response)
    if status in (401, 403):
        return FalError(
            f"fal.ai refused the API key for {app} (HTTP {status}){suffix}", hint=_KEY_HINT
        )
    if status == 404:
        return FalError(
            f"fal.ai {what} for {app}: not found (HTTP 404){suffix}",
            hint="check the fal app id (FalSettings.apps) and that results are fetched within "
            "fal's retention window",
        )
    if status == 422:
        return FalError(
            f"fal.ai rejected the input for {app} (HTTP 422){suffix}",
            hint="fix the named input fields; see the app's schema on fal.ai",
        )
    return FalError(f"fal.ai {what} for {app} failed: HTTP {status}{suffix}")


def data_uri(data: bytes, content_type: str) -> str:
    """``data:<type>;base64,...``: how a file goes to fal when the store cannot presign."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


def result_files(result: Mapping[str, Any]) -> list[FalFile]:
    """Every file a result links to: ``video``, ``image``, ``images[]``, ``videos[]``."""
    files: list[FalFile] = []

    def add(item: Any) -> None:
        if isinstance(item, Mapping) and isinstance(item.get("url"), str):
            files.append(
                FalFile(
                    url=item["url"],
                    content_type=str(item.get("content_type") or ""),
                    file_name=str(item.get("file_name") or ""),
                    file_size=_int_or_none(item.get("file_size")),
                )
            )

    for key in ("video", "image"):
        add(result.get(key))
    for key in ("videos", "images"):
        items = result.get(key)
        if isinstance(items, list):
            for item in items:
                add(item)
    return files
