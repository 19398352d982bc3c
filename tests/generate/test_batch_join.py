"""Endpoints joining a running batch (``joining=``, an :class:`EndpointQueue`): one added
halfway takes jobs, after the pre-submit check ran on it; while the queue is open the jobs
wait for a joiner even when every endpoint is gone; a queue closed with no endpoint stops the
batch clearly; ``generate_from_file`` connects joiners and leaves out one that does not
answer. Every job ends exactly once."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyfleet.errors import ConfigError
from comfyfleet.generate.batch import (
    BatchEndpoint,
    BatchEvent,
    BatchOptions,
    ComfyEndpoint,
    EndpointQueue,
    generate_from_file,
    read_results,
    run_batch,
)
from comfyfleet.generate.jobs import Job
from comfyfleet.store.base import ObjectStore
from tests.doubles.comfyui import FakeComfyUI
from tests.generate.conftest import JobsFactory, make_client

OPTIONS = BatchOptions(retry_backoff_s=0.05, endpoint_timeout_s=0.3)


@pytest.fixture
def pair() -> Iterator[tuple[FakeComfyUI, FakeComfyUI]]:
    with FakeComfyUI(execution_time=0.05) as a, FakeComfyUI(execution_time=0.05) as b:
        a.cache_enabled = b.cache_enabled = False
        yield a, b


def _jobs(make_jobs: JobsFactory, n: int) -> list[Job]:
    rows = [{"id": f"j{k:03d}", "workflow": "sdxl_txt2img", "prompt": "x", "seed": k}
            for k in range(n)]  # fmt: skip
    return make_jobs(rows)


def _jobs_file(tmp_path: Path, n: int) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    rows = [{"id": f"j{k:03d}", "workflow": "sdxl_txt2img", "prompt": "x", "seed": k}
            for k in range(n)]  # fmt: skip
    jobs.write_text("\n".join(json.dumps(row) for row in rows))
    return jobs


def _once(store: ObjectStore, batch: str, n: int) -> Counter[str]:
    """Each job exactly once in results.parquet, ok; the jobs each endpoint ran."""
    rows = read_results(store, batch)
    assert Counter(r["id"] for r in rows) == {f"j{k:03d}": 1 for k in range(n)}
    assert all(r["status"] == "ok" for r in rows)
    return Counter(str(r["endpoint"]) for r in rows)


def test_an_endpoint_added_halfway_takes_jobs_after_its_check(
    pair: tuple[FakeComfyUI, FakeComfyUI], local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    a, b = pair
    joining: EndpointQueue[BatchEndpoint] = EndpointQueue()
    events: list[BatchEvent] = []
    with make_client(a.url) as first, make_client(b.url) as late:

        def on_event(event: BatchEvent) -> None:
            events.append(event)
            if event.kind == "finished" and sum(e.kind == "finished" for e in events) == 10:
                assert joining.put(BatchEndpoint(late, name="late"))
                assert joining.put(BatchEndpoint(late, name="first"))  # a name in use

        report = run_batch(
            _jobs(make_jobs, 40),
            endpoints=[BatchEndpoint(first, name="first")],
            joining=joining,  # never closed: the batch ends when its jobs are done
            store=local_store,
            batch_id="join",
            options=OPTIONS,
            on_event=on_event,
        )
    assert report.ok and report.counts["ok"] == 40, report.markdown()
    ran = _once(local_store, "join", 40)
    assert ran["late"] >= 5 and ran["first"] >= 10, ran
    assert len(a.accepted) + len(b.accepted) == 40  # no prompt sent twice
    assert report.endpoints == {"first": "", "late": ""}
    joined, refused = [e for e in events if e.kind == "joined"]
    assert joined.endpoint == "late" and joined.done >= 10
    assert refused.endpoint == "first" and refused.message == (
        "refused: an endpoint of that name is in the batch already"
    )
    # Its jobs passed the pre-submit check on it (node types, model listing) before the
    # first prompt reached it.
    first_prompt = b.requests.index(("POST", "/prompt"))
    assert ("GET", "/object_info") in b.requests[:first_prompt]
    assert ("GET", "/models/checkpoints") in b.requests[:first_prompt]


def test_jobs_wait_for_a_joiner_while_every_endpoint_is_gone(
    pair: tuple[FakeComfyUI, FakeComfyUI], local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    """The only endpoint dies; the queue is open, so its jobs wait (instead of failing as
    'not run') and run on the endpoint that joins later."""
    a, b = pair
    a.die_after_prompts = 3
    joining: EndpointQueue[BatchEndpoint] = EndpointQueue()
    with make_client(a.url) as first, make_client(b.url) as late:
        timer = threading.Timer(2.5, joining.put, args=(BatchEndpoint(late, name="late"),))

        def on_event(event: BatchEvent) -> None:
            if event.kind == "retry" and not timer.is_alive():
                timer.start()  # well after 'first' is dropped (0.3 s down)

        report = run_batch(
            _jobs(make_jobs, 20),
            endpoints=[BatchEndpoint(first, name="first")],
            joining=joining,
            store=local_store,
            batch_id="wait",
            options=OPTIONS,
            on_event=on_event,
        )
        timer.cancel()
    assert report.ok and not report.stopped, report.markdown()
    ran = _once(local_store, "wait", 20)
    assert report.endpoints["first"].startswith("not answering for")
    assert ran["late"] >= 17 and ran["first"] <= 3, ran


def test_a_queue_closed_with_no_endpoint_stops_the_batch(
    local_store: ObjectStore, make_jobs: JobsFactory
) -> None:
    joining: EndpointQueue[BatchEndpoint] = EndpointQueue()
    joining.close()
    assert not joining.put(BatchEndpoint(None, name="x"))  # type: ignore[arg-type]
    report = run_batch(
        _jobs(make_jobs, 3), endpoints=[], joining=joining, store=local_store, batch_id="none"
    )
    assert report.stopped == "no ComfyUI joined the batch; rerun the same batch id to resume"
    assert [r.status for r in report.results] == ["failed"] * 3
    assert all(r.error.startswith("not run: no ComfyUI joined") for r in report.results)
    with pytest.raises(ConfigError, match="no ComfyUI endpoint to run the batch on"):
        run_batch(_jobs(make_jobs, 1), endpoints=[], store=local_store, batch_id="none")


def test_generate_from_file_connects_joiners_and_leaves_out_a_silent_one(
    pair: tuple[FakeComfyUI, FakeComfyUI], local_store: ObjectStore, tmp_path: Path
) -> None:
    a, b = pair
    jobs = _jobs_file(tmp_path, 30)
    joining: EndpointQueue[ComfyEndpoint] = EndpointQueue()
    finished: list[str] = []

    def on_event(event: BatchEvent) -> None:
        if event.kind == "finished":
            finished.append(event.job_id)
            if len(finished) == 5:
                joining.put(ComfyEndpoint("http://127.0.0.1:9", name="silent"))
                joining.put(ComfyEndpoint(b.url, name="late"))
                joining.close()

    report = generate_from_file(
        jobs,
        BatchOptions(batch_id="gfj", ready_timeout_s=0.5, retry_backoff_s=0.05),
        endpoints=[ComfyEndpoint(a.url, name="first")],
        joining=joining,
        store=local_store,
        on_event=on_event,
    )
    assert report.ok, report.markdown()
    ran = _once(local_store, "gfj", 30)
    assert set(ran) == {"first", "late"} and ran["late"] >= 3, ran
    assert report.endpoints["first"] == report.endpoints["late"] == ""
    assert report.endpoints["silent"].startswith("not ready: ")


def test_a_joiner_still_not_answering_does_not_hold_up_the_batch_end(
    pair: tuple[FakeComfyUI, FakeComfyUI], local_store: ObjectStore, tmp_path: Path
) -> None:
    a, _ = pair
    jobs = _jobs_file(tmp_path, 6)
    joining: EndpointQueue[ComfyEndpoint] = EndpointQueue()
    joining.put(ComfyEndpoint("http://127.0.0.1:9", name="dead"))  # refused, for 60 s

    started = time.monotonic()
    report = generate_from_file(
        jobs,
        BatchOptions(batch_id="gfd", ready_timeout_s=60.0, retry_backoff_s=0.05),
        endpoints=[ComfyEndpoint(a.url, name="first")],
        joining=joining,  # left open: more may come
        store=local_store,
    )
    took = time.monotonic() - started
    assert report.ok, report.markdown()
    assert _once(local_store, "gfd", 6) == {"first": 6}
    # The 6 jobs take ~0.3 s; the wait for the dead one ends with them, not at 60 s.
    assert took < 10.0, took
    assert report.endpoints["dead"].startswith("not ready: stopped waiting for ComfyUI at")
