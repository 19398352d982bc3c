"""Process-backed instances for the vast.ai test server (tests/doubles/vast.py).

Every instance the double creates is a real local process tree, as a container would be:

- ``port_for`` picks a free local port as the public port of each ``-p`` request (the
  gateway's 9188 among them);
- ``on_create`` lays out the instance's folder (its "image": a ComfyUI root whose ``main.py``
  serves the disk-backed ComfyUI double, and the catalog file the image ships) and runs the
  on-start script vast.ai was sent (``record.body["onstart"]``, packed or not) with ``bash
  -c`` in that folder, in a process group of its own;
- ``on_destroy`` kills the whole tree (a destroyed container stops at once);
- :meth:`ProcessFleet.kill` kills it mid-run and marks the instance ``stopped`` (an
  interruptible instance outbid: preemption, vast-api.md §4.5).

The script's environment is the container's, in Docker's order: the image's ``ENV``
(``COMFY_ROOT``, ``COMFY_PYTHON``, ``COMFYFLEET_CATALOGS``), then what vast.ai sets and the
create call's ``env`` (:meth:`InstanceRecord.container_env`, §7), then the adjustments a
laptop needs where a rented host has a machine of its own, and only those:

- ``HOME``, ``TMPDIR`` and ``COMFYFLEET_HOME`` inside the instance's folder (the script's
  default home is ``/opt/comfyfleet``); ``PATH`` without the test venv's ``bin``;
- no NAT: the gateway listens on its public port (``COMFYFLEET_GATEWAY_PORT`` = the port
  the double reports for container port 9188) and ComfyUI on a free port
  (``COMFYFLEET_COMFY_PORT``): the instances share one host;
- no network: ``PIP_NO_INDEX=1`` and ``PIP_NO_DEPS=1`` (pip reads both), so the script's
  ``pip install`` installs the wheel alone, and ``PYTHONPATH`` is an overlay of the test
  venv's site-packages *without* comfyfleet (:func:`site_overlay`): the image's
  preinstalled dependencies. comfyfleet itself can only come from the wheel the script
  downloaded from the store; ``COMFYFLEET_PYTHON`` (the image's ``python3``) is the test
  interpreter, so the venv matches the overlay's Python.

Every process of an instance carries :data:`MARK_ENV` in its environment, so whatever
escaped the process group (a daemon that called ``setsid``) is found and killed too
(:func:`marked_pids`), and a test can assert that nothing of an instance is left alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from comfyfleet.fleet.access import GATEWAY_PORT
from tests.doubles.vast import FakeVast, InstanceRecord

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash") or "/bin/bash"
MARK_ENV = "COMFYFLEET_TEST_INSTANCE"
_PORTS = (20_000, 32_000)  # SeaweedFS's fixture takes 15000-30000 and +10000: checked free
# Left out of the overlay: comfyfleet's own packages (they must come from the wheel), the
# editable install's hooks, and pip's tooling (the instance venv has its own).
_NOT_IN_OVERLAY = {
    "comfyfleet",
    "flows",
    "blocks",
    "deployments",
    "pip",
    "setuptools",
    "pkg_resources",
    "_distutils_hack",
    "__pycache__",
}
_NOT_IN_OVERLAY_PREFIXES = ("comfyfleet-", "__editable__", "pip-", "setuptools-")

# The image's ComfyUI: the disk-backed ComfyUI double of this checkout (sys.path is set
# here, so the instance's PYTHONPATH stays the overlay), on the port the script gives it.
COMFY_MAIN = """\
import sys
sys.path.insert(0, {repo!r})
from tests.support.comfyui_launcher import main
argv = sys.argv[1:]
port = argv[argv.index("--port") + 1]
sys.exit(main(["--comfy-root", ".", "--port", port, "--execution-time", {execution_time!r}]))
"""


def site_overlay(dest: Path) -> Path:
    """A folder of symlinks to every entry of this interpreter's site-packages except
    comfyfleet's (see the module docstring): ``PYTHONPATH`` for the instances."""
    site = Path(sysconfig.get_paths()["purelib"])
    dest.mkdir(parents=True, exist_ok=True)
    for entry in site.iterdir():
        name = entry.name
        if (
            name in _NOT_IN_OVERLAY
            or name.startswith(_NOT_IN_OVERLAY_PREFIXES)
            or name.endswith(".pth")
        ):
            continue
        (dest / name).symlink_to(entry)
    return dest


