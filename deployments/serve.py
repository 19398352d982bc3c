"""Serve every deployment of ``prefect.yaml`` from this process (local development).

``prefect.yaml`` stays the one source of truth: this reads it, imports each entrypoint and
serves the flows with the same parameters, schedules and triggers, so a laptop can run the
scheduled mirror refresh and the triggered warm-up without a work pool::

    prefect server start --host 127.0.0.1 &          # serve needs a real server
    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Served deployments have their own names (``mirror-refresh-serve``...): serving under the
``prefect deploy`` names would overwrite those deployments on a shared server (their pull
steps, work pools, concurrency limits and trigger automations). When the server already
has the deployed ones, the served copies run on demand only: no schedules, no triggers, so
a cron tick or an event does not start the same work twice.

For production use ``prefect deploy --all`` and a worker per work pool (see README).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_SUFFIX = "-serve"


def load_deployments(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    """The ``deployments:`` list of ``prefect.yaml``."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    deployments: list[dict[str, Any]] = data.get("deployments") or []
    return deployments


def served_name(name: str) -> str:
    """The name a ``prefect.yaml`` deployment is served under."""
    return f"{name}{SERVE_SUFFIX}"


def _flow(spec: dict[str, Any]) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))


async def deployed_twins(specs: list[dict[str, Any]]) -> list[str]:
    """The ``prefect.yaml`` deployments (``flow/name``) the server already holds."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    async with get_client() as client:
        for spec in specs:
            full_name = f"{_flow(spec).name}/{spec['name']}"
            try:
                await client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                continue
            found.append(full_name)
    return found


def _schedules(spec: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron

    return [
        Cron(s["cron"], timezone=s.get("timezone", "UTC"))
        for s in spec.get("schedules") or []
        if "cron" in s
    ]


def _triggers(spec: dict[str, Any]) -> list[Any]:
    from prefect.events import DeploymentEventTrigger

    return [
        DeploymentEventTrigger(
            expect=set(t.get("expect", [])),
            match=t.get("match", {}),
            parameters=t.get("parameters"),
        )
        for t in spec.get("triggers") or []
    ]


def to_runner_deployments(specs: list[dict[str, Any]], *, on_demand: bool = False) -> list[Any]:
    """``RunnerDeployment`` objects for ``prefect.serve``, named ``<name>-serve``.

    ``on_demand`` leaves out schedules and triggers (the deployed twins keep theirs).
    """
    runners = []
    for spec in specs:
        schedules = [] if on_demand else _schedules(spec)
        triggers = [] if on_demand else _triggers(spec)
        runners.append(
            _flow(spec).to_deployment(
                name=served_name(spec["name"]),
                parameters=spec.get("parameters") or {},
                schedules=schedules or None,
                triggers=triggers or None,
                tags=[*(spec.get("tags") or []), "served"],
                description=spec.get("description"),
            )
        )
    return runners


@dataclass(frozen=True)
class ServePlan:
    """What ``main`` serves: the runner deployments and the deployed twins found."""

    runners: list[Any]
    twins: list[str]

    @property
    def on_demand(self) -> bool:
        return bool(self.twins)


def plan(specs: list[dict[str, Any]]) -> ServePlan:
    """The served copies of ``specs``; on demand only when the server has deployed twins."""
    twins = asyncio.run(deployed_twins(specs))
    return ServePlan(to_runner_deployments(specs, on_demand=bool(twins)), twins)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="deployment name to serve")
    args = parser.parse_args()
    from prefect import serve

    specs = [s for s in load_deployments() if not args.only or s["name"] in args.only]
    served = plan(specs)
    if served.on_demand:
        print(
            f"the server already has {', '.join(served.twins)} (prefect deploy): serving "
            f"{', '.join(r.name for r in served.runners)} on demand only, without schedules "
            "or triggers"
        )
    serve(*served.runners)


if __name__ == "__main__":
    main()
