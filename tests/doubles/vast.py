"""A vast.ai REST API test server on 127.0.0.1 (free port), reproducing vast-api.md §8.

::

    with FakeVast() as vast:
        vast.add_offer(gpu_name="RTX 4090", gpu_ram=24564, dph_base=0.38)
        monkeypatch.setenv("VAST_URL", vast.url)
        monkeypatch.setenv("VAST_API_KEY", TEST_KEY)

Wire behaviour reproduced (section numbers of ``shared/reference/vast-api.md``):

* Auth (§1, §8.2): ``Authorization: Bearer <key>`` or ``?api_key=``; anything else -> 401
  ``{"success": false, "error": "auth_error", "msg": "Invalid user key"}``.
* ``POST /api/v0/bundles/`` and ``PUT /api/v0/search/asks/`` (``{"q": ...}``) (§2, §8.3-5):
  ``eq/neq/gt/gte/lt/lte/in/notin``, numeric strings compared as numbers, ``verified`` ->
  ``verification == "verified"``, ``allocated_storage`` -> ``disk_space >= x`` and priced into
  ``dph_total = dph_base + storage_cost * GB / 720``, ``order``/``limit`` honoured;
  ``Content-Type: application/json`` exactly. Rented offers are no longer listed.
* ``PUT /api/v0/asks/{id}/`` (§3, §8.6-7): needs ``image`` or ``template_hash_id`` (400
  ``invalid_args``); an unknown or rented offer -> 404 ``no_such_ask``; an offer marked busy
  with ``cancel_unavail`` -> 410 ``no_such_ask``; no credit -> 400 ``missing_billing``;
  success -> ``{"success": true, "new_contract": id, "instance_api_key": ...}``.
* Lifecycle (§4.5, §8.8-9): ``actual_status`` ``null`` for ``provision_s``, ``loading`` for
  ``load_s`` more, then ``running`` (with ``ports`` and ``public_ipaddr``), measured on the
  double's clock, which tests move with :meth:`FakeVast.advance`. :meth:`FakeVast.set_status`
  makes an instance land in ``exited``/``unknown``/``offline`` (with ``status_msg``) and stay.
* ``GET /api/v0/instances/{id}/`` -> ``{"instances": {...}}`` / ``{"instances": null}``;
  ``GET /api/v0/instances/`` (v0); ``GET /api/v1/instances/`` pages of <= 25 with
  ``next_token``/``after_token``, ``select_filters`` on stored columns only (400
  ``invalid_request`` for computed ones such as ``dph_total``), ``extra_env`` as ``[[k, v]]``
  (§4, §8.10).
* ``PUT /api/v0/instances/{id}/`` ``{"label"}``/``{"state"}``; ``DELETE`` -> ``{"success":
  true}``, then 404 ``no_such_instance`` (§5, §8.11-12).
* Faults (§8.13): :meth:`FakeVast.fail` answers the next matching requests with a status
  (429 as plain text or JSON, with or without ``Retry-After``; 5xx; the search quota 429 with
  ``X-RateLimit-Reset``); ``min_interval_s`` enforces a per-endpoint minimum interval (§6.3)
  with vast's plain-text 429 and no ``Retry-After``.

Instances are records here. The seam for running them (as threads or real processes) is
:meth:`FakeVast.run_instances`: ``on_create(record)`` / ``on_destroy(record)``, called
outside the lock;
:meth:`InstanceRecord.container_env` gives the in-container contract of §7/§8.15
(``CONTAINER_ID``, ``VAST_CONTAINERLABEL``, ``CONTAINER_API_KEY``, ``PUBLIC_IPADDR``,
``VAST_TCP_PORT_<n>``) plus the user's ``env``; ``port_for(instance_id, container_port)``
chooses the public port of each requested ``-p`` mapping.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.doubles.faults import Recorded, Request, Server

TEST_KEY = "vast-test-key-5e1f0c9a7b:never-print-me"
_CONTROL_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}
_STORED_COLUMNS = {
    "id",
    "label",
    "actual_status",
    "intended_status",
    "cur_state",
    "gpu_name",
    "verification",
    "machine_id",
    "host_id",
    "image_uuid",
}
_ALIASES = {"dph": "dph_total", "dphtotal": "dph_total", "reliability2": "reliability"}
_PORT = re.compile(r"^-p (\d+):(\d+)(?:/(tcp|udp))?$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "neq": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "in": lambda a, b: a in b,
    "notin": lambda a, b: a not in b,
}


def _num(value: Any) -> Any:
    """Numeric strings compare as numbers (the CLI sends ``{"gte": "1"}``)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_num(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    return value


@dataclass
class InstanceRecord:
    """One rented instance as the double keeps it."""

    id: int
    offer: dict[str, Any]
    body: dict[str, Any]
    created_at: float
    api_key: str
    label: str | None
    host_ports: dict[str, str]  # "8188/tcp" -> "41873"
    public_ip: str
    intended_status: str = "running"
    forced_status: str | None = None
    status_msg: str | None = None
    gpu_util: float = 0.0  # the API's sample (0-1), reported while running

    @property
    def env(self) -> dict[str, str]:
        """The plain variables of the create call's ``env`` (port requests left out)."""
        raw = self.body.get("env") or {}
        return {k: str(v) for k, v in raw.items() if not k.startswith("-")}

    def container_env(self) -> dict[str, str]:
        """What the platform sets inside the container (§7), then the user's variables."""
        out = {
            "CONTAINER_ID": str(self.id),
            "VAST_CONTAINERLABEL": f"C.{self.id}",
            "CONTAINER_API_KEY": self.api_key,
            "PUBLIC_IPADDR": self.public_ip,
            "GPU_COUNT": str(self.offer.get("num_gpus", 1)),
        }
        for key, host_port in self.host_ports.items():
            port, proto = key.split("/")
            out[f"VAST_{proto.upper()}_PORT_{port}"] = host_port
        out.update(self.env)
        return out


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path: str | None
    retry_after: str | None
    text: str | None
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class FakeVast:
    """The test server. ``url`` is what ``VAST_URL`` would be."""

    keys: set[str] = field(default_factory=lambda: {TEST_KEY})
    provision_s: float = 5.0
    load_s: float = 30.0
    credit: float = 100.0
    public_ip: str = "127.0.0.1"
    busy_offers: set[int] = field(default_factory=set)
    on_create: Callable[[InstanceRecord], None] | None = None
    on_destroy: Callable[[InstanceRecord], None] | None = None
    port_for: Callable[[int, int], int] | None = None
    # Instance ids count up from here (tests sharing one Prefect server give each double
    # its own range, so runs and events named after an instance are that test's).
    first_instance_id: int = 31840215
    # Per-endpoint minimum interval (§6.3): "METHOD /path/prefix" -> seconds between calls;
    # a call sooner gets a plain-text 429 without Retry-After, as vast.ai answers.
    min_interval_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.offers: dict[int, dict[str, Any]] = {}
        self.rented_offers: set[int] = set()
        self.instances: dict[int, InstanceRecord] = {}
        self.destroyed: dict[int, InstanceRecord] = {}
        self.requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._offset = 0.0
        self._offer_ids = itertools.count(27418063)
        self._instance_ids = itertools.count(self.first_instance_id)
        self._ports = itertools.count(41800)
        self._last_call: dict[str, float] = {}
        self._server = Server("vast", self._route, self.requests, self._lock)

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> FakeVast:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def now(self) -> float:
        """The double's clock (epoch seconds): wall time plus :meth:`advance`."""
        return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    # ------------------------------------------------------------ knobs

    def add_offer(self, **fields: Any) -> dict[str, Any]:
        """A rentable offer with realistic defaults (§2.5), ``fields`` overriding them."""
        offer_id = fields.pop("id", None) or next(self._offer_ids)
        gpu_ram = fields.get("gpu_ram", 24564)
        num = fields.get("num_gpus", 1)
        offer: dict[str, Any] = {
            "id": offer_id,
            "ask_contract_id": offer_id,
            "bundle_id": 913355021,
            "machine_id": 41000 + offer_id % 1000,
            "host_id": 188204,
            "num_gpus": num,
            "gpu_name": "RTX 4090",
            "gpu_arch": "nvidia",
            "gpu_ram": gpu_ram,
            "gpu_total_ram": gpu_ram * num,
            "compute_cap": 890,
            "cuda_max_good": 12.8,
            "cpu_cores_effective": 16.0,
            "cpu_ram": 129024,
            "disk_space": 412.6,
            "disk_bw": 3120.4,
            "inet_down": 2380.5,
            "inet_up": 1875.2,
            "direct_port_count": 99,
            "dph_base": 0.38,
            "storage_cost": 0.15,
            "min_bid": 0.21,
            "reliability": 0.9962,
            "reliability2": 0.9962,
            "verification": "verified",
            "vericode": 1,
            "rentable": True,
            "rented": False,
            "is_bid": False,
            "external": False,
            "hosting_type": 0,
            "public_ipaddr": "203.0.113.57",
            "geolocation": "Oregon, US",
            "score": 287.9,
        }
        offer.update(fields)
        offer["gpu_total_ram"] = fields.get("gpu_total_ram", offer["gpu_ram"] * offer["num_gpus"])
        with self._lock:
            self.offers[offer_id] = offer
        return offer

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
        retry_after: str | None = None,
        text: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``times`` requests (matching ``method`` and a ``path`` substring,
        when given) with ``status``: ``text`` as plain text, else ``body`` (default: vast's
        ``{"success": false, "error", "msg"}`` shape for the status)."""
        with self._lock:
            self._faults.append(
                _Fault(status, times, method, path, retry_after, text, body, headers or {})
            )

    def run_instances(
        self,
        *,
        port_for: Callable[[int, int], int],
        on_create: Callable[[InstanceRecord], None],
        on_destroy: Callable[[InstanceRecord], None],
    ) -> None:
        """Back every instance created from now on with something that runs (see the module
        docstring's seams): the image is there, so an instance is ``running`` at once (the
        clock of §4.5 at zero); ``port_for`` picks each public port, ``on_create`` starts
        the instance, ``on_destroy`` stops it."""
        with self._lock:
            self.provision_s = 0.0
            self.load_s = 0.0
            self.port_for = port_for
            self.on_create = on_create
            self.on_destroy = on_destroy

    def backdate(self, instance_id: int, seconds: float) -> None:
        """Make an instance ``seconds`` older (its rent earlier), e.g. to exceed a max age."""
        with self._lock:
            self.instances[instance_id].created_at -= seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def set_status(self, instance_id: int, status: str, msg: str | None = None) -> None:
        """Make an instance land in ``status`` (e.g. ``exited``) and stay there."""
        with self._lock:
            record = self.instances[instance_id]
            record.forced_status = status
            record.status_msg = msg

    # ------------------------------------------------------------ wire views

    def status_of(self, record: InstanceRecord) -> str | None:
        if record.forced_status is not None:
            return record.forced_status
        if record.intended_status == "stopped":
            return "stopped"
        age = self.now() - record.created_at
        if age < self.provision_s:
            return None
        if age < self.provision_s + self.load_s:
            return "loading"
        return "running"

    def _instance_json(self, record: InstanceRecord) -> dict[str, Any]:
        status = self.status_of(record)
        offer = record.offer
        disk = float(record.body.get("disk") or 10)
        env_pairs = [[k, str(v)] for k, v in (record.body.get("env") or {}).items()]
        running = status == "running"
        msg = record.status_msg or (
            f"success, running {record.body.get('image')}/ssh" if running else None
        )
        return {
            "id": record.id,
            "machine_id": offer["machine_id"],
            "host_id": offer["host_id"],
            "actual_status": status,
            "intended_status": record.intended_status,
            "cur_state": "running" if record.intended_status == "running" else "stopped",
            "next_state": record.intended_status,
            "status_msg": msg,
            "label": record.label,
            "image_uuid": record.body.get("image"),
            "image_runtype": record.body.get("runtype") or "ssh",
            "onstart": record.body.get("onstart"),
            "extra_env": env_pairs,
            "num_gpus": offer["num_gpus"],
            "gpu_name": offer["gpu_name"],
            "gpu_ram": offer["gpu_ram"],
            "gpu_totalram": offer["gpu_total_ram"],
            "cuda_max_good": offer["cuda_max_good"],
            "gpu_util": record.gpu_util if running else None,
            "disk_space": disk,
            "public_ipaddr": record.public_ip if running else None,
            "local_ipaddrs": "172.17.0.4 \n",
            "ssh_host": "ssh5.vast.ai",
            "ssh_port": 20000 + record.id % 1000,
            "ports": (
                {k: [{"HostIp": "0.0.0.0", "HostPort": v}] for k, v in record.host_ports.items()}
                if running
                else {}
            ),
            "dph_base": offer["dph_base"],
            "dph_total": round(offer["dph_base"] + offer["storage_cost"] * disk / 720, 6),
            "storage_cost": offer["storage_cost"],
            "is_bid": False,
            "start_date": record.created_at,
            "uptime_mins": round((self.now() - record.created_at) / 60, 2) if running else None,
            "reliability2": offer["reliability2"],
            "verification": offer["verification"],
            "geolocation": offer["geolocation"],
            "inet_down": offer["inet_down"],
            "inet_up": offer["inet_up"],
        }

    # ------------------------------------------------------------ routing

    def _route(self, req: Request) -> None:
        if self._fault(req) or self._too_soon(req):
            return
        key = req.bearer if req.headers.get("authorization", "").startswith("Bearer ") else None
        key = key or req.param("api_key")
        if key not in self.keys:
            req.send_json(401, {"success": False, "error": "auth_error", "msg": "Invalid user key"})
            return
        path = req.path if req.path.endswith("/") else req.path + "/"
        body = self._json_body(req)
        if body is None:
            req.send_json(400, {"success": False, "error": "invalid_args", "msg": "bad JSON"})
            return
        m = re.fullmatch(r"/api/v0/asks/([^/]+)/", path)
        if path == "/api/v0/bundles/" and req.method == "POST":
            self._search(req, body)
        elif path == "/api/v0/search/asks/" and req.method == "PUT":
            self._search(req, body.get("q") or {})
        elif m and req.method == "PUT":
            self._create(req, m.group(1), body)
        elif path == "/api/v0/instances/" and req.method == "GET":
            with self._lock:
                rows = [self._instance_json(r) for r in self.instances.values()]
            req.send_json(200, {"instances_found": len(rows), "instances": rows})
        elif path == "/api/v1/instances/" and req.method == "GET":
            self._list_v1(req)
        elif path == "/api/v0/users/current/" and req.method == "GET":
            req.send_json(200, {"id": 1, "email": "test@example.com", "credit": self.credit})
        elif m2 := re.fullmatch(r"/api/v0/instances/([^/]+)/", path):
            self._instance_route(req, m2.group(1), body)
        else:
            req.send_json(404, {"success": False, "error": "not_found", "msg": "no such route"})

    def _too_soon(self, req: Request) -> bool:
        for endpoint, interval in self.min_interval_s.items():
            method, prefix = endpoint.split(" ", 1)
            if req.method != method or not req.path.startswith(prefix):
                continue
            now = time.monotonic()
            with self._lock:
                last = self._last_call.get(endpoint)
                if last is not None and now - last < interval:
                    too_soon = True
                else:
                    too_soon = False
                    self._last_call[endpoint] = now
            if too_soon:
                text = f"API requests too frequent: endpoint threshold={interval}"
                req.send(429, text.encode(), content_type="text/plain")
                return True
        return False

    def _json_body(self, req: Request) -> dict[str, Any] | None:
        if not req.body:
            return {}
        try:
            data = json.loads(req.body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _fault(self, req: Request) -> bool:
        with self._lock:
            for fault in self._faults:
                if (fault.method and fault.method != req.method) or (
                    fault.path and fault.path not in req.path
                ):
                    continue
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                break
            else:
                return False
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        if fault.text is not None:
            req.send(fault.status, fault.text.encode(), headers, content_type="text/plain")
            return True
        default: dict[str, Any] = (
            {"detail": "API requests too frequent endpoint threshold=2.0"}
            if fault.status == 429
            else {"success": False, "error": "server_error", "msg": "Internal error"}
        )
        req.send_json(fault.status, fault.body or default, headers)
        return True

    def _search(self, req: Request, query: dict[str, Any]) -> None:
        storage = float(_num(query.get("allocated_storage", 5.0)))
        with self._lock:
            candidates = [o for oid, o in self.offers.items() if oid not in self.rented_offers]
        priced = []
        for offer in candidates:
            row = dict(offer)
            row["dph_total"] = round(row["dph_base"] + row["storage_cost"] * storage / 720, 6)
            if row["disk_space"] >= storage and self._matches(row, query):
                priced.append(row)
        for column, direction in reversed(query.get("order") or [["score", "desc"]]):
            column = _ALIASES.get(column, column)
            priced.sort(key=lambda r, c=column: _num(r.get(c)) or 0, reverse=direction == "desc")
        limit = query.get("limit")
        if limit is not None:
            priced = priced[: int(_num(limit))]
        raw = json.dumps({"offers": priced}).encode()
        req.send(200, raw, content_type="application/json")

    def _matches(self, row: dict[str, Any], query: dict[str, Any]) -> bool:
        for column, ops in query.items():
            if column in _CONTROL_KEYS or not isinstance(ops, dict):
                continue
            if column == "verified":
                value: Any = row.get("verification") == "verified"
            else:
                column = _ALIASES.get(column, column)
                if column not in row:
                    return False
                value = row[column]
            for op, wanted in ops.items():
                if op not in _OPS or not _OPS[op](_num(value), _num(wanted)):
                    return False
        return True

    def _create(self, req: Request, raw_id: str, body: dict[str, Any]) -> None:
        try:
            offer_id = int(raw_id)
        except ValueError:
            req.send_json(
                400, _invalid(f"'id' is required and must be a valid offer ID ({raw_id})")
            )
            return
        if not body.get("image") and not body.get("template_hash_id"):
            req.send_json(400, _invalid("image or template_hash_id is required"))
            return
        for key in body.get("env") or {}:
            if key.startswith("-p ") and not _PORT.match(key):
                req.send_json(400, _invalid(f"bad port request {key!r}"))
                return
        with self._lock:
            offer = self.offers.get(offer_id)
            if offer is None or offer_id in self.rented_offers:
                gone = {
                    "success": False,
                    "error": "no_such_ask",
                    "msg": f"error 404/3603: no_such_ask Instance type by id {offer_id} is not "
                    "available.",
                    "ask_id": offer_id,
                }
                req.send_json(404, gone)
                return
            if offer_id in self.busy_offers and body.get("cancel_unavail", True):
                msg = (
                    f"error 410/3907: no_such_ask Instance type {offer_id} is no longer available."
                )
                req.send_json(410, {"success": False, "error": "no_such_ask", "msg": msg})
                return
            if self.credit <= 0:
                req.send_json(400, _no_credit())
                return
            self.rented_offers.add(offer_id)
            instance_id = next(self._instance_ids)
            ports: dict[str, str] = {}
            requested = [m for k in (body.get("env") or {}) if (m := _PORT.match(k))]
            if "direc" in str(body.get("runtype") or ""):
                requested.append(_PORT.match("-p 22:22"))  # type: ignore[arg-type]
            for match in requested:
                internal, proto = int(match.group(2)), match.group(3) or "tcp"
                public = (
                    self.port_for(instance_id, internal)
                    if self.port_for is not None
                    else next(self._ports)
                )
                ports[f"{internal}/{proto}"] = str(public)
            record = InstanceRecord(
                id=instance_id,
                offer=dict(offer),
                body=body,
                created_at=self.now(),
                api_key=uuid.uuid4().hex,
                label=body.get("label"),
                host_ports=ports,
                public_ip=self.public_ip,
            )
            self.instances[instance_id] = record
        if self.on_create is not None:
            self.on_create(record)
        req.send_json(
            200,
            {"success": True, "new_contract": instance_id, "instance_api_key": record.api_key},
        )

    def _list_v1(self, req: Request) -> None:
        try:
            filters = json.loads(req.param("select_filters") or "{}")
            limit = int(req.param("limit") or 25)
        except ValueError:
            req.send_json(400, {"success": False, "error": "invalid_request", "msg": "bad query"})
            return
        bad = [c for c in filters if c not in _STORED_COLUMNS]
        if bad:
            msg = f"Error in query parameters: {bad[0]} is not a valid search key"
            req.send_json(400, {"success": False, "error": "invalid_request", "msg": msg})
            return
        limit = 5 if limit <= 0 else min(limit, 25)
        start = 0
        token = req.param("after_token")
        if token:
            try:
                start = int(json.loads(base64.urlsafe_b64decode(token))["after"])
            except (ValueError, KeyError, TypeError):
                req.send_json(400, {"success": False, "error": "invalid_token", "msg": "bad token"})
                return
        with self._lock:
            rows = [self._instance_json(r) for r in sorted(self.instances.values(), key=_id)]
        rows = [r for r in rows if self._matches(r, filters)]
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        next_token = (
            base64.urlsafe_b64encode(json.dumps({"after": start + limit}).encode()).decode()
            if more
            else None
        )
        req.send_json(
            200,
            {
                "success": True,
                "instances_found": len(page),
                "total_instances": len(rows),
                "next_token": next_token,
                "instances": page,
            },
        )

    def _instance_route(self, req: Request, raw_id: str, body: dict[str, Any]) -> None:
        try:
            instance_id = int(raw_id)
        except ValueError:
            req.send_json(400, _invalid("invalid instance_id"))
            return
        with self._lock:
            record = self.instances.get(instance_id)
        if req.method == "GET":
            req.send_json(200, {"instances": self._instance_json(record) if record else None})
            return
        if record is None:
            req.send_json(
                404,
                {
                    "success": False,
                    "error": "no_such_instance",
                    "msg": f"Instance {instance_id} not found.",
                },
            )
            return
        if req.method == "DELETE":
            with self._lock:
                self.instances.pop(instance_id, None)
                self.destroyed[instance_id] = record
            if self.on_destroy is not None:
                self.on_destroy(record)
            req.send_json(200, {"success": True})
            return
        if req.method != "PUT" or not ({"label", "state"} & set(body)):
            req.send_json(400, _invalid("state or label is required"))
            return
        if "label" in body:
            if len(str(body["label"])) > 1024:
                req.send_json(400, _invalid("label_too_long"))
                return
            record.label = body["label"]
        if "state" in body:
            if body["state"] not in ("running", "stopped"):
                req.send_json(400, {"success": False, "msg": "Invalid target state"})
                return
            if body["state"] == "running" and self.credit <= 0:
                req.send_json(400, _no_credit())
                return
            record.intended_status = body["state"]
        req.send_json(200, {"success": True})


def _id(record: InstanceRecord) -> int:
    return record.id


def _invalid(msg: str) -> dict[str, Any]:
    return {"success": False, "error": "invalid_args", "msg": msg}


def _no_credit() -> dict[str, Any]:
    return {
        "success": False,
        "error": "missing_billing",
        "msg": "You lack credit, see the billing page.",
    }


def running(**kwargs: Any) -> Iterator[FakeVast]:
    """Generator for a pytest fixture: ``yield from running()``."""
    with FakeVast(**kwargs) as vast:
        yield vast
