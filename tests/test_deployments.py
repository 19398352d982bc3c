"""prefect.yaml is the source of truth for deployments: it must load and match the flows."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from prefect.flows import load_flow_from_entrypoint

from deployments.pools import POOLS, ensure_pools
from deployments.serve import load_deployments, to_runner_deployments

EXPECTED = {"mirror-refresh", "mirror", "warmup", "generate-batch"}


def test_prefect_yaml_names_the_four_deployments() -> None:
    names = {d["name"] for d in load_deployments()}
    assert names == EXPECTED


@pytest.mark.parametrize("spec", load_deployments(), ids=lambda s: s["name"])
def test_entrypoint_loads_and_parameters_match_the_flow(spec: dict) -> None:
    flow = load_flow_from_entrypoint(spec["entrypoint"])
    accepted = set(inspect.signature(flow.fn).parameters)
    given = set(spec.get("parameters") or {})
    for trigger in spec.get("triggers") or []:
        given |= set(trigger.get("parameters") or {})
    assert given <= accepted, f"{spec['name']}: unknown parameters {given - accepted}"
    # Prefect's own validation against the flow signature (types included).
    flow.validate_parameters(spec.get("parameters") or {})
    assert spec["work_pool"]["name"] in POOLS


def test_refresh_is_scheduled_daily_and_warmup_is_triggered() -> None:
    specs = {d["name"]: d for d in load_deployments()}
    (schedule,) = specs["mirror-refresh"]["schedules"]
    minute, hour, dom, month, dow = schedule["cron"].split()
    assert (dom, month, dow) == ("*", "*", "*") and hour.isdigit() and minute.isdigit()
    (trigger,) = specs["warmup"]["triggers"]
    assert trigger["expect"] == ["comfyfleet.instance.started"]


def test_warmup_trigger_matches_the_event_the_onstart_script_emits() -> None:
    """prefect.yaml cannot import a constant: it is checked against comfyfleet.render.events."""
    from comfyfleet.render import events

    (trigger,) = {d["name"]: d for d in load_deployments()}["warmup"]["triggers"]
    assert trigger["expect"] == [events.INSTANCE_STARTED]
    assert trigger["match"] == {"prefect.resource.id": f"{events.INSTANCE_RESOURCE_PREFIX}*"}
    assert trigger["parameters"] == {
        key: f"{{{{ event.payload.{key} }}}}" for key in events.TRIGGER_PARAMETER_KEYS
    }


def test_serve_builds_the_same_deployments_from_the_yaml() -> None:
    runners = to_runner_deployments(load_deployments())
    by_name = {r.name: r for r in runners}
    assert set(by_name) == EXPECTED
    assert by_name["mirror-refresh"].schedules, "the refresh must keep its cron schedule"
    assert by_name["warmup"].triggers, "the warm-up must keep its event trigger"


@pytest.mark.flow
def test_pools_are_created_once(prefect_harness: None) -> None:
    first = asyncio.run(ensure_pools())
    second = asyncio.run(ensure_pools())
    assert set(first) == set(POOLS)
    assert second == []
