"""Phase clock, targets, cold-start records."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from comfyfleet.errors import ConfigError
from comfyfleet.warmup.timing import PHASES, PhaseClock, Targets, build_record


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_phases(clock: PhaseClock, t: FakeTime, spec: dict[str, tuple[float, int]]) -> None:
    for name, (seconds, nbytes) in spec.items():
        with clock.phase(name) as ph:
            t.now += seconds
            ph.bytes += nbytes


def test_phases_record_seconds_bytes_and_throughput() -> None:
    t = FakeTime()
    clock = PhaseClock(monotonic=t)
    t.now += 0.5  # a gap before the first phase
    run_phases(clock, t, {"preflight": (1.0, 0), "pull": (4.0, 400_000_000)})
    pull = clock.phases["pull"]
    assert pull.seconds == pytest.approx(4.0)
    assert pull.start_s == pytest.approx(1.5)
    assert pull.mb_per_s == pytest.approx(100.0)
    assert clock.phases["preflight"].mb_per_s is None
    assert clock.dominant() is pull
    assert clock.stop() == pytest.approx(5.5)
    t.now += 10
    assert clock.total_s == pytest.approx(5.5)  # frozen by stop()
    assert clock.phases["comfy_boot"].status == "skipped"
    assert clock.phases["comfy_boot"].note == "not reached"


def test_a_failing_phase_is_marked_and_the_error_goes_on() -> None:
    t = FakeTime()
    clock = PhaseClock(monotonic=t)
    with pytest.raises(RuntimeError), clock.phase("comfy_boot"):
        t.now += 2
        raise RuntimeError("boom")
    assert clock.phases["comfy_boot"].status == "failed"
    assert clock.phases["comfy_boot"].seconds == pytest.approx(2)


def test_retried_phases_add_up_and_recorded_phases_keep_their_start() -> None:
    t = FakeTime()
    clock = PhaseClock(monotonic=t)
    run_phases(clock, t, {"pull": (1.0, 10)})
    run_phases(clock, t, {"pull": (2.0, 20)})
    assert clock.phases["pull"].seconds == pytest.approx(3.0)
    assert clock.phases["pull"].bytes == 30
    clock.record("verify", 0.25, bytes=5, start_s=0.0, note="2 present")
    assert clock.phases["verify"].start_s == 0.0
    assert clock.phases["verify"].note == "2 present"
    clock.skip("first_prompt", "no workflow")
    clock.skip("pull", "ignored: it ran")
    assert clock.phases["first_prompt"].status == "skipped"
    assert clock.phases["pull"].status == "ok"
    with pytest.raises(ConfigError, match="unknown warm-up phase"):
        clock.record("download", 1.0)


@pytest.mark.parametrize(("mode", "seconds"), [("script", 300.0), ("baked", 120.0)])
def test_targets(mode: str, seconds: float) -> None:
    target = Targets.for_mode(mode)
    assert target.total_s == seconds
    assert target.met(seconds)
    assert not target.met(seconds + 0.1)
    assert Targets.for_mode(mode, override_s=5).total_s == 5


def test_unknown_mode_and_bad_override_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown warm-up mode"):
        Targets.for_mode("docker")
    with pytest.raises(ConfigError, match="not positive"):
        Targets.for_mode("script", override_s=-1)


@pytest.mark.parametrize(
    ("ok", "pull_s", "verdict"), [(True, 10.0, "PASS"), (True, 400.0, "MISS"), (False, 1, "FAIL")]
)
def test_record_verdict_and_dominant_phase(ok: bool, pull_s: float, verdict: str) -> None:
    t = FakeTime()
    clock = PhaseClock(monotonic=t)
    run_phases(clock, t, {"preflight": (0.2, 0), "pull": (pull_s, 1_000_000), "place": (0.1, 0)})
    record = build_record(clock, Targets.for_mode("script"), ok=ok, profile="image")
    assert record.verdict == verdict
    assert record.passed is (verdict == "PASS")
    assert record.dominant_phase == "pull"


def test_record_row_is_flat_and_loads_into_pandas() -> None:
    t = FakeTime()
    clock = PhaseClock(monotonic=t)
    run_phases(clock, t, {"preflight": (1, 0), "pull": (2, 2_000_000)})
    record = build_record(
        clock,
        Targets.for_mode("baked"),
        ok=True,
        profile="image",
        gpu_name="Test GPU",
        vram_gb=24,
        bytes_downloaded=2_000_000,
    )
    row = record.to_row()
    for name in PHASES:
        assert {f"{name}_s", f"{name}_bytes", f"{name}_mbps", f"{name}_status"} <= set(row)
    assert all(not isinstance(v, list | dict) for v in row.values())
    frame = pd.DataFrame([row])
    assert frame.loc[0, "pull_mbps"] == pytest.approx(1.0)
    assert math.isnan(frame.loc[0, "preflight_mbps"])
    assert frame.loc[0, "target_s"] == 120.0
    assert frame.loc[0, "comfyfleet_version"]
    data = json.loads(json.dumps(record.to_dict()))
    assert [p["name"] for p in data["phases"]] == list(PHASES)
    assert data["verdict"] == "PASS"
    assert "pull_s" not in data and data["total_s"] == pytest.approx(3.0)
