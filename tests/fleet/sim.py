"""A fleet on 127.0.0.1: the vast.ai test server whose instances are a ComfyUI test server
behind a real gateway (:mod:`comfyfleet.fleet.gateway`) each.

The double's seams do the wiring: ``port_for`` binds the gateway's listening socket when an
instance is created (its port is the instance's published port), ``on_create`` starts the
instance's ComfyUI and its gateway with the token from the create call's env, ``on_destroy``
stops both. An instance numbered in ``broken`` gets a gateway but no ComfyUI behind it (a
failed warm-up: ``/healthz`` answers, every ComfyUI call is a 502).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

from comfyfleet.fleet.access import GATEWAY_PORT, GATEWAY_TOKEN_ENV
from comfyfleet.fleet.gateway import Gateway, bind, server
from tests.doubles.comfyui import FakeComfyUI
from tests.doubles.vast import FakeVast, InstanceRecord


class GatewayThread:
    """A gateway under uvicorn in a thread, on a socket bound beforehand."""

    def __init__(self, upstream: str, token: str, sock: socket.socket) -> None:
        self._sock = sock
        self._server = server(Gateway(upstream, token, read_timeout=10))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
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
    boxes: dict[int, Box] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sockets: dict[int, socket.socket] = {}
        self._lock = threading.Lock()
        self.vast.provision_s = 0.0
        self.vast.load_s = 0.0
        self.vast.port_for = self._port_for
        self.vast.on_create = self._create
        self.vast.on_destroy = self._destroy

    def _port_for(self, instance_id: int, container_port: int) -> int:
        if container_port != GATEWAY_PORT:  # ssh (22) of a direct-runtype instance
            return 40000 + instance_id % 1000
        sock = bind("127.0.0.1", 0)
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
        gateway.start()
        self.boxes[record.id] = Box(record, comfy, gateway)

    def _destroy(self, record: InstanceRecord) -> None:
        self.destroyed.append(record.id)
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
