"""Serve every deployment of ``prefect.yaml`` from this process (local development).

``prefect.yaml`` stays the one source of truth: this reads it, imports each entrypoint and
serves the flows with the same names, parameters, schedules and triggers, so a laptop can
run the scheduled mirror refresh and the triggered warm-up without a work pool::

    prefect server start --host 127.0.0.1 &          # serve needs a real server
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

For production use ``prefect deploy --all`` and a worker per GPU host (see README).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_deployments(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments:`` list of ``prefect.yaml``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    deployments: list[dict[str, Any]] = data.get("deployments") or []
    return deployments


def to_runner_deployments(specs: list[dict[str, Any]]) -> list[Any]:
    """Build ``RunnerDeployment`` objects for ``prefect.serve`` from the YAML specs."""
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    runners = []
    for spec in specs:
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone", "UTC"))
            for s in spec.get("schedules") or []
            if "cron" in s
        ]
        triggers = [
            DeploymentEventTrigger(
                expect=set(t.get("expect", [])),
                match=t.get("match", {}),
                parameters=t.get("parameters"),
            )
            for t in spec.get("triggers") or []
        ]
        runners.append(
            flow.to_deployment(
                name=spec["name"],
                parameters=spec.get("parameters") or {},
                schedules=schedules or None,
                triggers=triggers or None,
                tags=spec.get("tags") or [],
                description=spec.get("description"),
            )
        )
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="deployment name to serve")
    args = parser.parse_args()
    from prefect import serve

    specs = [s for s in load_deployments() if not args.only or s["name"] in args.only]
    serve(*to_runner_deployments(specs))


if __name__ == "__main__":
    main()
