"""Prefect flow ``fleet-reaper``: destroy fleet instances that cost money for nothing.

Deployed with a cron schedule (every 10 minutes, ``prefect.yaml``), it is the backstop of
the promise that a rented instance is always released: whatever a batch, an operator or a
crash left behind, the next pass destroys it. The decisions are the library's
(:mod:`comfyfleet.fleet.reaper`: failed status, stuck boot, idle past the limit, older than
the max age); this module only loads the key, runs one pass as one task, and reports.

Report: a table artifact (one row per instance destroyed, with its reason, $/h and cost so
far) and a markdown summary naming the $/h the pass stopped, per day too. The task retries
(transient errors only: vast.ai unreachable or 5xx) by running the whole pass again, which
lists afresh and so never destroys twice. The key is read inside the task from a
``comfyfleet-vast`` block (or ``$VAST_API_KEY``) and never passed as a parameter.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from comfyfleet.fleet.cost import format_usd
from comfyfleet.fleet.reaper import ReapPolicy, ReapReport, reap
from comfyfleet.fleet.vast import VastClient
from flows._common import artifact_key, transient_only

TASK_RETRIES = 2
TASK_RETRY_DELAY_S = 30


def _client(vast_block: str | None) -> VastClient:
    if not vast_block:
        return VastClient()  # $VAST_API_KEY, $VAST_URL
    from blocks import VastCredentials, load

    block = load(VastCredentials, vast_block)
    return VastClient(block.api_key, url=block.url)


def _table(report: ReapReport) -> list[dict[str, Any]]:
    outcome = {i: "destroyed" for i in report.released.destroyed}
    outcome.update({i: "already gone" for i in report.released.already_gone})
    outcome.update({i: f"FAILED: {why}" for i, why in report.released.failed.items()})
    return [
        {
            "instance": d.instance.id,
            "fleet": (d.instance.label or "").removeprefix("comfyfleet:"),
            "reason": d.reason,
            "detail": d.detail,
            "dph_usd": round(d.dph_total, 4),
            "cost_so_far_usd": round(d.cost_so_far_usd, 4),
            "outcome": "would destroy" if report.dry_run else outcome.get(d.instance.id, "?"),
        }
        for d in report.decisions
    ]


def _markdown(report: ReapReport) -> str:
    scope = f"fleet `{report.fleet}`" if report.fleet else "every comfyfleet fleet"
    if report.dry_run:
        dph = sum(d.dph_total for d in report.decisions)
        return (
            f"# fleet-reaper (dry run)\n\nChecked {report.checked} instance(s) of {scope}; "
            f"would destroy {len(report.decisions)}, stopping ${dph:.3f}/h.\n"
        )
    lines = [
        "# fleet-reaper",
        "",
        f"Checked {report.checked} instance(s) of {scope}; destroyed {len(report.destroyed)}.",
        "",
        f"- **Saved**: ${report.dph_stopped:.3f}/h stops being billed "
        f"({format_usd(report.dph_stopped * 24)} per day).",
        f"- They had cost {format_usd(report.cost_so_far_usd)} until now.",
    ]
    reasons: dict[str, int] = {}
    for d in report.destroyed:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    if reasons:
        lines.append("- Reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if report.released.failed:
        lines.append(f"- **Not destroyed**: {', '.join(map(str, report.released.failed))}")
    return "\n".join(lines) + "\n"


@task(
    name="reap",
    cache_policy=NO_CACHE,
    retries=TASK_RETRIES,
    retry_delay_seconds=TASK_RETRY_DELAY_S,
    retry_condition_fn=transient_only,
)
def reap_task(
    fleet: str | None, policy: ReapPolicy, vast_block: str | None, dry_run: bool
) -> dict[str, Any]:
    logger = get_run_logger()
    with _client(vast_block) as client:
        report = reap(client, policy, now=time.time(), fleet=fleet, dry_run=dry_run)
    for d in report.decisions:
        logger.info("instance %s: %s (%s)", d.instance.id, d.reason, d.detail)
    key = artifact_key("fleet-reaper", report.fleet or "all")
    create_table_artifact(table=_table(report), key=key, description="instances reaped")
    create_markdown_artifact(
        markdown=_markdown(report), key=f"{key}-summary"[:100], description="reaper summary"
    )
    report.raise_for_failures()  # after the report: what was destroyed is on record
    return {
        "fleet": report.fleet,
        "checked": report.checked,
        "dry_run": dry_run,
        "destroyed": [d.instance.id for d in report.destroyed],
        "would_destroy": [d.instance.id for d in report.decisions] if dry_run else [],
        "reasons": {str(d.instance.id): d.reason for d in report.decisions},
        "dph_stopped": round(report.dph_stopped, 6),
        "cost_so_far_usd": round(report.cost_so_far_usd, 6),
    }


@flow(name="fleet-reaper")
def fleet_reaper(
    fleet: str | None = None,
    idle_minutes: float | None = 30,
    max_age_hours: float | None = 12,
    boot_timeout_minutes: float | None = 15,
    vast_block: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Destroy instances of ``fleet`` (default: every comfyfleet fleet, never an instance
    without a ``comfyfleet:`` label) that failed, never booted within
    ``boot_timeout_minutes``, idled ``idle_minutes`` or outlived ``max_age_hours`` (None
    turns a limit off). Key: a ``comfyfleet-vast`` block, else ``$VAST_API_KEY``."""
    policy = ReapPolicy(
        idle_s=None if idle_minutes is None else idle_minutes * 60,
        max_age_s=None if max_age_hours is None else max_age_hours * 3600,
        boot_timeout_s=None if boot_timeout_minutes is None else boot_timeout_minutes * 60,
        # Judged once ready events are collected (comfyfleet.instance.ready); until then off.
        warmup_timeout_s=None,
    )
    result: dict[str, Any] = reap_task(fleet, policy, vast_block, dry_run)
    return result
