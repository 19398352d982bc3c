"""The Python steps of the on-start script, as one module the script runs with ``python -m``.

The on-start script is bash; what bash does badly (JSON in and out, locating a package) is
here, run from the instance's comfyfleet venv::

    python -m comfyfleet.render.onstart_steps started-payload ROOT PROFILE MODE VERIFY URL ID POOL
    python -m comfyfleet.render.onstart_steps finished-payload REPORT EXIT_CODE
    python -m comfyfleet.render.onstart_steps resource INSTANCE_ID
    python -m comfyfleet.render.onstart_steps summary REPORT EXIT_CODE
    python -m comfyfleet.render.onstart_steps flows-src
    python -m comfyfleet.render.onstart_steps ready-payload REPORT ID CONTRACT HOST PORT FLEET \
        PROFILE
    python -m comfyfleet.render.onstart_steps wait-http URL TIMEOUT_S

Each prints one line on stdout. The events themselves are sent by ``prefect event emit``
(the venv's Prefect CLI), so this module stays free of Prefect imports like the rest of the
core library. Event names and payload keys come from :mod:`comfyfleet.warmup.events`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from comfyfleet.warmup.events import READY_PAYLOAD_KEYS, STARTED_PAYLOAD_KEYS, instance_resource

# Report fields left out of the finished event: the per-file list grows with the profile
# and would push the payload past what one command-line argument may hold (128 KiB).
_BULKY_REPORT_FIELDS = ("files",)


def started_payload(values: Sequence[str]) -> dict[str, str]:
    """The ``comfyfleet.instance.started`` payload: :data:`STARTED_PAYLOAD_KEYS` -> values."""
    if len(values) != len(STARTED_PAYLOAD_KEYS):
        raise ValueError(
            f"started-payload takes {len(STARTED_PAYLOAD_KEYS)} values "
            f"({', '.join(STARTED_PAYLOAD_KEYS)}), got {len(values)}"
        )
    return dict(zip(STARTED_PAYLOAD_KEYS, values, strict=True))


def _read_report(path: str) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no warm-up report (a JSON object)")
    return data


def finished_payload(report: dict[str, Any], exit_code: int) -> dict[str, Any]:
    """The ``comfyfleet.warmup.finished`` payload: the report without its bulky fields."""
    payload = {k: v for k, v in report.items() if k not in _BULKY_REPORT_FIELDS}
    payload["exit_code"] = exit_code
    return payload


def resource(instance_id: str) -> dict[str, str]:
    """The event resource of this instance (``prefect event emit --resource``)."""
    return {
        "prefect.resource.id": instance_resource(instance_id),
        "prefect.resource.name": instance_id,
    }


def summary_line(report: dict[str, Any], exit_code: int) -> str:
    """One line for the instance log; the full report stays in its file."""
    rec = report.get("record") or {}
    gib = (rec.get("bytes_downloaded") or 0) / 2**30
    line = (
        f"[comfyfleet] warm-up {rec.get('verdict', '?')}: "
        f"{rec.get('total_s') or 0:.1f} s of {rec.get('target_s') or 0:.0f} s "
        f"({rec.get('mode', '?')}), profile {rec.get('profile', '?')}, "
        f"{gib:.1f} GiB pulled, dominant {rec.get('dominant_phase') or '-'}, exit {exit_code}"
    )
    error = report.get("error")
    if isinstance(error, dict):
        line += f" - {error.get('message', '')}"
    return line


def ready_payload(
    report: dict[str, Any],
    *,
    instance_id: str,
    contract_id: str,
    host: str,
    port: str,
    fleet: str,
    profile: str,
) -> dict[str, str]:
    """The ``comfyfleet.instance.ready`` payload (:data:`READY_PAYLOAD_KEYS`): where the
    gateway answers from outside, and what the warm-up that passed made of this instance
    (the report's profile wins over ``profile``, which may be ``auto``)."""
    rec = report.get("record") or {}
    if "[" not in host and ":" in host:
        host = f"[{host}]"  # an IPv6 address in a URL
    values = {
        "instance_id": instance_id,
        "contract_id": contract_id,
        "endpoint": f"http://{host}:{port}",
        "host": host,
        "port": port,
        "fleet": fleet,
        "profile": str(rec.get("profile") or profile),
        "warmup_s": f"{float(rec.get('total_s') or 0):.1f}",
    }
    return {key: values[key] for key in READY_PAYLOAD_KEYS}


def wait_http(url: str, timeout_s: float, *, interval_s: float = 0.25) -> None:
    """Wait until ``url`` answers 200 (the gateway's ``/healthz``); ``ValueError`` when it
    has not within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            last = type(exc).__name__
        if time.monotonic() >= deadline:
            raise ValueError(f"{url} did not answer 200 within {timeout_s:g} s ({last})")
        time.sleep(interval_s)


def flows_src() -> str:
    """The folder that holds the installed ``flows`` package (prefect.yaml's pull step)."""
    spec = find_spec("flows")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the flows package is not installed in this environment")
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyfleet.render.onstart_steps")
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("started-payload").add_argument("values", nargs="*")
    for name in ("finished-payload", "summary"):
        p = sub.add_parser(name)
        p.add_argument("report")
        p.add_argument("exit_code", type=int)
    sub.add_parser("resource").add_argument("instance_id")
    sub.add_parser("flows-src")
    ready = sub.add_parser("ready-payload")
    ready.add_argument("report")
    for name in ("instance_id", "contract_id", "host", "port", "fleet", "profile"):
        ready.add_argument(name)
    wait = sub.add_parser("wait-http")
    wait.add_argument("url")
    wait.add_argument("timeout_s", type=float)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.step == "started-payload":
            out: str = json.dumps(started_payload(args.values))
        elif args.step == "finished-payload":
            out = json.dumps(finished_payload(_read_report(args.report), args.exit_code))
        elif args.step == "summary":
            out = summary_line(_read_report(args.report), args.exit_code)
        elif args.step == "resource":
            out = json.dumps(resource(args.instance_id))
        elif args.step == "ready-payload":
            fields = ("instance_id", "contract_id", "host", "port", "fleet", "profile")
            named = {k: getattr(args, k) for k in fields}
            out = json.dumps(ready_payload(_read_report(args.report), **named))
        elif args.step == "wait-http":
            wait_http(args.url, args.timeout_s)
            out = "ok"
        else:
            out = flows_src()
    except (OSError, ValueError) as exc:
        print(f"[comfyfleet] {args.step}: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