def free_port() -> int:
    """A port free on 127.0.0.1 now, below Linux's ephemeral range (32768-60999): the
    instance binds it seconds later, and the many client connections of a test run take
    their local ports from that range meanwhile."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {_PORTS} on 127.0.0.1")


def marked_pids(value: str | None = None) -> dict[int, str]:
    """Live (not zombie) processes whose environment carries :data:`MARK_ENV` (``value``
    exactly, when given): pid -> mark."""
    found: dict[int, str] = {}
    prefix = f"{MARK_ENV}=".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                mark = item[len(prefix) :].decode()
                if value is None or mark == value:
                    found[int(entry)] = mark
                break
    return found


def _kill_marked(value: str) -> None:
    for pid in marked_pids(value):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Image:
    """What a rented image brings: the catalog file it ships and its ComfyUI's speed."""

    catalog: Path
    execution_time: float = 0.0


@dataclass
class Box:
    """One running instance."""

    record: InstanceRecord
    nth: int  # creation order, from 1
    folder: Path
    env: dict[str, str] = field(repr=False)
    proc: subprocess.Popen[bytes]
    mark: str
    started_at: float = field(default_factory=time.time)

    @property
    def home(self) -> Path:
        return Path(self.env["COMFYFLEET_HOME"])

    @property
    def venv_python(self) -> Path:
        return self.home / "venv" / "bin" / "python"

    @property
    def log(self) -> Path:
        return self.folder / "onstart.log"

    @property
    def comfy_url(self) -> str:
        return f"http://127.0.0.1:{self.env['COMFYFLEET_COMFY_PORT']}"

    def logs(self) -> str:
        """Everything the instance wrote: the script's output and the logs in its home."""
        texts = [self.log.read_text(errors="replace")] if self.log.exists() else []
        texts += [p.read_text(errors="replace") for p in sorted(self.home.glob("*.log"))]
        texts += [p.read_text(errors="replace") for p in sorted(self.home.glob("*.json"))]
        return "\n".join(texts)


