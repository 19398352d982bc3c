"""``instances_to_reap``: a table of instances, clocks and policies, and the reason each gets."""

from __future__ import annotations

from typing import Any

import pytest

from comfyfleet.fleet.instance_events import InstanceEvent, warmup_passed
from comfyfleet.fleet.reaper import ReapPolicy, idle_seconds, instances_to_reap
from comfyfleet.fleet.vast import Instance

NOW = 1_786_400_000.0
MIN = 60.0
POLICY = ReapPolicy(idle_s=30 * MIN, max_age_s=12 * 3600, boot_timeout_s=15 * MIN,
                    warmup_timeout_s=20 * MIN)  # fmt: skip


def inst(age_min: float, status: str | None = "running", **fields: Any) -> Instance:
    start = NOW - age_min * MIN
    row = {"id": 1, "actual_status": status, "intended_status": "running",
           "start_date": start, "dph_total": 0.5, "label": "comfyfleet:f"}  # fmt: skip
    row.update(fields)
    return Instance.from_api(row)


CASES = [
    # (instance, last_active minutes ago, ready ids, expected reason)
    ("fresh and loading", inst(3, "loading"), None, None, None),
    ("provisioning past boot limit", inst(16, None), None, None, "boot-timeout"),
    ("loading past boot limit", inst(16, "loading"), None, None, "boot-timeout"),
    ("loading within boot limit", inst(14, "loading"), None, None, None),
    ("exited at once", inst(1, "exited", status_msg="OCI runtime error"), None, None, "failed"),
    ("unknown host", inst(2, "unknown"), None, None, "failed"),
    ("offline host", inst(2, "offline"), None, None, "failed"),
    ("running, ready, working", inst(60), 5, {1}, None),
    ("running, never worked, idle past limit", inst(31), None, None, "idle"),
    ("running, worked 29 min ago", inst(120), 29, None, None),
    ("running, worked 31 min ago", inst(120), 31, None, "idle"),
    ("running, no work logged but GPU busy", inst(120, gpu_util=0.93), None, None, None),
    ("GPU busy in percent", inst(120, gpu_util=87.0), None, None, None),
    ("GPU at 1 % is idle", inst(120, gpu_util=0.01), None, None, "idle"),
    (
        "stopped and idle (disk still bills)",
        inst(45, "stopped", intended_status="stopped"),
        None,
        None,
        "idle",
    ),
    ("no ready signal past warm-up limit", inst(21), 1, set(), "warmup-failed"),
    ("no ready signal within warm-up limit", inst(19), 1, set(), None),
    ("ready unknown: warm-up not judged", inst(25), 1, None, None),
    ("old and busy", inst(12 * 60 + 1, gpu_util=0.99), None, {1}, "max-age"),
    ("failed beats max-age", inst(13 * 60, "exited"), None, None, "failed"),
]


@pytest.mark.parametrize(("instance", "active_min", "ready", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_reasons(
    instance: Instance, active_min: float | None, ready: set[int] | None, reason: str | None
) -> None:
    last_active = {1: NOW - active_min * MIN} if active_min is not None else None
    decisions = instances_to_reap([instance], NOW, POLICY, last_active=last_active, ready=ready)
    assert [d.reason for d in decisions] == ([reason] if reason else [])


def test_a_failed_warmup_is_reaped_at_once_whatever_the_limits() -> None:
    off = ReapPolicy(idle_s=None, max_age_s=None, boot_timeout_s=None, warmup_timeout_s=None)
    young = inst(1)
    for policy in (POLICY, off):
        (d,) = instances_to_reap([young], NOW, policy, warmup_failed={1: "ComfyUI died"})
        assert (d.reason, d.detail) == ("warmup-failed", "its warm-up failed: ComfyUI died")
    # A bad status still names the cause first; another instance's failure is not this one's.
    (d,) = instances_to_reap([inst(1, "exited")], NOW, POLICY, warmup_failed={1: "x"})
    assert d.reason == "failed"
    assert instances_to_reap([young], NOW, POLICY, warmup_failed={2: "x"}) == []


def test_limits_set_to_none_are_not_applied() -> None:
    off = ReapPolicy(idle_s=None, max_age_s=None, boot_timeout_s=None, warmup_timeout_s=None)
    table = [inst(10_000), inst(10_000, "loading"), inst(10_000, None)]
    assert instances_to_reap(table, NOW, off, ready=set()) == []
    # A bad ending is always reaped: it never recovers and its disk keeps billing.
    assert [d.reason for d in instances_to_reap([inst(1, "exited")], NOW, off)] == ["failed"]


def test_decision_carries_cost_and_detail() -> None:
    (d,) = instances_to_reap([inst(90)], NOW, POLICY)
    assert (d.reason, d.dph_total) == ("idle", 0.5)
    assert d.cost_so_far_usd == pytest.approx(0.75)
    assert d.detail == "idle 90 min (limit 30)"
    (f,) = instances_to_reap([inst(2, "exited", status_msg="OCI runtime error")], NOW, POLICY)
    assert f.detail == "status exited: OCI runtime error"


def test_busy_threshold_comes_from_the_policy() -> None:
    busy = inst(120, gpu_util=0.2)
    assert idle_seconds(busy, NOW) == 0
    assert idle_seconds(busy, NOW, busy_gpu_util=0.5) == pytest.approx(120 * MIN)
    strict = ReapPolicy(idle_s=30 * MIN, busy_gpu_util=0.5)
    assert [d.reason for d in instances_to_reap([busy], NOW, strict)] == ["idle"]


READY = InstanceEvent(1, "ready", NOW, True, "http://h:1")
FAILED = InstanceEvent(1, "warmup-finished", NOW, False, "ComfyUI did not start")


@pytest.mark.parametrize(
    ("verdict", "answers", "passed"),
    [
        (None, False, False),  # still warming up, or hung: nothing says it passed
        (None, True, True),  # the gateway starts only once the warm-up passed
        (READY, False, True),  # passed, unreachable right now (the batch probes again)
        (READY, True, True),
        (FAILED, True, False),  # a failed warm-up is the last word, whatever answers
        (FAILED, False, False),
    ],
)
def test_one_rule_says_whether_a_warmup_passed(
    verdict: InstanceEvent | None, answers: bool, passed: bool
) -> None:
    assert warmup_passed(verdict, gateway_answers=answers) is passed
