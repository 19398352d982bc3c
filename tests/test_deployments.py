"""prefect.yaml is the source of truth for deployments: it must load and match the flows."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from prefect.flows import load_flow_from_entrypoint

from deployments.pools import POOLS, ensure_pools
from deployments.serve import load_deployments, plan, served_name, to_runner_deployments

EXPECTED = {"mirror-refresh", "mirror", "warmup", "generate-batch", "fleet-reaper", "fleet-batch"}


def test_prefect_yaml_names_every_deployment() -> None:
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
    """prefect.yaml cannot import a constant: it is checked against comfyfleet.warmup.events."""
    from comfyfleet.warmup import events

    (trigger,) = {d["name"]: d for d in load_deployments()}["warmup"]["triggers"]
    assert trigger["expect"] == [events.INSTANCE_STARTED]
    assert trigger["match"] == {"prefect.resource.id": f"{events.INSTANCE_RESOURCE_PREFIX}*"}
    assert trigger["parameters"] == {
        key: f"{{{{ event.payload.{key} }}}}" for key in events.TRIGGER_PARAMETER_KEYS
    }


def test_serve_builds_the_same_deployments_from_the_yaml_under_their_own_names() -> None:
    runners = to_runner_deployments(load_deployments())
    by_name = {r.name: r for r in runners}
    assert set(by_name) == {served_name(n) for n in EXPECTED}
    assert all(name.endswith("-serve") for name in by_name)
    assert by_name["mirror-refresh-serve"].schedules, "the refresh must keep its cron schedule"
    assert by_name["warmup-serve"].triggers, "the warm-up must keep its event trigger"
    quiet = to_runner_deployments(load_deployments(), on_demand=True)
    assert all(not r.schedules and not r.triggers for r in quiet)


@pytest.mark.flow
def test_pools_are_created_once(prefect_harness: None) -> None:
    first = asyncio.run(ensure_pools())
    second = asyncio.run(ensure_pools())
    assert set(first) == set(POOLS)
    assert second == []


def _deployment_facts(names: list[str]) -> dict[str, dict[str, object]]:
    """What `prefect deploy` sets and serve must not touch, per ``flow/deployment`` name."""
    from prefect.client.orchestration import get_client

    async def read() -> dict[str, dict[str, object]]:
        facts: dict[str, dict[str, object]] = {}
        async with get_client() as client:
            for name in names:
                d = await client.read_deployment_by_name(name)
                automations = await client.read_resource_related_automations(
                    f"prefect.deployment.{d.id}"
                )
                facts[name] = {
                    "id": d.id,
                    "pull_steps": d.pull_steps,
                    "work_pool": d.work_pool_name,
                    "concurrency": d.concurrency_limit,
                    "schedules": sorted(str(s.schedule) for s in d.schedules),
                    "automations": sorted(str(a.id) for a in automations),
                    "tags": sorted(d.tags),
                }
        return facts

    return asyncio.run(read())


@pytest.mark.flow
def test_serve_next_to_prefect_deploy_leaves_the_deployed_ones_alone(
    prefect_harness: None,
) -> None:
    """Issue 9 item 19, both modes against one server: served alone (full schedules and
    triggers, own names), then after `prefect deploy --all` (on demand only; the deployed
    ones keep pull steps, work pool, concurrency limit, schedules and automations)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from prefect.runner import Runner
    from prefect.settings import PREFECT_API_URL

    specs = load_deployments()
    alone = plan(specs)
    assert alone.twins == [] and not alone.on_demand
    runner = Runner()
    for deployment in alone.runners:  # what prefect.serve does before it starts polling
        runner.add_deployment(deployment)
    by_name = {r.name: r for r in alone.runners}
    assert by_name["warmup-serve"].triggers and by_name["mirror-refresh-serve"].schedules

    asyncio.run(ensure_pools())
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    deployed = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    twins = plan(specs).twins
    assert len(twins) == len(EXPECTED) and {t.split("/")[1] for t in twins} == EXPECTED
    before = _deployment_facts(twins)
    assert before[next(t for t in twins if t.endswith("/mirror-refresh"))]["schedules"]
    assert all(f["pull_steps"] and f["work_pool"] in POOLS for f in before.values())

    beside = plan(specs)
    assert beside.on_demand
    assert all(not r.schedules and not r.triggers for r in beside.runners)
    runner = Runner()
    for deployment in beside.runners:
        runner.add_deployment(deployment)
    assert _deployment_facts(twins) == before


def _readme_prefect_section() -> str:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("## Prefect deployments")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_no_deployment_requires_a_block_it_may_not_need() -> None:
    """Issue 9 item 21: a missing tokens block failed every file, URL sources included.
    Only blocks every run of a deployment needs are named by default: the store (every
    pipeline needs one) and, for the fleet deployments, the vast.ai key (nothing else works
    without it)."""
    for spec in load_deployments():
        named = {k for k in spec.get("parameters") or {} if k.endswith("_block")}
        needed = (
            {"store_block", "vast_block"} if spec["name"].startswith("fleet-") else {"store_block"}
        )
        assert named <= needed, (spec["name"], named)


def test_readme_says_which_blocks_to_save_and_starts_a_worker_per_pool() -> None:
    section = _readme_prefect_section()
    pools = {spec["work_pool"]["name"] for spec in load_deployments()}
    for pool in pools:
        assert f"prefect worker start --pool {pool}" in section, pool
    for spec in load_deployments():
        assert f"`{spec['name']}`" in section, spec["name"]
        for key, value in (spec.get("parameters") or {}).items():
            if key.endswith("_block"):
                assert f'.save("{value}")' in section, (spec["name"], key)
    assert "prefect block register -m blocks" in section