@dataclass
class ProcessFleet:
    """The wiring of :class:`FakeVast`'s seams (see the module docstring). ``images`` maps
    a creation order (1-based) to another image than ``image``."""

    vast: FakeVast
    root: Path
    overlay: Path
    image: Image
    images: dict[int, Image] = field(default_factory=dict)
    boxes: dict[int, Box] = field(default_factory=dict)
    created: list[int] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._fleet_mark = uuid.uuid4().hex[:12]
        self._public_ports: dict[tuple[int, int], int] = {}
        self.vast.run_instances(
            port_for=self._port_for, on_create=self._create, on_destroy=self._destroy
        )

    # ------------------------------------------------------------ the seams

    def _port_for(self, instance_id: int, container_port: int) -> int:
        port = free_port()
        self._public_ports[(instance_id, container_port)] = port
        return port

    def _create(self, record: InstanceRecord) -> None:
        with self._lock:
            self.created.append(record.id)
            nth = len(self.created)
        image = self.images.get(nth, self.image)
        folder = self.root / f"C.{record.id}"
        comfy_root = folder / "ComfyUI"
        for sub in (folder / "root", folder / "tmp", comfy_root):
            sub.mkdir(parents=True)
        (comfy_root / "main.py").write_text(
            COMFY_MAIN.format(repo=str(REPO), execution_time=str(image.execution_time))
        )
        test_bin = str(Path(sys.executable).parent)
        path = os.pathsep.join(
            p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p != test_bin
        )
        mark = f"{self._fleet_mark}:{record.id}"
        env = {
            "PATH": path,
            "LANG": "C.UTF-8",
            # the image's ENV
            "COMFY_ROOT": str(comfy_root),
            "COMFY_PYTHON": sys.executable,
            "COMFYFLEET_CATALOGS": str(image.catalog),
        }
        env.update(record.container_env())
        env.update(
            {
                "HOME": str(folder / "root"),
                "TMPDIR": str(folder / "tmp"),
                "COMFYFLEET_HOME": str(folder / "comfyfleet"),
                "COMFYFLEET_PYTHON": sys.executable,
                "COMFYFLEET_COMFY_PORT": str(free_port()),
                "PIP_NO_INDEX": "1",
                "PIP_NO_DEPS": "1",
                "PYTHONPATH": str(self.overlay),
                "DO_NOT_TRACK": "1",
                MARK_ENV: mark,
            }
        )
        public = self._public_ports.get((record.id, GATEWAY_PORT))
        if public is not None:
            env["COMFYFLEET_GATEWAY_PORT"] = str(public)
        with (folder / "onstart.log").open("wb") as log:
            proc = subprocess.Popen(
                [BASH, "-c", record.body["onstart"]],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: destroy takes it all
            )
        self.boxes[record.id] = Box(record, nth, folder, env, proc, mark)

    def _destroy(self, record: InstanceRecord) -> None:
        with self._lock:
            self.destroyed.append(record.id)
        box = self.boxes.get(record.id)
        if box is not None:
            self._stop(box)

    # ------------------------------------------------------------ for tests

    def kill(self, instance_id: int) -> None:
        """Preemption: every process of the instance dies at once, and vast.ai shows it
        ``stopped`` (an outbid interruptible instance is stopped, not destroyed)."""
        self.killed.append(instance_id)
        self._stop(self.boxes[instance_id])
        self.vast.set_status(instance_id, "stopped", "preempted: outbid by another renter")

    def _stop(self, box: Box) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(box.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            box.proc.wait(10)
        _kill_marked(box.mark)

    def alive(self, instance_id: int) -> list[int]:
        """The instance's processes still running."""
        box = self.boxes[instance_id]
        return sorted(marked_pids(box.mark))

    def all_alive(self) -> list[int]:
        return sorted(pid for pid, m in marked_pids().items() if m.startswith(self._fleet_mark))

    def ready(self, instance_id: int) -> bool:
        return (self.boxes[instance_id].home / "ready.json").exists()

    def ready_after(self, instance_id: int) -> float | None:
        """Seconds from the instance's start to its ready file (None: never ready)."""
        box = self.boxes[instance_id]
        ready = box.home / "ready.json"
        return ready.stat().st_mtime - box.started_at if ready.exists() else None

    def prompts(self, instance_id: int) -> int:
        """Prompts the instance's ComfyUI accepted so far (done, running, queued); -1 when
        it does not answer (not up yet, or dead)."""
        box = self.boxes.get(instance_id)  # created is appended to before boxes is
        if box is None:
            return -1
        url = box.comfy_url
        try:
            with urllib.request.urlopen(f"{url}/history", timeout=5) as answer:
                done = len(json.load(answer))
            with urllib.request.urlopen(f"{url}/queue", timeout=5) as answer:
                queue = json.load(answer)
        except (OSError, ValueError):
            return -1
        return done + len(queue["queue_running"]) + len(queue["queue_pending"])

    def close(self) -> None:
        """Kill everything every instance started (destroyed or not)."""
        for box in self.boxes.values():
            self._stop(box)
        deadline = time.monotonic() + 10
        while self.all_alive() and time.monotonic() < deadline:
            for pid in self.all_alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
