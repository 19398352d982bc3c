"""ComfyUI as a supervised process: start it, log it, wait until it is ready, stop it.

- :class:`ComfyProcess` runs a shell command (the user's way of starting ComfyUI) in its
  own process group with output appended to a log file, and with the Hugging Face family
  of libraries switched offline (:data:`OFFLINE_ENV`): models come from the mirror, and a
  custom node that tries to download behind its back fails loudly instead.
- :func:`url_for_command` finds where that command makes ComfyUI listen (``--listen`` and
  ``--port`` as ComfyUI's ``cli_args.py`` parses them; defaults 127.0.0.1:8188).
- :func:`wait_ready` polls a :class:`ComfyProbe` until ``/system_stats`` answers and every
  expected model file is listed, failing at once if the process exits.
- :func:`device_facts` reads ``/system_stats``' first device; on a CPU ComfyUI its
  ``vram_total`` is system RAM and is not reported as VRAM.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from comfyfleet.errors import ComfyConnectionError, ComfyError, ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8188  # ComfyUI's cli_args.py default
# Device types whose "vram_total" in /system_stats is system RAM, not VRAM.
SHARED_MEMORY_DEVICES = ("cpu", "mps")

# Set for the started ComfyUI so nothing it loads can fetch weights on its own.
OFFLINE_ENV: Mapping[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DIFFUSERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}


class ComfyProbe(Protocol):
    """What readiness needs from a ComfyUI client (``comfy.client.ComfyClient`` has it)."""

    def system_stats(self) -> dict[str, Any]: ...

    def list_models(self, folder: str) -> list[str]: ...


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def url_for_command(command: str) -> str:
    """The URL a ComfyUI started by ``command`` listens on, read from its ``--listen`` and
    ``--port`` (ComfyUI's defaults otherwise). ``--listen`` without an address, or with
    ``0.0.0.0``/``::``, means every interface: polled on 127.0.0.1."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    host, port = DEFAULT_HOST, DEFAULT_PORT
    for i, word in enumerate(words):
        name, eq, inline = word.partition("=")
        value = inline if eq else (words[i + 1] if i + 1 < len(words) else "")
        if name == "--port":
            try:
                port = int(value)
            except ValueError:
                raise ConfigError(
                    f"--start-comfy passes --port {value!r}, not a port number",
                    hint="fix the command, or pass --comfy-url",
                ) from None
        elif name == "--listen":
            explicit = eq or (value and not value.startswith("-"))
            first = value.split(",")[0].strip() if explicit else ""
            host = DEFAULT_HOST if first in ("", "0.0.0.0", "::") else first
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass
class ComfyProcess:
    """A ComfyUI started by ``command`` in ``cwd``, its output appended to ``log_path``."""

    command: str
    cwd: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        """Start it in its own process group (it outlives the CLI that started it)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - kept by the child
        try:
            log.write(f"\n--- comfyfleet: {self.command}\n".encode())
            log.flush()
            # env(1) adds the offline switches to whatever environment we run in.
            offline = [f"{k}={v}" for k, v in OFFLINE_ENV.items()]
            self.process = subprocess.Popen(
                ["env", *offline, "/bin/sh", "-c", self.command],
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ComfyError(
                f"could not start ComfyUI with {self.command!r}: {exc}",
                hint="check the --start-comfy command",
            ) from exc
        finally:
            log.close()

    def check_alive(self) -> None:
        """Raise ``ComfyError`` with the log's last lines if the process has exited."""
        if self.process is None:
            return
        code = self.process.poll()
        if code is None:
            return
        tail = _tail(self.log_path)
        raise ComfyError(
            f"ComfyUI exited with code {code} while starting ({self.command!r})"
            + (f"; last log lines:\n{tail}" if tail else ""),
            hint=f"see {self.log_path}; run the command by hand in {self.cwd}",
        )

    def stop(self) -> None:
        """Stop its whole process group: SIGTERM, then SIGKILL after 10 s."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@dataclass
class Readiness:
    """What :func:`wait_ready` saw: the stats and the files that could not be checked."""

    stats: dict[str, Any]
    unchecked: dict[str, str]


def _poll_listing(
    probe: ComfyProbe, missing: dict[str, set[str]], unchecked: dict[str, str]
) -> None:
    """One round of ``/models/<folder>``: drop what is listed from ``missing``."""
    for folder in list(missing):
        try:
            listed = set(probe.list_models(folder))
        except ComfyConnectionError:
            raise
        except ComfyError as exc:
            # 404: no such folder key (its custom node is not installed).
            for f in missing.pop(folder):
                unchecked[f"models/{folder}/{f}"] = (
                    f"ComfyUI has no model folder {folder!r} ({exc.message})"
                )
            continue
        missing[folder] -= listed
        if not missing[folder]:
            del missing[folder]


def wait_ready(
    probe: ComfyProbe,
    *,
    url: str,
    expected: Mapping[str, set[str]],
    timeout_s: float,
    check_alive: Callable[[], None] = lambda: None,
    log_path: str | None = None,
    interval_s: float = 0.25,
) -> Readiness:
    """Poll until ComfyUI answers ``/system_stats`` and lists every ``expected`` file
    (HTTP folder key -> file names); a folder ComfyUI does not know is reported in
    ``unchecked`` instead. ``check_alive`` raises when a started process has died."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] | None = None
    missing = {k: set(v) for k, v in expected.items()}
    unchecked: dict[str, str] = {}
    last_error = ""
    while True:
        check_alive()
        try:
            if stats is None:
                stats = probe.system_stats()
            _poll_listing(probe, missing, unchecked)
            if not missing:
                return Readiness(stats, unchecked)
            last_error = "not listed yet: " + ", ".join(
                f"models/{k}/{f}" for k, v in sorted(missing.items()) for f in sorted(v)[:3]
            )
        except ComfyConnectionError as exc:
            last_error = exc.message
        if time.monotonic() >= deadline:
            if stats is None:
                raise ComfyConnectionError(
                    f"ComfyUI at {url} did not answer within {timeout_s:.0f} s ({last_error})",
                    hint="check that ComfyUI runs and --comfy-url is right"
                    + (f"; its log: {log_path}" if log_path else ""),
                )
            raise ComfyError(
                f"ComfyUI at {url} answers but does not list the placed models "
                f"after {timeout_s:.0f} s ({last_error})",
                hint="--comfy-url and --comfy-root (or --models-dir) must be the same "
                "ComfyUI; with models outside the tree ComfyUI reads extra_model_paths.yaml "
                "only at start: restart it",
            )
        time.sleep(interval_s)


@dataclass(frozen=True)
class DeviceFacts:
    """ComfyUI's version and first device; ``vram_total`` is ``None`` unless the device
    has VRAM of its own (on ``type: cpu`` ComfyUI reports system RAM there)."""

    version: str = ""
    device: str = ""
    device_type: str = ""
    vram_total: int | None = None


def device_facts(stats: Mapping[str, Any]) -> DeviceFacts:
    """:class:`DeviceFacts` from a ``/system_stats`` answer."""
    system = stats.get("system", {})
    devices = stats.get("devices", [])
    version = str(system.get("comfyui_version", "")) if isinstance(system, Mapping) else ""
    if not devices or not isinstance(devices[0], Mapping):
        return DeviceFacts(version=version)
    first = devices[0]
    kind = str(first.get("type", ""))
    name = str(first.get("name", ""))
    # ComfyUI's get_total_memory() answers psutil's RAM for cpu and for mps (unified memory).
    shared = kind in SHARED_MEMORY_DEVICES or (not kind and name in SHARED_MEMORY_DEVICES)
    total = first.get("vram_total")
    vram = int(total) if isinstance(total, int | float) and not shared else None
    return DeviceFacts(version=version, device=name, device_type=kind, vram_total=vram)
