"""A fleet on 127.0.0.1: the vast.ai test server whose instances are a ComfyUI test server
behind a real gateway (:mod:`comfyfleet.fleet.gateway`) each.

The double's seams do the wiring: ``port_for`` binds the gateway's listening socket when an
instance is created (its port is the instance's published port), ``on_create`` starts the
instance's ComfyUI and its gateway with the token from the create call's env, ``on_destroy``
stops both. An instance numbered in ``broken`` gets a gateway but no ComfyUI behind it (a
failed warm-up: ``/healthz`` answers, every ComfyUI call is a 502).

With ``emit`` set, each instance also reports as the fleet on-start script does (same event
names, resource and payload keys): ``comfyfleet.warmup.finished`` (``exit_code`` 1 for a
``broken`` one), then ``comfyfleet.instance.ready`` with its endpoint, except the ones
numbered in ``silent``, whose ready event never comes although their gateway and ComfyUI
answer (lost on the way). As in the script, the gateway starts when the warm-up passed: for
the ones numbered in ``late`` (nth -> seconds) that long after their creation, together with
the ready event (a slower warm-up); for the ones numbered in ``hung`` never (a warm-up that
never ends: no gateway, no event). :func:`prefect_emitter` sends them to the Prefect
test server; :class:`EventLog` keeps them in memory as an event source for the core alone.
"""

from __future__ import annotations

import contextvars
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from comfyfleet.fleet.access import GATEWAY_PORT, GATEWAY_TOKEN_ENV
from comfyfleet.fleet.gateway import Gateway, server
from comfyfleet.fleet.instance_events import InstanceEvent, parse_event
from comfyfleet.render.onstart_steps import resource
from comfyfleet.warmup.events import INSTANCE_READY, WARMUP_FINISHED
from tests.doubles.comfyui import FakeComfyUI
from tests.doubles.vast import TEST_KEY, FakeVast, InstanceRecord

# Each test's vast.ai double numbers its instances from a fresh block, as vast.ai never
# reuses an id: the session's one Prefect server keeps every test's events, and a later
# test's instance must not find an earlier one's ready event under its own id.
_ID_BLOCKS = itertools.count(31840215, 1000)

# (event name, resource, payload): what `prefect event emit` sends from an instance.
Emit = Callable[[str, dict[str, str], dict[str, Any]], None]


def vast_of_its_own(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVast]:
    """For a test module's ``vast`` fixture (``yield from vast_of_its_own(monkeypatch)``):
    the vast.ai test server as ``VAST_URL`` + ``VAST_API_KEY``, its instance ids a block no
    other test of the session uses."""
    with FakeVast(first_instance_id=next(_ID_BLOCKS)) as fake:
        monkeypatch.setenv("VAST_URL", fake.url)
        monkeypatch.setenv("VAST_API_KEY", TEST_KEY)
        yield fake


def prefect_emitter(*, failures_stored: bool = False) -> Emit:
    """Emit into the Prefect server of the caller's settings context (the test harness's):
    instances are created on the vast.ai double's server thread, which would not see it.

    With ``failures_stored``, a failed warm-up's event is in the server's event store (read
    back as the fleet reads it) before the emit returns, so before the instance's create
    call answers: a test about what the batch does with that event does not race the
    store's flush against how fast the other instances finish the batch."""
    from prefect.events import emit_event

    from flows.fleet import PrefectInstanceEvents

    context = contextvars.copy_context()

    def stored(instance_id: int) -> None:
        read = PrefectInstanceEvents()
        deadline = time.monotonic() + 30
        while not any(e.failed for e in read([instance_id])):
            assert time.monotonic() < deadline, f"instance {instance_id}'s event not stored"
            time.sleep(0.1)

    def emit(name: str, res: dict[str, str], payload: dict[str, Any]) -> None:
        context.copy().run(emit_event, event=name, resource=res, payload=payload)
        event = parse_event(name, res["prefect.resource.id"], payload, time.time())
        if failures_stored and event is not None and event.failed:
            context.copy().run(stored, event.instance_id)

    return emit


class EventLog:
    """Instance events kept in memory: an ``emit`` for :class:`SimFleet` and the matching
    event source (:data:`comfyfleet.fleet.instance_events.EventSource`)."""

    def __init__(self) -> None:
        self.events: list[InstanceEvent] = []
        self.reads = 0

    def emit(self, name: str, res: dict[str, str], payload: dict[str, Any]) -> None:
        event = parse_event(name, res["prefect.resource.id"], payload, time.time())
        assert event is not None, (name, res, payload)
        self.events.append(event)

    def __call__(self, instance_ids: Sequence[int]) -> list[InstanceEvent]:
        self.reads += 1
        return [e for e in self.events if e.instance_id in instance_ids]


