"""A thin httpx client for vast.ai's REST API: search offers, rent, list, show, label, destroy.

Why not the official ``vastai`` package: version 1.9.1 pins ``pillow==12.2.0`` and
``cryptography==49.0.0`` exactly, pulls ``borb`` (a PDF library, for invoices) and 14 more
packages unconditionally (vast-api.md §9). A handful of JSON calls do not justify pinning
the whole environment, so this module speaks the wire protocol itself.

Wire facts (``shared/reference/vast-api.md``; section numbers below refer to it):

* Server ``$VAST_URL`` (as the vastai CLI reads it), default ``https://console.vast.ai``;
  paths under ``/api/v0/`` with the trailing slash the SDK sends (§1). The key goes in
  ``Authorization: Bearer <key>`` only, never in the URL, so no logged URL carries it.
* ``POST /api/v0/bundles/`` with the query object -> ``{"offers": [...]}`` (§2).
* ``PUT /api/v0/asks/{offer_id}/`` with ``image, disk, label, onstart, env, runtype`` ->
  ``{"success": true, "new_contract": <instance id>}`` (§3). 404/410 ``no_such_ask``: the
  offer is gone (:class:`OfferGone`, the caller takes the next offer).
* ``GET /api/v1/instances/`` pages of at most 25 with ``next_token``/``after_token`` and
  ``select_filters`` on stored columns such as ``label`` (§4.1); ``GET
  /api/v0/instances/{id}/`` -> ``{"instances": {...}}`` or ``{"instances": null}`` (§4.2).
* ``PUT /api/v0/instances/{id}/`` ``{"label": ...}``; ``DELETE /api/v0/instances/{id}/``
  (404 ``no_such_instance`` once gone) (§5).

Errors are translated here and nowhere else (§6): 401/403 -> :class:`VastAuthError`;
``missing_billing`` or a credit message -> :class:`InsufficientCredit`; 429 and, for calls
that are safe to repeat, 5xx and connection errors are retried a bounded number of times
(``Retry-After`` honoured up to ``max_retry_after_s``, else exponential backoff, with an
injectable ``sleep``), then :class:`VastRateLimited` / :class:`VastUnavailable`. Renting is
*not* repeated after a 5xx or a dropped connection: the first attempt may have rented, and a
second would find the offer gone. One API call is the cheap local unit of the retry rule
(``comfyfleet.errors``), like one S3 call under botocore's own retries.

The key never appears in a message, a ``repr`` or a log line: errors quote the server's
``msg`` (which does not echo keys) and name ``VAST_API_KEY``, never its value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from comfyfleet import __version__
from comfyfleet.config import env
from comfyfleet.errors import (
    ConfigError,
    InstanceNotFound,
    InsufficientCredit,
    OfferGone,
    VastAuthError,
    VastError,
    VastRateLimited,
    VastUnavailable,
)
from comfyfleet.sources.http import parse_retry_after

DEFAULT_VAST_URL = "https://console.vast.ai"
KEY_ENV = "VAST_API_KEY"
URL_ENV = "VAST_URL"
LIST_PAGE_LIMIT = 25  # the v1 list's maximum page size (§4.1)
_MAX_PAGES = 400  # 10,000 instances: far beyond any fleet; stops a server that loops tokens
_KEY_HINT = (
    "set VAST_API_KEY to a key from https://cloud.vast.ai/manage-keys/ (or save a "
    "comfyfleet-vast block and pass --vast-block)"
)
_CREDIT_HINT = "add credit at https://cloud.vast.ai/billing/, then run the command again"


@dataclass(frozen=True)
class VastSettings:
    """How the client talks to vast.ai.

    ``max_attempts`` counts every attempt of one call (1 = no retry) for 429 and, on calls
    safe to repeat, 5xx and connection errors. Waits follow ``Retry-After`` when the server
    sends one no longer than ``max_retry_after_s`` (a longer one fails at once, as the SDK
    does), else ``backoff_s`` * 2^n. Each request times out after ``request_timeout_s``.
    """

    request_timeout_s: float = 30.0
    max_attempts: int = 4
    backoff_s: float = 0.5
    max_retry_after_s: float = 60.0


# ---------------------------------------------------------------- typed records


def _f(value: Any, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _i(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _s(value: Any) -> str:
    # The API pads some strings (``local_ipaddrs`` ends in " \n"); the SDK strips them all.
    return "" if value is None else str(value).strip()


def _opt_s(value: Any) -> str | None:
    text = _s(value)
    return text or None


@dataclass(frozen=True)
class Offer:
    """One rentable offer (``POST /bundles/`` row). ``gpu_ram`` is per GPU in MB, as the
    API sends it; ``disk_space`` GB free on the host; ``dph_total`` USD per hour;
    ``reliability`` 0-1; ``inet_down``/``inet_up`` as the API reports them (Mb/s per the
    CLI)."""

    id: int
    gpu_name: str
    num_gpus: int
    gpu_ram: float
    gpu_total_ram: float
    disk_space: float
    dph_total: float
    reliability: float
    inet_down: float
    inet_up: float
    cuda_max_good: float
    geolocation: str
    verification: str
    machine_id: int
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Offer:
        num = _i(row.get("num_gpus"), 1)
        per_gpu = _f(row.get("gpu_ram"))
        return cls(
            id=_i(row.get("id")),
            gpu_name=_s(row.get("gpu_name")),
            num_gpus=num,
            gpu_ram=per_gpu,
            gpu_total_ram=_f(row.get("gpu_total_ram"), per_gpu * num),
            disk_space=_f(row.get("disk_space")),
            dph_total=_f(row.get("dph_total")),
            reliability=_f(row.get("reliability", row.get("reliability2"))),
            inet_down=_f(row.get("inet_down")),
            inet_up=_f(row.get("inet_up")),
            cuda_max_good=_f(row.get("cuda_max_good")),
            geolocation=_s(row.get("geolocation")),
            verification=_s(row.get("verification")),
            machine_id=_i(row.get("machine_id")),
            raw=dict(row),
        )

    @property
    def vram_gb(self) -> float:
        """VRAM over all GPUs of the offer, in GB (the API's MB / 1000, as the CLI counts)."""
        return self.gpu_total_ram / 1000.0

    @property
    def dph_per_vram_gb(self) -> float:
        """USD per hour per GB of VRAM: the price that compares offers of different cards."""
        return self.dph_total / self.vram_gb if self.vram_gb > 0 else float("inf")


@dataclass(frozen=True)
class Instance:
    """One rented instance (a v1 list row or ``GET /instances/{id}/``).

    ``actual_status`` is the container state (``None`` while provisioning, then
    ``loading``, ``running``; or ``exited``/``unknown``/``offline``, which never recover on
    their own); ``start_date`` epoch seconds; ``ports`` Docker's map
    ``{"8188/tcp": [{"HostIp", "HostPort"}]}``, present while running; ``extra_env`` the
    launch environment (``[[k, v]]`` on the wire, a dict here).
    """

    id: int
    actual_status: str | None
    intended_status: str | None
    cur_state: str | None
    status_msg: str | None
    label: str | None
    gpu_name: str
    num_gpus: int
    gpu_ram: float
    dph_total: float
    disk_space: float
    start_date: float | None
    public_ipaddr: str | None
    ports: Mapping[str, Any]
    ssh_host: str | None
    ssh_port: int | None
    machine_id: int
    image_uuid: str | None
    extra_env: Mapping[str, str]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_api(cls, row: Mapping[str, Any]) -> Instance:
        env_pairs = row.get("extra_env") or []
        extra: dict[str, str] = {}
        if isinstance(env_pairs, Mapping):
            extra = {str(k): _s(v) for k, v in env_pairs.items()}
        elif isinstance(env_pairs, list):
            extra = {
                str(p[0]): _s(p[1])
                for p in env_pairs
                if isinstance(p, list | tuple) and len(p) == 2
            }
        start = row.get("start_date")
        ports = row.get("ports")
        return cls(
            id=_i(row.get("id")),
            actual_status=_opt_s(row.get("actual_status")),
            intended_status=_opt_s(row.get("intended_status")),
            cur_state=_opt_s(row.get("cur_state")),
            status_msg=_opt_s(row.get("status_msg")),
            label=_opt_s(row.get("label")),
            gpu_name=_s(row.get("gpu_name")),
            num_gpus=_i(row.get("num_gpus"), 1),
            gpu_ram=_f(row.get("gpu_ram")),
            dph_total=_f(row.get("dph_total")),
            disk_space=_f(row.get("disk_space")),
            start_date=_f(start) if start is not None else None,
            public_ipaddr=_opt_s(row.get("public_ipaddr")),
            ports=ports if isinstance(ports, Mapping) else {},
            ssh_host=_opt_s(row.get("ssh_host")),
            ssh_port=_i(row.get("ssh_port")) if row.get("ssh_port") is not None else None,
            machine_id=_i(row.get("machine_id")),
            image_uuid=_opt_s(row.get("image_uuid")),
            extra_env=extra,
            raw=dict(row),
        )

    @property
    def status(self) -> str:
        """``actual_status`` for display: ``provisioning`` while the API says ``null``."""
        return self.actual_status or "provisioning"

    def host_port(self, port: int, proto: str = "tcp") -> int | None:
        """The public port mapped to container ``port`` (every client takes binding 0)."""
        bindings = self.ports.get(f"{port}/{proto}")
        if not isinstance(bindings, list) or not bindings:
            return None
        first = bindings[0]
        value = first.get("HostPort") if isinstance(first, Mapping) else None
        return _i(value) or None

    def endpoint(self, port: int) -> str | None:
        """``http://public_ip:host_port`` of container ``port`` once running, else None."""
        mapped = self.host_port(port)
        if self.actual_status != "running" or not self.public_ipaddr or mapped is None:
            return None
        return f"http://{self.public_ipaddr}:{mapped}"


# ---------------------------------------------------------------- the client


class _Retry(Exception):
    """An answer or failure the retry loop may try again."""

    def __init__(self, error: VastError, wait: float | None) -> None:
        self.error = error
        self.wait = wait


def _message(response: httpx.Response) -> tuple[str, str]:
    """``(error code, message)`` from any of vast's body shapes (§6.1), never empty."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip().splitlines()
        return "", (text[0][:200] if text else response.reason_phrase)
    if not isinstance(body, Mapping):
        return "", str(body)[:200]
    code = _s(body.get("error"))
    msg = body.get("msg") or body.get("message") or body.get("detail") or code
    return code, (_s(msg)[:200] or response.reason_phrase)


class VastClient:
    """vast.ai's REST API. Thread-safe (httpx.Client is). Key: the ``key`` argument (a
    plain string or a pydantic ``SecretStr``, e.g. a ``comfyfleet-vast`` block's), else
    ``$VAST_API_KEY``; server: ``url``, else ``$VAST_URL``, else console.vast.ai."""

    def __init__(
        self,
        key: str | SecretStr | None = None,
        *,
        url: str | None = None,
        settings: VastSettings | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        plain = key.get_secret_value() if isinstance(key, SecretStr) else key
        plain = (plain or "").strip() or env(KEY_ENV)
        if not plain:
            raise ConfigError("no vast.ai API key", hint=_KEY_HINT)
        self._key = SecretStr(plain)
        self.url = (url or env(URL_ENV) or DEFAULT_VAST_URL).rstrip("/")
        self.settings = settings or VastSettings()
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=httpx.Timeout(self.settings.request_timeout_s))
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"VastClient(url={self.url!r}, key=set)"

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> VastClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ calls

    def search_offers(self, query: Mapping[str, Any]) -> list[Offer]:
        """Offers matching ``query`` (the §2.2 query object: ``{column: {op: value}}`` plus
        ``order``, ``type``, ``limit``, ``allocated_storage``)."""
        body = self._call("POST", "/api/v0/bundles/", "search offers", json_body=dict(query))
        rows = body.get("offers")
        if not isinstance(rows, list):
            raise VastError(
                f"vast.ai search answered without an offers list ({self.url})",
                hint=f"check that {URL_ENV} points at vast.ai's API server",
            )
        return [Offer.from_api(r) for r in rows if isinstance(r, Mapping)]

    def create_instance(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str,
        onstart: str,
        env: Mapping[str, str],
        runtype: str = "ssh_direc ssh_proxy",
    ) -> int:
        """Rent ``offer_id``; returns the new instance id. :class:`OfferGone` when the offer
        was taken (take the next one). Not retried after a 5xx or a dropped connection (the
        first attempt may have rented)."""
        payload = {
            "client_id": "me",
            "image": image,
            "disk": disk_gb,
            "label": label,
            "onstart": onstart,
            "env": dict(env),
            "runtype": runtype,
            "cancel_unavail": True,
        }
        body = self._call(
            "PUT",
            f"/api/v0/asks/{int(offer_id)}/",
            f"rent offer {offer_id}",
            json_body=payload,
            idempotent=False,
        )
        if not body.get("success") or body.get("new_contract") is None:
            code, msg = _s(body.get("error")), _s(body.get("msg") or body.get("message"))
            raise VastError(
                f"vast.ai did not rent offer {offer_id}: {msg or code or 'success: false'}",
                hint="run `comfyfleet instances ls` to see whether it appeared stopped",
            )
        return _i(body["new_contract"])

    def list_instances(self, *, label: str | None = None) -> list[Instance]:
        """Every instance of the account (``label``: only those with exactly this label)."""
        return list(self._pages(label))

    def show_instance(self, instance_id: int) -> Instance:
        """One instance; :class:`InstanceNotFound` when it does not exist (any more)."""
        body = self._call(
            "GET",
            f"/api/v0/instances/{int(instance_id)}/",
            f"show instance {instance_id}",
            params={"owner": "me"},
        )
        row = body.get("instances")
        if not isinstance(row, Mapping):
            raise InstanceNotFound(
                f"vast.ai instance {instance_id} not found or no longer exists", status=200
            )
        return Instance.from_api(row)

    def label_instance(self, instance_id: int, label: str) -> None:
        self._call(
            "PUT",
            f"/api/v0/instances/{int(instance_id)}/",
            f"label instance {instance_id}",
            json_body={"label": label},
        )

    def destroy_instance(self, instance_id: int, *, missing_ok: bool = False) -> bool:
        """Destroy ``instance_id`` (billing stops). True when destroyed now; with
        ``missing_ok``, False when it was already gone."""
        try:
            self._call(
                "DELETE",
                f"/api/v0/instances/{int(instance_id)}/",
                f"destroy instance {instance_id}",
                json_body={},
            )
        except InstanceNotFound:
            if missing_ok:
                return False
            raise
        return True

    # ------------------------------------------------------------ plumbing

    def _pages(self, label: str | None) -> Iterator[Instance]:
        params: dict[str, str] = {"limit": str(LIST_PAGE_LIMIT)}
        if label is not None:
            params["select_filters"] = json.dumps({"label": {"eq": label}})
        token: str | None = None
        for _ in range(_MAX_PAGES):
            if token:
                params["after_token"] = token
            body = self._call("GET", "/api/v1/instances/", "list instances", params=params)
            for row in body.get("instances") or []:
                if isinstance(row, Mapping):
                    instance = Instance.from_api(row)
                    # The filter is the server's; checking again costs nothing.
                    if label is None or instance.label == label:
                        yield instance
            token = _opt_s(body.get("next_token"))
            if not token:
                return
        raise VastError(
            f"vast.ai kept paging the instance list past {_MAX_PAGES} pages",
            hint="report this; the server's next_token never ended",
        )

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
    ) -> dict[str, Any]:
        attempts = max(1, self.settings.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                return self._once(method, path, what, json_body, params, idempotent)
            except _Retry as retry:
                if attempt == attempts or (
                    retry.wait is not None and retry.wait > self.settings.max_retry_after_s
                ):
                    raise retry.error from None
                wait = retry.wait
                if wait is None:
                    wait = self.settings.backoff_s * 2 ** (attempt - 1)
                self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self,
        method: str,
        path: str,
        what: str,
        json_body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        idempotent: bool,
    ) -> dict[str, Any]:
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "User-Agent": f"comfyfleet/{__version__}",
            "Accept": "application/json",
        }
        try:
            response = self._http.request(
                method, self.url + path, headers=headers, json=json_body, params=params
            )
        except httpx.HTTPError as exc:
            error = VastUnavailable(
                f"vast.ai {what}: {type(exc).__name__} reaching {self.url}",
                hint=f"check the network and {URL_ENV}; then run the command again",
            )
            if idempotent:
                raise _Retry(error, None) from None
            raise error from None
        if response.status_code < 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise VastError(
                    f"vast.ai {what}: HTTP {response.status_code} without a JSON object",
                    status=response.status_code,
                    hint=f"check that {URL_ENV} points at vast.ai's API server",
                )
            return body
        raise self._translate(response, what, idempotent)

    def _translate(self, response: httpx.Response, what: str, idempotent: bool) -> Exception:
        status = response.status_code
        code, msg = _message(response)
        fact = f"vast.ai {what}: HTTP {status} {msg}".rstrip()
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if code == "search_quota_exceeded":
                reset = response.headers.get("X-RateLimit-Reset", "")
                return VastRateLimited(
                    fact,
                    retry_after=retry_after,
                    hint=f"the daily search quota resets at UTC midnight (epoch {reset})"
                    if reset
                    else "the daily search quota resets at UTC midnight",
                )
            return _Retry(
                VastRateLimited(
                    fact,
                    retry_after=retry_after,
                    hint="vast.ai limits calls per endpoint; wait a minute and run it again",
                ),
                retry_after,
            )
        if status in (401, 403):
            return VastAuthError(fact, status=status, hint=_KEY_HINT)
        if code == "missing_billing" or any(w in msg.lower() for w in ("credit", "billing")):
            return InsufficientCredit(fact, status=status, hint=_CREDIT_HINT)
        if code == "no_such_ask" or (status in (404, 410) and "/asks/" in str(response.url)):
            return OfferGone(fact, status=status, hint="take the next offer")
        if status == 404 and "/instances/" in str(response.url):
            return InstanceNotFound(
                fact, status=status, hint="`comfyfleet instances ls` lists what exists"
            )
        if status >= 500:
            error = VastUnavailable(
                fact, status=status, hint="vast.ai is having trouble; run the command again"
            )
            return _Retry(error, None) if idempotent else error
        return VastError(fact, status=status, hint="check the arguments; vast.ai refused them")


__all__ = ["DEFAULT_VAST_URL", "Instance", "Offer", "VastClient", "VastSettings"]
