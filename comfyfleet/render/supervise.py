"""Keep one command running: restart it with backoff when it exits.

The fleet on-start script (``render onstart --via fleet``) runs ComfyUI and the gateway
under this, so a ComfyUI that dies (out of memory, a crashing custom node) comes back
without anyone logging in::

    python -m comfyfleet.render.supervise --name comfyui [--cwd DIR] [--max-restarts N]
        [--first-delay S] [--max-delay S] [--stable-s S] -- COMMAND [ARG...]

The command's output goes where the supervisor's goes (the script appends both to a log).
When the command exits, it is started again after a delay that doubles from
``--first-delay`` up to ``--max-delay``; a run that lasted ``--stable-s`` or longer resets
the delay and the count. After ``--max-restarts`` quick exits in a row the supervisor gives
up with exit 1: a ComfyUI that cannot start is not restarted forever. SIGTERM or SIGINT
stop the command (TERM, then KILL after ``STOP_GRACE_S``) and the supervisor, exit 0. So
does the end of the process that started the supervisor (the script killed with SIGKILL,
which no trap sees): an orphaned ComfyUI or gateway would hold its port against the next
run of the script, and a gateway nobody watches is a door left open.

Bounded on purpose and small: this is not a process manager, only the one restart loop an
instance needs (the image may have no supervisord, and systemd does not run in containers).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

STOP_GRACE_S = 10.0
POLL_S = 0.2


@dataclass(frozen=True)
class Backoff:
    """How restarts are paced and bounded."""

    max_restarts: int = 10
    first_delay_s: float = 1.0
    max_delay_s: float = 60.0
    stable_s: float = 60.0


class Stop(Protocol):
    """What stops the loop: ``threading.Event`` or :class:`StopFlag`."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float) -> bool: ...


class StopFlag:
    """A stop request that a signal handler may set. ``threading.Event.set`` takes a lock,
    and a second TERM whose handler runs inside the first one's ``set`` (the script sends
    two) deadlocks on it: the supervisor then hangs forever with its command running, as
    seen in CI. Setting a plain attribute takes no lock; ``wait`` polls.

    With ``parent``, the flag also reads as set once this process was re-parented (that
    process exited): the loop's own polling notices, no watcher thread needed."""

    def __init__(self, parent: int | None = None) -> None:
        self._set = False
        self._parent = parent

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        if not self._set and self._parent is not None and os.getppid() != self._parent:
            _log(f"the process that started this supervisor ({self._parent}) is gone; stopping")
            self._set = True
        return self._set

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(POLL_S, left))
        return self.is_set()


def _log(message: str) -> None:
    print(f"[comfyfleet] {message}", file=sys.stderr, flush=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_once(command: Sequence[str], cwd: str | None, stop: Stop) -> int | None:
    """Run ``command`` until it exits (its code) or ``stop`` is set (``None``)."""
    proc = subprocess.Popen(list(command), cwd=cwd)
    while True:
        try:
            return proc.wait(POLL_S)
        except subprocess.TimeoutExpired:
            if stop.is_set():
                _stop(proc)
                return None


def supervise(
    command: Sequence[str],
    *,
    name: str,
    cwd: str | None = None,
    backoff: Backoff = Backoff(),
    stop: Stop | None = None,
    log: Callable[[str], None] = _log,
) -> int:
    """Run ``command``, restarting it as :class:`Backoff` says; 0 when stopped, 1 when it
    gave up, 2 when the command cannot be started at all."""
    stop = stop or StopFlag()
    delay, quick = backoff.first_delay_s, 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            code = _run_once(command, cwd, stop)
        except OSError as exc:  # no such program, not executable, bad cwd
            log(f"{name}: cannot start {command[0]}: {exc.strerror or exc}")
            return 2
        if code is None:
            return 0
        ran = time.monotonic() - started
        if ran >= backoff.stable_s:
            delay, quick = backoff.first_delay_s, 0
        quick += 1
        if quick > backoff.max_restarts:
            log(
                f"{name} exited with code {code}; "
                f"{backoff.max_restarts} restarts did not hold, giving up"
            )
            return 1
        log(
            f"{name} exited with code {code} after {ran:.1f} s; "
            f"restart {quick}/{backoff.max_restarts} in {delay:g} s"
        )
        if stop.wait(delay):
            return 0
        delay = min(backoff.max_delay_s, delay * 2)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m comfyfleet.render.supervise")
    p.add_argument("--name", required=True, help="what the log lines call the command")
    p.add_argument("--cwd", default=None, metavar="DIR")
    d = Backoff()
    p.add_argument("--max-restarts", type=int, default=d.max_restarts, metavar="N")
    p.add_argument("--first-delay", type=float, default=d.first_delay_s, metavar="S")
    p.add_argument("--max-delay", type=float, default=d.max_delay_s, metavar="S")
    p.add_argument("--stable-s", type=float, default=d.stable_s, metavar="S")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        _log("supervise: no command given (put it after --)")
        return 2
    parent = os.getppid()
    # Started by init (or a container's PID 1): there is no parent to outlive.
    stop = StopFlag(parent if parent != 1 else None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    backoff = Backoff(args.max_restarts, args.first_delay, args.max_delay, args.stable_s)
    return supervise(command, name=args.name, cwd=args.cwd, backoff=backoff, stop=stop)


if __name__ == "__main__":
    raise SystemExit(main())
