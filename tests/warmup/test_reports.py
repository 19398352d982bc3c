"""Cold-start reports: history table in the store, timeline PNG, tables and text."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.warmup.reports import (
    HISTORY_KEY,
    append_history,
    markdown_summary,
    phase_rows,
    phase_table_text,
    publish,
    read_history,
    render_timeline,
    timeline_key,
)
from comfyfleet.warmup.timing import ColdStartRecord, PhaseClock, Targets, build_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_record(*, ok: bool = True, pull_s: float = 3.0, mode: str = "script") -> ColdStartRecord:
    now = [0.0]
    clock = PhaseClock(monotonic=lambda: now[0])
    for name, seconds, nbytes in (
        ("preflight", 0.4, 0),
        ("verify", 0.6, 1_000_000),
        ("pull", pull_s, 300_000_000),
        ("place", 0.05, 0),
        ("comfy_boot", 8.0, 0),
        ("first_prompt", 12.0, 0),
    ):
        with clock.phase(name) as ph:
            now[0] += seconds
            ph.bytes = nbytes
    return build_record(
        clock,
        Targets.for_mode(mode),
        ok=ok,
        profile="image",
        gpu_name="Test GPU",
        vram_gb=24,
        gpu_count=1,
        bytes_downloaded=300_000_000,
        bytes_total=310_000_000,
        files_total=3,
        files_placed=2,
        files_present=1,
        host="test-host",
        error="" if ok else "boom (do this)",
    )


@pytest.mark.parametrize(
    "store", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)
def test_history_appended_twice_has_two_rows(store: Any) -> None:
    first, second = make_record(), make_record(ok=False)
    assert append_history(store, first) == 1
    assert append_history(store, second) == 2
    history = read_history(store)
    assert list(history["record_id"]) == [first.record_id, second.record_id]
    assert list(history["verdict"]) == ["PASS", "FAIL"]
    assert history["pull_s"].tolist() == [3.0, 3.0]
    assert str(history["started_at"].dtype).startswith("datetime64")
    # The same record again (a retried task) is not duplicated.
    assert append_history(store, second) == 2
    # The lease is gone: nothing but the table under reports/.
    assert [o.key for o in store.list("reports/")] == [HISTORY_KEY]


def test_concurrent_appends_lose_no_row(local_store: Any) -> None:
    records = [make_record() for _ in range(4)]
    threads = [threading.Thread(target=append_history, args=(local_store, r)) for r in records]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(read_history(local_store)["record_id"]) == sorted(r.record_id for r in records)


def test_a_stale_lease_is_broken(local_store: Any) -> None:
    stale = json.dumps({"since": time.time() - 3600}).encode()
    local_store.put_bytes(f"{HISTORY_KEY}.lock", stale)
    assert append_history(local_store, make_record(), wait_s=1) == 1


def test_timeline_png_is_written_and_stored(tmp_path: Path, local_store: Any) -> None:
    record = make_record(pull_s=400.0)  # a MISS: over the 300 s line
    path = tmp_path / "out" / "timeline.png"
    published = publish(record, local_store, timeline_path=path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000  # bars, labels and a title, not an empty canvas
    assert published.timeline_key == timeline_key(record)
    assert local_store.get_bytes(published.timeline_key) == data
    assert published.history_rows == 1 and published.problems == []
    assert timeline_key(record).startswith("reports/coldstart-")


def test_publish_never_raises_when_the_store_fails(tmp_path: Path) -> None:
    class BrokenStore:
        uri = "broken://"

        def __getattr__(self, name: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                from comfyfleet.errors import StoreUnavailable

                raise StoreUnavailable("store is down", store="broken://")

            return fail

    published = publish(make_record(), BrokenStore(), timeline_path=tmp_path / "t.png")  # type: ignore[arg-type]
    assert (tmp_path / "t.png").exists()
    assert len(published.problems) == 2
    assert all("store is down" in p for p in published.problems)


def test_timeline_to_an_unwritable_path_is_a_problem_and_leaves_no_temp(
    tmp_path: Path, local_store: Any
) -> None:
    where = tmp_path / "out"
    (where / "a-folder").mkdir(parents=True)
    published = publish(make_record(), local_store, timeline_path=where / "a-folder")
    assert published.timeline_path is None
    assert published.problems == [f"timeline not written to {where / 'a-folder'}: Is a directory"]
    assert published.timeline_key is not None  # the store still gets the PNG
    assert [p.name for p in where.iterdir()] == ["a-folder"]  # no temp file left beside it


def test_failed_and_skipped_phases_still_draw(tmp_path: Path) -> None:
    now = [0.0]
    clock = PhaseClock(monotonic=lambda: now[0])
    with clock.phase("preflight"):
        now[0] += 1
    with pytest.raises(ValueError), clock.phase("pull"):
        now[0] += 2
        raise ValueError
    record = build_record(clock, Targets.for_mode("baked"), ok=False, error="pull failed")
    data = render_timeline(record, tmp_path / "fail.png")
    assert data.startswith(PNG_MAGIC)


def test_tables_and_markdown() -> None:
    record = make_record(ok=False)
    rows = phase_rows(record)
    assert [r["phase"] for r in rows][-1] == "total"
    assert rows[-1]["status"] == "FAIL"
    pull = next(r for r in rows if r["phase"] == "pull")
    assert pull["MB/s"] == "100.0" and pull["bytes"] == "286.1 MiB"
    text = phase_table_text(record)
    assert text.splitlines()[0].split() == [
        "phase",
        "status",
        "seconds",
        "share",
        "bytes",
        "MB/s",
        "note",
    ]
    md = markdown_summary(record, links={"timeline": "https://example.invalid/t.png"})
    assert md.startswith("# Warm-up FAIL")
    assert "| pull | ok | 3.0 |" in md
    assert "**error**: boom (do this)" in md
    assert "[timeline](https://example.invalid/t.png)" in md