class GatewayThread:
    """A gateway under uvicorn in a thread, on a socket bound beforehand."""

    def __init__(self, upstream: str, token: str, sock: socket.socket) -> None:
        self._sock = sock
        self.app = Gateway(upstream, token, read_timeout=10)
        self._server = server(self.app)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def start(self) -> None:
        self._sock.listen(1024)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.ident is not None:  # a hung warm-up never started it
            self._thread.join(10)
        self._sock.close()


@dataclass
class Box:
    """One simulated instance."""

    record: InstanceRecord
    comfy: FakeComfyUI | None
    gateway: GatewayThread


@dataclass
class SimFleet:
    vast: FakeVast
    execution_time: float = 0.05
    broken: set[int] = field(default_factory=set)  # 1-based creation order
    silent: set[int] = field(default_factory=set)  # no ready event (1-based creation order)
    late: dict[int, float] = field(default_factory=dict)  # nth -> seconds its warm-up takes
    hung: set[int] = field(default_factory=set)  # warm-up never ends: no gateway, no event
    emit: Emit | None = None
    boxes: dict[int, Box] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    destroyed_at: dict[int, float] = field(default_factory=dict)  # time.monotonic()

    def __post_init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self.vast.run_instances(
            port_for=self._port_for, on_create=self._create, on_destroy=self._destroy
        )

    def _port_for(self, instance_id: int, container_port: int) -> int:
        if container_port != GATEWAY_PORT:  # ssh (22) of a direct-runtype instance
            return 40000 + instance_id % 1000
        # Bound (the port is published now) but listening only once the gateway starts,
        # as on a real instance: until then a connection is refused, not left pending.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as gateway.bind does
        sock.bind(("127.0.0.1", 0))
        self._sockets[instance_id] = sock
        port: int = sock.getsockname()[1]
        return port

    def _create(self, record: InstanceRecord) -> None:
        with self._lock:
            self.created.append(record.id)
            nth = len(self.created)
        comfy = None
        if nth in self.broken:
            upstream = "http://127.0.0.1:9"  # discard port: nothing answers
        else:
            comfy = FakeComfyUI(execution_time=self.execution_time).start()
            comfy.cache_enabled = False
            upstream = comfy.url
        gateway = GatewayThread(upstream, record.env[GATEWAY_TOKEN_ENV], self._sockets[record.id])
        self.boxes[record.id] = Box(record, comfy, gateway)
        if nth in self.hung:
            return  # its port stays bound, not listening: connections are refused

        def warmed_up() -> None:
            if record.id in self.destroyed:
                return  # released while it was still warming up
            gateway.start()
            if self.emit is not None:
                self._report(record, nth, gateway)

        delay = self.late.get(nth)
        if delay is None:
            warmed_up()
            return
        timer = threading.Timer(delay, warmed_up)
        timer.daemon = True
        timer.start()

    def _report(self, record: InstanceRecord, nth: int, gateway: GatewayThread) -> None:
        """The events the fleet on-start script sends (resource ``C.<id>``, the payloads'
        keys as ``onstart_steps`` writes them)."""
        assert self.emit is not None
        res = resource(f"C.{record.id}")
        if nth in self.broken:
            error = {"type": "ComfyError", "message": "ComfyUI did not start"}
            self.emit(WARMUP_FINISHED, res, {"ok": False, "exit_code": 1, "error": error})
            return
        self.emit(WARMUP_FINISHED, res, {"ok": True, "exit_code": 0, "error": None})
        if nth in self.silent:
            return
        port = gateway.port
        payload = {
            "instance_id": f"C.{record.id}",
            "contract_id": str(record.id),
            "endpoint": f"http://127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": str(port),
            "fleet": record.env.get("COMFYFLEET_FLEET", ""),
            "profile": "auto",
            "warmup_s": "0.1",
        }
        self.emit(INSTANCE_READY, res, payload)

    def _destroy(self, record: InstanceRecord) -> None:
        self.destroyed.append(record.id)
        self.destroyed_at[record.id] = time.monotonic()
        box = self.boxes.get(record.id)
        if box is not None:
            box.gateway.stop()
            if box.comfy is not None:
                box.comfy.stop()

    def kill(self, instance_id: int) -> None:
        """The instance's ComfyUI dies right after the prompt it is running: listener closed,
        every connection aborted, the prompts queued on it lost (the gateway stays: 502 from
        then on). Not ``FakeComfyUI.stop()``: that interrupts the running prompt and tells
        the client so (``execution_interrupted``), which a killed ComfyUI never does."""
        comfy = self.boxes[instance_id].comfy
        assert comfy is not None
        comfy.die_after_prompts = len(comfy.timeline) + 1

    def close(self) -> None:
        for instance_id, box in self.boxes.items():
            if instance_id not in self.destroyed:
                box.gateway.stop()
                if box.comfy is not None:
                    box.comfy.stop()

    def accepted(self, instance_id: int) -> int:
        comfy = self.boxes[instance_id].comfy
        return 0 if comfy is None else len(comfy.accepted)
